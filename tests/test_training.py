"""`unique-cube train-gpp` on the small demo world: tower tables, both models, report, plots;
the reanalysis reader and the tower windows it uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import small_pipeline

from unique_cube.config.catalog import load_catalog
from unique_cube.config.pipeline import load_pipeline
from unique_cube.errors import FluxError, LoadError
from unique_cube.gpp.towers import tower_features, training_tables
from unique_cube.inputs.flux import read_flux_dir, read_sites
from unique_cube.inputs.search import search
from unique_cube.inputs.weather import at_points, daily_weather


def test_train_gpp_writes_models_cards_and_report(trained_models: Path) -> None:
    """`unique-cube train-gpp` (run by the ``trained_models`` fixture) on the small world."""
    models = trained_models
    report = json.loads((models / "cv_report.json").read_text())
    for key in ("modis", "landsat"):
        card = json.loads((models / f"gpp_{key}.card.json").read_text())
        assert (models / card["model_file"]).is_file()
        assert (models / f"gpp_{key}_cv.png").stat().st_size > 10_000
        table = pd.read_parquet(models / f"{key}_training.parquet")
        assert {"site", "date", "gpp", "ndvi", "tair_local", "shortwave_local", "n_clear"} <= set(
            table.columns
        )
        # The 2 towers inside the region are held out of training (flux.hold_out_region).
        assert card["n_sites"] == 8 and not table["site"].str.startswith("DR-").any()
        assert report[key]["cv"]["overall"]["r"] > 0.7
        assert set(report[key]["cv"]["per_season"]) <= {"DJF", "MAM", "JJA", "SON"}
        assert report[key]["cv"]["per_season"] and report[key]["cv"]["per_vegetation_type"]
        assert card["source"] in ("modis-sr", "hls-l30") and "gap_fill_days" in card
    assert set(report["modis"]["cv"]["per_fold"]) == {"0", "1", "2", "3"}
    # Landsat rows are clear dates only; MODIS rows are gap-filled to most days.
    landsat = pd.read_parquet(models / "landsat_training.parquet")
    modis = pd.read_parquet(models / "modis_training.parquet")
    assert (landsat["n_clear"] >= 5).all()
    assert len(modis) > 5 * len(landsat)


@pytest.fixture(scope="module")
def demo_catalog(demo_server):
    return load_catalog("demo").with_url(demo_server.url)


def test_daily_weather_matches_the_towers(demo_world, demo_catalog) -> None:
    world, _ = demo_world
    sites = read_sites(world / "flux" / "sites.csv")
    items = search("era5", (127.0, 37.4, 127.6, 37.9), "2022-12-31/2023-12-31",
                   catalog=demo_catalog)  # fmt: skip
    daily = daily_weather(items, demo_catalog.source("era5"))
    assert daily.sizes["time"] == 365 and str(daily.time.values[0])[:10] == "2023-01-01"
    assert daily.tair.attrs["units"] == "degC"
    at_sites = at_points(daily, sites["lat"], sites["lon"]).compute()
    flux = read_flux_dir(world / "flux", min_qc=0.0)
    one = flux[flux["site"] == sites["site"][0]].set_index("date")
    joined = one.join(at_sites.isel(site=0).to_dataframe(), how="inner")
    joined = joined.dropna(subset=["TA_F", "SW_IN_F"])  # the towers' own met gaps
    assert len(joined) > 200
    assert np.corrcoef(joined["TA_F"], joined["tair"])[0, 1] > 0.97
    assert np.corrcoef(joined["SW_IN_F"], joined["shortwave"])[0, 1] > 0.95
    assert float(at_sites.precipitation.min()) >= 0 and float(at_sites.vpd.min()) >= 0
    with pytest.raises(LoadError, match="outside the reanalysis grid"):
        at_points(daily, [10.0], [127.0])


def test_tower_windows_count_clear_pixels(demo_world, demo_catalog) -> None:
    world, _ = demo_world
    sites = read_sites(world / "flux" / "sites.csv")
    items = search("hls-l30", (127.0, 37.4, 127.6, 37.9), "2023-06-01/2023-08-31",
                   catalog=demo_catalog)  # fmt: skip
    features = tower_features(items, demo_catalog.source("hls-l30"), sites).compute()
    assert features.sizes["site"] == 10  # 8 towers on their own patches, 2 inside the region
    assert int(features.n_clear.max()) == 9
    clear = features.ndvi.where(features.n_clear == 9)
    assert 0.2 < float(clear.mean()) < 0.95
    assert features.ndvi.where(features.n_clear == 0).isnull().all()
    far = pd.DataFrame({"site": ["XX-Far"], "lat": [35.0], "lon": [129.5], "igbp": ["DBF"]})
    with pytest.raises(LoadError, match=r"site XX-Far .* outside every hls2-l30 item"):
        tower_features(items, demo_catalog.source("hls-l30"), far)


def test_flux_data_of_a_site_missing_from_the_site_table_is_named(
    demo_world, tmp_path: Path
) -> None:
    """Checked right after reading the files: before any catalog search."""
    world, _ = demo_world
    flux = tmp_path / "flux"
    shutil.copytree(world / "flux", flux)
    first = sorted(flux.glob("FLX_*.csv"))[0]
    shutil.copy(first, flux / first.name.replace(first.name.split("_")[1], "XX-New"))
    spec = tmp_path / "pipeline.yaml"
    text = small_pipeline(world, tmp_path / "models").replace(", hold_out_region: true", "")
    spec.write_text(text.replace(f"directory: {world}/flux", f"directory: {flux}"))
    pipeline = load_pipeline(spec)
    with pytest.raises(FluxError, match=r"XX-New .*site table"):
        training_tables(pipeline, catalog=None)
    assert not (tmp_path / "models").exists()
