"""The embedded demo world: a generated Korea-like region with a known true GPP.

Built up stage by stage: ``terrain`` (relief and land cover) is here; weather, true GPP and
the Planetary-Computer-like publication (COGs, STAC items, flux-tower files) follow.
"""

from __future__ import annotations

from .terrain import PFT, PFT_TO_WORLDCOVER, Terrain, make_terrain

__all__ = ["PFT", "PFT_TO_WORLDCOVER", "Terrain", "make_terrain"]
