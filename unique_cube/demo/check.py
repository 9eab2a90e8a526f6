"""The demo world's region as the pipeline sees it."""

from __future__ import annotations

__all__ = ["region_geobox"]


def region_geobox(manifest: dict):
    """The region's 30 m grid (odc-geo GeoBox) from a world manifest."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    left, _bottom, right, top = manifest["region"]["bbox"]
    ny, nx = manifest["region"]["shape"]
    resolution = (right - left) / nx
    return GeoBox((ny, nx), Affine(resolution, 0, left, 0, -resolution, top), manifest["crs"])
