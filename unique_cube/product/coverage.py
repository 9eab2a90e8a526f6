"""Whether a run's inputs cover its days and its grid: checked once, before any day is made.

A run whose first or last day the reanalysis does not cover, or whose grid lies mostly
outside the MODIS items, is a mistake to report (:class:`~unique_cube.errors.CatalogError`),
not thousands of skipped days or a map neighbour-filled from GPP_M that does not exist.

- :func:`check_weather_ends`: the reanalysis items found for the run cover its first and its
  last local day completely (the hours of a local day as :func:`~unique_cube.inputs.weather.
  daily_weather` groups them: hourly values stamped at the end of their hour).
- :func:`outside_footprints`: the coarse pixels whose centre lies outside every MODIS item's
  footprint (the union of the items' geometries, compared in longitude and latitude, where
  STAC geometries are drawn); a grid with more of them than ``product.max_missing_fraction``
  is refused, the others are left empty by the days (NaN GPP, QA 0).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import CatalogError, EmptySearchError
from unique_cube.grid import coarse_geobox, lonlat_bbox, pixel_lonlat
from unique_cube.inputs.items import footprint_union
from unique_cube.inputs.search import search
from unique_cube.inputs.weather import weather_items

__all__ = ["check_coverage", "check_weather_ends", "local_days_covered", "outside_footprints"]


_HOUR = dt.timedelta(hours=1)


def check_coverage(
    pipeline: Pipeline, catalog, days: list[dt.date], gap_days: int
) -> np.ndarray | None:
    """Refuse a run whose inputs do not cover it; returns the coarse pixels outside every
    MODIS footprint (``None`` when there is none), which the days leave empty.

    ``gap_days``: each day's GPP_M reads MODIS up to this many days around it."""
    first, last = min(days), max(days)
    check_weather_ends(pipeline, catalog, first, last)
    span = dt.timedelta(days=gap_days)
    outside, held = outside_footprints(pipeline, catalog, first - span, last + span)
    fraction = float(outside.mean())
    limit = pipeline.product.max_missing_fraction
    if fraction > limit or fraction == 1.0:
        source = catalog.source(pipeline.gpp.modis.source)
        bbox = [round(v, 3) for v in lonlat_bbox(pipeline.grid.geobox)]
        items = f"its items cover bbox {held}" if held else "there is none"
        raise CatalogError(
            f"{fraction:.0%} of the grid (bbox {bbox}) is outside every {pipeline.gpp.modis.source}"
            f" item ({source.collection}) of {first - span}..{last + span} in catalog "
            f"{catalog.name} ({items}): more than product.max_missing_fraction ({limit:.0%}) "
            "would have no GPP_M; move grid.bounds onto the inputs"
        )
    return outside if outside.any() else None


def local_days_covered(items, utc_offset_hours: float) -> list[tuple[dt.date, dt.date]] | None:
    """The ranges of local days (first, last) whose every hour the items' time spans
    (``start_datetime``..``end_datetime``) hold: a local day's hourly values are stamped from
    1 h after its start (in UTC) to its end. ``None`` when an item has no time span (a single
    ``datetime`` does not say which hours it holds)."""
    spans = []
    for item in items:
        meta = item.common_metadata
        if meta.start_datetime is None or meta.end_datetime is None:
            return None
        spans.append((meta.start_datetime.astimezone(dt.UTC), meta.end_datetime.astimezone(dt.UTC)))
    merged: list[list[dt.datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + _HOUR:  # adjacent months: one span
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    offset = dt.timedelta(hours=utc_offset_hours)
    ranges = []
    for start, end in merged:
        begin = (start + offset - _HOUR).replace(tzinfo=None)
        first = begin.date() + dt.timedelta(days=begin.time() != dt.time(0))
        last = (end + offset).replace(tzinfo=None).date() - dt.timedelta(days=1)
        if first <= last:
            ranges.append((first, last))
    return ranges


def check_weather_ends(pipeline: Pipeline, catalog, first: dt.date, last: dt.date) -> None:
    """Raise :class:`CatalogError` unless the reanalysis covers ``first`` and ``last`` (or has
    no item there; items without a time span pass: the blocks skip the days they lack)."""
    gpp, geobox = pipeline.gpp, pipeline.grid.geobox
    bbox = [round(v, 3) for v in lonlat_bbox(geobox)]
    where = f"{first}..{last} over the grid (bbox {bbox}) is outside the inputs' coverage"
    try:
        items = weather_items(catalog, gpp.weather, geobox, first, last)
    except EmptySearchError:
        raise CatalogError(
            f"{where}: catalog {catalog.name} has no {gpp.weather} reanalysis for these dates "
            "or this area"
        ) from None
    ranges = local_days_covered(items, gpp.utc_offset_hours)
    if ranges is None:  # the items do not say: each block finds its complete days
        return
    ends = [(what, day) for what, day in (("first", first), ("last", last))
            if not any(a <= day <= b for a, b in ranges)]  # fmt: skip
    if ends:
        held = ", ".join(f"{a}..{b}" for a, b in ranges) or "no complete day"
        said = (f"the day {first}" if first == last
                else " and ".join(f"its {what} day {day}" for what, day in ends))  # fmt: skip
        raise CatalogError(
            f"{where}: catalog {catalog.name}'s {gpp.weather} reanalysis does not cover {said} "
            f"(its items around these dates hold the local days {held}, UTC"
            f"{gpp.utc_offset_hours:+g} h); start and end the run within them"
        )


def outside_footprints(
    pipeline: Pipeline, catalog, first: dt.date, last: dt.date
) -> tuple[np.ndarray, list[float] | None]:
    """The coarse pixels (a bool array of the coarse grid) whose centre lies outside every
    footprint of the MODIS items of ``first``..``last`` (all of them when there is none), and
    the bbox of the footprints (degrees; ``None`` without items). An item without a geometry
    counts with its bbox."""
    import shapely

    coarse = coarse_geobox(pipeline.grid.geobox)
    try:
        items = search(pipeline.gpp.modis.source, lonlat_bbox(pipeline.grid.geobox),
                       f"{first}/{last}", catalog=catalog)  # fmt: skip
    except EmptySearchError:
        return np.ones(coarse.shape, dtype=bool), None
    footprint = footprint_union(items)
    rows, cols = np.mgrid[0 : coarse.shape[0], 0 : coarse.shape[1]] + 0.5
    lon, lat = pixel_lonlat(coarse, rows, cols)
    held = [round(v, 3) for v in footprint.bounds] if not footprint.is_empty else None
    return ~shapely.intersects_xy(footprint, lon, lat), held
