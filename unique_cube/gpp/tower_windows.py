"""Tower windows of a source at the real scale: each tower on the grid of its own tile.

Towers stand in dozens of UTM zones and MODIS sinusoidal tiles, in both hemispheres; one cube
over their bounding box on one zone's grid would be a hemisphere reprojected. Here each
tower's window is cut on the grid of the tile that holds it (:func:`tower_batches`): the
towers of a tile whose windows share a block of its COGs are a batch, read together from one
small load spanning only their windows, so every COG block a tower needs is read once; a
window reaching past its tile's edge is filled from the neighbouring tile's items. A task
reads a batch's raw windows for a few weeks of days (the load held in memory only inside
it), and the windows of all towers are decoded together (:func:`tower_features`): the graph
grows with towers × days, never with the area between the towers.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from affine import Affine
from dask.delayed import Delayed
from odc.geo.geobox import GeoBox

from unique_cube.config.catalog import Source
from unique_cube.errors import LoadError
from unique_cube.gpp.features import FEATURE_INDICES
from unique_cube.grid import lonlat_pixels
from unique_cube.inputs.cube import Decoder, decoder
from unique_cube.inputs.indices import add_indices
from unique_cube.inputs.items import item_time
from unique_cube.inputs.reads import ReadPolicy, current_read_policy

__all__ = ["TowerBatch", "grid_window", "item_grid", "tower_batches", "tower_features"]


@dataclass(frozen=True)
class TowerBatch:
    """Towers whose windows are cut from one small load on one source grid."""

    geobox: GeoBox
    """The grid of the tile that holds the towers, cut to their windows (and a margin)."""
    sites: tuple[int, ...]
    """The towers, as positions in the site table."""
    rows: np.ndarray
    """Each tower's pixel row in ``geobox``."""
    cols: np.ndarray
    """Each tower's pixel column in ``geobox``."""
    items: tuple
    """The items whose footprints meet ``geobox``: the tile's own, and at a tile's edge the
    neighbouring tile's, which fill the part of a window beyond the edge."""


def item_grid(item) -> GeoBox:
    """The pixel grid of an item (its finest band's), from its ``proj:*`` fields."""
    from odc.stac import parse_item

    grids = parse_item(item).geoboxes()
    if not grids:
        raise LoadError(f"item {item.id!r} states no grid (proj:* fields): cannot place a tower")
    return GeoBox(grids[0].shape, grids[0].transform, grids[0].crs)


def grid_window(grid: GeoBox, rows: np.ndarray, cols: np.ndarray, margin: int):
    """``grid`` cut to the pixels ``rows``, ``cols`` and ``margin`` pixels around them (also
    past the grid's own edge), and their rows and columns in the cut."""
    r0, c0 = int(rows.min()) - margin, int(cols.min()) - margin
    shape = (int(rows.max()) + margin + 1 - r0, int(cols.max()) + margin + 1 - c0)
    cut = GeoBox(shape, grid.transform * Affine.translation(c0, r0), grid.crs)
    return cut, rows - r0, cols - c0


def tower_batches(
    items: Sequence,
    sites: pd.DataFrame,
    *,
    window: int = 3,
    block: int = 512,
    collection: str = "",
) -> list[TowerBatch]:
    """Which towers of ``sites`` are cut from which load of ``items``.

    A tower stands on the grid of the tile that holds it: of the tiles (distinct item grids)
    whose items' footprints contain it, the one it stands deepest inside, so a tower in two
    overlapping tiles takes the one that holds its whole window. The towers of one tile whose
    windows share a ``block`` × ``block`` block of the tile's grid (the COGs' internal tiles)
    are one batch, read from one load spanning only their windows; a tower apart has a load
    of its own. So no load spans more than a tile (nor, but for a chain of towers across
    blocks, more than a block), none reads a block another reads, and the loads grow with
    the towers, not with the area between them.

    A tower outside every item's footprint is an error naming it."""
    from shapely import STRtree
    from shapely.geometry import Point, shape

    tree = STRtree([shape(item.geometry) for item in items])
    lon, lat = sites["lon"].to_numpy("float64"), sites["lat"].to_numpy("float64")
    grids: dict[GeoBox, int] = {}  # each distinct grid, numbered as first met
    crss: dict[str, object] = {}  # one CRS object per CRS: it finds its EPSG code once
    grid_of: dict[int, int] = {}  # item → its grid's number, for the items towers meet
    candidates: list[list[int]] = []
    for name, x, y in zip(sites["site"], lon, lat, strict=True):
        hits = sorted(int(i) for i in tree.query(Point(x, y), predicate="intersects"))
        if not hits:
            raise LoadError(f"site {name} ({y:.4f} N, {x:.4f} E) lies outside every "
                            f"{collection or 'source'} item found")  # fmt: skip
        for i in hits:
            if i not in grid_of:
                grid = item_grid(items[i])
                grid = GeoBox(grid.shape, grid.transform, crss.setdefault(str(grid.crs), grid.crs))
                grid_of[i] = grids.setdefault(grid, len(grids))
        candidates.append(sorted({grid_of[i] for i in hits}))

    # Each tower's pixel on each grid that holds it; its home: where it is deepest inside.
    home = np.full(len(sites), -1)
    rows, cols = np.zeros(len(sites), "int64"), np.zeros(len(sites), "int64")
    depth = np.full(len(sites), np.iinfo("int64").min)
    for grid, number in grids.items():
        here = np.array([t for t, c in enumerate(candidates) if number in c], dtype="int64")
        r, c = lonlat_pixels(lon[here], lat[here], grid)
        inside = np.minimum.reduce([r, c, grid.shape[0] - 1 - r, grid.shape[1] - 1 - c])
        better = inside > depth[here]  # ties keep the grid met first
        home[here[better]], depth[here[better]] = number, inside[better]
        rows[here[better]], cols[here[better]] = r[better], c[better]

    batches = []
    for grid, number in grids.items():
        towers = np.flatnonzero(home == number)
        for group in _share_blocks(rows[towers], cols[towers], window // 2, block):
            group = towers[group]
            cut, r, c = grid_window(grid, rows[group], cols[group], margin=window)
            extent = cut.extent.to_crs("EPSG:4326").geom
            near = sorted(int(i) for i in tree.query(extent, predicate="intersects"))
            batches.append(TowerBatch(cut, tuple(int(t) for t in group), r, c,
                                      tuple(items[i] for i in near)))  # fmt: skip
    return batches


def _share_blocks(rows: np.ndarray, cols: np.ndarray, half: int, block: int) -> list[np.ndarray]:
    """Groups (positions in ``rows``) of the towers of one grid whose windows (``half``
    pixels around them) touch a common ``block`` × ``block`` block. A group spanning more than
    a block (a chain of towers across a tile) is split by the block each tower stands in:
    a load stays the size of a block."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(rows):
        return []
    corners = [((rows + dr) // block, (cols + dc) // block)
               for dr in (-half, half) for dc in (-half, half)]  # fmt: skip
    _, block_ids = np.unique(np.concatenate([np.stack(c, axis=1) for c in corners]), axis=0,
                             return_inverse=True)  # fmt: skip
    member = np.tile(np.arange(len(rows)), len(corners))
    touches = coo_matrix((np.ones(len(member)), (member, block_ids.ravel()))).tocsr()
    _, labels = connected_components(touches @ touches.T, directed=False)
    groups = []
    for label in np.unique(labels):
        group = np.flatnonzero(labels == label)
        if np.ptp(rows[group]) >= block or np.ptp(cols[group]) >= block:
            _, own = np.unique(np.stack([rows[group] // block, cols[group] // block], axis=1),
                               axis=0, return_inverse=True)  # fmt: skip
            groups += [group[own.ravel() == k] for k in np.unique(own)]
        else:
            groups.append(group)
    return groups


def tower_features(
    items: Sequence,
    source: Source,
    sites: pd.DataFrame,
    *,
    window: int = 3,
    chunks: int = 512,
) -> xr.Dataset:
    """Lazy (time, site) features: per index the mean over clear pixels of a ``window`` ×
    ``window`` window around each tower, and ``n_clear``, the number of clear pixels.

    Each window is cut on the grid of the tile that holds its tower, read with the towers of
    that tile whose windows share a ``chunks`` × ``chunks`` block (:func:`tower_batches`):
    one task reads a batch's raw windows for a few weeks of days; the windows of all towers
    are then decoded together. ``time`` is the union of the towers' days (each tower's are
    the local, solar, days of its items, as odc-stac's ``solar_day`` groups them at the
    batch's centre); a day without an item at a tower has NaN indices and ``n_clear`` 0
    there. Sites are in the order of ``sites``."""
    if not len(items):
        raise LoadError(f"no {source.collection} items for the towers")
    decoding = decoder(items, source)  # one decoding for every tower: the items must agree
    batches = tower_batches(items, sites, window=window, block=chunks,
                            collection=source.collection)  # fmt: skip
    policy = current_read_policy()  # the tasks read where no `use_read_policy` is in force
    reads = [r for batch in batches for r in _window_reads(decoding, batch, window, policy)]
    days = pd.DatetimeIndex(sorted({day for r in reads for day in r.days}))
    raw = _gather(reads, days, len(sites), window * window, decoding.assets)
    names = list(FEATURE_INDICES)
    windows = add_indices(decoding.decode(raw), names)  # names the band a source lacks
    out = xr.Dataset({name: windows[name].mean("pixel", skipna=True) for name in names})
    out["n_clear"] = windows["clear"].sum("pixel").astype("int16")
    out = out.transpose("time", "site")
    out = out.assign_coords(time=days.as_unit("ns"), site=sites["site"].to_numpy())
    out.attrs = {"source_collection": source.collection, "window_pixels": window,
                 "window_metres": window * abs(float(batches[0].geobox.resolution.x))}  # fmt: skip
    return out


#: Raw bytes one read task holds at most (a batch's load × its days), and its days at most.
_READ_BYTES = 64 * 2**20
_READ_DAYS = 32
#: Days per chunk of the windows of all towers, decoded together.
_DAYS_PER_CHUNK = 256


@dataclass(frozen=True)
class _WindowRead:
    """A task reading a batch's raw windows on some of its days."""

    task: Delayed
    """Computes (day, site, pixel, asset) float32 raw values."""
    sites: np.ndarray
    """The batch's towers (positions in the site table)."""
    days: tuple[pd.Timestamp, ...]
    """Its days, in order."""


def _window_reads(
    decoding: Decoder, batch: TowerBatch, window: int, policy: ReadPolicy
) -> list[_WindowRead]:
    """The read tasks of a batch: its items grouped by local day as odc-stac's
    ``solar_day`` groups them (the nominal time shifted by the whole hours of the load's mid
    longitude), up to :data:`_READ_DAYS` days a task, fewer on a large load."""
    from dask import delayed

    ((lon, _),) = batch.geobox.extent.centroid.to_crs("EPSG:4326").points
    shift = dt.timedelta(hours=int(lon / 15))
    day_of = {item.id: pd.Timestamp((item_time(item) + shift).date()) for item in batch.items}
    days = sorted(set(day_of.values()))
    per_day = 4 * len(decoding.assets) * batch.geobox.shape[0] * batch.geobox.shape[1]
    step = min(_READ_DAYS, max(1, _READ_BYTES // per_day))
    half = window // 2
    offsets = np.arange(-half, half + 1)
    rows = (batch.rows[:, None, None] + offsets[None, :, None]).repeat(window, axis=2)
    cols = (batch.cols[:, None, None] + offsets[None, None, :]).repeat(window, axis=1)
    pixels = (rows.reshape(len(batch.sites), -1), cols.reshape(len(batch.sites), -1))
    reads = []
    for first in range(0, len(days), step):
        span = days[first : first + step]
        these = {item_id: day for item_id, day in day_of.items() if span[0] <= day <= span[-1]}
        items = [item for item in batch.items if item.id in these]
        task = delayed(_read_windows, pure=False)(decoding, items, batch.geobox, pixels,
                                                  these, policy)  # fmt: skip
        reads.append(_WindowRead(task, np.asarray(batch.sites), tuple(span)))
    return reads


def _read_windows(decoding: Decoder, items: list, geobox: GeoBox, pixels: tuple,
                  day_of: dict, policy: ReadPolicy) -> np.ndarray:  # fmt: skip
    """Read ``items`` onto ``geobox`` now, grouped by ``day_of`` (item id → day), and cut
    the windows' ``pixels`` (rows, columns: site × pixel): (day, site, pixel, asset)."""
    raw = decoding.read(items, geobox, groupby=functools.partial(_day_key, day_of),
                        read=policy, lazy=False)  # fmt: skip
    rows, cols = pixels
    return np.stack([raw[asset].values[:, rows, cols] for asset in decoding.assets], axis=-1)


def _day_key(day_of: dict, item, parsed, index) -> pd.Timestamp:
    """odc-stac's group key of an item: its day (``day_of``, by item id)."""
    return day_of[item.id]


def _gather(reads: list[_WindowRead], days: pd.DatetimeIndex, n_sites: int, n_pixels: int,
            assets: Sequence[str]) -> xr.Dataset:  # fmt: skip
    """The raw windows of every read as one (site, pixel, time) variable per asset on
    ``days``, NaN (no data) where a tower has no item; a task per :data:`_DAYS_PER_CHUNK`
    days gathers the reads of its days."""
    from dask import delayed

    where = {day: i for i, day in enumerate(days)}
    blocks = []
    for start in range(0, len(days), _DAYS_PER_CHUNK):
        stop = min(start + _DAYS_PER_CHUNK, len(days))
        parts = []
        for r in reads:
            at = np.array([where[day] for day in r.days])
            mine = np.flatnonzero((at >= start) & (at < stop))
            if len(mine):
                parts.append((r.task, r.sites, mine, at[mine] - start))
        shape = (n_sites, n_pixels, stop - start, len(assets))
        block = delayed(_place_reads, pure=False)(parts, shape)
        blocks.append(da.from_delayed(block, shape, dtype="float32"))
    windows = da.concatenate(blocks, axis=2)
    return xr.Dataset({asset: (("site", "pixel", "time"), windows[..., k])
                       for k, asset in enumerate(assets)})  # fmt: skip


def _place_reads(parts: list, shape: tuple[int, ...]) -> np.ndarray:
    """A block of all towers' raw windows (site, pixel, day, asset) from the reads of its
    days: ``parts`` of (values, sites, the read's days, the block's days)."""
    out = np.full(shape, np.nan, dtype="float32")
    for values, sites, taken, placed in parts:
        # (day, site, pixel, asset) → (site, day, pixel, asset), as the indexing lays it out
        out[sites[:, None], :, placed[None, :]] = values[taken].transpose(1, 0, 2, 3)
    return out
