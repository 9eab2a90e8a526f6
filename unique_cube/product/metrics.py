"""Prometheus metrics of a product run (``unique-cube run``), from its run log.

A run's metrics are computed from the run log it writes after every day (``<output>/runs/``),
so the two always agree; they live in a registry of the run's own (never the process-wide
default one) and leave the process three ways, each optional and none able to fail a day:

- an HTTP endpoint (``/metrics``) while the run lasts, for a Prometheus that scrapes the pod
  (``--metrics-port [HOST:]PORT`` or ``$UNIQUE_CUBE_METRICS_PORT``; off by default: a run on a
  workstation or in a test opens no port unasked, and two runs on one host would collide);
- a push to a Pushgateway after each day and at the end (``--metrics-push URL`` or
  ``$UNIQUE_CUBE_METRICS_PUSH``), for a Job that ends before it is scraped. A push adds to
  the group (HTTP POST): what a run does not say (its newest day, its last success) stays
  from the run before. A push that fails is said, and the next is the one at the run's end;
- the text format in ``<output>/runs/metrics.prom``, rewritten atomically after each day, for
  node-exporter's textfile collector (the latest run's metrics: one file, so that two runs'
  series never collide in the collector).

Labels stay bounded: ``pipeline`` (its name), ``status`` and a reason *code* per skipped or
failed day (:data:`SKIP_REASONS`, :data:`FAIL_REASONS`); the free text stays in the run log.
Freshness is a timestamp, not an age: ``time() -
unique_cube_newest_completed_day_timestamp_seconds`` keeps growing after the Job has ended
and its last push or textfile stands still, so an alert on it fires when the daily job stops
(the endpoint's series end with the run: alert on the pushed or textfile ones).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    pushadd_to_gateway,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import ConfigError
from unique_cube.files import write_atomic
from unique_cube.redact import redact

__all__ = [
    "DAY_SECONDS_BUCKETS",
    "FAIL_REASONS",
    "JOB_ENV",
    "PORT_ENV",
    "PUSH_ENV",
    "SKIP_REASONS",
    "MetricsOptions",
    "RunMetrics",
    "RunState",
    "metric_families",
    "reason_code",
]


log = logging.getLogger(__name__)

#: ``[HOST:]PORT`` of the metrics endpoint (0: any free port, said when the run starts).
PORT_ENV = "UNIQUE_CUBE_METRICS_PORT"
#: The Pushgateway's URL (``http://pushgateway:9091``).
PUSH_ENV = "UNIQUE_CUBE_METRICS_PUSH"
#: The ``job`` label of the pushed group (the chart names the daily and the backfill runs).
JOB_ENV = "UNIQUE_CUBE_METRICS_JOB"

#: Seconds a push may take: a Pushgateway answers in milliseconds; a run waits no longer.
PUSH_TIMEOUT_S = 5.0

#: Upper bounds (s) of the day-duration histogram: a bilinear day in seconds, a downscaled
#: day of a large grid in hours.
DAY_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

#: Reason codes of skipped days, each with the pattern of the reasons the run gives
#: (product/coarse.py, product/day.py, the day lock); the first match wins, else ``other``.
SKIP_REASONS: dict[str, str] = {
    "lock_busy": r"held by another run|being updated by another run",
    "no_weather": r"reanalysis|^no \S+ item for \d{4}-",
    "no_modis": r"^no \S+ item within \d+ days|no GPP_M at all",
    "gpp_m_missing": r"GPP_M missing on",  # too cloudy for too long: MODIS gaps over the limit
    "no_static_layers": r"needs its static layers",
    "other": r"",
}
#: Reason codes of failed days, as :data:`SKIP_REASONS`.
FAIL_REASONS: dict[str, str] = {
    "skip_not_recorded": r"^skipped \(",  # skipped, but the STAC collection was not updated
    "gpp_m": r"^GPP_M: ",  # the block's GPP_M failed: every day of the block
    "inputs_lost": r"input reads that failed after their retries",
    "reference_state": r"reference state could not be updated",
    "other": r"",
}

_STATUSES = ("done", "failed", "skipped", "already done")


def reason_code(status: str, reason: str) -> str:
    """The bounded label of a skipped or failed day's free-text ``reason``."""
    table = SKIP_REASONS if status == "skipped" else FAIL_REASONS
    return next(code for code, pattern in table.items() if re.search(pattern, reason))


@dataclass(frozen=True)
class MetricsOptions:
    """Where a run's metrics go (besides ``<output>/runs/metrics.prom``, always written)."""

    port: int | None = None
    """Port of the HTTP endpoint; ``None``: no endpoint; 0: any free port."""
    host: str = "0.0.0.0"
    """Address the endpoint listens on (all interfaces: a pod is scraped on its IP)."""
    push_url: str | None = None
    """The Pushgateway to push to after each day and at the end; ``None``: no push."""
    job: str = "unique-cube"
    """The ``job`` of the pushed group (its grouping key adds ``pipeline``)."""

    @classmethod
    def from_environment(
        cls, port: str | None = None, push: str | None = None, job: str | None = None
    ) -> MetricsOptions:
        """Options given on the command line, else from ``$UNIQUE_CUBE_METRICS_PORT``,
        ``$UNIQUE_CUBE_METRICS_PUSH`` and ``$UNIQUE_CUBE_METRICS_JOB``; a malformed port is a
        :class:`ConfigError` naming where it came from."""
        where = "--metrics-port"
        if port is None:
            port, where = os.environ.get(PORT_ENV, "").strip() or None, f"${PORT_ENV}"
        push = push or os.environ.get(PUSH_ENV, "").strip() or None
        job = job or os.environ.get(JOB_ENV, "").strip() or cls.job
        if port is None:
            return cls(push_url=push, job=job)
        host, _, number = port.rpartition(":")
        if not number.isdigit() or int(number) > 65535:
            raise ConfigError(f"{where} {port!r}: expected PORT or HOST:PORT (0: any free port)")
        return cls(int(number), host.strip("[]") or cls.host, push, job)


@dataclass(frozen=True)
class RunState:
    """What the metrics say of a run: a snapshot the endpoint's thread reads while the run
    replaces it (never changes it) after each day."""

    pipeline: str
    """The pipeline's name (the ``pipeline`` label)."""
    time_zone: str
    """The product's time zone: a local day ends at its midnight."""
    started: dt.datetime
    days: tuple[dict, ...] = ()
    """The run log's days (``DayResult.as_dict``)."""
    peak_rss_mb: float | None = None
    """The run log's peak resident memory of this process."""
    worker_rss_mb: dict = field(default_factory=dict)
    """The run log's resident memory of each Dask worker when the run ended."""
    last_success: float | None = None
    """Unix time this run last finished a day (``done``)."""

    def with_report(self, report: dict, now: float) -> RunState:
        """The state after the run log ``report``: ``last_success`` is ``now`` when the log
        has more done days than the state had."""
        days = tuple(report["days"])
        done = sum(d["status"] == "done" for d in days)
        before = sum(d["status"] == "done" for d in self.days)
        return replace(self, days=days, peak_rss_mb=report.get("peak_rss_mb"),
                       worker_rss_mb=dict(report.get("worker_rss_mb") or {}),
                       last_success=now if done > before else self.last_success)  # fmt: skip


def metric_families(state: RunState) -> list:
    """The run's metric families (prometheus_client's ``*MetricFamily``): every status and
    reason code appears, 0 when no day had it, so that ``increase()`` sees the first one."""
    name, days = [state.pipeline], state.days
    out = []

    def gauge(metric: str, text: str, value: float | None) -> None:
        family = GaugeMetricFamily(metric, text, labels=["pipeline"])
        if value is not None:
            family.add_metric(name, value)
        out.append(family)

    gauge("unique_cube_run_start_timestamp_seconds", "When the run started (Unix time).",
          state.started.timestamp())  # fmt: skip
    by_status = CounterMetricFamily("unique_cube_days_total", "Days of the run by outcome "
                                    "(already_done: kept from an earlier run).",
                                    labels=["pipeline", "status"])  # fmt: skip
    for status in _STATUSES:
        count = sum(d["status"] == status for d in days)
        by_status.add_metric([*name, status.replace(" ", "_")], count)
    out.append(by_status)
    for status, table in (("skipped", SKIP_REASONS), ("failed", FAIL_REASONS)):
        family = CounterMetricFamily(f"unique_cube_days_{status}_total",
                                     f"Days {status}, by reason code (the run log has the "
                                     "reason itself).", labels=["pipeline", "reason"])  # fmt: skip
        codes = [reason_code(status, d["reason"]) for d in days if d["status"] == status]
        for code in table:
            family.add_metric([*name, code], codes.count(code))
        out.append(family)

    done = [d for d in days if d["status"] == "done"]
    seconds = [float(d["seconds"]) for d in done]
    buckets = [(str(float(le)), sum(s <= le for s in seconds)) for le in DAY_SECONDS_BUCKETS]
    histogram = HistogramMetricFamily("unique_cube_day_seconds", "Seconds to make a day "
                                      "(done days; GPP_M of its block not included).",
                                      labels=["pipeline"])  # fmt: skip
    histogram.add_metric(name, [*buckets, ("+Inf", len(seconds))], sum(seconds))
    out.append(histogram)

    tiled = [d for d in done if d.get("tiles")]
    tiles = sum(d["tiles"] for d in tiled)
    out.append(CounterMetricFamily("unique_cube_tiles_total", "Downscaler tiles sampled by "
                                   "the done days.", labels=["pipeline"]))  # fmt: skip
    out[-1].add_metric(name, tiles)
    tiled_seconds = sum(float(d["seconds"]) for d in tiled)
    gauge("unique_cube_tiles_per_second", "Downscaler tiles per second of the done days that "
          "sampled tiles (their whole day's time: windows, writing, item).",
          tiles / tiled_seconds if tiled_seconds > 0 else None)  # fmt: skip
    out.append(CounterMetricFamily("unique_cube_lost_reads_total", "Input reads lost after "
                                   "their retries, in the done days' provenance (a day that "
                                   "lost too much fails: reason inputs_lost).",
                                   labels=["pipeline"]))  # fmt: skip
    out[-1].add_metric(name, sum(len(d.get("lost_inputs", [])) for d in done))

    completed = [dt.date.fromisoformat(d["day"]) for d in days
                 if d["status"] in ("done", "already done")]  # fmt: skip
    gauge("unique_cube_newest_completed_day_timestamp_seconds", "End (local midnight after "
          "it) of the newest day this run found or made complete; its age is time() minus "
          "this.", _day_end(max(completed), state.time_zone) if completed else None)  # fmt: skip
    gauge("unique_cube_last_success_timestamp_seconds", "When this run last finished a day "
          "(Unix time).", state.last_success)  # fmt: skip
    gauge("unique_cube_peak_memory_bytes", "Peak resident memory of the run's own process.",
          None if state.peak_rss_mb is None else state.peak_rss_mb * 2**20)  # fmt: skip
    workers = state.worker_rss_mb.values()
    gauge("unique_cube_worker_memory_bytes", "Largest resident memory of a Dask worker when "
          "the run ended.", max(workers) * 2**20 if workers else None)  # fmt: skip
    return out


def _day_end(day: dt.date, time_zone: str) -> float:
    midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    return midnight.replace(tzinfo=zoneinfo.ZoneInfo(time_zone)).timestamp()


class _Collector:
    """The registry's view of a :class:`RunMetrics`: the families of its latest state."""

    def __init__(self, metrics: RunMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator:
        yield from metric_families(self._metrics.state)


class RunMetrics:
    """A run's metrics: its registry, endpoint, pushes and textfile.

    ``with`` it: the endpoint serves while the block lasts (a port already taken is said
    once and the run goes on without it). :meth:`update` after each day and :meth:`finish`
    at the end write the textfile and push; a failure of either is said, never raised.
    """

    def __init__(self, pipeline: Pipeline, textfile: Path, started: dt.datetime,
                 options: MetricsOptions | None = None,
                 say: Callable[[str], None] = log.info) -> None:  # fmt: skip
        self.options = options if options is not None else MetricsOptions.from_environment()
        self.state = RunState(pipeline.name, pipeline.product.time_zone, started)
        self.textfile = textfile
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        self.url: str | None = None
        """The endpoint's URL while it serves."""
        self._say, self._server, self._warned = say, None, set()
        self._push_failed = False

    def __enter__(self) -> RunMetrics:
        port, host = self.options.port, self.options.host
        if port is None:
            return self
        try:
            self._server, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as err:  # a port already taken, an address not on this host
            self._say(f"warning: metrics: cannot listen on {host}:{port} ({err}); the run goes "
                      f"on without its metrics endpoint (another port: --metrics-port or "
                      f"${PORT_ENV})")  # fmt: skip
            return self
        shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.url = f"http://{shown}:{self._server.server_port}/metrics"
        self._say(f"metrics at {self.url} (listening on {host}:{self._server.server_port})")
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server, self.url = None, None

    def update(self, report: dict) -> None:
        """After a day: the state from the run log ``report``, the textfile, a push (none
        after one failed: the next is at the end)."""
        self._record(report, push=not self._push_failed)

    def finish(self, report: dict) -> None:
        """At the end: the final run log (with the workers' memory), the textfile, a push."""
        self._record(report, push=True)

    def _record(self, report: dict, push: bool) -> None:
        try:
            state = self.state.with_report(report, dt.datetime.now(dt.UTC).timestamp())
            metric_families(state)  # what the endpoint, textfile and push will collect
        except Exception as err:  # a run log they cannot read is never a reason to fail a day
            log.debug("metrics not updated", exc_info=True)
            self._warn("state", f"warning: metrics not updated ({err!r}); the run goes on")
            return
        self.state = state
        self._write_textfile()
        if push and self.options.push_url:
            self._push()

    def _write_textfile(self) -> None:
        try:
            with write_atomic(self.textfile) as partial:
                partial.write_bytes(generate_latest(self.registry))
        except OSError as err:
            self._warn("textfile", f"warning: metrics: {self.textfile} not written ({err}); "
                                   "the run goes on")  # fmt: skip

    def _push(self) -> None:
        url = self.options.push_url
        try:
            pushadd_to_gateway(url, job=self.options.job, registry=self.registry,
                               grouping_key={"pipeline": self.state.pipeline},
                               timeout=PUSH_TIMEOUT_S)  # fmt: skip
        except (OSError, ValueError) as err:  # refused, no such host, HTTP 5xx, a bad URL
            log.debug("push to %s failed", url, exc_info=True)
            later = "" if self._push_failed else "; the next push is at its end"
            self._push_failed = True
            self._say(redact(f"warning: metrics: push to the Pushgateway {url} failed ({err}); "
                             f"the run goes on{later}"))  # fmt: skip
        else:
            self._push_failed = False

    def _warn(self, what: str, text: str) -> None:
        """Say ``text`` the first time ``what`` goes wrong; later times go to the log."""
        if what in self._warned:
            log.debug("%s", text)
        else:
            self._warned.add(what)
            self._say(redact(text))
