"""A product day as a STAC item, and the product's collection.

Items carry the day's COG assets with checksums and sizes, the projection of each grid, the
processing extension and the day's provenance (input item ids, never their signed URLs; the
hashes of the models). The Zarr datacube is an asset of every item.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from unique_cube.files import sha256_file
from unique_cube.product.variables import COARSE_VARIABLES, COG_TYPE, COLLECTION_ID, VARIABLES
from unique_cube.version import __version__

__all__ = [
    "day_item",
    "file_checksum",
    "product_collection",
    "root_catalog",
    "with_items",
]


def day_item(pipeline, store, day, cogs, provenance: dict, details: dict, hashes: dict) -> dict:
    """The day's STAC item: assets with checksums, processing and provenance; no asset URL
    of the inputs (they may be signed), only their item ids."""
    geobox, coarse = store.geobox, store.coarse
    extent = geobox.extent.to_crs("EPSG:4326")
    offset = dt.timedelta(hours=pipeline.gpp.utc_offset_hours)
    start = dt.datetime.combine(day, dt.time()) - offset
    item_dir = store.item_path(day).parent
    assets = {}
    for name, path in cogs.items():  # where each COG is now (before the day's commit)
        grid = coarse if name == "gpp_m" else geobox
        assets[name] = {
            "href": os.path.relpath(store.cog(day, name), item_dir),
            "type": COG_TYPE,
            "roles": ["data"] if name != "qa" else ["metadata", "data-mask"],
            "title": {**VARIABLES, **COARSE_VARIABLES}[name][2]["long_name"],
            "file:checksum": file_checksum(path),
            "file:size": path.stat().st_size,
            "proj:shape": list(grid.shape),
            "proj:transform": list(grid.transform)[:6],
        }
    assets["datacube"] = {
        "href": os.path.relpath(store.zarr, item_dir),
        "type": "application/vnd+zarr",
        "roles": ["data"],
        "title": "Zarr v3 datacube of all days (this day is one time step)",
    }
    crs = str(geobox.crs)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        ],
        "id": f"{COLLECTION_ID}-{day.isoformat()}",
        "collection": COLLECTION_ID,
        "geometry": extent.json,
        "bbox": [round(v, 6) for v in extent.boundingbox],
        "properties": {
            "datetime": None,
            "start_datetime": f"{start:%Y-%m-%dT%H:%M:%SZ}",
            "end_datetime": f"{start + dt.timedelta(days=1, seconds=-1):%Y-%m-%dT%H:%M:%SZ}",
            "unique_cube:local_day": day.isoformat(),
            "processing:level": "L4",
            "processing:software": {"unique-cube": __version__},
            "processing:datetime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "processing:lineage": (
                "GPP_M: LightGBM on MODIS indices and reanalysis weather (480 m); "
                f"30 m: {_LINEAGE.get(details['scheme'], details['scheme'])} ensemble of "
                f"{pipeline.product.samples}, mean and spread"
            ),
            **{f"unique_cube:{k}": v for k, v in details.items()},
            "unique_cube:inputs": provenance,
            "unique_cube:models": {name: {"sha256": digest} for name, digest in hashes.items()},
            **({"proj:epsg": geobox.crs.epsg} if geobox.crs.epsg else {"proj:wkt2": crs}),
            "proj:shape": list(geobox.shape),
            "proj:transform": list(geobox.transform)[:6],
        },
        "assets": assets,
        "links": [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "self", "href": f"./{day.isoformat()}.json", "type": "application/geo+json"},
        ],
    }


_LINEAGE = {
    "fusion": "fusion of the last clear GPP_L per pixel (HLS/Landsat model) and the GPP_M "
              "change since, a LightGBM mean plus a calibrated conditional diffusion residual; "
              "clear pixels of the day's own HLS overpass are its GPP_L;",
    "s2": "S2 conditional diffusion (GPP_M, DEM, land cover)",
    "s1": "S1 conditional diffusion (GPP_M)",
    "bilinear": "bilinear GPP_M (no downscaler)",
}  # fmt: skip


def file_checksum(path: Path) -> str:
    """The STAC file extension's ``file:checksum``: a SHA2-256 multihash in hex."""
    return "1220" + sha256_file(path)


def product_collection(geobox, version: str) -> dict:
    bbox = [round(v, 6) for v in geobox.extent.to_crs("EPSG:4326").boundingbox]
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        ],
        "id": COLLECTION_ID,
        "title": "Daily gross primary productivity at 30 m (unique_cube)",
        "description": (
            "Daily GPP at 30 m: GPP from MODIS (LightGBM, 480 m) downscaled by a conditional "
            "diffusion model (ensemble mean, its spread and a QA layer)."
        ),
        "license": "proprietary",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[None, None]]}},
        "summaries": {"processing:software": [{"unique-cube": version}]},
        "item_assets": {
            name: {"type": COG_TYPE, "roles": ["data"], "title": attrs["long_name"]}
            for name, (_, _, attrs) in {**VARIABLES, **COARSE_VARIABLES}.items()
        },
        "links": [],
    }


def with_items(collection: dict, days: list[str]) -> dict:
    """The collection linking the items of ``days`` (``YYYY-MM-DD``, sorted), its temporal
    extent theirs."""
    collection = dict(collection)
    collection["links"] = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        {"rel": "self", "href": "./collection.json", "type": "application/json"},
    ] + [
        {"rel": "item", "href": f"./items/{day}.json", "type": "application/geo+json"}
        for day in days
    ]
    if days:
        collection["extent"]["temporal"]["interval"] = [
            [f"{days[0]}T00:00:00Z", f"{days[-1]}T23:59:59Z"]
        ]
    return collection


def root_catalog() -> dict:
    """The product folder's root catalog: one child, the collection."""
    return {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "unique-cube",
        "description": "unique_cube products",
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            {"rel": "self", "href": "./catalog.json", "type": "application/json"},
            {"rel": "child", "href": f"./{COLLECTION_ID}/collection.json",
             "type": "application/json"},
        ],
    }  # fmt: skip
