"""The embedded demo world: a generated Korea-like region with a known true GPP.

``world`` lays out the region and the flux-tower patches, ``terrain`` makes relief and land
cover, ``weather`` the reanalysis, ``vegetation`` the true canopy and GPP, ``sky`` the clouds
and their shadows, ``hls`` the HLS scenes and their Fmask, ``terra`` and ``modis`` what MODIS
sees, ``towers`` the FLUXNET-style files, ``publish`` the COGs and STAC items, ``build`` runs it
all (``unique-cube demo-world``) and ``serve`` puts it behind a local STAC API.
"""

from __future__ import annotations

from .build import build_world, read_manifest
from .serve import serve_world, served, world_stac_files
from .terrain import PFT, PFT_TO_WORLDCOVER, Terrain, make_terrain
from .world import SIZES, World, make_world

__all__ = [
    "PFT",
    "PFT_TO_WORLDCOVER",
    "SIZES",
    "Terrain",
    "World",
    "build_world",
    "make_terrain",
    "make_world",
    "read_manifest",
    "serve_world",
    "served",
    "world_stac_files",
]
