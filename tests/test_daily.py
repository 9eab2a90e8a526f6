"""The daily product (`unique-cube run`) on the small demo world: outputs, idempotence,
resumption after a crash, missing inputs and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import downscale_sections, small_pipeline

from unique_cube.cli import main
from unique_cube.downscale.cluster import SCHEDULER_ADDRESS_ENV, dask_client

pytestmark = pytest.mark.integration

PRODUCT = """
output: {out}
scheme: s2
samples: 2
ddim_steps: 3
tile: 64
overlap: 16
time_zone: Asia/Seoul
coarse_consistency: true
{extra}
"""


def _pipeline(demo_world, models: Path, downscalers: Path, tmp: Path, **extra) -> Path:
    world, manifest = demo_world
    # Early June has clear MODIS within 16 days of every pixel-day: GPP_M reads a month of
    # MODIS, not the monsoon's three months of the default 45 days.
    extra = {"max_gap_days": 16, **extra}
    lines = "\n".join(f"{k}: {v}" for k, v in extra.items())
    product = PRODUCT.format(out=tmp / "product", extra=lines)
    path = tmp / "pipeline.yaml"
    path.write_text(
        small_pipeline(world, models, downscale_sections(world, manifest, downscalers, product))
    )
    return path


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One Dask cluster for every run of the module (a run would start its own otherwise)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv(SCHEDULER_ADDRESS_ENV, raising=False)
        with dask_client(cpu_workers=1, gpu_workers=1, dashboard_address="127.0.0.1:0") as client:
            env.setenv(SCHEDULER_ADDRESS_ENV, client.scheduler.address)
            yield client


@pytest.fixture(scope="module")
def produced(demo_world, trained_models, trained_downscalers, tmp_path_factory):
    """Two days produced by the CLI: (pipeline path, product folder)."""
    tmp = tmp_path_factory.mktemp("daily")
    spec = _pipeline(demo_world, trained_models, trained_downscalers, tmp)
    assert main(["run", str(spec), "--start", "2023-06-01", "--end", "2023-06-02"]) == 0
    return spec, tmp / "product"


def test_a_day_writes_zarr_cogs_and_stac(produced) -> None:
    from rio_cogeo.cogeo import cog_validate

    from unique_cube.product.stac import file_checksum
    from unique_cube.product.variables import QA_FLAGS

    _, out = produced
    with xr.open_zarr(out / "gpp.zarr", consolidated=False) as cube:
        assert cube["gpp"].attrs["standard_name"] == (
            "gross_primary_productivity_of_biomass_expressed_as_carbon"
        )
        assert cube["gpp"].attrs["units"] == "g m-2 day-1"
        assert cube["gpp"].attrs["grid_mapping"] == "spatial_ref"
        assert cube.sizes["time"] == 365  # the whole calendar year, written day by day
        day = cube.sel(time="2023-06-01")
        gpp, qa = day["gpp"].values, day["qa"].values
        assert np.isfinite(gpp).all() and gpp.mean() > 0.5
        assert ((qa & 3) == QA_FLAGS["ddpm_s2"]).all()
        assert np.isnan(cube["gpp"].sel(time="2023-06-03").values).all()  # not produced
        assert cube["gpp"].encoding["shards"] == (8, 512, 512)
    item = json.loads((out / "stac/unique-cube-gpp/items/2023-06-01.json").read_text())
    assert item["properties"]["processing:software"]["unique-cube"]
    inputs = item["properties"]["unique_cube:inputs"]
    assert inputs["modis-sr"] and inputs["era5"] and inputs["dem"] and inputs["worldcover"]
    assert set(item["properties"]["unique_cube:models"]) >= {"gpp_modis", "downscaler_s2"}
    assert isinstance(item["properties"]["unique_cube:seed"], int)
    for name in ("gpp", "gpp_sd", "qa", "gpp_m"):
        asset = item["assets"][name]
        path = (out / "stac/unique-cube-gpp/items" / asset["href"]).resolve()
        assert asset["file:checksum"] == file_checksum(path)
        valid, errors, _ = cog_validate(str(path), strict=True)
        assert valid, errors
    collection = json.loads((out / "stac/unique-cube-gpp/collection.json").read_text())
    assert [x["href"] for x in collection["links"] if x["rel"] == "item"] == [
        "./items/2023-06-01.json",
        "./items/2023-06-02.json",
    ]
    marker = json.loads((out / "state/2023-06-01.json").read_text())
    assert marker["checksums"]["gpp"] == item["assets"]["gpp"]["file:checksum"]
    runs = list((out / "runs").glob("*.json"))
    assert json.loads(runs[0].read_text())["counts"] == {"done": 2}


def test_coarse_consistency_matches_gpp_m(produced) -> None:
    _, out = produced
    with xr.open_zarr(out / "gpp.zarr", consolidated=False) as cube:
        day = cube.sel(time="2023-06-02")
        fine, coarse = day["gpp"].values, day["gpp_m"].values
    blocks = fine.reshape(10, 16, 10, 16).mean(axis=(1, 3))
    ok = np.isfinite(coarse)
    assert np.abs(blocks[ok] - coarse[ok]).max() < 0.05 * np.nanmax(coarse) + 0.05


def test_a_day_made_in_windows_equals_the_whole_grid_day(
    produced, demo_world, trained_models, trained_downscalers, tmp_path
) -> None:
    import rasterio

    _, whole = produced  # the 160 px grid in one window
    spec = _pipeline(demo_world, trained_models, trained_downscalers, tmp_path, window=128)
    assert main(["run", str(spec), "--date", "2023-06-02"]) == 0
    out = tmp_path / "product"
    with (
        xr.open_zarr(whole / "gpp.zarr", consolidated=False) as expected,
        xr.open_zarr(out / "gpp.zarr", consolidated=False) as windowed,
    ):
        for name in ("gpp", "gpp_sd", "qa", "gpp_m"):
            np.testing.assert_array_equal(windowed[name].sel(time="2023-06-02").values,
                                          expected[name].sel(time="2023-06-02").values,
                                          err_msg=name)  # fmt: skip
    for name in ("gpp", "qa"):  # the COGs assembled from the windows hold the same pixels
        with (
            rasterio.open(out / f"cogs/2023/06/02/{name}.tif") as a,
            rasterio.open(whole / f"cogs/2023/06/02/{name}.tif") as b,
        ):
            np.testing.assert_array_equal(a.read(1), b.read(1))
    # Four windows; the tiles touching each cover their own extent: its static layers are kept.
    assert len(list((out / "cache/static").glob("*/*.npz"))) == 4
    assert not list(out.rglob("*.partial"))
    item = json.loads((out / "stac/unique-cube-gpp/items/2023-06-02.json").read_text())
    reference = json.loads((whole / "stac/unique-cube-gpp/items/2023-06-02.json").read_text())
    for key in ("coarse_mismatch_before", "coarse_mismatch_after", "qa_fractions"):
        assert item["properties"][f"unique_cube:{key}"] == pytest.approx(
            reference["properties"][f"unique_cube:{key}"], rel=1e-6, abs=1e-9
        )


def test_rerun_keeps_done_days_and_force_reproduces_them(produced, capsys) -> None:
    spec, out = produced
    cog = out / "cogs/2023/06/01/gpp.tif"
    stamp = cog.stat().st_mtime_ns
    assert main(["run", str(spec), "--date", "2023-06-01"]) == 0
    assert "already done" in capsys.readouterr().err
    assert cog.stat().st_mtime_ns == stamp
    with xr.open_zarr(out / "gpp.zarr", consolidated=False) as cube:
        before = cube["gpp"].sel(time=["2023-06-01", "2023-06-02"]).values
    assert main(["run", str(spec), "--date", "2023-06-01", "--force"]) == 0
    with xr.open_zarr(out / "gpp.zarr", consolidated=False) as cube:
        after = cube["gpp"].sel(time=["2023-06-01", "2023-06-02"]).values
    np.testing.assert_array_equal(before, after)  # same seed, same day: the same map


def test_a_crash_mid_day_leaves_it_to_the_next_run(
    demo_world, trained_models, trained_downscalers, tmp_path
) -> None:
    from unique_cube.product import store

    spec = _pipeline(demo_world, trained_models, trained_downscalers, tmp_path)
    out = tmp_path / "product"
    original = store.ProductStore._update_catalog

    def crash(self, *args, **kwargs):  # after the Zarr region, before the collection
        raise KeyboardInterrupt

    store.ProductStore._update_catalog = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            main(["run", str(spec), "--date", "2023-06-05"])
    finally:
        store.ProductStore._update_catalog = original
    assert not (out / "state/2023-06-05.json").exists()
    assert main(["run", str(spec), "--date", "2023-06-05"]) == 0
    assert (out / "state/2023-06-05.json").exists()
    collection = json.loads((out / "stac/unique-cube-gpp/collection.json").read_text())
    assert [x["href"] for x in collection["links"] if x["rel"] == "item"] == [
        "./items/2023-06-05.json"
    ]


def test_days_without_enough_modis_are_skipped_with_their_reason(
    demo_world, trained_models, trained_downscalers, tmp_path
) -> None:
    spec = _pipeline(
        demo_world, trained_models, trained_downscalers, tmp_path, max_missing_fraction=0.0,
        max_gap_days=1,
    )  # fmt: skip
    out = tmp_path / "product"
    assert main(["run", str(spec), "--start", "2023-07-10", "--end", "2023-07-12"]) == 0
    log = json.loads(next((out / "runs").glob("*.json")).read_text())
    skipped = {d["day"]: d["reason"] for d in log["days"] if d["status"] == "skipped"}
    assert skipped, "July with a one-day gap limit should lack MODIS somewhere"
    assert all("GPP_M missing" in reason for reason in skipped.values())
    collection = json.loads((out / "stac/unique-cube-gpp/collection.json").read_text())
    assert collection["unique_cube:skipped_days"] == skipped


@pytest.mark.parametrize(
    ("args", "code", "message"),
    # Malformed, impossible and future dates are tested without a world (test_bad_input).
    [(["--date", "2015-06-01"], 4, "outside the inputs' coverage")],
)
def test_days_outside_the_inputs_fail_clearly(
    demo_world, trained_models, trained_downscalers, tmp_path, capsys, args, code, message
) -> None:
    spec = _pipeline(demo_world, trained_models, trained_downscalers, tmp_path)
    assert main(["run", str(spec), *args]) == code
    assert message in capsys.readouterr().err


def test_missing_model_and_unwritable_output_fail_clearly(
    demo_world, trained_models, trained_downscalers, tmp_path, capsys
) -> None:
    spec = _pipeline(demo_world, trained_models, trained_downscalers, tmp_path)
    text = spec.read_text()
    spec.write_text(text.replace(f"{trained_downscalers}/ds", f"{tmp_path}/nowhere"))
    assert main(["run", str(spec), "--date", "2023-06-01"]) == 3
    assert "downscaler_s2.pt does not exist" in capsys.readouterr().err
    blocker = tmp_path / "a-file"  # a folder cannot be made inside a file, even by root
    blocker.write_text("")
    spec.write_text(text.replace(f"output: {tmp_path}/product", f"output: {blocker}/product"))
    assert main(["run", str(spec), "--date", "2023-06-01"]) == 5
    assert "is not writable" in capsys.readouterr().err
    assert blocker.read_text() == ""


def test_korea_pipeline_validates_and_runs_on_the_demo_catalog(
    demo_world, trained_models, trained_downscalers, tmp_path, capsys
) -> None:
    """pipelines/korea-daily.yaml as shipped, with only its catalog, paths, periods and grid
    pointed at the small demo world: the operational configuration runs end to end."""
    import yaml

    korea = Path(__file__).parents[1] / "pipelines" / "korea-daily.yaml"
    assert main(["validate", str(korea)]) == 0
    out = capsys.readouterr().out
    assert "catalog planetary-computer" in out and "EPSG:5179" in out
    world, manifest = demo_world
    spec = yaml.safe_load(korea.read_text())
    spec["catalog"] = "demo"
    spec["serve_world"] = str(world)
    spec["flux"].update(directory=f"{world}/flux", sites=f"{world}/flux/sites.csv")
    spec["gpp"].update(output=str(trained_models),
                       train={"start": "2023-01-01", "end": "2023-12-31"})  # fmt: skip
    spec["grid"] = {"crs": "EPSG:32652", "bounds": manifest["region"]["bbox"], "resolution": 30}
    spec["downscale"].update(output=str(trained_downscalers / "ds"),
                             test={"start": "2023-06-01", "end": "2023-10-31"},
                             reference_days=48)  # the fusion checkpoint's (conftest)  # fmt: skip
    spec["product"]["output"] = str(tmp_path / "product")
    path = tmp_path / "korea-on-demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--date", "2023-08-01"]) == 0
    item = json.loads((tmp_path / "product/stac/unique-cube-gpp/items/2023-08-01.json").read_text())
    assert item["properties"]["unique_cube:samples"] == 8  # the operational ensemble size
