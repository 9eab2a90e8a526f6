"""The daily product (``unique-cube run``): days and backfills of 30 m GPP maps.

``run`` makes days (locks, markers, the run log); ``models`` checks the trained models a day
needs; ``coverage`` checks that the inputs cover a run's days and grid; ``coarse`` computes
GPP_M for a block of days; ``static`` keeps the DEM and land-cover layers per window; ``day``
plans a day and makes it window by window; ``store`` writes the Zarr datacube and the COGs
(``cog``); ``stac`` describes each day as a STAC item.
"""

from unique_cube.product.run import DayResult, parse_day, product_days, run
from unique_cube.product.store import QA_FLAGS, ProductStore

__all__ = ["QA_FLAGS", "DayResult", "ProductStore", "parse_day", "product_days", "run"]
