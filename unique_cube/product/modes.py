"""Near-real-time and final days: which inputs a day may use, and whether they changed since.

A product day is made in one of two modes:

``nrt``
    From inputs observed up to the end of the day only: MODIS index gaps filled from earlier
    days (the last observation carried forward, :func:`unique_cube.gpp.features.fill_gaps`),
    the fusion's reference the last clear GPP_L *before* the day. Made the morning after.
``final``
    Once ``product.final_after_days`` have passed (late HLS items, reprocessed MODIS): gaps
    interpolated between the observations on both sides; the fusion's reference the last
    clear GPP_L before the day, late HLS items included (``product.final_reference:
    before``, the default), or the nearest on either side (``nearest``). The QA bit
    ``final_inputs_differ`` marks the pixels whose inputs an NRT version could not have had.

:func:`day_modes` decides the mode of each day of a run; :func:`day_inputs` lists, per day, the
input items (id and ``updated``/``created`` stamp) inside the windows its mode reads — what
a day's marker records, what ``unique-cube update`` compares with a fresh search to find the
days whose inputs changed, and what the run log's latency is computed from.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import ConfigError, EmptySearchError
from unique_cube.grid import lonlat_bbox
from unique_cube.inputs.items import item_time
from unique_cube.inputs.search import search

__all__ = [
    "MODES",
    "changed_inputs",
    "day_inputs",
    "day_modes",
    "input_windows",
    "published",
    "two_sided_reference",
]

MODES = ("nrt", "final")


def day_modes(days: Iterable[dt.date], mode: str, today: dt.date,
              final_after_days: int) -> dict[dt.date, str]:  # fmt: skip
    """Each day's mode: ``auto`` makes a day final once ``final_after_days`` have passed since
    it (``today`` − day ≥ the lag), else NRT; ``nrt`` or ``final`` for every day. A final
    day asked for before its lag has passed is a :class:`ConfigError` (its late inputs may
    not be in yet), raised before anything is made."""
    if mode not in (*MODES, "auto"):
        raise ConfigError(f"--mode: unknown mode {mode!r}; expected auto, nrt or final")
    days = sorted(days)
    lag = dt.timedelta(days=final_after_days)
    if mode == "final":
        early = [d for d in days if today - d < lag]
        if early:
            raise ConfigError(
                f"--mode final: {early[0]} is {(today - early[0]).days} day(s) old; a day is "
                f"final once product.final_after_days ({final_after_days}) have passed (from "
                f"{early[0] + lag}); make it as nrt (or auto) until then"
            )
    if mode != "auto":
        return dict.fromkeys(days, mode)
    return {d: "final" if today - d >= lag else "nrt" for d in days}


def two_sided_reference(pipeline: Pipeline, mode: str) -> bool:
    """Whether a day of ``mode`` takes its fusion reference from either side of it: a final
    day's, unless ``product.final_reference`` is ``before``."""
    return mode == "final" and pipeline.product.final_reference == "nearest"


def input_windows(pipeline: Pipeline, day: dt.date, mode: str,
                  gap_days: int) -> dict[str, tuple[dt.date, dt.date]]:  # fmt: skip
    """The sources a day reads and the dates of their items it may use: the reanalysis of the
    local day itself (its hours, in UTC); MODIS within ``gap_days`` before (and, final, after)
    it; for the fusion scheme, HLS within ``downscale.reference_days`` before (final: and
    after, unless ``product.final_reference`` is ``before``) it and the day itself. The static
    layers (DEM, land cover) are not dated and not listed."""
    ahead = 0 if mode == "nrt" else 1
    gap = dt.timedelta(days=gap_days)
    windows = {pipeline.gpp.weather: (day, day),
               pipeline.gpp.modis.source: (day - gap, day + ahead * gap)}  # fmt: skip
    if pipeline.product.scheme == "fusion" and pipeline.downscale is not None:
        span = dt.timedelta(days=pipeline.downscale.reference_days)
        later = span if two_sided_reference(pipeline, mode) else dt.timedelta(0)
        windows[pipeline.gpp.landsat.source] = (day - span, day + later)
    return windows


def _stamp(item) -> str:
    """When an item was last published: ``updated``, else ``created`` ('' when neither)."""
    props = item.properties
    return str(props.get("updated") or props.get("created") or "")


def _span(item) -> tuple[dt.datetime, dt.datetime]:
    """When an item's data were observed (its start and end datetimes, else its datetime)."""
    common = item.common_metadata
    return common.start_datetime or item_time(item), common.end_datetime or item_time(item)


def day_inputs(pipeline: Pipeline, catalog, modes: Mapping[dt.date, str],
               gap_days: int) -> dict[dt.date, dict[str, dict[str, str]]]:  # fmt: skip
    """Per day (of ``modes``): source → {item id: its ``updated``/``created`` stamp} of the
    items of :func:`input_windows` — one search per source over all the days' windows. A
    source without an item in a window gives an empty mapping; a failing search raises."""
    if not modes:
        return {}
    windows = {d: input_windows(pipeline, d, m, gap_days) for d, m in modes.items()}
    sources = sorted({s for w in windows.values() for s in w})
    bbox = lonlat_bbox(pipeline.grid.geobox)
    out: dict[dt.date, dict[str, dict[str, str]]] = {d: {} for d in modes}
    for source in sources:
        spans = [w[source] for w in windows.values() if source in w]
        first, last = min(s[0] for s in spans), max(s[1] for s in spans)
        try:
            items = search(source, bbox, f"{first}/{last}", catalog=catalog)
        except EmptySearchError:
            items = []
        dated = [(item, *_span(item)) for item in items]
        hourly = source == pipeline.gpp.weather  # a reanalysis: the local day's hours
        for day, window in windows.items():
            if source not in window:
                continue
            low, high = window[source]
            if hourly:
                offset = pipeline.gpp.utc_offset_hours
                first, last = _local_day(low, offset)[0], _local_day(high, offset)[1]
                chosen = [i for i, start, end in dated if start < last and end >= first]
            else:  # granules and scenes by the dates they were observed
                chosen = [i for i, start, end in dated
                          if start.date() <= high and end.date() >= low]  # fmt: skip
            out[day][source] = {item.id: _stamp(item) for item in chosen}
    return out


def _local_day(day: dt.date, utc_offset_hours: float) -> tuple[dt.datetime, dt.datetime]:
    """A local day's bounds in UTC: [its midnight, the next midnight)."""
    start = dt.datetime.combine(day, dt.time(), dt.UTC) - dt.timedelta(hours=utc_offset_hours)
    return start, start + dt.timedelta(days=1)


def changed_inputs(before: Mapping[str, Mapping[str, str]],
                   now: Mapping[str, Mapping[str, str]]) -> list[str]:  # fmt: skip
    """What differs between a day's recorded inputs and a fresh search: items added, gone or
    republished (a newer ``updated``), as short phrases ('' changes: none)."""
    changes = []
    for source in sorted(set(before) | set(now)):
        old, new = before.get(source, {}), now.get(source, {})
        added = sorted(set(new) - set(old))
        gone = sorted(set(old) - set(new))
        again = sorted(i for i in set(old) & set(new) if old[i] != new[i])
        for label, ids in (("new", added), ("gone", gone), ("republished", again)):
            if ids:
                changes.append(f"{source}: {label} {', '.join(ids)}")
    return changes


def published(inputs: Mapping[str, Mapping[str, str]]) -> dt.datetime | None:
    """When the latest of a day's inputs was published (UTC; ``None`` when none says)."""
    stamps = []
    for items in inputs.values():
        for stamp in items.values():
            try:
                when = dt.datetime.fromisoformat(stamp)
            except ValueError:  # '' or another form: not a publication time
                continue
            stamps.append(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
    return max(stamps) if stamps else None
