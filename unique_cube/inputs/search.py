"""STAC search: one source, one area, one period → a complete, de-duplicated list of items.

``search`` reads as the pipeline it runs::

    check arguments → open client (retries, signing) → search → drop cloudy → de-duplicate

Every HTTP request (GET or POST, the landing page and every result page) is retried with
exponential backoff on 429/500/502/503/504, connection errors and timeouts, honouring
``Retry-After``. An answer that breaks off mid-body or is not valid JSON (urllib3 has
handed it over by then, so it cannot retry it) makes the whole search run again from the
first page, as many times as the policy allows. A search either returns every matching item
or raises: a page that still fails after the retry budget is a :class:`SearchFailedError`,
never a shorter list. The item helpers (bbox and datetime parsing, cloud filter,
de-duplication) are in :mod:`unique_cube.inputs.items`; :func:`open_catalog` gives a
pipeline's catalog.

Messages name the API and quote its errors with their secrets redacted
(:func:`unique_cube.redact.redact`): a ``stac_url`` may carry a user:password or a signed query.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
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

from unique_cube.config.catalog import Catalog, Source, load_catalog
from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import (
    CatalogError,
    ConfigError,
    EmptySearchError,
    SearchFailedError,
    UnknownCollectionError,
)
from unique_cube.inputs.items import (
    deduplicate,
    filter_cloud_cover,
    iso_utc,
    item_time,
    parse_bbox,
    parse_datetime,
)
from unique_cube.inputs.reads import item_signer, url_signer, use_read_policy
from unique_cube.redact import redact

__all__ = ["RetryPolicy", "open_catalog", "open_client", "search", "short_error"]


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
                short_error(err, 120),
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
        signer = item_signer(catalog)
    stac_io = StacApiIO(max_retries=retry.urllib3_retry(), timeout=retry.timeout)
    try:
        # Client.open applies its own `timeout` to the StacApiIO: pass it there too.
        return _rerun_on_broken_answer(
            lambda: Client.open(
                catalog.stac_url, modifier=signer, stac_io=stac_io, timeout=retry.timeout
            ),
            retry,
            f"opening {redact(catalog.stac_url)}",
        )
    except (
        APIError,
        ClientTypeError,
        pystac.STACError,
        requests.RequestException,
        ValueError,
    ) as err:
        raise SearchFailedError(
            f"cannot open the STAC API of catalog {catalog.name!r} at {redact(catalog.stac_url)} "
            f"(after up to {retry.retries} retries): {short_error(err)}"
        ) from err


def search(
    source: str,
    bbox: Sequence[float],
    datetime: str | Sequence[Any],
    *,
    catalog: Catalog | str,
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
    interval = f"{iso_utc(start)}/{iso_utc(end)}"
    where = (
        f"collection {src.collection!r} (source {source!r}) at {redact(catalog.stac_url)}, "
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
                f"the STAC API refused the search of {where}: {short_error(err)}"
            ) from err
        if _broken_answer(err):
            raise SearchFailedError(
                f"search of {where} failed after up to {retry.retries} retries of the whole "
                f"search: the answer broke off or was malformed each time: {short_error(err)}"
            ) from err
        raise SearchFailedError(
            f"search of {where} failed after up to {retry.retries} retries per request: "
            f"{short_error(err)}"
        ) from err


def _raise_empty(client: Client, src: Source, where: str) -> None:
    """An empty answer: say whether the collection is missing or just has nothing there."""
    try:
        collection = client.get_collection(src.collection)
    except APIError as err:
        if getattr(err, "status_code", None) != 404:
            raise SearchFailedError(
                f"cannot check the collection of {where}: {short_error(err)}"
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


def short_error(err: BaseException, limit: int = 300) -> str:
    """``err``'s text on one line, its secrets redacted (it may quote the URL it failed on),
    cut to ``limit`` characters."""
    text = redact(" ".join(str(err).split())) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def open_catalog(pipeline: Pipeline) -> Iterator[Catalog]:
    """The pipeline's catalog (its ``stac_url`` when given); cubes built in the block re-sign
    their asset URLs before a retry as the catalog says.

    The catalog's STAC API must already be up: a pipeline's ``serve_world`` (a demo world to
    serve on 127.0.0.1) is started by the command line, which hands its URL over as
    ``stac_url``, as a deployment hands over the Planetary Computer's."""
    if pipeline.serve_world and not pipeline.stac_url:
        raise ConfigError(
            f"{pipeline.path or 'pipeline'}: serve_world {pipeline.serve_world} is served by "
            "the `unique-cube` command; from Python, serve it with "
            "unique_cube.demo.serve_world and pass its URL as the pipeline's stac_url"
        )
    catalog = load_catalog(pipeline.catalog)
    if pipeline.stac_url:
        catalog = catalog.with_url(pipeline.stac_url)
    with use_read_policy(resign=url_signer(catalog)):
        yield catalog
