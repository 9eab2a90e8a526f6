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
from pathlib import Path

import numpy as np

from unique_cube.config.pipeline import Pipeline
from unique_cube.product.store import marker_path

__all__ = ["metrics", "write_report"]


_SCORES = ("r", "rmse", "bias")


def _pick(scores: dict, keys=_SCORES) -> dict:
    return {k: float(scores[k]) for k in keys}


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
    seconds, peak = {}, 0.0
    for path in sorted((product / "runs").glob("*.json")):
        log = json.loads(path.read_text())
        workers = sum((log.get("worker_rss_mb") or {}).values())
        peak = max(peak, (log.get("peak_rss_mb") or 0.0) + workers)  # runner and workers
        for day in log["days"]:
            if day["status"] == "done" and day["day"] in wanted:
                seconds[day["day"]] = day["seconds"]
    return {"seconds": seconds, "peak_rss_mb": peak}


def metrics(pipeline: Pipeline, days: list[dt.date], truth=None) -> dict:
    """The metrics of a run: GPP models (spatial CV), downscaling (test year), the product."""
    import xarray as xr

    cv = json.loads((Path(pipeline.gpp.output) / "cv_report.json").read_text())
    gpp_models = {
        name: {**_pick(cv[name]["cv"]["overall"]), "n_sites": int(cv[name]["n_sites"]),
               "folds": int(cv[name]["folds"])}
        for name in ("modis", "landsat")
    }  # fmt: skip
    evaluation = json.loads((Path(pipeline.downscale.output) / "evaluation.json").read_text())
    downscaling = {
        against: {name: _pick(scores) for name, scores in table.items()}
        for against, table in evaluation["table"].items()
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
    }  # fmt: skip
    if truth is not None and done:
        with xr.open_zarr(product / "gpp.zarr", consolidated=False) as store:
            when = [np.datetime64(d, "ns") for d in done]
            fine = store["gpp"].sel(time=when).values
        true = truth["gpp"].sel(time=[np.datetime64(d, "ns") for d in done]).values
        summary["vs_truth"] = _score(true, fine)
    return {
        "gpp_models": gpp_models,
        "downscaling": downscaling,
        "downscaling_ensemble": evaluation.get("ensemble", {}),
        "coarse_consistency": evaluation.get("coarse_consistency", {}),
        "product": summary,
    }


def _is_done(product: Path, day: dt.date) -> bool:
    return marker_path(product, day).exists()


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


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
    panels = [
        ("GPP_M (480 m)", np.kron(cube["gpp_m"].values[day], np.ones((factor, factor)))),
        ("30 m GPP (ensemble mean)", cube["gpp"].values[day]),
        ("uncertainty (ensemble sd)", cube["gpp_sd"].values[day]),
    ]
    if truth is not None:
        panels.append(("truth", truth["gpp"].sel(time=np.datetime64(done[day], "ns")).values))
    top = float(np.nanpercentile(cube["gpp"].values[day], 99.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4))
    for ax, (title, image) in zip(axes, panels, strict=True):
        vmax = top if "sd" not in title else float(np.nanpercentile(image, 99.5))
        shown = ax.imshow(image, vmin=0, vmax=vmax, cmap="YlGn" if "sd" not in title else "magma")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, shrink=0.7)
    fig.suptitle(f"{done[day]} (gC m$^{{-2}}$ d$^{{-1}}$)", fontsize=10)
    figures["maps"] = _png(fig)

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
            ax.set_xlabel("truth")
        figures["scatter"] = _png(fig)
    return figures


def _virtual_towers(pft) -> list[tuple[str, tuple[int, int]]]:
    """One pixel per vegetation type (``pft``: the truth's type map with CF flag attributes),
    the one furthest inside its type: where a tower would stand (the demo world's real towers
    are outside the product region)."""
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


def _table(rows: dict[str, dict], columns=_SCORES) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("", *columns))
    body = "".join(
        "<tr><td>" + html.escape(name) + "</td>"
        + "".join(f"<td>{values.get(c, float('nan')):.3f}</td>" for c in columns) + "</tr>"
        for name, values in rows.items()
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


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
    quicklook = Path(spec.output) / "quicklook.png" if spec else None
    if quicklook is not None and quicklook.exists():
        figures["quicklook"] = (
            "data:image/png;base64," + base64.b64encode(quicklook.read_bytes()).decode()
        )
    product = result["product"]
    sections = [
        f"<h1>unique_cube — {html.escape(pipeline.name)}</h1>",
        f"<p>{product['days']} product days, {product['pixels_per_day']:,} pixels a day, "
        f"{product['seconds_per_day'] or float('nan'):.1f} s a day, peak memory "
        f"{product['peak_rss_mb']:.0f} MB.</p>",
        "<h2>Step 1: GPP models (20-fold spatial cross-validation at the towers)</h2>",
        _table(result["gpp_models"], ("r", "rmse", "bias", "n_sites", "folds")),
        "".join(f'<img src="{figures[k]}">' for k in ("cv_modis", "cv_landsat") if k in figures),
        "<h2>Step 2: downscaling on the test year</h2><h3>against GPP_L</h3>",
        _table(result["downscaling"].get("vs_gpp_l", {})),
    ]
    if result["downscaling"].get("vs_truth"):
        sections += [
            "<h3>against the true 30 m GPP</h3>",
            _table(result["downscaling"]["vs_truth"]),
        ]
    if "quicklook" in figures:
        sections.append(f'<img src="{figures["quicklook"]}" style="max-width:100%">')
    sections.append("<h2>The daily product</h2>")
    if "vs_truth" in product:
        sections.append(_table({"30 m product vs truth": product["vs_truth"]}))
    for key, title in (("maps", "GPP_M, the 30 m product, its uncertainty and the truth"),
                       ("series", "Time series at one pixel per vegetation type"),
                       ("scatter", "Validation against the truth (20 000 pixels)")):  # fmt: skip
        if key in figures:
            sections.append(f'<h3>{title}</h3><img src="{figures[key]}" style="max-width:100%">')
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>unique_cube report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}</style></head><body>" + "\n".join(sections) + "</body></html>"
    )
    (folder / "report.html").write_text(page)
    return result
