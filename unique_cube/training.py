"""``unique-cube train-gpp``: tower tables → two GPP models with spatial cross-validation.

Reads the pipeline's flux files and site table, searches its catalog for the MODIS, Landsat and
reanalysis items over the towers, computes every tower window and the weather at every tower in
one Dask computation, writes the training tables (Parquet), trains and cross-validates both
models (:func:`unique_cube.gpp.train`), and writes a CV report (JSON) and a
predicted-vs-observed scatter plot per model (PNG).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from .config import Catalog, load_catalog
from .pipeline import Pipeline

__all__ = ["open_catalog", "train_gpp", "training_tables"]

log = logging.getLogger(__name__)
MODELS = ("modis", "landsat")


@contextlib.contextmanager
def open_catalog(pipeline: Pipeline) -> Iterator[Catalog]:
    """The pipeline's catalog, with a local server for ``serve_world`` while in the block;
    cubes built in the block re-sign their asset URLs before a retry as the catalog says."""
    from .reads import url_signer, use_read_policy

    catalog = load_catalog(pipeline.catalog)
    if pipeline.stac_url:
        catalog = catalog.with_url(pipeline.stac_url)
    with use_read_policy(resign=url_signer(catalog)):
        if pipeline.serve_world:
            from .demo.serve import serve_world

            with serve_world(pipeline.serve_world) as server:
                yield catalog.with_url(server.url)
        else:
            yield catalog


def training_tables(
    pipeline: Pipeline, catalog: Catalog, say: Callable[[str], None] = log.info
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The MODIS and Landsat training tables and the site table."""
    import dask

    from .catalog import search
    from .flux import read_flux_dir, read_sites
    from .gpp import add_time_features
    from .met import at_points, daily_weather
    from .sites import tower_features, training_table

    spec = pipeline.gpp
    sites = read_sites(pipeline.flux.sites)
    flux = read_flux_dir(
        pipeline.flux.directory,
        sites["site"],
        target=pipeline.flux.target,
        min_qc=pipeline.flux.min_qc,
    )
    period = spec.train
    flux = flux[
        (flux["date"] >= pd.Timestamp(period.start)) & (flux["date"] <= pd.Timestamp(period.end))
    ]
    sites = sites[sites["site"].isin(flux["site"].unique())].reset_index(drop=True)
    say(f"{len(flux)} tower days at {len(sites)} sites, {period.start} to {period.end}")
    bbox = (
        float(sites["lon"].min()) - 0.05,
        float(sites["lat"].min()) - 0.05,
        float(sites["lon"].max()) + 0.05,
        float(sites["lat"].max()) + 0.05,
    )
    # The reanalysis month before the first day holds its first local hours.
    padded = f"{period.start - dt.timedelta(days=1)}/{period.end + dt.timedelta(days=1)}"
    weather_items = search(spec.weather, bbox, padded, catalog=catalog)
    weather = at_points(
        daily_weather(weather_items, catalog.source(spec.weather),
                      utc_offset_hours=spec.utc_offset_hours),
        sites["lat"], sites["lon"],
    ).assign_coords(site=sites["site"].to_numpy())  # fmt: skip
    features = {}
    for key in MODELS:
        model_spec = getattr(spec, key)
        items = search(model_spec.source, bbox, period.stac_datetime, catalog=catalog)
        say(f"{key}: {len(items)} {catalog.source(model_spec.source).collection} items")
        features[key] = tower_features(items, catalog.source(model_spec.source), sites)
    say("computing tower windows and weather (one Dask computation)")
    weather, *computed = dask.compute(weather, *(features[k] for k in MODELS))
    tables = {}
    for key, feats in zip(MODELS, computed, strict=True):
        model_spec = getattr(spec, key)
        table = training_table(
            flux, sites, feats, weather,
            min_clear=model_spec.min_clear, gap_fill_days=model_spec.gap_fill_days,
        )  # fmt: skip
        tables[key] = add_time_features(table)
        say(f"{key}: {len(table)} training rows at {table['site'].nunique()} sites")
    return tables, sites


def train_gpp(pipeline: Pipeline, say: Callable[[str], None] = log.info) -> dict:
    """Train both models of a pipeline; returns the CV report (also written as JSON)."""
    from .gpp import train

    spec = pipeline.gpp
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    with open_catalog(pipeline) as catalog:
        tables, sites = training_tables(pipeline, catalog, say)
    report = {}
    for key in MODELS:
        tables[key].to_parquet(output / f"{key}_training.parquet")
        model_spec = getattr(spec, key)
        card = train(
            tables[key], sites, output, f"gpp_{key}",
            learners=spec.learners, n_folds=spec.folds, threads=spec.threads,
            metadata={"source": model_spec.source, "min_clear": model_spec.min_clear,
                      "gap_fill_days": model_spec.gap_fill_days,
                      "train_period": [str(spec.train.start), str(spec.train.end)]},
        )  # fmt: skip
        report[key] = {
            "learner": card["learner"],
            "cv": card["cv"],
            "learner_comparison": card["learner_comparison"],
            "n_rows": card["n_rows"],
            "n_sites": card["n_sites"],
            "folds": card["folds"],
        }
        overall = card["cv"]["overall"]
        say(f"{key}: {card['learner']} r {overall['r']:.3f} RMSE {overall['rmse']:.2f} "
            f"bias {overall['bias']:+.2f} gC m-2 d-1 ({card['n_sites']} sites)")  # fmt: skip
        _scatter(pd.read_parquet(output / f"gpp_{key}.cv.parquet"), key, card,
                 output / f"gpp_{key}_cv.png")  # fmt: skip
    (output / "cv_report.json").write_text(json.dumps(report, indent=1))
    return report


def _scatter(oof: pd.DataFrame, key: str, card: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = card["cv"]["overall"]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.hexbin(oof["gpp"], oof["predicted"], gridsize=60, mincnt=1, bins="log", cmap="viridis")
    top = float(max(oof["gpp"].max(), oof["predicted"].max()))
    ax.plot([0, top], [0, top], color="0.3", lw=1)
    ax.set_xlabel("tower GPP (gC m$^{-2}$ d$^{-1}$)")
    ax.set_ylabel("cross-validated prediction (gC m$^{-2}$ d$^{-1}$)")
    label = "GPP_M" if key == "modis" else "GPP_L"
    ax.set_title(
        f"{label} ({card['learner']}, {card['folds']}-fold spatial CV)\n"
        f"r {overall['r']:.2f}  RMSE {overall['rmse']:.2f}  bias {overall['bias']:+.2f}  "
        f"n {overall['n']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
