"""The run report: ``metrics.json`` (a fixed contract that checks read) and ``report.html``
(metrics tables, maps of GPP_M vs 30 m vs truth, time series, validation scatter plots).

It reads only what the stages wrote — the GPP models' ``cv_report.json``, the downscaler's
``evaluation.json``, the product's Zarr store and run logs, and, for the demo world, its true
GPP — so it can be rebuilt at any time without recomputing anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import re
import struct
from pathlib import Path

import numpy as np

from unique_cube.config.pipeline import Pipeline
from unique_cube.evaluation.evaluate import OLD_NAMES
from unique_cube.evaluation.strata import AGE_BINS, SEASONS, SLOPE_CLASSES
from unique_cube.evaluation.towers import METHODS as TOWER_METHODS
from unique_cube.grid import upsample_bilinear
from unique_cube.product.store import marker_path
from unique_cube.product.variables import QA_PATH_MASK

__all__ = ["day_status", "metrics", "write_report"]


_SCORES = ("r", "rmse", "bias")
# Table columns that hold counts: printed as integers even when JSON gave them as floats.
_COUNT_COLUMN = re.compile(r"^(n|n_\w+|folds|members|days|days_\w+)$")
# Day maps in the report's day selector: the latest days of the run (each is a PNG inline).
MAX_DAY_MAPS = 62


def _pick(scores: dict, keys=_SCORES) -> dict:
    return {k: None if scores.get(k) is None else float(scores[k]) for k in keys}


def _score(observed: np.ndarray, predicted: np.ndarray) -> dict:
    ok = np.isfinite(observed) & np.isfinite(predicted)
    o, p = observed[ok].astype("float64"), predicted[ok].astype("float64")
    if o.size < 2:
        return {"r": float("nan"), "rmse": float("nan"), "bias": float("nan"), "n": int(o.size)}
    return {"r": float(np.corrcoef(o, p)[0, 1]), "rmse": float(np.sqrt(np.mean((p - o) ** 2))),
            "bias": float(np.mean(p - o)), "n": int(o.size)}  # fmt: skip


def _product_runs(product: Path, days: list[dt.date]) -> dict:
    """Seconds per produced day and memory (the runner's peak plus its Dask workers' resident
    memory at the end of the run), from the run logs of these days."""
    wanted = {d.isoformat() for d in days}
    seconds, lags, peak = {}, {}, 0.0
    for path in sorted((product / "runs").glob("*.json")):
        log = json.loads(path.read_text())
        workers = sum((log.get("worker_rss_mb") or {}).values())
        peak = max(peak, (log.get("peak_rss_mb") or 0.0) + workers)  # runner and workers
        for day in log["days"]:
            if day["status"] == "done" and day["day"] in wanted:
                seconds[day["day"]] = day["seconds"]
                if day.get("input_lag_hours") is not None:
                    lags[day["day"]] = day["input_lag_hours"]
    return {"seconds": seconds, "input_lag_hours": lags, "peak_rss_mb": peak}


def day_status(product: str | Path, days: list[dt.date]) -> dict[str, dict]:
    """Each day's last outcome in the run logs (``<product>/runs/*.json``, oldest first):
    ``status`` (done, already done, skipped, failed; "not run" when no log names the day),
    ``reason``, ``seconds`` and the ``run`` (its start) that said so."""
    status = {d.isoformat(): {"status": "not run", "reason": "", "seconds": None, "run": None,
                              "mode": None, "input_lag_hours": None}
              for d in days}  # fmt: skip
    for path in sorted((Path(product) / "runs").glob("*.json")):
        try:
            log = json.loads(path.read_text())
        except (OSError, ValueError):  # a log cut short by a killed run says nothing
            continue
        for entry in log.get("days", []):
            day = entry.get("day")
            if day not in status:
                continue
            if entry.get("status") == "already done" and status[day]["status"] == "done":
                continue  # a later run that kept the day does not hide how it was made
            status[day] = {"status": entry.get("status", "?"), "reason": entry.get("reason", ""),
                           "seconds": entry.get("seconds"), "run": log.get("started"),
                           "mode": entry.get("mode"),
                           "input_lag_hours": entry.get("input_lag_hours")}  # fmt: skip
    return status


def _status_section(status: dict[str, dict]) -> list[str]:
    """The per-day table of the run logs, with the count of each status above it."""
    counts: dict[str, int] = {}
    for entry in status.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    summary = ", ".join(f"{n} {html.escape(s)}" for s, n in counts.items())
    rows = "".join(
        f"<tr class='{html.escape(e['status'].replace(' ', '-'))}'><td>{day}</td>"
        f"<td>{html.escape(e['status'])}</td><td class='reason'>{html.escape(e['reason'] or '')}"
        f"</td><td>{html.escape(e.get('mode') or '–')}</td><td>{_cell(e['seconds'])}</td>"
        f"<td>{_cell(e.get('input_lag_hours'))}</td>"
        f"<td>{html.escape(str(e['run'] or '–'))}</td></tr>"
        for day, e in status.items()
    )
    return [
        f"<h3>Each day in the run logs ({summary})</h3>",
        "<p>mode: <b>nrt</b> (inputs up to the day only) or <b>final</b> (made once "
        "product.final_after_days have passed); input lag: hours from the end of the local "
        "day to the publication of its last input (the inputs that state it)</p>",
        "<table class='status'><tr><th>day</th><th>status</th><th>reason</th><th>mode</th>"
        "<th>seconds</th><th>input lag (h)</th><th>run started (UTC)</th></tr>"
        f"{rows}</table>",
    ]


def metrics(pipeline: Pipeline, days: list[dt.date], truth=None) -> dict:
    """The metrics of a run: GPP models (spatial CV), downscaling (test year), the product."""
    import xarray as xr

    cv = json.loads((Path(pipeline.gpp.output) / "cv_report.json").read_text())
    gpp_models = {
        name: {**_pick(cv[name]["cv"]["overall"]), "n_sites": int(cv[name]["n_sites"]),
               "folds": int(cv[name]["folds"]),
               **{group: _scores(cv[name]["cv"].get(group, {}), ("r", "rmse", "bias", "n"))
                  for group in ("per_vegetation_type", "per_season")}}
        for name in ("modis", "landsat")
    }  # fmt: skip
    evaluation = _evaluation(pipeline)
    downscaling = {
        against: {OLD_NAMES.get(name, name): _pick(scores) for name, scores in table.items()}
        for against in ("vs_gpp_l", "vs_truth")
        if (table := evaluation.get(against))
    }
    product = Path(pipeline.product.output)
    runs = _product_runs(product, days)
    done = [d for d in days if d.isoformat() in runs["seconds"] or _is_done(product, d)]
    ny, nx = pipeline.grid.geobox.shape
    summary = {
        "days": len(done),
        "pixels_per_day": int(ny * nx),
        "seconds_per_day": (float(np.mean(list(runs["seconds"].values())))
                            if runs["seconds"] else None),
        "peak_rss_mb": runs["peak_rss_mb"],
        # The earliest a day can be out: its last input published, then made in seconds_per_day
        "input_lag_hours_max": (max(runs["input_lag_hours"].values())
                                if runs["input_lag_hours"] else None),
    }  # fmt: skip
    if truth is not None and done:
        with xr.open_zarr(product / "gpp.zarr", consolidated=False) as store:
            when = [np.datetime64(d, "ns") for d in done]
            fine = store["gpp"].sel(time=when).values
        true = truth["gpp"].sel(time=[np.datetime64(d, "ns") for d in done]).values
        summary["vs_truth"] = _score(true, fine)
    ensemble = {
        scheme: {k: scores[k] for k in ("crps_plain", "mean_spread", "rmse_of_mean",
                                        "spread_skill_correlation") if k in scores}
        for scheme, scores in evaluation.get("ensemble", {}).items()
    }  # fmt: skip
    result = {
        "gpp_models": gpp_models,
        "downscaling": downscaling,
        "downscaling_ensemble": {
            s: {("crps" if k == "crps_plain" else k): v for k, v in e.items()}
            for s, e in ensemble.items()
        },
        "coarse_consistency": evaluation.get("coarse_consistency", {}),
        "product": summary,
        "evaluation": _evaluation_metrics(evaluation),
    }
    world = _world_metrics(pipeline)
    if world is not None:
        result["world"] = world
    return result


def _evaluation(pipeline: Pipeline) -> dict:
    """``evaluation.json`` of ``unique-cube evaluate`` (``evaluation.output``)."""
    if pipeline.evaluation is None:
        raise FileNotFoundError(
            f"{pipeline.path or pipeline.name} has no evaluation section: the report reads "
            "the evaluation.json of unique-cube evaluate"
        )
    return json.loads((Path(pipeline.evaluation.output) / "evaluation.json").read_text())


def _scores(table: dict, keys: tuple[str, ...]) -> dict:
    return {method: {k: scores.get(k) for k in keys} for method, scores in table.items()}


def _evaluation_metrics(evaluation: dict) -> dict:
    """The evaluation's figures under the keys dashboards read (``evaluation.*``)."""
    out: dict = {
        "vs_gpp_l": _scores(evaluation.get("vs_gpp_l", {}),
                            ("rmse", "bias", "r", "n_dates", "within_block_rmse")),
        "ensemble": {
            scheme: {k: scores[k] for k in ("crps", "spread_rmse_ratio", "members",
                                            "rank_histogram")}
            for scheme, scores in evaluation.get("ensemble", {}).items()
        },
    }  # fmt: skip
    if "daily_vs_truth" in evaluation:
        keys = ("rmse", "bias", "r", "within_block_rmse", "n_days")
        out["daily_vs_truth"] = _scores(evaluation["daily_vs_truth"], keys)
        nrt = evaluation.get("daily_vs_truth_nrt", {})
        for method, scores in out["daily_vs_truth"].items():  # the same figures by mode
            scores["mode"] = {"final": dict(scores),
                              "nrt": {k: nrt[method].get(k) for k in keys}
                              if method in nrt else None}  # fmt: skip
        if "nrt_vs_final" in evaluation:
            out["nrt_vs_final"] = evaluation["nrt_vs_final"]
        out["strata"] = {
            stratum: {name: _scores(methods, ("rmse", "bias", "n")) for name, methods in
                      classes.items()}
            for stratum, classes in evaluation.get("strata", {}).items()
        }  # fmt: skip
        out["by_age"] = {age: _scores(methods, ("rmse", "bias", "n"))
                         for age, methods in evaluation.get("by_age", {}).items()}  # fmt: skip
        out["daily_sample"] = evaluation.get("daily_sample")
    if "by_reference_age" in evaluation:
        ages = evaluation["by_reference_age"]
        out["by_reference_age"] = {age: _scores(methods, ("rmse", "bias", "n"))
                                   for age, methods in ages.items()}  # fmt: skip
    if "spatial_holdout" in evaluation:
        out["spatial_holdout"] = {
            method: {k: scores.get(k) for k in ("rmse", "bias", "r", "within_block_rmse")}
            for method, scores in evaluation["spatial_holdout"].items()
            if isinstance(scores, dict)
        }
    out["towers"] = _tower_metrics(evaluation.get("towers") or {})
    for key in ("gpp_l_vs_truth", "gpp_m_vs_truth"):
        if key in evaluation:
            out[key] = _truth_metrics(evaluation[key])
    out["future_data"] = evaluation.get("future_data", {})
    return out


def _truth_metrics(table: dict) -> dict:
    """Step 1 against the truth: pooled RMSE/bias/r and per slope class and season."""
    keys = ("rmse", "bias", "r", "n")
    return {
        **{k: table.get(k) for k in keys},
        "by_slope": _scores(table.get("by_slope", {}), keys),
        "by_season": _scores(table.get("by_season", {}), keys),
        "n_dates": table.get("n_dates"),
    }


def _tower_metrics(towers: dict) -> dict:
    """The validation at the held-out towers inside the region: pooled per method (``product``,
    ``gpp_m``; None when not scored, with a ``note`` saying why), ``rmse_ratio`` (the
    product's RMSE over GPP_M's) and per tower."""
    out: dict = {
        method: {k: towers.get(method, {}).get(k) for k in ("rmse", "bias", "r", "n_sites",
                                                             "n_days")}
        for method in TOWER_METHODS
    }  # fmt: skip
    out["rmse_ratio"] = towers.get("rmse_ratio")
    out["sites"] = {
        site: {"n_days": scores.get("n_days"),
               **{m: _pick(scores.get(m, {}), ("rmse", "bias", "r")) for m in TOWER_METHODS}}
        for site, scores in (towers.get("sites") or {}).items()
    }  # fmt: skip
    if towers.get("note"):
        out["note"] = towers["note"]
    return out


def _world_metrics(pipeline: Pipeline) -> dict | None:
    """The demo world's own figures (``world.json``'s ``metrics``), when one is served."""
    if not pipeline.serve_world:
        return None
    path = Path(pipeline.serve_world) / "world.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    metrics = manifest.get("metrics", {})
    return {"last_year_analog_r2": metrics.get("last_year_analog_r2"),
            "fmask_omission": metrics.get("fmask_omission"),
            "generator_version": manifest.get("generator_version")}  # fmt: skip


def _is_done(product: Path, day: dt.date) -> bool:
    return marker_path(product, day).exists()


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _png_size(uri: str) -> tuple[int, int] | None:
    """Width and height of a PNG data URI (its IHDR chunk), or None if it is not a PNG."""
    head = base64.b64decode(uri.split(",", 1)[1][:44])
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", head[16:24])


def _img(uri: str, alt: str = "") -> str:
    """An inline figure shown at its own pixel size: a figure wider than the page scrolls
    sideways in its box rather than being shrunk below the size of its text."""
    size = _png_size(uri)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return f'<div class="fig"><img src="{uri}" alt="{html.escape(alt)}"{dims}></div>'


def _figures(pipeline: Pipeline, days: list[dt.date], truth) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import xarray as xr

    product = Path(pipeline.product.output)
    done = [d for d in days if _is_done(product, d)]
    figures: dict[str, str] = {}
    if not done:
        return figures
    with xr.open_zarr(product / "gpp.zarr", consolidated=False) as store:
        cube = store.sel(time=[np.datetime64(d, "ns") for d in done]).load()
    day = int(np.argmax(np.nanmean(cube["gpp"].values, axis=(1, 2))))
    factor = cube.sizes["y"] // max(cube.sizes["y_m"], 1) or 1
    product_map = cube["gpp"].values[day]
    panels = [
        ("GPP_M (480 m)", np.kron(cube["gpp_m"].values[day], np.ones((factor, factor))), "YlGn"),
        ("bilinear GPP_M", upsample_bilinear(cube["gpp_m"].values[day], factor), "YlGn"),
        ("30 m product (ensemble mean)", product_map, "YlGn"),
        ("uncertainty (ensemble sd)", cube["gpp_sd"].values[day], "magma"),
        ("QA: value path (1 S2, 2 S1, 3 bilinear, 4 fusion, 5 clear GPP_L)",
         cube["qa"].values[day] & QA_PATH_MASK, "tab10"),
    ]  # fmt: skip
    if truth is not None:
        true = truth["gpp"].sel(time=np.datetime64(done[day], "ns")).values
        panels.insert(3, ("truth", true, "YlGn"))
        panels.insert(4, ("product − truth", product_map - true, "RdBu_r"))
    top = float(np.nanpercentile(product_map, 99.5))
    columns = 3  # 3 x 3.6 in at 90 dpi: about 1000 px, the page's width
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_axis_off()
    for ax, (title, image, cmap) in zip(axes.ravel(), panels, strict=False):
        if cmap == "RdBu_r":
            limit = float(np.nanpercentile(np.abs(image), 99)) or 1.0
            shown = ax.imshow(image, vmin=-limit, vmax=limit, cmap=cmap)
        elif cmap == "tab10":
            shown = ax.imshow(image, vmin=0, vmax=9, cmap=cmap, interpolation="nearest")
        else:
            vmax = top if cmap == "YlGn" else float(np.nanpercentile(image, 99.5))
            shown = ax.imshow(image, vmin=0, vmax=vmax, cmap=cmap)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, shrink=0.7)
    fig.suptitle(f"{done[day]} (gC m$^{{-2}}$ d$^{{-1}}$)", fontsize=11)
    figures["maps"] = _png(fig)
    figures.update(day_maps(cube, done[-MAX_DAY_MAPS:], top))

    if truth is not None:
        true = truth["gpp"].sel(time=[np.datetime64(d, "ns") for d in done]).values
        points = _virtual_towers(truth["pft"].load()) if "pft" in truth else []
        if points:
            fig, axes = plt.subplots(len(points), 1, figsize=(8, 1.8 * len(points)), sharex=True)
            for ax, (name, (y, x)) in zip(np.atleast_1d(axes), points, strict=True):
                ax.plot(done, true[:, y, x], "k-", label="truth")
                ax.plot(done, cube["gpp"].values[:, y, x], "g.-", label="30 m product")
                sd = cube["gpp_sd"].values[:, y, x]
                ax.fill_between(done, cube["gpp"].values[:, y, x] - sd,
                                cube["gpp"].values[:, y, x] + sd, color="g", alpha=0.2)  # fmt: skip
                ax.plot(done, cube["gpp_m"].values[:, y // factor, x // factor], "b--",
                        label="GPP_M")  # fmt: skip
                ax.set_ylabel(name, fontsize=8)
            np.atleast_1d(axes)[0].legend(fontsize=7, ncol=3)
            figures["series"] = _png(fig)
        rng = np.random.default_rng(0)
        fine = cube["gpp"].values
        ok = np.flatnonzero(np.isfinite(fine) & np.isfinite(true))
        pick = rng.choice(ok, size=min(20000, ok.size), replace=False)
        coarse = np.stack([np.kron(m, np.ones((factor, factor)))[: fine.shape[1], : fine.shape[2]]
                           for m in cube["gpp_m"].values])  # fmt: skip
        fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
        for ax, (title, values) in zip(axes, [("GPP_M", coarse), ("30 m product", fine)],
                                       strict=True):  # fmt: skip
            s = _score(true.ravel()[pick], values.ravel()[pick])
            ax.plot(true.ravel()[pick], values.ravel()[pick], ".", ms=1, alpha=0.3)
            ax.plot([0, top], [0, top], "k-", lw=0.5)
            ax.set_title(f"{title}: r {s['r']:.3f}, RMSE {s['rmse']:.2f}", fontsize=9)
            ax.set_xlabel("true GPP (gC m$^{-2}$ d$^{-1}$)")
            ax.set_ylabel(f"{title} GPP (gC m$^{{-2}}$ d$^{{-1}}$)")
        figures["scatter"] = _png(fig)
    return figures


def day_maps(cube, days: list[dt.date], top: float | None = None) -> dict[str, str]:
    """One figure per product day (``day:<date>``): the 30 m GPP, its ensemble spread and the
    QA value path, on the same colour scales for every day (GPP up to ``top``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpp = cube["gpp"].sel(time=[np.datetime64(d, "ns") for d in days]).values
    spread = cube["gpp_sd"].sel(time=[np.datetime64(d, "ns") for d in days]).values
    qa = cube["qa"].sel(time=[np.datetime64(d, "ns") for d in days]).values
    if top is None:
        top = float(np.nanpercentile(gpp, 99.5)) if np.isfinite(gpp).any() else 1.0
    spread_top = float(np.nanpercentile(spread, 99.5)) if np.isfinite(spread).any() else 1.0
    figures = {}
    for i, day in enumerate(days):
        fig, axes = plt.subplots(1, 3, figsize=(10.8, 3.6))
        panels = [
            ("GPP, 30 m (ensemble mean)", gpp[i], {"cmap": "YlGn", "vmin": 0, "vmax": top}),
            ("spread (ensemble sd)", spread[i],
             {"cmap": "magma", "vmin": 0, "vmax": spread_top or 1.0}),
            ("QA: value path (1 S2, 2 S1, 3 bilinear,\n4 fusion, 5 clear GPP_L)",
             qa[i] & QA_PATH_MASK,
             {"cmap": "tab10", "vmin": 0, "vmax": 9, "interpolation": "nearest"}),
        ]  # fmt: skip
        for ax, (title, image, style) in zip(axes, panels, strict=True):
            shown = ax.imshow(image, **style)
            ax.set_title(title, fontsize=10)
            ax.set_axis_off()
            fig.colorbar(shown, ax=ax, shrink=0.8)
        fig.suptitle(f"{day} (GPP and spread in gC m$^{{-2}}$ d$^{{-1}}$)", fontsize=11)
        figures[f"day:{day.isoformat()}"] = _png(fig)
    return figures


def _day_selector(figures: dict[str, str]) -> list[str]:
    """The day maps behind a day selector: one shown at a time (the latest first), all inline
    in the page with a few lines of script, so the file stays self-contained."""
    days = sorted(key.split(":", 1)[1] for key in figures if key.startswith("day:"))
    if not days:
        return []
    latest = days[-1]
    options = "".join(
        f"<option value='{d}'{' selected' if d == latest else ''}>{d}</option>" for d in days
    )
    boxes = "".join(
        f"<div class='day' id='day-{d}'{'' if d == latest else ' hidden'}>"
        f"{_img(figures[f'day:{d}'], f'GPP, spread and QA of {d}')}</div>"
        for d in days
    )
    script = (
        "<script>function showDay(d){document.querySelectorAll('div.day').forEach("
        "function(b){b.hidden=(b.id!=='day-'+d)})}</script>"
    )
    return [
        f"<h3>Each product day: GPP, spread and QA ({len(days)} days)</h3>",
        f"<p><label>day <select onchange='showDay(this.value)'>{options}</select></label></p>",
        boxes,
        script,
    ]


def _virtual_towers(pft) -> list[tuple[str, tuple[int, int]]]:
    """One pixel per vegetation type (``pft``: the truth's type map with CF flag attributes),
    the one furthest inside its type: where a tower would stand (whatever towers the region
    has: those are scored in the evaluation's ``towers``)."""
    from scipy import ndimage

    codes = pft.attrs.get("flag_values", [])
    names = pft.attrs.get("flag_meanings", "").split()
    values = pft.values
    points = []
    for code, name in zip(codes, names, strict=False):
        inside = ndimage.distance_transform_edt(values == code)
        if inside.max() >= 3:
            y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
            points.append((name, (int(y), int(x))))
    return points


def _cell(value, column: str = "") -> str:
    """A table cell: counts (``n``, ``n_*``, ``folds``, ``members``, ``days``) and integers as
    integers, other numbers with three decimals."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if (isinstance(value, float | np.floating) and _COUNT_COLUMN.match(column)
            and float(value).is_integer()):  # fmt: skip
        return f"{int(value):,}"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.3f}" if isinstance(value, float | np.floating) else html.escape(str(value))


def _table(rows: dict[str, dict], columns=_SCORES) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("", *columns))
    body = "".join(
        "<tr><td>" + html.escape(str(name)) + "</td>"
        + "".join(f"<td>{_cell(values.get(c), c)}</td>" for c in columns) + "</tr>"
        for name, values in rows.items()
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


#: Classes in their own order (JSON keeps keys sorted as text: 17-32 before 9-16, JJA before
#: MAM); classes not named here follow in the order they come.
_CLASS_ORDER = [*(label for _, label in AGE_BINS), "never", *(label for _, label in SLOPE_CLASSES),
                *dict.fromkeys(SEASONS.values())]  # fmt: skip


def _class_order(classes: dict) -> dict:
    """Age bins, slope classes and seasons in their own order."""
    rank = {label: i for i, label in enumerate(_CLASS_ORDER)}
    return dict(sorted(classes.items(), key=lambda item: rank.get(item[0], len(rank))))


def _by_method(classes: dict, key: str = "rmse") -> tuple[dict, list[str]]:
    """``{class: {method: scores}}`` → rows of ``key`` by method, and the methods."""
    methods = sorted({m for scores in classes.values() for m in scores})
    rows = {name: {m: scores.get(m, {}).get(key) for m in methods}
            for name, scores in classes.items()}  # fmt: skip
    return rows, methods


_STRATA = {
    "gpp_m": "GPP_M that day: observed or gap-filled",
    "land_cover": "WorldCover class",
    "slope": "slope (degrees)",
    "season": "season",
}


def _evaluation_sections(evaluation: dict, figures: dict) -> list[str]:
    """The evaluation's tables and figures (``metrics.json``'s ``evaluation``)."""
    out = ["<h2>Evaluation on the test period</h2>"]
    vs = evaluation.get("vs_gpp_l", {})
    n_dates = next((v.get("n_dates") for v in vs.values()), 0)
    out += [f"<h3>Every clear HLS date ({n_dates} dates) against GPP_L</h3>",
            "<p>pure_pixel_oracle reads the date's own Landsat (an oracle: a daily product "
            "does not have it). within_block_rmse: each 480 m block's mean removed from both "
            "maps (the 30 m pattern alone).</p>",
            _table(vs, ("rmse", "bias", "r", "within_block_rmse", "n_dates"))]  # fmt: skip
    if evaluation.get("ensemble"):
        out += [
            "<h3>Ensembles (fair CRPS; spread/RMSE with the (K+1)/K correction: 1 is "
            "calibrated, below 1 over-confident)</h3>",
            _table(evaluation["ensemble"], ("members", "crps", "spread_rmse_ratio")),
        ]
        if "ranks" in figures:
            out.append(_img(figures["ranks"], "rank histograms"))
    if evaluation.get("by_reference_age"):
        rows, methods = _by_method(_class_order(evaluation["by_reference_age"]))
        out += ["<h3>Clear dates against GPP_L by the age of the fusion reference (the "
                "pixel's last clear GPP_L before the date)</h3>",
                _table(rows, methods)]  # fmt: skip
    if "daily_vs_truth" in evaluation:
        sample = evaluation.get("daily_sample") or {}
        out += [f"<h3>The daily product against the truth ({sample.get('days_scored', '?')} "
                f"days, 1 in {sample.get('every', '?')} of the test period; final days)</h3>",
                _table(evaluation["daily_vs_truth"],
                       ("rmse", "bias", "r", "within_block_rmse", "n_days"))]  # fmt: skip
        if "daily_vs_truth_nrt" in evaluation:
            out += ["<h3>The same days near-real-time (no input after the day)</h3>",
                    _table(evaluation["daily_vs_truth_nrt"],
                           ("rmse", "bias", "r", "within_block_rmse", "n_days"))]  # fmt: skip
        if "nrt_vs_final" in evaluation:
            modes = evaluation["nrt_vs_final"]
            out += ["<h3>Near-real-time against final (the same pixels)</h3>",
                    _table({modes.get("method", "product"): modes},
                           ("rmse_nrt", "rmse_final", "nrt_over_final", "rmse_between",
                            "final_inputs_differ_fraction", "n_days"))]  # fmt: skip
        rows, methods = _by_method(_class_order(evaluation.get("by_age", {})))
        out += ["<h3>RMSE by days since the pixel's last clear 30 m observation</h3>",
                _table(rows, methods)]  # fmt: skip
        if "by_age" in figures:
            out.append(_img(figures["by_age"], "RMSE by age"))
        for stratum, classes in evaluation.get("strata", {}).items():
            rows, methods = _by_method(_class_order(classes))
            title = _STRATA.get(stratum, stratum.replace("_", " "))
            out += [f"<h3>RMSE by {html.escape(title)}</h3>", _table(rows, methods)]
    if "spatial_holdout" in evaluation:
        out += ["<h3>Spatial hold-out: trained on the west, scored on the east against GPP_L"
                " (<code>_seen</code>: the model trained on the whole region)</h3>",
                _table(evaluation["spatial_holdout"], ("rmse", "bias", "r",
                                                       "within_block_rmse"))]  # fmt: skip
    out += _truth_section(evaluation)
    out += _tower_section(evaluation.get("towers") or {})
    future = evaluation.get("future_data") or {}
    if future:
        out.append("<h3>Figures that use data from after their day</h3><ul>"
                   + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                             for k, v in future.items()) + "</ul>")  # fmt: skip
    return out


def _cv_groups(models: dict) -> list[str]:
    """The spatial CV per plant type and per season, both models side by side (r / RMSE)."""
    out = []
    for group, title in (("per_vegetation_type", "plant type (IGBP)"), ("per_season", "season")):
        rows: dict[str, dict] = {}
        for model, scores in models.items():
            for name, values in (scores.get(group) or {}).items():
                r, rmse = values.get("r"), values.get("rmse")
                rows.setdefault(name, {})[model] = (
                    f"{r:.2f} / {rmse:.2f}" if r is not None and rmse is not None else None
                )
        if rows:
            out += [f"<h3>Spatial CV by {title}: r / RMSE</h3>", _table(rows, tuple(models))]
    return out


def _truth_section(evaluation: dict) -> list[str]:
    """Step 1's maps against the truth on the clear dates, pooled, by slope and by season."""
    rows: dict[str, dict] = {}
    for key, label in (("gpp_l_vs_truth", "GPP_L (30 m)"), ("gpp_m_vs_truth", "GPP_M (480 m)")):
        table = evaluation.get(key)
        if not table:
            continue
        rows[f"{label} all"] = table
        for group in ("by_slope", "by_season"):
            for name, scores in table.get(group, {}).items():
                unit = "°" if group == "by_slope" else ""
                rows[f"{label} {name}{unit}"] = scores
    if not rows:
        return []
    return ["<h3>Step 1 against the truth on the clear dates (GPP_L on its clear pixels, GPP_M "
            "against the truth's 480 m means; slope classes in degrees; goal RMSE ≤ 1.0, "
            "|bias| ≤ 0.3 in every class)</h3>",
            _table(rows, ("rmse", "bias", "r", "n"))]  # fmt: skip


def _tower_section(towers: dict) -> list[str]:
    """The table of the validation at the held-out towers (per tower, then pooled)."""
    title = "<h3>At the towers inside the region (held out of the GPP models' training)</h3>"
    if towers.get("note") or not towers.get("sites"):
        return [title, f"<p>{html.escape(towers.get('note') or 'not scored')}</p>"]
    columns = ("n_days", *(f"{k} {m}" for k in ("rmse", "bias", "r") for m in TOWER_METHODS))
    rows = {
        name: {"n_days": scores.get("n_days"),
               **{f"{k} {m}": (scores.get(m) or {}).get(k) for k in ("rmse", "bias", "r")
                  for m in TOWER_METHODS}}
        for name, scores in [*towers["sites"].items(),
                             ("pooled", {"n_days": towers["product"].get("n_days"),
                                         **{m: towers[m] for m in TOWER_METHODS}})]
    }  # fmt: skip
    ratio = towers.get("rmse_ratio")
    return [
        title,
        "<p>The product: mean over the tower's window of 30 m pixels; GPP_M: the tower's 480 m "
        "pixel; against the tower's GPP on the same days (gC m<sup>-2</sup> d<sup>-1</sup>). "
        f"RMSE of the product over GPP_M's: {_cell(ratio)} (goal: 0.8 or less).</p>",
        _table(rows, columns),
    ]


def _evaluation_figures(evaluation: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    by_age = _class_order(evaluation.get("by_age") or {})
    if by_age:
        bins = list(by_age)
        methods = sorted({m for scores in by_age.values() for m in scores})
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for method in methods:
            ax.plot(bins, [by_age[b].get(method, {}).get("rmse") or np.nan for b in bins],
                    "o-", label=method)  # fmt: skip
        ax.set_xlabel("days since the pixel's last clear 30 m observation")
        ax.set_ylabel("RMSE vs truth (gC m$^{-2}$ d$^{-1}$)")
        ax.legend(fontsize=8)
        figures["by_age"] = _png(fig)
    ensemble = evaluation.get("ensemble") or {}
    if ensemble:
        fig, axes = plt.subplots(1, len(ensemble), figsize=(3.5 * len(ensemble), 2.8),
                                 squeeze=False)  # fmt: skip
        for ax, (scheme, scores) in zip(axes[0], ensemble.items(), strict=True):
            ranks = scores.get("rank_histogram") or []
            ax.bar(range(len(ranks)), ranks)
            ax.axhline(1 / max(len(ranks), 1), color="k", lw=0.5)
            ax.set_title(f"{scheme}: rank histogram", fontsize=9)
            ax.set_xlabel("rank of GPP_L among the members")
            ax.set_ylabel("share of pixels")
        figures["ranks"] = _png(fig)
    return figures


def write_report(pipeline: Pipeline, days: list[dt.date], folder: str | Path) -> dict:
    """Write ``metrics.json`` and ``report.html`` into ``folder``; returns the metrics."""
    import xarray as xr

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth = None
    spec = pipeline.downscale
    if spec is not None and spec.truth and Path(spec.truth).exists():
        truth = xr.open_zarr(spec.truth, consolidated=False)  # gpp, and the type map pft
    result = metrics(pipeline, days, truth)
    (folder / "metrics.json").write_text(json.dumps(result, indent=1))
    figures = _figures(pipeline, days, truth)
    models = Path(pipeline.gpp.output)
    for name in ("modis", "landsat"):
        png = models / f"gpp_{name}_cv.png"
        if png.exists():
            figures[f"cv_{name}"] = (
                "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
            )
    product = result["product"]
    sections = [
        f"<h1>unique_cube — {html.escape(pipeline.name)}</h1>",
        f"<p>{product['days']} product days, {product['pixels_per_day']:,} pixels a day, "
        f"{product['seconds_per_day'] or float('nan'):.1f} s a day, peak memory "
        f"{product['peak_rss_mb']:.0f} MB.</p>",
        "<h2>Step 1: GPP models (20-fold spatial cross-validation at the towers)</h2>",
        _table(result["gpp_models"], ("r", "rmse", "bias", "n_sites", "folds")),
        *_cv_groups(result["gpp_models"]),
        "".join(_img(figures[k], k) for k in ("cv_modis", "cv_landsat") if k in figures),
        "<h2>Step 2: downscaling on the test year's clear dates</h2><h3>against the true "
        "30 m GPP on the same dates</h3>",
        _table(result["downscaling"].get("vs_truth", {})),
    ]
    sections += _evaluation_sections(
        result["evaluation"], _evaluation_figures(result["evaluation"])
    )
    if result.get("world"):
        sections += ["<h3>The demo world</h3>", _table({"world": result["world"]},
                     ("last_year_analog_r2", "fmask_omission", "generator_version"))]  # fmt: skip
    sections.append("<h2>The daily product</h2>")
    sections += _status_section(day_status(pipeline.product.output, days))
    if "vs_truth" in product:
        sections.append(_table({"30 m product vs truth": product["vs_truth"]}))
    for key, title in (("maps", "One product day: GPP_M, bilinear, the 30 m product, the truth, "
                                "the error, the uncertainty and the QA path"),
                       ("series", "Time series at one pixel per vegetation type"),
                       ("scatter", "Validation against the truth (20 000 pixels)")):  # fmt: skip
        if key in figures:
            sections.append(f"<h3>{title}</h3>{_img(figures[key], title)}")
        if key == "maps":
            sections += _day_selector(figures)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>unique_cube report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td.reason{text-align:left}tr.failed td{background:#fdd}"
        "tr.skipped td{background:#ffd}.fig{overflow-x:auto}.fig img{max-width:none}"
        "</style></head><body>" + "\n".join(sections) + "</body></html>"
    )
    (folder / "report.html").write_text(page)
    return result
