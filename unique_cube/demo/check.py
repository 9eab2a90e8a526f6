"""Read a served demo world back through the STAC API, as the pipeline reads the Planetary
Computer: catalog search → lazy cube on the region's 30 m grid → load one day."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["region_geobox", "search_and_load_day"]


def region_geobox(manifest: dict):
    """The region's 30 m grid (odc-geo GeoBox) from a world manifest."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    left, _bottom, right, top = manifest["region"]["bbox"]
    ny, nx = manifest["region"]["shape"]
    resolution = (right - left) / nx
    return GeoBox((ny, nx), Affine(resolution, 0, left, 0, -resolution, top), manifest["crs"])


def search_and_load_day(
    world_dir: str | Path,
    manifest: dict,
    *,
    day: str | None = None,
    port: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Serve the world, find a day (default: the clearest HLS scene of the last year), search
    the HLS and MODIS sources for it through ``catalogs/demo.yaml`` and load both onto the
    region's grid. Returns what was found and loaded (counts, clear fractions, mean NDVI)."""
    from ..catalog import search
    from ..config import load_catalog
    from ..cube import load
    from ..indices import ndvi
    from ..maps import lonlat_bbox
    from .serve import serve_world

    say = progress or (lambda _text: None)
    geobox = region_geobox(manifest)
    bbox = lonlat_bbox(geobox)
    report: dict = {"region_shape": list(geobox.shape), "bbox": [round(v, 5) for v in bbox]}
    with serve_world(world_dir, port=port) as server:
        catalog = load_catalog("demo").with_url(server.url)
        report["stac_api"] = server.url
        if day is None:
            last_year = manifest["end"][:4]
            scenes = search(
                "hls-l30", bbox, f"{last_year}-05-01/{last_year}-09-30", catalog=catalog
            )
            best = min(scenes, key=lambda item: item.properties["eo:cloud_cover"])
            day = best.datetime.date().isoformat()
        dt.date.fromisoformat(day)
        report["date"] = day
        for name in ("hls-l30", "modis-sr"):
            started = time.perf_counter()
            items = search(name, bbox, day, catalog=catalog)
            cube = load(items, catalog.source(name), geobox)
            loaded = cube.compute()
            index = ndvi(loaded)
            clear = float(loaded["clear"].mean())
            report[name] = {
                "collection": catalog.source(name).collection,
                "items": [item.id for item in items],
                "dims": {k: int(v) for k, v in loaded.sizes.items()},
                "clear_fraction": round(clear, 3),
                "mean_ndvi": None if clear == 0 else round(float(np.nanmean(index.values)), 3),
                "seconds": round(time.perf_counter() - started, 2),
            }
            say(f"{name}: {len(items)} item(s) on {day}, cube {dict(loaded.sizes)}, "
                f"clear {clear:.0%}")  # fmt: skip
    return report
