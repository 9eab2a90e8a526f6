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
    "STORE_LAYOUT",
    "VARIABLES",
]

COLLECTION_ID = "unique-cube-gpp"

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

GPP_STANDARD_NAME = "gross_primary_productivity_of_biomass_expressed_as_carbon"

GPP_UNITS = "g m-2 day-1"

#: QA bits of each 30 m pixel. Bits 0-2 say which path produced the value (0: none):
#: the S2/S1 diffusion downscalers, bilinear GPP_M, the fusion downscaler, or the day's own
#: clear GPP_L (a clear HLS overpass). The other bits flag how complete the inputs were.
QA_FLAGS = {
    "ddpm_s2": 1,
    "ddpm_s1": 2,
    "bilinear": 3,
    "fusion": 4,
    "gpp_l_clear": 5,
    "gpp_m_gap_filled": 8,
    "gpp_m_long_gap_filled": 16,
    "gpp_m_neighbour_filled": 32,
    "gpp_m_out_of_range": 64,
    "coarse_consistency_corrected": 128,
    "input_lost": 256,
    "no_reference": 512,
    "fusion_input_out_of_range": 1024,
    "final_inputs_differ": 2048,
}

QA_PATH_MASK = 7

#: The product store's layout; a store of another layout is refused (layout 1: uint8 QA
#: with a 2-bit path).
STORE_LAYOUT = 2

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
    "qa": ("uint16", None, {
        "long_name": "quality: which path produced the pixel and how complete its inputs were",
        "flag_masks": [QA_PATH_MASK if v <= QA_PATH_MASK else v for v in QA_FLAGS.values()],
        "flag_values": list(QA_FLAGS.values()),
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
    "qa": ("uint16", 0, "nearest"),
}
