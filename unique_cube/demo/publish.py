"""Publishing the demo world as the Planetary Computer publishes its collections.

COGs (GDAL's COG driver: internal tiles, overviews, nodata) and STAC items with the collection
ids, asset keys, ``eo:bands``/``raster:bands``, ``proj:*`` fields and id patterns of
``hls2-l30``, ``modis-09GA-061``, ``cop-dem-glo-30``, ``esa-worldcover`` and ``era5-pds``.
Asset hrefs are ``file://`` URIs (pystac would resolve a bare path against the API's URL).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from unique_cube.product.cog import write_cog
from unique_cube.version import __version__

__all__ = [
    "CogJob",
    "collection",
    "era5_item",
    "hls_item",
    "modis_item",
    "stac_item",
    "static_item",
    "write_cog",
    "write_cogs",
    "write_item_collection",
]

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
ZARR_TYPE = "application/vnd+zarr"
_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
]
VIEW_EXTENSION = "https://stac-extensions.github.io/view/v1.0.0/schema.json"
HLS_ASSETS = {
    "coastal": ("B01", "Coastal Aerosol", 0.44),
    "blue": ("B02", "Blue", 0.48),
    "green": ("B03", "Green", 0.56),
    "red": ("B04", "Red", 0.65),
    "nir": ("B05", "NIR Narrow", 0.86),
    "swir16": ("B06", "SWIR 1", 1.6),
    "swir22": ("B07", "SWIR 2", 2.2),
}
MODIS_ASSETS = {
    "sur_refl_b01_1": ("red", 0.645, "Surface Reflectance Band 1 (620-670 nm)"),
    "sur_refl_b02_1": ("nir", 0.858, "Surface Reflectance Band 2 (841-876 nm)"),
    "sur_refl_b03_1": ("blue", 0.469, "Surface Reflectance Band 3 (459-479 nm)"),
    "sur_refl_b04_1": ("green", 0.555, "Surface Reflectance Band 4 (545-565 nm)"),
    "sur_refl_b05_1": (None, 1.24, "Surface Reflectance Band 5 (1230-1250 nm)"),
    "sur_refl_b06_1": ("swir16", 1.64, "Surface Reflectance Band 6 (1628-1652 nm)"),
    "sur_refl_b07_1": ("swir22", 2.13, "Surface Reflectance Band 7 (2105-2155 nm)"),
}

#: A COG to write: (path, array, crs, transform as 6 numbers, nodata, overview resampling).
CogJob = tuple[str, np.ndarray, str, tuple[float, ...], float | None, str]


def write_cogs(jobs: list[CogJob]) -> int:
    """Write several COGs (a unit of work for a process pool); returns the bytes written."""
    size = 0
    for path, array, crs, transform, nodata, resampling in jobs:
        write_cog(path, array, crs, transform, nodata, resampling)
        size += Path(path).stat().st_size
    return size


def _footprint(crs: str, transform, shape: tuple[int, int]) -> tuple[dict, list[float]]:
    from odc.geo.geobox import GeoBox

    extent = GeoBox(shape, transform, crs).extent.to_crs("EPSG:4326")
    bbox = [round(v, 6) for v in extent.boundingbox]
    return extent.json, bbox


def _timestamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stac_item(
    item_id: str,
    collection_id: str,
    crs: str,
    transform,
    shape: tuple[int, int],
    properties: dict,
    assets: dict,
    footprint: dict | None = None,
) -> dict:
    """A STAC item whose geometry, bbox and ``proj:*`` fields come from its grid, or whose
    geometry is ``footprint`` (GeoJSON in degrees: where its rasters hold data)."""
    geometry, bbox = _footprint(crs, transform, shape)
    if footprint is not None:
        import shapely

        geometry = footprint
        bbox = [round(v, 6) for v in shapely.geometry.shape(footprint).bounds]
    proj = {"proj:epsg": int(crs.split(":")[1])} if crs.startswith("EPSG:") else {"proj:wkt2": crs}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": _EXTENSIONS,
        "id": item_id,
        "collection": collection_id,
        "geometry": geometry,
        "bbox": bbox,
        "links": [],
        "properties": {
            **properties,
            **proj,
            "proj:shape": list(shape),
            "proj:transform": list(transform)[:6],
        },
        "assets": assets,
    }


def _cog_asset(href: str, title: str, eo_band: dict) -> dict:
    return {"href": href, "type": COG_TYPE, "roles": ["data"], "title": title,
            "eo:bands": [eo_band]}  # fmt: skip


def hls_item(
    tile: str,
    when: dt.datetime,
    platform: str,
    cloud_cover: float,
    hrefs: Mapping[str, str],
    crs: str,
    transform,
    shape: tuple[int, int],
) -> dict:
    """A ``hls2-l30`` item (id ``HLS.L30.<tile>.<YYYYDDD>T<HHMMSS>.v2.0``)."""
    item_id = f"HLS.L30.{tile}.{when:%Y%j}T{when:%H%M%S}.v2.0"
    assets = {
        key: _cog_asset(
            hrefs[key], title, {"name": key, "common_name": role, "center_wavelength": wavelength}
        )
        for role, (key, title, wavelength) in HLS_ASSETS.items()
    }
    assets["Fmask"] = _cog_asset(hrefs["Fmask"], "Fmask", {"name": "Fmask"})
    properties = {
        "datetime": _timestamp(when),
        "platform": platform,
        "instruments": ["oli", "tirs"],
        "eo:cloud_cover": cloud_cover,
        "gsd": 30,
    }
    return stac_item(item_id, "hls2-l30", crs, transform, shape, properties, assets)


def modis_item(
    day: dt.date,
    h: int,
    v: int,
    hrefs: Mapping[str, str],
    crs: str,
    transform,
    shape: tuple[int, int],
    state_transform,
    state_shape: tuple[int, int],
    produced: dt.datetime,
    footprint: dict | None = None,
    view: Mapping[str, float] | None = None,
) -> dict:
    """A ``modis-09GA-061`` item (Terra daily surface reflectance, one sinusoidal tile);
    ``footprint``: where the tile holds data, when not all of it does (the demo world);
    ``view``: ``view:*`` properties (STAC view extension) of the day's geometry, for people
    (the product reads no angle from items)."""
    item_id = f"MOD09GA.A{day:%Y%j}.h{h:02d}v{v:02d}.061.{produced:%Y%j%H%M%S}"
    assets = {}
    for key, (common, wavelength, title) in MODIS_ASSETS.items():
        band = {"name": key, "center_wavelength": wavelength}
        if common:
            band["common_name"] = common
        assets[key] = {
            "href": hrefs[key],
            "type": COG_TYPE,
            "roles": ["data", "reflectance"],
            "title": title,
            "eo:bands": [band],
            "raster:bands": [
                {"data_type": "int16", "spatial_resolution": 500, "scale": 0.0001, "nodata": -28672}
            ],
        }
    assets["state_1km_1"] = {
        "href": hrefs["state_1km_1"],
        "type": COG_TYPE,
        "roles": ["data"],
        "title": "Reflectance Data State QA (1 km)",
        "raster:bands": [{"data_type": "uint16", "spatial_resolution": 1000}],
        "proj:shape": list(state_shape),
        "proj:transform": list(state_transform)[:6],
    }
    start = dt.datetime.combine(day, dt.time())
    properties = {
        "datetime": None,
        "start_datetime": _timestamp(start),
        "end_datetime": _timestamp(start + dt.timedelta(days=1) - dt.timedelta(microseconds=1)),
        "platform": "terra",
        "instruments": ["modis"],
        "created": _timestamp(produced),
        "updated": _timestamp(produced),
        "modis:horizontal-tile": h,
        "modis:vertical-tile": v,
        "modis:tile-id": f"510{h:02d}0{v:02d}",
        **(view or {}),
    }
    item = stac_item(item_id, "modis-09GA-061", crs, transform, shape, properties, assets,
                     footprint)  # fmt: skip
    if view:
        item["stac_extensions"] = [*item["stac_extensions"], VIEW_EXTENSION]
    return item


def static_item(
    item_id: str,
    collection_id: str,
    asset_key: str,
    href: str,
    raster_band: dict,
    when: dt.datetime,
    crs: str,
    transform,
    shape: tuple[int, int],
    properties: dict | None = None,
) -> dict:
    """A one-asset item of a static layer (``cop-dem-glo-30`` / ``esa-worldcover``)."""
    assets = {
        asset_key: {
            "href": href,
            "type": COG_TYPE,
            "roles": ["data"],
            "raster:bands": [raster_band],
        }
    }
    props = {"datetime": _timestamp(when), **(properties or {})}
    return stac_item(item_id, collection_id, crs, transform, shape, props, assets)


def era5_item(month: dt.date, hrefs: Mapping[str, str], bbox: list[float], grid: dict,
              span: tuple[dt.datetime, dt.datetime] | None = None) -> dict:  # fmt: skip
    """An ``era5-pds`` item: one month, one Zarr store per variable (``xarray:open_kwargs``);
    ``span``: its first and last hourly stamps when it does not hold the whole month."""
    start = dt.datetime(month.year, month.month, 1)
    end = dt.datetime(month.year + month.month // 12, month.month % 12 + 1, 1)
    if span is not None:
        start, end = span[0], span[1] + dt.timedelta(microseconds=1)
    w, s, e, n = bbox
    assets = {
        key: {
            "href": href,
            "type": ZARR_TYPE,
            "roles": ["data"],
            "xarray:open_kwargs": {"chunks": {}, "engine": "zarr", "consolidated": True},
        }
        for key, href in hrefs.items()
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/datacube/v2.0.0/schema.json"],
        "id": f"era5-pds-{month:%Y-%m}-fc",
        "collection": "era5-pds",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
        },
        "bbox": bbox,
        "links": [],
        "properties": {
            "datetime": None,
            "start_datetime": _timestamp(start),
            "end_datetime": _timestamp(end - dt.timedelta(microseconds=1)),
            "era5:kind": "fc",
            "cube:dimensions": grid,
        },
        "assets": assets,
    }


def collection(collection_id: str, description: str, items: list[dict]) -> dict:
    """A collection whose extent covers ``items``."""
    bboxes = np.array([it["bbox"] for it in items])
    times = sorted(
        t
        for it in items
        for t in (
            it["properties"].get("datetime"),
            it["properties"].get("start_datetime"),
            it["properties"].get("end_datetime"),
        )
        if t
    )
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection_id,
        "description": description,
        "license": "CC-BY-4.0",
        "links": [],
        "extent": {
            "spatial": {
                "bbox": [[*bboxes[:, :2].min(axis=0).tolist(), *bboxes[:, 2:].max(axis=0).tolist()]]
            },
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "keywords": ["unique-cube demo world", "synthetic"],
        "providers": [{"name": f"unique-cube {__version__} demo world", "roles": ["producer"]}],
    }


def write_item_collection(path: Path, items: list[dict]) -> Path:
    """Write items as one GeoJSON FeatureCollection (what ``rustac serve`` loads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path
