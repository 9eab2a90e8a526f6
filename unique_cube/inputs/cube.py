"""STAC items → a lazy, decoded ``xr.Dataset`` on an explicit GeoBox.

``load`` reads as the pipeline it runs::

    check items and assets → decoding per band (raster:bands, else the catalog)
        → odc.stac.load onto the GeoBox (lazy, float32) → nodata → NaN, scale/offset
        → QA → ``clear`` mask → masked bands with CF attributes

Nothing is computed: every step is a Dask graph until the caller writes or reduces it.
"""

from __future__ import annotations

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

from unique_cube.config.catalog import QARules, Source
from unique_cube.errors import ConfigError, LoadError
from unique_cube.inputs.reads import ReadPolicy, ResilientDriver

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
    read
        Retries, URL re-signing and what a lost read becomes (see :mod:`unique_cube.inputs.reads`);
        default the policy in force (:func:`~unique_cube.inputs.reads.use_read_policy`).

    Returns
    -------
    xr.Dataset
        One float32 variable per role (NaN for no data and, when the source has QA, for
        pixels that are not clear), a boolean ``clear`` mask for sources with QA, CF attributes
        (``units``, ``long_name``) and the CRS as the ``spatial_ref`` coordinate.
    """
    items = list(items)
    decoding = decoder(items, source, bands=bands, flags=flags)
    _check_overlap(items, source, geobox)
    raw = decoding.read(items, geobox, chunks=chunks, groupby=groupby, resampling=resampling,
                        read=read)  # fmt: skip
    out = decoding.decode(raw)
    out.attrs.update(
        {
            "source_collection": source.collection,
            "source_description": source.description,
            "groupby": groupby,
            "n_items": len(items),
        }
    )
    return out


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
    ) -> xr.Dataset:
        """The raw assets of ``items`` on ``geobox`` (float32, raw nodata kept; one variable
        per asset of :attr:`assets`): lazy, or read now into memory (``lazy=False``, e.g.
        inside a task); options as :func:`load`'s, ``groupby`` also odc-stac's callable
        ``(item, parsed, index) -> key``."""
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
        clear = clear.rename("clear").assign_attrs(attrs)
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
    out.attrs.update({"long_name": flag.description or name, "units": "1"})
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
