"""Asset reads that survive a flaky object store: retries, re-signing, and an account of losses.

odc-stac reads every asset through a *reader driver*. :class:`ResilientDriver` is rasterio's
driver with three changes (:class:`StackstacReader` makes the same three to stackstac's reader,
for ``cube.load(..., engine="stackstac")``):

- a failed read is retried ``retries`` times with exponential backoff;
- before each retry of a remote asset its URL is signed afresh (``ReadPolicy.resign``): a
  Planetary Computer SAS token that expired during a long run is answered 403, and the next
  attempt carries a new one;
- a read that still fails either raises (the default: nothing is silently no data), or, when
  the policy names a *ledger*, is left as no data **and recorded**: the daily product counts
  the lost reads, flags their pixels in its QA layer and fails a day that lost too much.

A 403 that persists after re-signing is never a loss: it is an access problem, raised as
:class:`AccessDeniedError` whatever the policy.

Signed URLs are secrets. Messages and log records name assets with
:func:`unique_cube.redact.redact` (re-exported here): the query string (where SAS tokens and
keys live) and any user:password are cut out.

The policy in force is taken from a context variable when a cube is built
(:func:`use_read_policy`), so that one ``with`` around a job gives every load the catalog's
re-signer; the driver carries it into the Dask graph (the policy must pickle: its ``resign``
is a module-level function).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from odc.loader import RioDriver, RioReader
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from unique_cube.errors import ConfigError, LoadError
from unique_cube.files import local_path
from unique_cube.redact import install_redaction, redact

__all__ = [
    "LEDGER_TOPIC",
    "AccessDeniedError",
    "ReadPolicy",
    "ResilientDriver",
    "StackstacReader",
    "current_read_policy",
    "install_redaction",
    "item_signer",
    "lost_reads",
    "quiet_spurious_warnings",
    "redact",
    "sign_planetary_computer",
    "strip_query",
    "url_signer",
    "use_read_policy",
]


def quiet_spurious_warnings() -> None:
    """Silence the one third-party warning every warped read raises for nothing.

    rasterio 1.4 warns ``NotGeoreferencedWarning`` while it builds the in-memory destination of
    a reprojection, before it sets that destination's transform (odc-geo issue #131): not
    something a user did. Only that message from rasterio is silenced. Called when this module
    is imported, which is wherever reads run (Dask workers unpickle this module's driver).
    """
    warnings.filterwarnings("ignore", message="Dataset has no geotransform, gcps, or rpcs",
                            category=NotGeoreferencedWarning, module="rasterio")  # fmt: skip


quiet_spurious_warnings()

log = logging.getLogger(__name__)


LEDGER_TOPIC = "unique-cube-lost-reads"


class AccessDeniedError(LoadError):
    """An asset kept answering 403 (forbidden) although its URL was signed afresh."""


@dataclass(frozen=True)
class ReadPolicy:
    """How hard to try an asset, how to re-sign its URL, and what to do when it cannot be read."""

    retries: int = 3
    """Retries per read (so up to ``retries + 1`` attempts)."""
    backoff: float = 0.5
    """Seconds before the first retry, doubled before each next one."""
    http_retries: int = 3
    """GDAL's own retries of a 429 or 5xx answer within one attempt (its delay: ``backoff``)."""
    resign: Callable[[str], str] | None = None
    """Signs an unsigned asset URL (``planetary_computer.sign``); ``None``: URLs are kept."""
    ledger: str | None = None
    """When set, a read that still fails is no data and recorded under this id (see
    :func:`lost_reads`); when ``None`` it raises :class:`~unique_cube.errors.LoadError`."""


_POLICY: contextvars.ContextVar[ReadPolicy | None] = contextvars.ContextVar(
    "unique_cube_read_policy", default=None
)


def current_read_policy() -> ReadPolicy:
    """The policy that a cube built now reads with."""
    return _POLICY.get() or ReadPolicy()


@contextlib.contextmanager
def use_read_policy(policy: ReadPolicy | None = None, **changes: Any) -> Iterator[ReadPolicy]:
    """Cubes built in the block read with ``policy`` (default: the current one) and
    ``changes`` (``ledger="…"``)."""
    policy = dataclasses.replace(policy or current_read_policy(), **changes)
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def sign_planetary_computer(href: str) -> str:
    """An asset URL signed with a Planetary Computer SAS token (``PC_SDK_SUBSCRIPTION_KEY``)."""
    import planetary_computer

    return planetary_computer.sign(href)


def url_signer(catalog) -> Callable[[str], str] | None:
    """The function that signs one asset URL of ``catalog`` (see ``Catalog.signing``), or
    ``None`` when its URLs are not signed."""
    if catalog.signing == "none":
        return None
    if catalog.signing == "planetary-computer":
        return sign_planetary_computer
    import importlib

    module, _, name = catalog.signing.partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{catalog.path or catalog.name}: signing: cannot import "
                          f"{catalog.signing!r} ({err})") from None  # fmt: skip
    if not callable(function):
        raise ConfigError(f"{catalog.path or catalog.name}: signing: {catalog.signing!r} is "
                          "not a function")  # fmt: skip
    return function


def item_signer(catalog) -> Callable[[Any], Any] | None:
    """A pystac-client ``modifier`` signing every asset of what a search returns, or ``None``."""
    sign = url_signer(catalog)
    if sign is None:
        return None
    if sign is sign_planetary_computer:
        import planetary_computer

        return planetary_computer.sign_inplace
    return functools.partial(_sign_assets, sign)


def _sign_assets(sign: Callable[[str], str], obj: Any) -> Any:
    import pystac

    if isinstance(obj, pystac.ItemCollection):
        for item in obj:
            _sign_assets(sign, item)
    elif isinstance(obj, pystac.Item):
        for asset in obj.assets.values():
            asset.href = sign(asset.href)
    elif isinstance(obj, dict):
        for feature in obj.get("features", [obj]):
            for asset in feature.get("assets", {}).values():
                asset["href"] = sign(asset["href"])
    return obj


def strip_query(url: str) -> str:
    """``url`` without its query string and fragment (an unsigned URL)."""
    return url.split("?", 1)[0].split("#", 1)[0]


# Done at import, so in every process that reads assets (Dask workers import this module
# with the reader driver): odc-loader, rasterio and GDAL name the file they failed on with
# its token.
install_redaction()


def _not_odc_failure(record: logging.LogRecord) -> bool:
    """odc-loader logs an ERROR for every failed attempt; the reader says what it does next."""
    return not str(record.msg).startswith("Failed to load")


logging.getLogger("odc.loader._rio").addFilter(_not_odc_failure)


class ResilientDriver(RioDriver):
    """odc-stac's rasterio reader driver with retries, re-signing and a ledger of losses."""

    def __init__(self, policy: ReadPolicy | None = None) -> None:
        super().__init__()
        self.policy = policy or current_read_policy()

    def capture_env(self) -> dict[str, Any]:
        env = super().capture_env()
        env.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
        env["GDAL_HTTP_MAX_RETRY"] = str(self.policy.http_retries)
        env["GDAL_HTTP_RETRY_DELAY"] = str(self.policy.backoff)
        return env

    def open(self, src, ctx) -> _ResilientReader:
        return _ResilientReader(src, ctx, self.policy)


def _is_remote(uri: str) -> bool:
    return uri.split("://", 1)[0].lower() in {"http", "https", "s3", "gs", "az", "abfs"}


def _opened_as(src):
    """The source as GDAL opens it: a ``file://`` URI as its (percent-decoded) path, which
    GDAL does not decode itself (a world under ``dé mo/``). The ledger and messages keep the
    href as the item has it."""
    opened = _local_or_uri(src.uri)
    return src if opened == src.uri else src.patch(uri=opened)


def _denied(err: BaseException) -> bool:
    text = str(err)
    return "403" in text and ("HTTP" in text or "Forbidden" in text or "response" in text)


class _ResilientReader:
    def __init__(self, src, ctx, policy: ReadPolicy) -> None:
        self._src = src
        self._ctx = ctx
        self._policy = policy

    def read(self, cfg, dst_geobox, *, dst=None, selection=None):
        cfg = dataclasses.replace(cfg, fail_on_error=True)

        def attempt(uri: str):
            reader = RioReader(_opened_as(self._src.patch(uri=uri)), self._ctx)
            return reader.read(cfg, dst_geobox, dst=dst, selection=selection)

        done, _ = _with_retries(self._policy, self._src.uri, self._src.band, attempt)
        if done is not None:
            return done
        empty = dst[0:0, 0:0] if dst is not None else np.empty((0, 0), dtype=cfg.dtype)
        return np.s_[0:0, 0:0], empty


def _with_retries(policy: ReadPolicy, uri: str, band: int,
                  attempt: Callable[[str], Any]) -> tuple[Any, str]:  # fmt: skip
    """``attempt(uri)`` under ``policy``: retried with backoff, the URL signed afresh before each
    retry; ``(its result, the URL that worked)``, or ``(None, uri)`` for a read lost to the
    ledger. A persistent 403 raises :class:`AccessDeniedError`, any other failure without a
    ledger :class:`LoadError`."""
    attempts, error = 0, None
    for tried in range(policy.retries + 1):
        attempts += 1
        try:
            return attempt(uri), uri
        except (RasterioError, OSError) as err:
            error = err
        if tried == policy.retries:
            break
        resign = policy.resign is not None and _is_remote(uri)
        if not (resign and _denied(error)):  # an expired signature: renew it at once
            time.sleep(policy.backoff * 2**tried)
        if resign:
            try:
                uri = policy.resign(strip_query(uri))
            except Exception as err:  # the token service failed: retry the old URL
                log.warning("signing %s afresh failed: %s", strip_query(uri),
                            redact(str(err))[:200])  # fmt: skip
    where = f"{redact(uri)} (band {band})"
    reason = redact(str(error))[:300]
    if _denied(error):
        raise AccessDeniedError(
            f"access denied to {where} after {attempts} attempts"
            + (", each with a freshly signed URL" if policy.resign else " (no URL signing is "
               "configured for this catalog)") + f": {reason}"
        )  # fmt: skip
    if policy.ledger is None:
        raise LoadError(f"cannot read {where} after {attempts} attempts: {reason}")
    _record_loss(policy.ledger, {"href": strip_query(uri), "band": band,
                                 "attempts": attempts, "reason": reason})  # fmt: skip
    return None, uri


class StackstacReader:
    """stackstac's reader (its ``Reader`` protocol) under a :class:`ReadPolicy`: the same
    retries, re-signing, ledger and errors as :class:`ResilientDriver` gives odc-stac.

    stackstac makes one per asset as ``StackstacReader(policy=…, url=…, spec=…, …)`` (through
    ``functools.partial``); it wraps stackstac's own ``AutoParallelRioReader``, opened lazily
    and once, and opened afresh (with a newly signed URL) for a retry. It pickles as its recipe.
    A ``file://`` href is opened as its percent-decoded path, as for odc-stac.
    """

    def __init__(self, *, policy: ReadPolicy, url: str, **recipe: Any) -> None:
        from stackstac.rio_reader import DEFAULT_GDAL_ENV

        gdal_env = recipe.get("gdal_env") or DEFAULT_GDAL_ENV
        recipe["gdal_env"] = gdal_env.updated(always={
            "GDAL_HTTP_MAX_RETRY": str(policy.http_retries),
            "GDAL_HTTP_RETRY_DELAY": str(policy.backoff),
        })  # fmt: skip
        recipe["errors_as_nodata"] = ()  # a loss is the policy's to decide, never silent
        self.policy = policy
        self.url = url
        self._recipe = recipe
        self._reader = None
        self._lock = threading.Lock()

    def _opened(self, url: str):
        from stackstac.rio_reader import AutoParallelRioReader

        with self._lock:
            if self._reader is None or self._reader.url != _local_or_uri(url):
                self._reader = AutoParallelRioReader(url=_local_or_uri(url), **self._recipe)
            return self._reader

    def _forget(self, reader) -> None:
        with self._lock:
            if self._reader is reader:
                self._reader = None
        reader.close()

    def read(self, window, **kwargs) -> np.ndarray:
        def attempt(url: str) -> np.ndarray:
            reader = self._opened(url)
            try:
                return reader.read(window, **kwargs)
            except RuntimeError as err:  # stackstac wraps GDAL's error: retry on that
                if not isinstance(err.__cause__, RasterioError | OSError):
                    raise
                self._forget(reader)  # the next attempt opens the asset afresh
                raise err.__cause__ from None

        done, self.url = _with_retries(self.policy, self.url, 1, attempt)
        if done is not None:
            return done
        recipe = self._recipe
        return np.full((window.height, window.width), recipe["fill_value"], recipe["dtype"])

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __getstate__(self) -> dict[str, Any]:
        return {"policy": self.policy, "url": self.url, **self._recipe}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


def _local_or_uri(uri: str) -> str:
    path = local_path(uri)
    return str(path) if path is not None and "://" in uri else uri


_LOCAL: dict[str, list[dict]] = {}


_LOCK = threading.Lock()


def _record_loss(ledger: str, event: dict) -> None:
    event = {**event, "ledger": ledger}
    log.warning("read of %s (band %s) lost after %d attempts: %s", event["href"], event["band"],
                event["attempts"], event["reason"])  # fmt: skip
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        worker.log_event(LEDGER_TOPIC, event)
        return
    with _LOCK:
        _LOCAL.setdefault(ledger, []).append(event)


def lost_reads(ledger: str) -> list[dict]:
    """The reads lost under ``ledger``, in this process and on the workers of the current Dask
    client; each ``{"href", "band", "attempts", "reason"}`` once (href without query)."""
    with _LOCK:
        events = list(_LOCAL.pop(ledger, []))
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        events += [e for _, e in client.get_events(LEDGER_TOPIC) if e.get("ledger") == ledger]
    unique: dict[tuple[str, int], dict] = {}
    for event in events:
        event = {k: v for k, v in event.items() if k != "ledger"}
        unique.setdefault((event["href"], event["band"]), event)
    return list(unique.values())
