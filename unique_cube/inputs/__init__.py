"""Inputs: STAC items → lazy, Dask-backed xarray cubes on an explicit grid.

``search`` (items of one source, area and period; retries, signing, de-duplication) →
``cube.load`` (odc-stac or stackstac onto a GeoBox: scale/offset, nodata, QA → ``clear``;
never computes) through the resilient readers of ``reads`` → ``indices`` (NDVI, EVI …),
``weather`` (daily reanalysis on a grid or at points), ``static`` (DEM and land-cover layers),
``terrain`` (the GPP models' DEM terms at tower windows and on grids, and the reanalysis's own
elevation); ``flux`` reads the tower files in their common formats, which are not STAC. A new
input source is a catalog entry, plus a decoder here if its bands need one.
"""

from unique_cube.inputs.cube import load
from unique_cube.inputs.flux import read_flux, read_flux_dir, read_sites
from unique_cube.inputs.indices import INDICES, add_indices
from unique_cube.inputs.items import deduplicate, filter_cloud_cover, item_time
from unique_cube.inputs.search import RetryPolicy, open_catalog, search
from unique_cube.inputs.weather import at_points, daily_weather, on_geobox, weather_for

__all__ = [
    "INDICES",
    "RetryPolicy",
    "add_indices",
    "at_points",
    "daily_weather",
    "deduplicate",
    "filter_cloud_cover",
    "item_time",
    "load",
    "on_geobox",
    "open_catalog",
    "read_flux",
    "read_flux_dir",
    "read_sites",
    "search",
    "weather_for",
]
