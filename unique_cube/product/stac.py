"""A product day as a STAC item, and the product's collection.

Items carry the day's COG assets with checksums and sizes, the projection of each grid, the
processing extension and the day's provenance (input item ids, never their signed URLs; the
hashes of the models). The Zarr datacube is an asset of every item.

A product day is a local day (``gpp.utc_offset_hours`` east of UTC, the day of its
meteorology). Its item's ``start_datetime``/``end_datetime`` are that day's bounds in UTC and
its ``datetime`` the local noon in UTC, so a tool that labels an item by one instant (odc-stac's
time axis, a STAC API's ``datetime`` filter) puts it inside its own day, not the day before.

Each COG asset says how to read its pixels (``raster:bands``: data type, nodata, unit, scale
and offset; the same in the GeoTIFF through :func:`cog_band`), and ``qa`` its bits
(``classification:bitfields``), all from the variables' one definition
(:mod:`unique_cube.product.variables`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path

from unique_cube.files import sha256_file
from unique_cube.product.cog import Band
from unique_cube.product.variables import (
    COARSE_VARIABLES,
    COG_TYPE,
    COLLECTION_ID,
    FINE_COGS,
    QA_FLAGS,
    QA_PATH_MASK,
    VARIABLES,
)
from unique_cube.version import __version__

__all__ = [
    "cog_band",
    "day_item",
    "file_checksum",
    "local_day",
    "product_collection",
    "qa_bitfields",
    "raster_band",
    "root_catalog",
    "with_items",
]

_EXTENSIONS = [
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "https://stac-extensions.github.io/version/v1.2.0/schema.json",
]

_STAMP = "%Y-%m-%dT%H:%M:%SZ"


def local_day(day: dt.date, utc_offset_hours: float) -> tuple[dt.datetime, ...]:
    """The local day ``day`` in UTC: its first second, its noon and its last second."""
    start = dt.datetime.combine(day, dt.time(), dt.UTC) - dt.timedelta(hours=utc_offset_hours)
    return start, start + dt.timedelta(hours=12), start + dt.timedelta(days=1, seconds=-1)


def day_item(pipeline, store, day, cogs, provenance: dict, details: dict, hashes: dict,
             version: int = 1) -> dict:  # fmt: skip
    """The day's STAC item: assets with checksums, processing and provenance; no asset URL
    of the inputs (they may be signed), only their item ids. ``version``: the how-manieth
    making of the day (STAC version extension; from 2 on, a ``predecessor-version`` link to
    the one it supersedes, kept by :meth:`ProductStore.commit`)."""
    made = f"{dt.datetime.now(dt.UTC):{_STAMP}}"
    geobox, coarse = store.geobox, store.coarse
    extent = geobox.extent.to_crs("EPSG:4326")
    start, noon, end = local_day(day, pipeline.gpp.utc_offset_hours)
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
            **_band_fields(name, _metres(grid)),
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
        "stac_extensions": _EXTENSIONS,
        "id": f"{COLLECTION_ID}-{day.isoformat()}",
        "collection": COLLECTION_ID,
        "geometry": extent.json,
        "bbox": [round(v, 6) for v in extent.boundingbox],
        "properties": {
            "datetime": f"{noon:{_STAMP}}",
            "start_datetime": f"{start:{_STAMP}}",
            "end_datetime": f"{end:{_STAMP}}",
            "unique_cube:local_day": day.isoformat(),
            "processing:level": "L4",
            "processing:software": {"unique-cube": __version__},
            "processing:datetime": made,
            "created": made,
            "updated": made,
            "version": str(version),
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
            *(
                [
                    {
                        "rel": "predecessor-version",
                        "type": "application/geo+json",
                        "href": os.path.relpath(store.version_path(day, version - 1), item_dir),
                    }
                ]
                if version > 1
                else []
            ),
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
        "stac_extensions": _EXTENSIONS,
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
            name: {
                "type": COG_TYPE,
                "roles": ["data"],
                "title": attrs["long_name"],
                **_band_fields(name),
            }
            for name, (_, _, attrs) in {**VARIABLES, **COARSE_VARIABLES}.items()
        },
        "links": [],
    }


def with_items(collection: dict, items: list[Path]) -> dict:
    """The collection linking ``items`` (the item files, sorted by day), its temporal extent
    from the first one's ``start_datetime`` to the last one's ``end_datetime``."""
    collection = dict(collection)
    collection["links"] = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        {"rel": "self", "href": "./collection.json", "type": "application/json"},
    ] + [
        {"rel": "item", "href": f"./items/{path.name}", "type": "application/geo+json"}
        for path in items
    ]
    if items:
        first, last = (json.loads(path.read_text()) for path in (items[0], items[-1]))
        start = first.get("properties", {}).get("start_datetime")
        end = last.get("properties", {}).get("end_datetime")
        if start and end:  # an item not made by day_item (no span) leaves the extent as is
            collection["extent"]["temporal"]["interval"] = [[start, end]]
    return collection


def cog_band(name: str) -> Band:
    """The band of the product's COG ``name`` as the GeoTIFF names it: the variable's name,
    its unit, and its CF ``long_name`` (``standard_name``, QA flags) as band metadata."""
    attrs = {**VARIABLES, **COARSE_VARIABLES}[name][2]
    tags = {key: " ".join(map(str, value)) if isinstance(value, list) else value
            for key, value in attrs.items() if key != "units"}  # fmt: skip
    return Band(name, attrs.get("units", ""), tags=tags)


def raster_band(name: str, resolution: float | None = None) -> dict:
    """The ``raster:bands`` entry of the product's COG ``name`` (``resolution``: its pixel
    size in metres, when known)."""
    dtype, nodata = FINE_COGS[name][:2] if name in FINE_COGS else COARSE_VARIABLES[name][:2]
    band = cog_band(name)
    entry = {
        "data_type": dtype,
        "nodata": "nan" if isinstance(nodata, float) and math.isnan(nodata) else nodata,
        "sampling": "area",
        **({"unit": band.units} if band.units else {}),
        **({"spatial_resolution": resolution} if resolution is not None else {}),
    }
    if dtype.startswith("float"):  # flags have no scale
        entry |= {"scale": band.scale, "offset": band.offset}
    return entry


def _metres(grid) -> float | None:
    """The pixel size of ``grid`` in metres; ``None`` on a grid in degrees."""
    return abs(grid.resolution.x) if grid.crs.units[0] in ("metre", "m") else None


def _band_fields(name: str, resolution: float | None = None) -> dict:
    """An asset's ``raster:bands``, and the ``qa`` asset's ``classification:bitfields``."""
    bitfields = {"classification:bitfields": qa_bitfields()} if name == "qa" else {}
    return {"raster:bands": [raster_band(name, resolution)], **bitfields}


#: What each QA bit says, for readers of the item (the bits themselves are QA_FLAGS).
_QA_MEANINGS = {
    "ddpm_s2": "S2 conditional diffusion downscaler (GPP_M, DEM, land cover)",
    "ddpm_s1": "S1 conditional diffusion downscaler (GPP_M alone)",
    "bilinear": "GPP_M interpolated bilinearly (no downscaler)",
    "fusion": "fusion of the last clear 30 m GPP (HLS) and the GPP_M change since",
    "gpp_l_clear": "the day's own clear HLS overpass (its 30 m GPP)",
    "gpp_m_gap_filled": "GPP_M inputs interpolated in time between clear MODIS days at most "
                        "the model's gap_fill_days apart",
    "gpp_m_long_gap_filled": "GPP_M inputs interpolated across a longer gap (up to "
                             "product.max_gap_days)",
    "gpp_m_neighbour_filled": "GPP_M taken from the nearest coarse pixel",
    "gpp_m_out_of_range": "GPP_M inputs outside the model's training range",
    "coarse_consistency_corrected": "shifted to agree with GPP_M on its 480 m block",
    "input_lost": "an input read of this pixel was lost; made through the fallback chain",
    "no_reference": "fusion without a clear 30 m reference within reference_days",
    "fusion_input_out_of_range": "a fusion feature outside its training range",
    "final_inputs_differ": "a final day's pixel made from inputs its near-real-time version "
                           "could not have: GPP_M filled from a later MODIS day, or a 30 m "
                           "reference after the day",
}  # fmt: skip


def qa_bitfields() -> list[dict]:
    """The ``qa`` bits as ``classification:bitfields``: bits 0-2 the path that made the pixel
    (0: no value), each higher bit one flag."""
    paths = {name: bit for name, bit in QA_FLAGS.items() if bit <= QA_PATH_MASK}
    fields = [{
        "name": "path", "offset": 0, "length": QA_PATH_MASK.bit_length(),
        "description": "which path produced the pixel",
        "classes": [{"value": 0, "name": "no_value", "description": "no value", "nodata": True}]
                   + [{"value": value, "name": name, "description": _QA_MEANINGS[name]}
                      for name, value in paths.items()],
    }]  # fmt: skip
    for name, bit in QA_FLAGS.items():
        if bit > QA_PATH_MASK:
            fields.append({
                "name": name, "offset": bit.bit_length() - 1, "length": 1,
                "description": _QA_MEANINGS[name],
                "classes": [{"value": 1, "name": name, "description": _QA_MEANINGS[name]}],
            })  # fmt: skip
    return fields


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
