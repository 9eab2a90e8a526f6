"""Near-real-time and final days on the product path (`unique-cube run --mode`, `unique-cube
update`) on a copy of the small demo world whose catalog an HLS item reaches late: an NRT day
reads nothing after it, a late item re-makes exactly the days that could use it (the others
stay byte for byte), a final day is a new version of the day with its predecessor kept."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import downscale_sections, small_pipeline
from test_daily import cluster  # noqa: F401 (one Dask cluster for the module's runs)
from test_fusion_product import PRODUCT as FUSION_PRODUCT

from unique_cube.cli import main
from unique_cube.config.pipeline import load_pipeline
from unique_cube.errors import CatalogError
from unique_cube.inputs.stac_server import free_port
from unique_cube.product.update import update
from unique_cube.product.variables import QA_FLAGS

pytestmark = pytest.mark.integration

#: Final days with the nearest reference on either side (not the default): what reads most
#: after the day, so what the late-input and superseding checks below need.
PRODUCT = FUSION_PRODUCT + "final_after_days: 16\nfinal_reference: nearest\n"

HLS = "hls2-l30.json"


@pytest.fixture(scope="module")
def late_world(demo_world, trained_models, trained_downscalers, tmp_path_factory):
    """A copy of the small world whose catalog lacks one HLS item of June (restored by the
    test that plays its late arrival), and a fusion pipeline on it."""
    world, manifest = demo_world
    tmp = tmp_path_factory.mktemp("late")
    copy = tmp / "world"
    shutil.copytree(world, copy)
    collection = json.loads((copy / "stac" / HLS).read_text())
    june = [f for f in collection["features"]
            if "2023-06-05" <= f["properties"]["datetime"][:10] <= "2023-06-10"]  # fmt: skip
    assert june, "an HLS overpass between June 5 and 10 in the small world"
    late = june[0]
    collection["features"].remove(late)
    (copy / "stac" / HLS).write_text(json.dumps(collection))
    spec = tmp / "pipeline.yaml"
    spec.write_text(small_pipeline(copy, trained_models, downscale_sections(
        copy, manifest, trained_downscalers, PRODUCT.format(out=tmp / "product"))))  # fmt: skip
    return spec, tmp / "product", copy, late


def _dates(world: Path) -> dict[str, tuple[str, str]]:
    """Every item of the world's catalog: id → (start, end) as UTC ISO stamps."""
    out = {}
    for path in (world / "stac").glob("*.json"):
        if path.name == "collections.json":
            continue
        for item in json.loads(path.read_text())["features"]:
            p = item["properties"]
            out[item["id"]] = (p.get("start_datetime") or p["datetime"],
                               p.get("end_datetime") or p["datetime"])  # fmt: skip
    return out


def _files(out: Path, day: str) -> dict[str, str]:
    """The digests of a day's own files: its COGs, item and marker."""
    y, m, d = day.split("-")
    paths = [*sorted((out / "cogs" / y / m / d).glob("*.tif")),
             out / "stac" / "unique-cube-gpp" / "items" / f"{day}.json",
             out / "state" / f"{day}.json"]  # fmt: skip
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_nrt_days_read_nothing_after_them_and_a_late_item_remakes_only_its_days(
    late_world, capsys
) -> None:
    spec, out, world, late = late_world
    days = [f"2023-06-{d:02d}" for d in range(4, 13)]
    argv = ["run", str(spec), "--start", days[0], "--end", days[-1], "--mode", "nrt"]
    assert main(argv) == 0
    dates = _dates(world)
    for day in days:
        end_of_day = f"{dt.date.fromisoformat(day) + dt.timedelta(days=1)}T00:00:00" + "+09:00"
        limit = dt.datetime.fromisoformat(end_of_day)
        marker = json.loads((out / "state" / f"{day}.json").read_text())
        item = json.loads((out / "stac" / "unique-cube-gpp" / "items" / f"{day}.json").read_text())
        assert marker["mode"] == "nrt" and item["properties"]["unique_cube:mode"] == "nrt"
        recorded = marker["inputs"]
        assert recorded["hls-l30"] is not None and recorded["modis-sr"], "inputs recorded"
        for source, ids in item["properties"]["unique_cube:inputs"].items():
            if source in recorded:  # the dated inputs (not the DEM and land cover)
                assert set(ids) <= set(recorded[source]), f"{day}: {source} read, not recorded"
        for source, ids in recorded.items():
            for iid in ids:
                start, end = (dt.datetime.fromisoformat(s) for s in dates[iid])
                if source == "era5":  # a month of hours: only those up to the day are read
                    assert start < limit, f"{day} (NRT) reads {iid} of {dates[iid]}"
                else:  # a granule or scene of a (UTC) day, the day the product files it under
                    assert end.date() <= dt.date.fromisoformat(day), f"{day} (NRT) reads {iid}"
    before = {day: _files(out, day) for day in days}

    # The HLS item arrives late: the days from its date on are re-made, the others untouched.
    collection = json.loads((world / "stac" / HLS).read_text())
    collection["features"].append(late)
    (world / "stac" / HLS).write_text(json.dumps(collection))
    capsys.readouterr()
    assert main(["update", str(spec), "--since", "30", "--as-of", "2023-06-13"]) == 0
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    arrived = late["properties"]["datetime"][:10]
    affected = [d for d in days if d >= arrived]
    assert said["changed"] == affected and said["counts"] == {"done": len(affected)}
    for day in days:
        now = _files(out, day)
        if day in affected:
            assert now != before[day], f"{day} uses the late item: re-made"
            item = json.loads(
                (out / "stac" / "unique-cube-gpp" / "items" / f"{day}.json").read_text()
            )
            assert item["properties"]["version"] == "2"
            assert late["id"] in json.loads((out / "state" / f"{day}.json").read_text())[
                "inputs"]["hls-l30"]  # fmt: skip
        else:
            assert now == before[day], f"{day} could not use the late item: untouched"
    # A second update finds nothing to do.
    assert main(["update", str(spec), "--since", "30", "--as-of", "2023-06-13"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["changed"] == []


def test_final_days_supersede_nrt_ones_and_say_what_differs(late_world, capsys) -> None:
    spec, out, _, _ = late_world
    day = "2023-06-06"
    # Too early for final: a clear error, nothing written.
    before = _files(out, day) if (out / "state" / f"{day}.json").exists() else None
    code = main(["run", str(spec), "--date", day, "--mode", "final", "--as-of", "2023-06-15"])
    assert code != 0
    assert "final_after_days (16)" in capsys.readouterr().err
    if before is not None:
        assert _files(out, day) == before
    # The daily job a month later: yesterday as NRT, and every NRT day due made final.
    assert main(["run", str(spec), "--date", "2023-06-24", "--finalise",
                 "--as-of", "2023-06-25"]) == 0  # fmt: skip
    log = json.loads(sorted((out / "runs").glob("*.json"))[-1].read_text())
    modes = {d["day"]: d.get("mode") for d in log["days"] if d["status"] == "done"}
    assert modes["2023-06-24"] == "nrt"
    due = [d for d in modes if d != "2023-06-24"]
    assert due and all(modes[d] == "final" for d in due)
    assert all(d <= "2023-06-09" for d in due)  # 16 days before June 25 at the latest
    items = out / "stac" / "unique-cube-gpp" / "items"
    item = json.loads((items / f"{day}.json").read_text())
    assert item["properties"]["unique_cube:mode"] == "final"
    links = {link["rel"]: link["href"] for link in item["links"]}
    kept = json.loads((items / links["predecessor-version"]).read_text())
    assert kept["properties"]["unique_cube:mode"] == "nrt"
    assert kept["properties"]["deprecated"] is True
    with xr.open_zarr(out / "gpp.zarr", consolidated=False) as cube:
        qa = cube["qa"].sel(time=day).values
    assert (qa & QA_FLAGS["final_inputs_differ"]).any(), "a reference or a gap from after"
    assert (np.asarray(qa) & 7).all()  # every pixel made
    entry = next(d for d in log["days"] if d["day"] == day)
    assert entry["written"] and entry["hours_after_day"] > 0


def test_a_catalog_that_fails_during_the_check_stops_the_update_first(late_world) -> None:
    spec, out, _, _ = late_world
    if not list((out / "state").glob("*.json")):  # run alone: one day to check
        assert main(["run", str(spec), "--date", "2023-06-05", "--mode", "nrt"]) == 0
    files = sorted(p for p in out.rglob("*") if p.is_file() and "runs" not in p.parts)
    before = {p: p.read_bytes() for p in files}
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    pipeline = dataclasses.replace(load_pipeline(spec), stac_url=down)
    with pytest.raises(CatalogError, match="nothing was re-made"):
        update(pipeline, 30, today=dt.date(2023, 6, 13))
    assert {p: p.read_bytes() for p in files} == before
