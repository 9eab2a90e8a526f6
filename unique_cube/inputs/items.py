"""STAC items: search arguments checked (bbox, datetime), cloudy items dropped, one item kept
per tile and day (the latest processing wins), an item's time and solar day, and the union of
items' footprints.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pystac

from unique_cube.config.catalog import Source
from unique_cube.errors import CatalogError, ConfigError

__all__ = [
    "deduplicate",
    "filter_cloud_cover",
    "footprint_union",
    "iso_utc",
    "item_time",
    "parse_bbox",
    "parse_datetime",
    "solar_day",
]


def parse_bbox(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """Check a ``(west, south, east, north)`` box in degrees."""
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4:
        raise ConfigError(f"bbox: expected four numbers west, south, east, north; got {bbox!r}")
    west, south, east, north = values
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise ConfigError(
            f"bbox: {list(values)} is not a box in degrees with west < east in [-180, 180] "
            "and south < north in [-90, 90]"
        )
    return west, south, east, north


def parse_datetime(value: str | Sequence[Any]) -> tuple[dt.datetime, dt.datetime]:
    """Turn a date, a ``start/end`` string or a pair into an inclusive UTC interval."""
    if isinstance(value, str):
        parts = value.split("/")
        if len(parts) == 1:
            parts = [parts[0], parts[0]]
    elif isinstance(value, dt.date):
        parts = [value, value]
    else:
        parts = list(value)
    if len(parts) != 2:
        raise ConfigError(f"datetime: expected a date or a start/end pair, got {value!r}")
    start = _as_datetime(parts[0], end=False)
    end = _as_datetime(parts[1], end=True)
    if start > end:
        raise ConfigError(
            f"datetime: the range is reversed: start {iso_utc(start)} is after end {iso_utc(end)}"
        )
    return start, end


def _as_datetime(value: Any, *, end: bool) -> dt.datetime:
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, dt.date):
        stamp = dt.datetime.combine(value, dt.time.max if end else dt.time.min)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                day = dt.date.fromisoformat(text)
                stamp = dt.datetime.combine(day, dt.time.max if end else dt.time.min)
            else:
                stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"datetime: {value!r} is not a date (YYYY-MM-DD) or ISO datetime"
            ) from None
    else:
        raise ConfigError(f"datetime: {value!r} is not a date or datetime")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC)


def iso_utc(stamp: dt.datetime) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def filter_cloud_cover(
    items: Iterable[pystac.Item], source: Source, limit: float
) -> list[pystac.Item]:
    """Keep items whose cloud cover is at most ``limit`` percent (items without it are kept).

    Done here rather than in the API query because not every STAC API honours ``query``
    or ``filter`` (rustac's in-memory backend returns nothing for them).
    """
    prop = source.cloud_cover_property
    if prop is None:
        return list(items)
    kept = []
    for item in items:
        cover = item.properties.get(prop)
        if cover is None or float(cover) <= limit:
            kept.append(item)
    return kept


def deduplicate(items: Iterable[pystac.Item], source: Source) -> list[pystac.Item]:
    """One item per tile and solar day: the latest processing wins (then the larger id)."""
    best: dict[tuple[Any, ...], pystac.Item] = {}
    for item in items:
        key = (_tile_key(item, source), solar_day(item))
        kept = best.get(key)
        if kept is None or _processing_rank(item, source) > _processing_rank(kept, source):
            best[key] = item
    return list(best.values())


def _tile_key(item: pystac.Item, source: Source) -> tuple[Any, ...]:
    props = item.properties
    if source.tile_properties and all(p in props for p in source.tile_properties):
        return ("props", *(str(props[p]) for p in source.tile_properties))
    if source.tile_id_pattern:
        match = re.search(source.tile_id_pattern, item.id)
        if match:
            return ("id", match.group("tile"))
    # Same grid footprint = same tile (proj:* as the projection extension defines them).
    crs = props.get("proj:code") or props.get("proj:epsg") or props.get("proj:wkt2")
    transform = props.get("proj:transform")
    shape = props.get("proj:shape")
    if crs is not None and transform and shape:
        return ("grid", str(crs), tuple(round(float(v), 3) for v in transform[:6]), tuple(shape))
    # Nothing identifies a tile: never merge such items.
    return ("item", item.id)


def item_time(item: pystac.Item) -> dt.datetime:
    """The item's ``datetime``, or its ``start_datetime`` where it has none (MODIS), in UTC."""
    stamp = item.datetime or item.common_metadata.start_datetime
    if stamp is None:  # a STAC item always has one of the two
        raise CatalogError(f"item {item.id!r} has neither datetime nor start_datetime")
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def solar_day(item: pystac.Item) -> dt.date:
    """Local solar date at the item's centre, as odc-stac's ``groupby="solar_day"`` uses."""
    stamp = item_time(item)
    if item.bbox:
        longitude = (item.bbox[0] + item.bbox[2]) / 2
        stamp = stamp + dt.timedelta(hours=longitude / 15)
    return stamp.date()


_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def _processing_rank(item: pystac.Item, source: Source) -> tuple[dt.datetime, str]:
    for prop in source.processed_properties:
        value = item.properties.get(prop)
        if value:
            try:
                stamp = pystac.utils.str_to_datetime(str(value))
            except ValueError:
                continue
            return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC), item.id)
    return (_NEVER, item.id)


def footprint_union(items):
    """The union of the items' footprints in longitude and latitude (a prepared shapely
    geometry; an item without a geometry counts with its bbox, one with neither not at all)."""
    import shapely

    shapes = {
        shapely.geometry.shape(item.geometry).wkb if item.geometry else shapely.box(*item.bbox).wkb
        for item in items
        if item.geometry or item.bbox
    }
    footprint = shapely.union_all([shapely.from_wkb(wkb) for wkb in shapes])
    shapely.prepare(footprint)
    return footprint
