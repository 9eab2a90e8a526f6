"""A large-region test bed for the downscaler: synthetic HLS, MODIS, DEM and land cover over a
region as large as asked, with a demo world's reanalysis.

The demo worlds simulate their inputs over their 12 or 24 km region (and the towers' patches)
only; a training region 16 times larger needs inputs there. This bed lays one HLS L30-like
tile over :data:`BOUNDS` (UTM 52N, inside the compact world's domain) and MOD09GA-like items
over it (the tower bed's cheap smooth fields and random cloud:
:func:`unique_cube.demo.tower_bed.build_tower_bed`), publishes the demo world's DEM and
land-cover items with their files filled everywhere (smooth hills; patches of trees,
grass, crops, built-up land and water), and links its ERA5 items, so that the GPP models of
that world make GPP_L and GPP_M there. Memory and throughput measurements only: its
reflectances are not the world's.

    .venv/bin/python benchmarks/region_world.py --world /tmp/w21-world --out /tmp/region-bed
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

#: The compact world's domain holds this region: 1536 x 1536 px at 30 m (46 km), the 16x
#: training region of ``downscaler_training_memory.py``; smaller regions share its corner.
BOUNDS = (324000.0, 4151520.0, 370080.0, 4197600.0)
CRS = "EPSG:32652"
#: HLS every 8 days of June 2023; MODIS daily around them (the gap-filling span each side).
HLS_DATES = [dt.date(2023, 6, 2) + dt.timedelta(days=8 * i) for i in range(4)]
MODIS_DATES = [dt.date(2023, 5, 16) + dt.timedelta(days=i) for i in range(62)]
#: The sources whose items are taken from the demo world: their files filled anew (the DEM,
#: the land cover) or linked (the reanalysis).
FILLED = ("cop-dem-glo-30", "esa-worldcover")
LINKED = {"era5-pds": "era5"}
DEFAULT_BED = Path(tempfile.gettempdir()) / "unique-cube-region-bed"


def build_region_bed(out: Path, world: Path, bounds=BOUNDS, workers: int = 2) -> dict:
    """Build (or reuse) the bed over ``bounds`` in ``out`` with ``world``'s static layers and
    reanalysis; its manifest."""
    import pandas as pd
    from affine import Affine
    from pyproj import Transformer

    from unique_cube.demo.tower_bed import BedTile, build_tower_bed

    left, bottom, right, top = bounds
    shape = (round((top - bottom) / 30), round((right - left) / 30))
    tile = BedTile("T52SCH", CRS, Affine(30.0, 0, left, 0, -30.0, top), shape)
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(
        (left + right) / 2, (bottom + top) / 2
    )
    # One "tower" at the centre: the MODIS items are cut to the cells around it, enough of
    # them (463 m each) to hold the region's sheared outline on the sinusoidal grid.
    sites = pd.DataFrame({"site": ["XX-Reg"], "lat": [lat], "lon": [lon], "igbp": ["MF"]})
    cells = int(1.5 * max(shape) * 30 / 463) | 1
    if (out / "era5").is_symlink():  # ours, from an earlier build: not a foreign file
        (out / "era5").unlink()
    manifest = build_tower_bed(out, sites, HLS_DATES, MODIS_DATES, tiles=[tile],
                               modis_pixels=cells, workers=workers)  # fmt: skip
    stac = out / "stac"
    collections = json.loads((stac / "collections.json").read_text())
    theirs = {c["id"]: c for c in json.loads((world / "stac" / "collections.json").read_text())}
    for collection_id in (*FILLED, *LINKED):
        text = (world / "stac" / f"{collection_id}.json").read_text()
        (stac / f"{collection_id}.json").write_text(text)
        if collection_id in FILLED:
            for feature in json.loads(text)["features"]:
                for asset in feature["assets"].values():
                    if asset["href"].endswith(".tif"):
                        _fill(world / asset["href"], out / asset["href"], collection_id)
        else:
            link = out / LINKED[collection_id]
            if link.is_symlink():
                link.unlink()
            link.symlink_to((world / LINKED[collection_id]).resolve(), target_is_directory=True)
        if all(c["id"] != collection_id for c in collections):
            collections.append(theirs[collection_id])
    (stac / "collections.json").write_text(json.dumps(collections))
    return {**manifest, "region_shape": list(shape), "linked_from": str(world)}


def _fill(template: Path, path: Path, collection_id: str) -> None:
    """A COG on ``template``'s grid filled everywhere: smooth hills (m) for the DEM, patches of
    WorldCover classes for the land cover."""
    import numpy as np
    import rasterio

    if path.exists():
        return
    with rasterio.open(template) as src:
        profile, transform, shape = src.profile, src.transform, src.shape
    cols, rows = np.meshgrid(np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5)
    lon, lat = transform * (cols, rows)  # degrees: both sources are on lon/lat grids
    x, y = lon * 88_000.0, lat * 111_000.0  # about metres, at 37.7 N
    if collection_id == "cop-dem-glo-30":
        data = 250 + 180 * np.sin(x / 3100) * np.cos(y / 4300) + 60 * np.sin(x / 900 + y / 1300)
        data = data.astype(profile["dtype"])
    else:
        noise = np.sin(x / 1700) * np.cos(y / 2300) + 0.5 * np.sin((x + y) / 700)
        classes = np.array([80, 50, 40, 30, 10], dtype="uint8")  # water .. trees
        data = classes[np.digitize(noise, [-1.1, -0.7, -0.1, 0.4])]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile.update(driver="COG", compress="deflate")
    for key in ("blockxsize", "blockysize", "tiled", "interleave"):
        profile.pop(key, None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a built demo world (compact)")
    parser.add_argument("--out", type=Path, default=DEFAULT_BED)
    args = parser.parse_args()
    print(json.dumps(build_region_bed(args.out, args.world), indent=1))


if __name__ == "__main__":
    main()
