"""The product's variables: names, dtypes, fill values, CF attributes and the QA flags.

Shared by the Zarr datacube and the COGs (``store``) and their STAC description (``stac``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COARSE_VARIABLES",
    "COG_TYPE",
    "COLLECTION_ID",
    "FINE_COGS",
    "GPP_STANDARD_NAME",
    "GPP_UNITS",
    "QA_FLAGS",
    "QA_PATH_MASK",
    "VARIABLES",
]

COLLECTION_ID = "unique-cube-gpp"

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

GPP_STANDARD_NAME = "gross_primary_productivity_of_biomass_expressed_as_carbon"

GPP_UNITS = "g m-2 day-1"

#: QA bits of each 30 m pixel. Bits 0-1 say which path produced the value (0: none).
QA_FLAGS = {
    "ddpm_s2": 1,
    "ddpm_s1": 2,
    "bilinear": 3,
    "gpp_m_gap_filled": 4,
    "gpp_m_long_gap_filled": 8,
    "gpp_m_neighbour_filled": 16,
    "gpp_m_out_of_range": 32,
    "coarse_consistency_corrected": 64,
    "input_lost": 128,
}

QA_PATH_MASK = 3

#: The 30 m variables: dtype, fill value and CF attributes.
VARIABLES = {
    "gpp": ("float32", np.nan, {
        "standard_name": GPP_STANDARD_NAME, "units": GPP_UNITS,
        "long_name": "daily gross primary productivity at 30 m (ensemble mean)",
    }),
    "gpp_sd": ("float32", np.nan, {
        "units": GPP_UNITS,
        "long_name": "ensemble standard deviation of gpp (uncertainty)",
    }),
    # No _FillValue: 0 means "no value" through the flags, and readers keep the integers.
    "qa": ("uint8", None, {
        "long_name": "quality: which path produced the pixel and how complete its inputs were",
        "flag_masks": [3, 3, 3, 4, 8, 16, 32, 64, 128],
        "flag_values": [1, 2, 3, 4, 8, 16, 32, 64, 128],
        "flag_meanings": " ".join(QA_FLAGS),
    }),
}  # fmt: skip

COARSE_VARIABLES = {
    "gpp_m": ("float32", np.nan, {
        "standard_name": GPP_STANDARD_NAME, "units": GPP_UNITS,
        "long_name": "daily GPP from MODIS (GPP_M) on the coarse grid",
    }),
}  # fmt: skip

#: The 30 m COGs of a day: dtype, nodata and overview resampling.
FINE_COGS = {
    "gpp": ("float32", float("nan"), "average"),
    "gpp_sd": ("float32", float("nan"), "average"),
    "qa": ("uint8", 0, "nearest"),
}
