"""STAC search: one source, one area, one period → a complete, de-duplicated list of items.

``search`` reads as the pipeline it runs::

    check arguments → open client (retries, signing) → search → drop cloudy → de-duplicate

Every HTTP request (GET or POST, the landing page and every result page) is retried with
exponential backoff on 429/500/502/503/504, connection errors and timeouts, honouring
``Retry-After``. An answer that breaks off mid-body or is not valid JSON (urllib3 has
handed it over by then, so it cannot retry it) makes the whole search run again from the
first page, as many times as the policy allows. A search either returns every matching item
or raises: a page that still fails after the retry budget is a :class:`SearchFailedError`,
never a shorter list.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pystac
import requests
from pystac_client import Client
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from .config import Catalog, Source, load_catalog
from .errors import (
    CatalogError,
    ConfigError,
    EmptySearchError,
    SearchFailedError,
    UnknownCollectionError,
)

__all__ = [
    "RetryPolicy",
    "deduplicate",
    "filter_cloud_cover",
    "item_time",
    "open_client",
    "parse_bbox",
    "parse_datetime",
    "search",
]

log = logging.getLogger(__name__)

Signer = Callable[[Any], Any]
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try a STAC API before giving up."""

    retries: int = 5
    """Retries per request (so up to ``retries + 1`` attempts), and reruns of a whole search
    whose answer broke off or was malformed."""
    backoff: float = 0.5
    """Backoff factor in seconds: waits of 0, 2·b, 4·b … between attempts."""
    backoff_max: float = 30.0
    """Longest wait between attempts (``Retry-After`` is honoured as given)."""
    timeout: float = 30.0
    """Seconds to wait for a connection and for each read."""

    def urllib3_retry(self) -> Retry:
        """The equivalent ``urllib3`` policy, for GET and POST alike."""
        return Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            other=self.retries,
            backoff_factor=self.backoff,
            backoff_max=self.backoff_max,
            status_forcelist=(429, 500, 502, 503, 504),
            # POST /search is a read: safe to repeat.
            allowed_methods=frozenset({"GET", "POST"}),
            respect_retry_after_header=True,
            raise_on_status=True,
        )


_BROKEN = (
    json.JSONDecodeError,  # a body cut short with a matching Content-Length, or garbage
    UnicodeDecodeError,  # a body cut inside a multi-byte character
    requests.exceptions.ChunkedEncodingError,  # the body ended before its Content-Length
    requests.exceptions.ContentDecodingError,
    http.client.IncompleteRead,
    ProtocolError,  # the connection was reset mid-body
    ReadTimeoutError,  # the body stalled after the headers
)


def _broken_answer(err: BaseException) -> bool:
    """Whether ``err`` comes from an answer that broke off or was malformed mid-body.

    urllib3 retries statuses, timeouts and failed connections itself until the headers of
    an answer arrive; a body that then stops early, stalls or does not parse is handed up
    as is (pystac-client wraps it in an ``APIError`` raised while handling it). Errors of
    urllib3 giving up (``MaxRetryError``) have spent their budget already: not broken answers.
    """
    chain: list[BaseException] = []
    pending = [err]
    while pending:
        current = pending.pop()
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        pending.extend(a for a in current.args if isinstance(a, BaseException))
    if any(isinstance(e, MaxRetryError | requests.exceptions.RetryError) for e in chain):
        return False
    return any(isinstance(e, _BROKEN) for e in chain)


def _rerun_on_broken_answer(call: Callable[[], T], retry: RetryPolicy, what: str) -> T:
    """``call()``, run again after a backoff while it fails on a broken answer, at most
    ``retry.retries`` times. Other errors pass through: urllib3 retried them per request."""
    retries = 0
    while True:
        try:
            return call()
        except (APIError, requests.RequestException, ValueError) as err:
            if retries == retry.retries or not _broken_answer(err):
                raise
            retries += 1
            wait = min(retry.backoff_max, retry.backoff * 2**retries)
            log.warning(
                "%s: the answer broke off or was malformed (%s); retry %d of %d in %.2f s",
                what,
                _short(err, 120),
                retries,
                retry.retries,
                wait,
            )
            time.sleep(wait)


def open_client(
    catalog: Catalog,
    *,
    retry: RetryPolicy = RetryPolicy(),
    signer: Signer | None = None,
) -> Client:
    """Open the catalog's STAC API with retries and, where the catalog says so, signing.

    ``signer`` replaces the catalog's own signing (tests inject a fake one).
    """
    if signer is None:
        from .reads import item_signer

        signer = item_signer(catalog)
    stac_io = StacApiIO(max_retries=retry.urllib3_retry(), timeout=retry.timeout)
    try:
        # Client.open applies its own `timeout` to the StacApiIO: pass it there too.
        return _rerun_on_broken_answer(
            lambda: Client.open(
                catalog.stac_url, modifier=signer, stac_io=stac_io, timeout=retry.timeout
            ),
            retry,
            f"opening {catalog.stac_url}",
        )
    except (
        APIError,
        ClientTypeError,
        pystac.STACError,
        requests.RequestException,
        ValueError,
    ) as err:
        raise SearchFailedError(
            f"cannot open the STAC API of catalog {catalog.name!r} at {catalog.stac_url} "
            f"(after up to {retry.retries} retries): {_short(err)}"
        ) from err


def search(
    source: str,
    bbox: Sequence[float],
    datetime: str | Sequence[Any],
    *,
    catalog: Catalog | str = "demo",
    max_cloud_cover: float | None = None,
    method: str | None = None,
    page_size: int = 100,
    retry: RetryPolicy = RetryPolicy(),
    signer: Signer | None = None,
    client: Client | None = None,
) -> list[pystac.Item]:
    """Search one source of a catalog for items over ``bbox`` during ``datetime``.

    Parameters
    ----------
    source
        Source name in the catalog (``hls-l30``, ``modis-sr``, ``dem`` …).
    bbox
        ``(west, south, east, north)`` in degrees (EPSG:4326).
    datetime
        ``"2023-05-01/2023-05-31"``, ``"2023-05-01"`` or a ``(start, end)`` pair of dates,
        datetimes or ISO strings; both ends inclusive (whole days for dates).
    catalog
        A loaded :class:`Catalog` or the name/path of a catalog file.
    max_cloud_cover
        Drop items whose cloud cover (percent) is above this; defaults to the source's limit.
    method
        ``"GET"`` or ``"POST"`` (default).
    retry, signer, client
        Retry policy, asset-URL signer replacing the catalog's, and an already open client.

    Returns
    -------
    list of pystac.Item
        Sorted by time then id; at most one item per tile and day (latest processing wins).

    Raises
    ------
    ConfigError
        Malformed bbox, reversed or unparsable dates, unknown source.
    UnknownCollectionError, EmptySearchError, SearchFailedError
        The API lacks the collection, nothing matched, or the API kept failing.
    """
    if isinstance(catalog, str):
        catalog = load_catalog(catalog)
    src = catalog.source(source)
    bbox = parse_bbox(bbox)
    start, end = parse_datetime(datetime)
    interval = f"{_iso(start)}/{_iso(end)}"
    where = (
        f"collection {src.collection!r} (source {source!r}) at {catalog.stac_url}, "
        f"bbox {list(bbox)}, datetime {interval}"
    )
    if client is None:
        client = open_client(catalog, retry=retry, signer=signer)

    items = _run_search(client, src, bbox, interval, method, page_size, where, retry)
    if not items:
        _raise_empty(client, src, where)
    limit = src.max_cloud_cover if max_cloud_cover is None else max_cloud_cover
    clear_enough = filter_cloud_cover(items, src, limit)
    if not clear_enough:
        raise EmptySearchError(
            f"all {len(items)} items of {where} have {src.cloud_cover_property} above {limit:g}%"
        )
    unique = deduplicate(clear_enough, src)
    log.info(
        "%s: %d items found, %d within %s%% cloud cover, %d after de-duplication",
        source,
        len(items),
        len(clear_enough),
        limit,
        len(unique),
    )
    return sorted(unique, key=lambda it: (item_time(it), it.id))


def _run_search(
    client: Client,
    src: Source,
    bbox: tuple[float, ...],
    interval: str,
    method: str | None,
    page_size: int,
    where: str,
    retry: RetryPolicy,
) -> list[pystac.Item]:
    def every_page() -> list[pystac.Item]:
        result = client.search(
            collections=[src.collection],
            bbox=list(bbox),
            datetime=interval,
            method=method or "POST",
            limit=page_size,
        )
        # Materialise every page here: a page that fails must fail the whole search, and a
        # rerun after a broken answer starts again from the first page.
        return list(result.items())

    try:
        return _rerun_on_broken_answer(every_page, retry, f"search of {where}")
    except (APIError, requests.RequestException, ValueError) as err:
        status = getattr(err, "status_code", None)
        if status is not None and 400 <= status < 500 and status != 429:
            raise CatalogError(
                f"the STAC API refused the search of {where}: {_short(err)}"
            ) from err
        if _broken_answer(err):
            raise SearchFailedError(
                f"search of {where} failed after up to {retry.retries} retries of the whole "
                f"search: the answer broke off or was malformed each time: {_short(err)}"
            ) from err
        raise SearchFailedError(
            f"search of {where} failed after up to {retry.retries} retries per request: "
            f"{_short(err)}"
        ) from err


def _raise_empty(client: Client, src: Source, where: str) -> None:
    """An empty answer: say whether the collection is missing or just has nothing there."""
    try:
        collection = client.get_collection(src.collection)
    except APIError as err:
        if getattr(err, "status_code", None) != 404:
            raise SearchFailedError(
                f"cannot check the collection of {where}: {_short(err)}"
            ) from err
        collection = None
    if collection is None:
        try:
            known = sorted(c.id for c in client.get_collections())
        except (APIError, requests.RequestException):
            known = []
        listing = f"; it serves {', '.join(known)}" if known else ""
        raise UnknownCollectionError(
            f"the STAC API does not serve collection {src.collection!r} needed by {where}{listing}"
        )
    raise EmptySearchError(
        f"no items for {where}: the area or period is outside what the collection covers"
    )


# ----------------------------------------------------------------------- argument checks


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
            f"datetime: the range is reversed: start {_iso(start)} is after end {_iso(end)}"
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


def _iso(stamp: dt.datetime) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------- item filters


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
        key = (_tile_key(item, source), _solar_day(item))
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


def _solar_day(item: pystac.Item) -> dt.date:
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
