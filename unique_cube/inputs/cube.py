"""STAC items → a lazy, decoded ``xr.Dataset`` on an explicit GeoBox.

``load`` reads as the pipeline it runs::

    check items and assets → decoding per band (raster:bands, else the catalog)
        → the engine reads the raw assets onto the GeoBox (lazy, float32)
        → nodata → NaN, scale/offset → QA → ``clear`` mask → masked bands with CF attributes

Two engines read the raw assets: odc-stac (the default; :func:`_read`) and stackstac
(:func:`_read_stackstac`). Only that read differs: the decoding, masks, attributes, grid and
time steps are the same, so either engine gives the same Dataset within resampling tolerance.

Nothing is computed: every step is a Dask graph until the caller writes or reduces it.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from unique_cube.config.catalog import ENGINES, QARules, Source
from unique_cube.errors import ConfigError, LoadError
from unique_cube.inputs.items import item_time
from unique_cube.inputs.reads import (
    ReadPolicy,
    ResilientDriver,
    StackstacReader,
    current_read_policy,
)

__all__ = [
    "DEFAULT_CHUNKS",
    "BandDecoding",
    "Decoder",
    "band_decoding",
    "decode_qa",
    "decoder",
    "load",
]


log = logging.getLogger(__name__)


DEFAULT_CHUNKS: Mapping[str, int] = {"time": 1, "y": 1024, "x": 1024}


@dataclass(frozen=True)
class BandDecoding:
    """How the raw numbers of one asset become physical values."""

    asset: str
    """Asset key."""
    scale: float
    """Multiplier (1 when neither the item nor the catalog gives one)."""
    offset: float
    """Added after scaling."""
    nodata: float
    """Raw no-data value; NaN when there is none."""
    data_type: str | None
    """Raw data type from ``raster:bands``, when the item states it."""


def load(
    items: Sequence[pystac.Item],
    source: Source,
    geobox: GeoBox,
    *,
    bands: Sequence[str] | None = None,
    chunks: Mapping[str, int] | None = None,
    groupby: str = "solar_day",
    # how values are resampled onto the GeoBox
    resampling: str = "bilinear",
    # extra outputs
    flags: Sequence[str] = (),
    # how the assets are read
    engine: str | None = None,
    read: ReadPolicy | None = None,
) -> xr.Dataset:
    """Load ``items`` of ``source`` onto ``geobox`` as a lazy Dask-backed Dataset.

    Parameters
    ----------
    items
        STAC items of the source's collection (from :func:`unique_cube.inputs.search.search`).
    source
        The catalog's description of the collection.
    geobox
        Target grid (any CRS: UTM, MODIS sinusoidal, EPSG:4326); the output is exactly on it.
    bands
        Band roles to load (``["red", "nir"]``); default every role of the source.
    chunks
        Dask chunk sizes for ``time``, ``y``, ``x``; default 1 × 1024 × 1024.
    groupby
        How items are merged into time steps: ``"solar_day"`` (one step per local day),
        ``"time"`` or ``"id"``, as odc-stac understands them.
    resampling
        Resampling of data bands (``bilinear``, ``average``, ``nearest`` …); QA and
        categorical bands are always resampled with ``nearest``.
    flags
        QA flag names to add as boolean variables ``qa_<name>`` (e.g. ``["water"]``).
    engine
        ``"odc-stac"`` or ``"stackstac"``; default the source's ``engine`` (odc-stac unless the
        catalog says otherwise). stackstac needs ``proj:`` fields on every item (a CRS:
        ``proj:code``, ``proj:epsg``, ``proj:wkt2`` or ``proj:projjson``; a placement:
        ``proj:transform`` + ``proj:shape``, or ``proj:bbox``), a target grid with an EPSG code
        and ``groupby`` ``solar_day``, ``time`` or ``id``; else a :class:`ConfigError` is
        raised before anything is read.
    read
        Retries, URL re-signing and what a lost read becomes (see :mod:`unique_cube.inputs.reads`);
        default the policy in force (:func:`~unique_cube.inputs.reads.use_read_policy`).
        Both engines honour it.

    Returns
    -------
    xr.Dataset
        One float32 variable per role (NaN for no data and, when the source has QA, for
        pixels that are not clear), a boolean ``clear`` mask for sources with QA, CF attributes
        (``units``, ``long_name``) and the CRS as the ``spatial_ref`` coordinate.
    """
    engine = _engine(source, engine)
    items = list(items)
    decoding = decoder(items, source, bands=bands, flags=flags)
    _check_overlap(items, source, geobox)
    if engine == "stackstac":
        _check_for_stackstac(items, source, decoding.assets, geobox, groupby, resampling)
    raw = decoding.read(items, geobox, chunks=chunks, groupby=groupby, resampling=resampling,
                        read=read, engine=engine)  # fmt: skip
    out = decoding.decode(raw)
    out.attrs.update(
        {
            "source_collection": source.collection,
            "source_description": source.description,
            "groupby": groupby,
            "n_items": len(items),
            "engine": engine,
        }
    )
    return out


def _engine(source: Source, engine: str | None) -> str:
    chosen = source.engine if engine is None else engine
    if chosen not in ENGINES:
        raise ConfigError(f"engine: unknown loader {chosen!r}; known: {', '.join(ENGINES)}")
    return chosen


@dataclass(frozen=True)
class Decoder:
    """How the raw assets of a set of a source's items become its bands (:func:`decoder`).

    :func:`load` is ``decode(read(items, geobox))``; the two steps apart let a caller cut
    pixels from raw cubes (several, on several grids) and decode only those: decoding is
    per pixel, so it gives the same values on any cut of a raw cube."""

    source: Source
    """The catalog's description of the collection."""
    bands: Mapping[str, BandDecoding]
    """Decoding of each band role loaded."""
    qa: Mapping[str, BandDecoding]
    """Decoding of each QA asset."""
    flags: tuple[str, ...] = ()
    """QA flags added as boolean ``qa_<name>`` variables."""

    @property
    def assets(self) -> list[str]:
        """The variables of a raw cube: the bands' assets, then the QA assets."""
        return [d.asset for d in self.bands.values()] + list(self.qa)

    def read(
        self,
        items: Sequence[pystac.Item],
        geobox: GeoBox,
        *,
        chunks: Mapping[str, int] | None = None,
        groupby: str | Callable = "solar_day",
        resampling: str = "bilinear",
        read: ReadPolicy | None = None,
        lazy: bool = True,
        engine: str = "odc-stac",
    ) -> xr.Dataset:
        """The raw assets of ``items`` on ``geobox`` (float32, raw nodata kept; one variable
        per asset of :attr:`assets`): lazy, or read now into memory (``lazy=False``, e.g.
        inside a task; odc-stac only); options as :func:`load`'s, ``groupby`` also odc-stac's
        callable ``(item, parsed, index) -> key``."""
        if engine == "stackstac":
            if not lazy or callable(groupby):
                raise ConfigError("the stackstac engine reads lazily and groups by solar_day "
                                  "or time only")  # fmt: skip
            return _read_stackstac(list(items), self.source, geobox, dict(self.bands),
                                   dict(self.qa), chunks=chunks, groupby=groupby,
                                   resampling=resampling, read=read)  # fmt: skip
        return _read(list(items), self.source, geobox, dict(self.bands), dict(self.qa),
                     chunks=chunks, groupby=groupby, resampling=resampling,
                     read=read, lazy=lazy)  # fmt: skip

    def decode(self, raw: xr.Dataset) -> xr.Dataset:
        """The bands, ``clear`` and flags of a raw cube or of pixels cut from one (any dims)."""
        return _decode(raw, self.source, dict(self.bands), dict(self.qa), self.flags)


def decoder(
    items: Sequence[pystac.Item],
    source: Source,
    *,
    bands: Sequence[str] | None = None,
    flags: Sequence[str] = (),
) -> Decoder:
    """The decoding of ``items`` of ``source`` (``bands`` and ``flags`` as :func:`load`'s):
    the items must have the assets and agree on scale, offset and nodata, else a
    :class:`~unique_cube.errors.LoadError` says which."""
    roles = _select_roles(source, bands)
    items = list(items)
    _check_items(items, source, roles)
    unknown_flags = [f for f in flags if source.qa is None or f not in source.qa.flags]
    if unknown_flags:
        known = ", ".join(source.qa.flags) if source.qa else "none (the source has no QA)"
        raise ConfigError(
            f"flags: unknown QA flag(s) {unknown_flags} for {source.collection}; known: {known}"
        )
    qa_assets = tuple(source.qa.assets) if source.qa is not None else ()
    return Decoder(
        source,
        {role: band_decoding(items, source, role) for role in roles},
        {asset: _qa_decoding(items, source.qa, asset) for asset in qa_assets},
        tuple(flags),
    )


def _read(
    items: list[pystac.Item],
    source: Source,
    geobox: GeoBox,
    decoding: dict[str, BandDecoding],
    qa_decoding: dict[str, BandDecoding],
    *,
    chunks: Mapping[str, int] | None,
    groupby: str | Callable,
    resampling: str,
    read: ReadPolicy | None,
    lazy: bool = True,
) -> xr.Dataset:
    """The raw assets as odc-stac loads them (float32, the raw nodata kept), lazily unless
    ``lazy`` is false: QA and categorical bands resampled with ``nearest``."""
    import odc.stac

    qa_assets = list(qa_decoding)
    data_resampling = "nearest" if source.categorical else resampling
    resampling_by_asset = {d.asset: data_resampling for d in decoding.values()}
    resampling_by_asset.update({a: "nearest" for a in qa_assets})
    stac_cfg = {
        source.collection: {
            "assets": {
                d.asset: {"data_type": d.data_type or "float32", "nodata": d.nodata}
                for d in (*decoding.values(), *qa_decoding.values())
            }
        }
    }
    return odc.stac.load(
        items,
        bands=[d.asset for d in decoding.values()] + qa_assets,
        geobox=geobox,
        chunks=dict(chunks or DEFAULT_CHUNKS) if lazy else None,
        groupby=groupby,
        dtype="float32",
        resampling=resampling_by_asset,
        stac_cfg=stac_cfg,
        fail_on_error=True,
        driver=ResilientDriver(read),
    )


def _read_stackstac(
    items: list[pystac.Item],
    source: Source,
    geobox: GeoBox,
    decoding: dict[str, BandDecoding],
    qa_decoding: dict[str, BandDecoding],
    *,
    chunks: Mapping[str, int] | None,
    groupby: str,
    resampling: str,
    read: ReadPolicy | None,
) -> xr.Dataset:
    """The raw assets as :func:`_read` returns them, read by stackstac: the GeoBox's grid and
    coordinates, one time step per group of items as odc-stac groups them, the items of a step
    merged first-valid (odc-stac's fuser), float32 with NaN for no data.

    Each asset is placed by its ``proj:`` fields, computed here in the target CRS (stackstac
    0.5 reads ``proj:epsg`` only). No data is the file's own nodata tag, which GDAL leaves out
    of the resampling; the declared nodata (``raster:bands``, else the catalog) is masked after
    the warp, before merging. Reads go through :class:`~unique_cube.inputs.reads.StackstacReader`
    under the read policy: retries, re-signing and the ledger as with odc-stac.

    Where values differ from odc-stac: stackstac warps through a WarpedVRT in the asset's own
    data type, so a bilinear or average value of an integer asset is rounded to a whole raw
    number (within half a raw unit × scale of odc-stac's, which warps into float32); and the
    two GDAL warps place pixels within 1/8 of a source pixel of each other (GDAL's approximate
    transformer), so smooth fields differ by up to 1/8 of a source pixel's step.
    """
    from odc.geo.xr import xr_coords

    chunks = {**DEFAULT_CHUNKS, **(chunks or {})}
    groups = _time_groups(items, geobox, groupby)
    ordered = [item for _, members in groups for item in members]
    data_resampling = "nearest" if source.categorical else resampling
    layers = []
    for decodings, how in ((decoding.values(), data_resampling), (qa_decoding.values(), "nearest")):
        if decodings:
            stack = _stack(ordered, list(decodings), geobox, how, chunks, read)
            layers.append(_first_valid(stack, ordered, groups).to_dataset("band"))
    raw = xr.merge(layers).assign_coords(xr_coords(geobox))
    if chunks["time"] != 1:
        raw = raw.chunk({"time": chunks["time"]})
    return raw


def _stack(items: list[pystac.Item], decodings: list[BandDecoding], geobox: GeoBox,
           resampling: str, chunks: Mapping[str, int],
           read: ReadPolicy | None) -> xr.DataArray:  # fmt: skip
    """One ``stackstac.stack`` of ``decodings``' assets on exactly ``geobox`` (time × band × y ×
    x, one step per item, with the item ``id``), the declared nodata as NaN."""
    import stackstac
    from rasterio.enums import Resampling

    crs = geobox.crs
    assets = [d.asset for d in decodings]
    placed = [_placed(item, assets, crs) for item in items]
    reader = functools.partial(StackstacReader, policy=read or current_read_policy())
    stack = stackstac.stack(
        placed,
        assets=assets,
        epsg=crs.epsg,
        resolution=(geobox.affine.a, -geobox.affine.e),
        bounds=tuple(geobox.boundingbox),
        snap_bounds=False,  # the GeoBox's own origin, not one snapped to the resolution
        resampling=Resampling[resampling],
        chunksize=(1, 1, chunks["y"], chunks["x"]),
        dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan),  # stackstac checks np.can_cast(type(fill), dtype)
        rescale=False,  # _decode applies scale/offset, as for odc-stac
        sortby_date=False,  # items come in the order of their time steps
        xy_coords=False,  # the GeoBox's coordinates are assigned afterwards
        properties=False,
        band_coords=False,
        reader=reader,
    )
    spec = stack.attrs["spec"]
    if spec.shape != tuple(geobox.shape) or spec.transform != geobox.affine:
        raise LoadError(
            f"stackstac made a {spec.shape} grid at {tuple(spec.transform)[:6]}, not the "
            f"target {tuple(geobox.shape)} at {tuple(geobox.affine)[:6]}"
        )
    nodata = xr.DataArray([d.nodata for d in decodings], coords={"band": assets}, dims="band")
    return stack.where(nodata.isnull() | (stack != nodata))


def _first_valid(stack: xr.DataArray, ordered: list[pystac.Item],
                 groups: list[tuple[dt.datetime, list[pystac.Item]]]) -> xr.DataArray:  # fmt: skip
    """One step per group: each pixel from the group's first item that has data there."""
    # stackstac leaves out items none of whose assets reaches the grid: find where each
    # item went (its order is kept)
    ids, kept, position = list(stack["id"].values), 0, []
    for item in ordered:
        here = kept < len(ids) and ids[kept] == item.id
        position.append(kept if here else None)
        kept += here
    stack = stack.reset_coords(drop=True).drop_vars("time")
    steps, start = [], 0
    for _, members in groups:
        at = [p for p in position[start : start + len(members)] if p is not None]
        start += len(members)
        if not at:
            steps.append(xr.full_like(stack.isel(time=0), np.nan))
            continue
        step = stack.isel(time=at[0])
        for p in at[1:]:
            step = step.fillna(stack.isel(time=p))
        steps.append(step)
    # the time coordinate as odc-stac makes it (its unit is xarray's choice for datetimes)
    times = xr.DataArray([label for label, _ in groups], dims="time")
    return xr.concat(steps, dim="time").assign_coords(time=times)


def _time_groups(items: list[pystac.Item], geobox: GeoBox,
                 groupby: str) -> list[tuple[dt.datetime, list[pystac.Item]]]:  # fmt: skip
    """Items grouped into time steps as odc-stac groups them: sorted by group, then time and
    id; a step is labelled with its first item's time (UTC, without zone). ``solar_day`` is
    the date at the UTC offset of the grid centre's longitude, in whole hours."""
    if groupby == "solar_day":
        ((lon, _),) = geobox.extent.centroid.to_crs("EPSG:4326").points
        offset = dt.timedelta(hours=int(lon / 15))

        def key(i: int):
            return (item_time(items[i]) + offset).date()
    elif groupby == "time":

        def key(i: int):
            return item_time(items[i])
    else:  # "id": one step per item, in the given order

        def key(i: int):
            return i

    order = sorted(range(len(items)), key=lambda i: (key(i), item_time(items[i]), items[i].id))
    groups = []
    for _, members in itertools.groupby(order, key=key):
        members = [items[i] for i in members]
        groups.append((item_time(members[0]).replace(tzinfo=None), members))
    return groups


_CRS_FIELDS = ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson")


def _proj_fields(item: pystac.Item, asset: str) -> dict[str, Any]:
    """The ``proj:`` fields of an asset: its own, else the item's."""
    fields = {k: v for k, v in item.properties.items() if k.startswith("proj:")}
    fields.update({k: v for k, v in item.assets[asset].extra_fields.items()
                   if k.startswith("proj:")})  # fmt: skip
    return {k: v for k, v in fields.items() if v is not None}


def _proj_crs(fields: Mapping[str, Any]):
    from odc.geo.crs import CRS

    if "proj:code" in fields:
        return CRS(fields["proj:code"])
    if "proj:epsg" in fields:
        return CRS(f"EPSG:{int(fields['proj:epsg'])}")
    if "proj:wkt2" in fields:
        return CRS(fields["proj:wkt2"])
    import pyproj

    return CRS(pyproj.CRS.from_json_dict(fields["proj:projjson"]))


def _placed(item: pystac.Item, assets: list[str], crs) -> dict[str, Any]:
    """The item as stackstac reads it: ``assets`` with their extent in the target ``crs``."""
    placed = {}
    for key in assets:
        fields = json.dumps(_proj_fields(item, key), sort_keys=True)
        asset = item.assets[key]
        placed[key] = {"href": asset.href, "type": asset.media_type,
                       "proj:epsg": crs.epsg, "proj:bbox": list(_extent(fields, crs))}  # fmt: skip
    return {"type": "Feature", "id": item.id, "bbox": item.bbox, "assets": placed,
            "properties": {"datetime": item_time(item).isoformat()}}  # fmt: skip


@functools.lru_cache(maxsize=256)  # the assets of an item, and the tiles of a series, share one
def _extent(proj_fields: str, crs) -> tuple[float, float, float, float]:
    """The bounding box in ``crs`` of an asset placed by its ``proj:`` fields (as JSON)."""
    from affine import Affine
    from odc.geo.geom import box

    fields = json.loads(proj_fields)
    native = _proj_crs(fields)
    if "proj:transform" in fields and "proj:shape" in fields:
        transform = Affine(*fields["proj:transform"][:6])
        extent = GeoBox(tuple(fields["proj:shape"]), transform, native).footprint(crs)
    else:
        west, south, east, north = fields["proj:bbox"][:4]
        extent = box(west, south, east, north, native).to_crs(crs, resolution=(east - west) / 64)
    return tuple(extent.boundingbox)


def _check_for_stackstac(items: list[pystac.Item], source: Source, assets: list[str],
                         geobox: GeoBox, groupby: str, resampling: str) -> None:  # fmt: skip
    """What stackstac needs, checked before anything is read."""
    from rasterio.enums import Resampling

    where = f"engine 'stackstac' for {source.collection}"
    if geobox.crs is None or geobox.crs.epsg is None:
        raise ConfigError(
            f"{where}: the target grid's CRS ({geobox.crs}) has no EPSG code; stackstac "
            "reprojects onto EPSG codes only (use engine 'odc-stac')"
        )
    a = geobox.affine
    if a.b != 0 or a.d != 0 or a.a <= 0 or a.e >= 0:
        raise ConfigError(f"{where}: the target grid is not north-up ({tuple(a)[:6]})")
    if groupby not in ("solar_day", "time", "id"):
        raise ConfigError(f"{where}: groupby {groupby!r}; it groups by solar_day, time or id")
    if resampling not in Resampling.__members__:
        raise ConfigError(f"{where}: unknown resampling {resampling!r}; known: "
                          f"{', '.join(Resampling.__members__)}")  # fmt: skip
    for item in items:
        for asset in assets:
            fields = _proj_fields(item, asset)
            missing = []
            if not any(f in fields for f in _CRS_FIELDS):
                missing.append("a CRS (proj:code, proj:epsg, proj:wkt2 or proj:projjson)")
            if not ({"proj:transform", "proj:shape"} <= fields.keys() or "proj:bbox" in fields):
                missing.append("a placement (proj:transform and proj:shape, or proj:bbox)")
            if missing:
                raise ConfigError(
                    f"{where}: item {item.id!r} lacks {' and '.join(missing)} for asset "
                    f"{asset!r}; stackstac places each asset by these fields (use engine "
                    "'odc-stac' for items without them)"
                )


def _decode(raw: xr.Dataset, source: Source, decoding: dict, qa_decoding: dict,
            flags: Sequence[str]) -> xr.Dataset:  # fmt: skip
    """Bands scaled, no data → NaN, the QA decoded into ``clear`` (which masks the bands) and
    the asked ``qa_<flag>`` layers."""
    clear = None
    out = xr.Dataset(coords=raw.coords)
    decoded = {role: _decode_band(raw[dec.asset], dec) for role, dec in decoding.items()}
    if source.qa is not None:
        qa_layers = [_mask_nodata(raw[a], dec.nodata) for a, dec in qa_decoding.items()]
        clear = decode_qa(qa_layers, source.qa)
        # A clear observation needs its bands too: QA can say "clear" over band fill
        # (MODIS state flags outside the swath, a band missing from one item).
        attrs = dict(clear.attrs)
        for values in decoded.values():
            clear = clear & values.notnull()
        attrs["long_name"] = attrs["long_name"].replace("QA has data", "QA and bands have data")
        clear = clear.rename("clear")
        clear.attrs = attrs  # exactly these: xarray keeps the raw bands' attrs (nodata) in `&`
        out["clear"] = clear
        for name in flags:
            out[f"qa_{name}"] = _flag_any(qa_layers, source.qa, name)
    for role, dec in decoding.items():
        values = decoded[role]
        if clear is not None:
            values = values.where(clear)
        values.attrs = _band_attrs(source, role, dec)
        out[role] = values
    return out


def _select_roles(source: Source, bands: Sequence[str] | None) -> list[str]:
    if source.format != "cog":
        raise LoadError(
            f"collection {source.collection!r} is a {source.format} source (one store per "
            "variable); cube.load reads raster (COG) assets only"
        )
    if bands is None:
        return list(source.bands)
    if isinstance(bands, str):
        bands = [bands]
    unknown = [b for b in bands if b not in source.bands]
    if unknown:
        raise ConfigError(
            f"bands: unknown role(s) {', '.join(unknown)} for {source.collection}; "
            f"it has {', '.join(source.bands)}"
        )
    if not bands:
        raise ConfigError(
            f"bands: an empty list; {source.collection} has {', '.join(source.bands)}"
        )
    return list(bands)


def _check_items(items: list[pystac.Item], source: Source, roles: list[str]) -> None:
    if not items:
        raise LoadError(
            f"no items to load for {source.collection}: the search found nothing "
            "(an empty list would give an empty cube)"
        )
    needed = {source.bands[r].asset: f"role {r!r}" for r in roles}
    if source.qa is not None:
        needed.update({a: "QA" for a in source.qa.assets})
    for item in items:
        if item.collection_id not in (None, source.collection):
            raise LoadError(
                f"item {item.id!r} belongs to collection {item.collection_id!r}, "
                f"not {source.collection!r}"
            )
        for asset, what in needed.items():
            if asset not in item.assets:
                raise LoadError(
                    f"item {item.id!r} of {source.collection} has no asset {asset!r} ({what}); "
                    f"its assets are {', '.join(sorted(item.assets))}"
                )


def _check_overlap(items: list[pystac.Item], source: Source, geobox: GeoBox) -> None:
    footprint = geobox.extent.to_crs("EPSG:4326")
    if not any(_item_footprint(it).intersects(footprint) for it in items):
        west, south, east, north = footprint.boundingbox
        raise LoadError(
            f"none of the {len(items)} items of {source.collection} overlaps the target grid "
            f"(lon {west:.4f}..{east:.4f}, lat {south:.4f}..{north:.4f}, {geobox.crs})"
        )


def _item_footprint(item: pystac.Item) -> Geometry:
    if item.geometry:
        return Geometry(item.geometry, "EPSG:4326")
    if item.bbox:
        from odc.geo.geom import box

        return box(*item.bbox[:4], "EPSG:4326")
    raise LoadError(f"item {item.id!r} has neither geometry nor bbox: cannot place it")


def _raster_band(item: pystac.Item, asset: str) -> Mapping[str, Any]:
    bands = item.assets[asset].extra_fields.get("raster:bands") or [{}]
    return bands[0]


def band_decoding(items: Sequence[pystac.Item], source: Source, role: str) -> BandDecoding:
    """Scale, offset and nodata of a band role: the items' ``raster:bands``, else the catalog.

    All items must agree: a mosaic of differently scaled items cannot be decoded after fusing.
    """
    band = source.bands[role]
    found: dict[tuple[float, float, float, str | None], str] = {}
    for item in items:
        rb = _raster_band(item, band.asset)
        scale = rb.get("scale", band.scale)
        offset = rb.get("offset", band.offset)
        nodata = rb.get("nodata", band.nodata)
        key = (
            1.0 if scale is None else float(scale),
            0.0 if offset is None else float(offset),
            math.nan if nodata is None else float(nodata),
            rb.get("data_type"),
        )
        found.setdefault(key, item.id)
    if len(found) > 1:
        versions = "; ".join(f"{k[:3]} in {v}" for k, v in found.items())
        raise LoadError(
            f"items of {source.collection} disagree on scale/offset/nodata of asset "
            f"{band.asset!r} ({role}): {versions}"
        )
    ((scale, offset, nodata, data_type),) = found
    return BandDecoding(band.asset, scale, offset, nodata, data_type)


def _qa_decoding(items: Sequence[pystac.Item], qa: QARules | None, asset: str) -> BandDecoding:
    assert qa is not None
    rb = _raster_band(items[0], asset)
    nodata = rb.get("nodata", qa.nodata)
    return BandDecoding(
        asset, 1.0, 0.0, math.nan if nodata is None else float(nodata), rb.get("data_type")
    )


def _mask_nodata(raw: xr.DataArray, nodata: float) -> xr.DataArray:
    # ±inf in a float COG is no data too: no band or QA value of a source is infinite, and
    # an inf left in would survive every NaN-aware mean into GPP.
    valid = np.isfinite(raw)
    if not math.isnan(nodata):
        valid = valid & (raw != nodata)
    return raw.where(valid)


def _decode_band(raw: xr.DataArray, dec: BandDecoding) -> xr.DataArray:
    values = _mask_nodata(raw, dec.nodata)
    if dec.scale != 1.0 or dec.offset != 0.0:
        values = values * np.float32(dec.scale) + np.float32(dec.offset)
        values = values.where(np.isfinite(values))  # a scale that overflows float32
    return values.astype("float32")


def _band_attrs(source: Source, role: str, dec: BandDecoding) -> dict[str, Any]:
    band = source.bands[role]
    attrs = {
        "units": band.units,
        "long_name": band.long_name or role,
        "source_asset": dec.asset,
        "scale_applied": dec.scale,
        "offset_applied": dec.offset,
    }
    if source.categorical:
        attrs["flag_values"] = list(source.classes)
        attrs["flag_meanings"] = " ".join(source.classes.values())
    return attrs


def _field(qa: xr.DataArray, flag: Any) -> xr.DataArray:
    # Integer arithmetic on the float32 QA (exact below 2**24): the bit field's value.
    q = qa.fillna(0).astype("uint32")
    return (q // np.uint32(2**flag.offset)) % np.uint32(2**flag.length)


def _flag_any(qa_layers: Sequence[xr.DataArray], rules: QARules, name: str) -> xr.DataArray:
    flag = rules.flags[name]
    hits = [(_field(q, flag).isin(list(flag.values))) & q.notnull() for q in qa_layers]
    out = hits[0]
    for h in hits[1:]:
        out = out | h
    out.attrs = {"long_name": flag.description or name, "units": "1"}
    return out


def decode_qa(qa_layers: Sequence[xr.DataArray], rules: QARules) -> xr.DataArray:
    """``True`` where every QA layer has data and none of the ``not_clear`` flags is set."""
    clear = None
    for qa in qa_layers:
        ok = qa.notnull()
        for name in rules.not_clear:
            flag = rules.flags[name]
            ok = ok & ~_field(qa, flag).isin(list(flag.values))
        clear = ok if clear is None else clear & ok
    assert clear is not None
    clear = clear.rename("clear")
    clear.attrs = {
        "long_name": "clear-sky observation (QA has data and no "
        + ", ".join(rules.not_clear)
        + ")",
        "units": "1",
    }
    return clear
