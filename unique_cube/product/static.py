"""The static layers of a product day (DEM, land-cover fractions), kept per window on disk.

:func:`static_for` loads them window by window (each grown by a pixel, so slopes at its edges
are those of the whole grid) into the product's cache, keyed by the grid and the items, so a
backfill reads them once; :func:`align_static` puts a window's layers in a checkpoint's order
and normalisation. Without them (no item, lost reads) days fall back to S1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unique_cube.downscale.conditions import apply_static_normalisation
from unique_cube.downscale.fusion import terrain_features
from unique_cube.errors import CatalogError, DownscaleError, LoadError
from unique_cube.files import write_atomic
from unique_cube.grid import Window
from unique_cube.inputs.reads import lost_reads, use_read_policy
from unique_cube.inputs.static import static_items, static_layers
from unique_cube.product.coarse import lost_read, named_reads, read_owners

__all__ = ["StaticLayers", "align_static", "fusion_terrain", "static_for"]


log = logging.getLogger(__name__)


@dataclass
class StaticLayers:
    """The DEM and land-cover layers of each window's extent, prepared once and kept on disk
    (a window's worth in memory at a time); or why there are none (the S1 fallback)."""

    files: dict[Window, Path]
    items: dict[str, list[str]]
    problem: str = ""

    def layers(self, extent: Window) -> tuple[np.ndarray, list[str]]:
        with np.load(self.files[extent]) as saved:
            return saved["layers"], [str(name) for name in saved["names"]]


#: Bump when what :func:`static_for` keeps changes, so that old files are not taken.
_STATIC_VERSION = 1


def static_for(
    catalog, geobox, extents: list[Window], folder: Path, retries: int = 3
) -> StaticLayers:
    """The static layers of every extent, loaded window by window (each grown by a pixel, so
    slopes at its edges are those of the whole grid) into ``folder``; files made from the
    same items for the same grid are reused."""
    items: dict[str, list[str]] = {}
    try:
        searched = static_items(catalog, geobox, provenance=items)
    except CatalogError as err:
        return StaticLayers({}, items, f"static layers unavailable ({err})")
    key = json.dumps({"grid": [str(geobox.crs), list(geobox.shape), list(geobox.transform)[:6]],
                      "items": items, "version": _STATIC_VERSION}, sort_keys=True)  # fmt: skip
    folder = folder / hashlib.sha256(key.encode()).hexdigest()[:16]
    owners = read_owners([item for found in searched for item in found])
    files: dict[Window, Path] = {}
    for extent in dict.fromkeys(extents):
        path = folder / f"{extent.y0}-{extent.y1}_{extent.x0}-{extent.x1}.npz"
        if not path.exists():
            grown = extent.grown(1, geobox.shape)
            ledger = f"static-{uuid.uuid4().hex}"
            try:
                with use_read_policy(retries=retries, ledger=ledger):
                    layers, names = static_layers(catalog, geobox[grown.slices], searched=searched)
            except (CatalogError, LoadError) as err:
                return StaticLayers({}, items, f"static layers unavailable ({err})")
            lost = [lost_read(event, owners) for event in lost_reads(ledger)]
            if lost:  # holes in the DEM or land cover: the days take the S1 fallback (QA bits)
                why = f"static layers incomplete (reads lost: {named_reads(lost)})"
                return StaticLayers({}, items, why)
            try:
                _save_layers(path, layers[(slice(None), *extent.within(grown))], names)
            except OSError as err:  # a full disk: the days fall back to S1 (and say why)
                return StaticLayers({}, items, f"static layers cannot be kept in {folder} "
                                               f"({err})")  # fmt: skip
        files[extent] = path
    return StaticLayers(files, items)


def _save_layers(path: Path, layers: np.ndarray, names: list[str]) -> None:
    with write_atomic(path) as partial, partial.open("wb") as file:
        np.savez(file, layers=layers, names=np.array(names))


def align_static(static: StaticLayers, extent: Window, info: dict) -> np.ndarray:
    """The static layers of ``extent`` in the checkpoint's order; a land-cover class absent
    there is 0."""
    layers, names = static.layers(extent)
    by_name = dict(zip(names, layers, strict=True))
    missing = [n for n in info["names"] if n not in by_name and not n.startswith("lc_")]
    if missing:
        raise DownscaleError(f"conditioning layer(s) {missing} missing from the static layers")
    extra = [n for n in names if n not in info["names"]]
    if extra:
        log.warning("land-cover classes %s were not in the downscaler's training region; "
                    "they are left out of its conditions", extra)  # fmt: skip
    zeros = np.zeros(layers.shape[1:], dtype="float32")
    stack = np.stack([by_name.get(n, zeros) for n in info["names"]])
    return apply_static_normalisation(stack, info)


def fusion_terrain(static: StaticLayers, extent: Window, ckpt, day, latitude: float):
    """The terrain features of ``extent`` (:func:`~unique_cube.downscale.fusion.
    terrain_features`) with the land-cover classes of the fusion checkpoint, in its order (a
    class absent here is 0)."""
    layers, names = static.layers(extent)
    terrain, terrain_names = terrain_features(layers, names, day, latitude)
    wanted = [n for n in ckpt.fusion["features"] if n.startswith("lc_")]
    by_name = dict(zip(terrain_names, terrain, strict=True))
    extra = [n for n in terrain_names if n.startswith("lc_") and n not in wanted]
    if extra:
        log.warning("land-cover classes %s were not in the fusion downscaler's training "
                    "region; they are left out of its features", extra)  # fmt: skip
    zeros = np.zeros(layers.shape[1:], dtype="float32")
    kept = [n for n in terrain_names if not n.startswith("lc_")] + wanted
    return np.stack([by_name.get(n, zeros) for n in kept]), kept
