"""The fusion scheme on the product path (`unique-cube run` on the small demo world): the
reference state kept in the store, the day's own clear pixels, provenance, the fallback where
no pixel has been seen, re-runs as of a day, and a checkpoint made for another pipeline. The
days are near-real-time (``--mode nrt``: references before the day only); final days, whose
references reach after the day, are tests/test_nrt_final.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import downscale_sections, small_pipeline
from test_daily import cluster  # noqa: F401 (one Dask cluster for the module's runs)

from unique_cube.cli import main
from unique_cube.product.variables import QA_FLAGS, QA_PATH_MASK

pytestmark = pytest.mark.integration

PRODUCT = """
output: {out}
scheme: fusion
samples: 2
ddim_steps: 3
tile: 64
overlap: 16
max_gap_days: 16
"""


def _pipeline(demo_world, models: Path, downscalers: Path, tmp: Path) -> Path:
    world, manifest = demo_world
    product = PRODUCT.format(out=tmp / "product")
    path = tmp / "pipeline.yaml"
    path.write_text(
        small_pipeline(world, models, downscale_sections(world, manifest, downscalers, product))
    )
    return path


@pytest.fixture(scope="module")
def produced(demo_world, trained_models, trained_downscalers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fusion")
    spec = _pipeline(demo_world, trained_models, trained_downscalers, tmp)
    days = ["--start", "2023-06-01", "--end", "2023-06-10"]
    assert main(["run", str(spec), *days, "--mode", "nrt"]) == 0
    return spec, tmp / "product"


def _item(out: Path, day: str) -> dict:
    return json.loads((out / "stac" / "unique-cube-gpp" / "items" / f"{day}.json").read_text())


def test_fusion_days_use_the_reference_and_the_days_own_clear_pixels(produced) -> None:
    _, out = produced
    held = sorted(p.name[:10] for p in (out / "reference").glob("*.zarr"))
    assert held and held[0] < "2023-06-01"  # HLS dates before the first day, in the store
    with xr.open_zarr(out / "gpp.zarr", consolidated=False) as cube:
        assert cube["qa"].dtype == np.uint16
        days = cube.sel(time=slice("2023-06-01", "2023-06-10"))
        paths = days["qa"].values & QA_PATH_MASK
        gpp = days["gpp"].values
    assert set(np.unique(paths)) <= {QA_FLAGS["fusion"], QA_FLAGS["gpp_l_clear"]}
    assert (paths == QA_FLAGS["fusion"]).any()
    assert np.isfinite(gpp).all() and (gpp >= 0).all()
    clear_days = [d for d in held if "2023-06-01" <= d <= "2023-06-10"]
    assert clear_days, "an HLS overpass in the ten days"
    for day in clear_days:
        item = _item(out, day)
        assert item["properties"]["unique_cube:scheme"] == "fusion"
        reference = item["properties"]["unique_cube:reference"]
        assert reference["dates"] and max(reference["dates"]) < day  # never the day itself
        hls = item["properties"]["unique_cube:inputs"]["hls-l30"]
        assert hls, "the HLS items of its reference and of its own clear pixels"
        index = int(np.flatnonzero(days["time"].dt.strftime("%Y-%m-%d").values == day)[0])
        own = paths[index] == QA_FLAGS["gpp_l_clear"]
        assert reference["gpp_l_clear_fraction"] == pytest.approx(own.mean(), abs=1e-6)


def test_a_rerun_of_a_day_reads_the_state_as_of_that_day(produced, capsys) -> None:
    spec, out = produced
    cog = out / "cogs" / "2023" / "06" / "03" / "gpp.tif"
    before = cog.read_bytes()
    # A later day adds later HLS dates to the store; redoing June 3 must not see them.
    assert main(["run", str(spec), "--date", "2023-06-20", "--mode", "nrt"]) == 0
    assert main(["run", str(spec), "--date", "2023-06-03", "--force", "--mode", "nrt"]) == 0
    assert cog.read_bytes() == before


def test_a_day_before_any_clear_hls_falls_back_and_says_so(
    demo_world, trained_models, trained_downscalers, tmp_path
) -> None:
    spec = _pipeline(demo_world, trained_models, trained_downscalers, tmp_path)
    # The world's first HLS date: nothing clear before it. Its MODIS is cloudy: fill more.
    spec.write_text(
        spec.read_text().replace(
            "max_gap_days: 16", "max_gap_days: 45\n  max_missing_fraction: 0.95"
        )
    )
    assert main(["run", str(spec), "--date", "2023-01-08", "--mode", "nrt"]) == 0
    item = _item(tmp_path / "product", "2023-01-08")
    properties = item["properties"]
    assert properties["unique_cube:scheme"] == "s2"
    assert "no clear HLS date" in properties["unique_cube:fallback"]
    with xr.open_zarr(tmp_path / "product" / "gpp.zarr", consolidated=False) as cube:
        paths = cube["qa"].sel(time="2023-01-08").values & QA_PATH_MASK
    assert (paths == QA_FLAGS["ddpm_s2"]).all()


def test_a_fusion_checkpoint_for_other_reference_days_is_refused(
    demo_world, trained_models, trained_downscalers, tmp_path, capsys
) -> None:
    spec = _pipeline(demo_world, trained_models, trained_downscalers, tmp_path)
    spec.write_text(spec.read_text().replace("reference_days: 48", "reference_days: 30"))
    assert main(["run", str(spec), "--date", "2023-06-01"]) != 0
    err = capsys.readouterr().err
    assert "reference_days is 30" in err and "retrain" in err
    assert not (tmp_path / "product" / "gpp.zarr").exists()  # nothing written
