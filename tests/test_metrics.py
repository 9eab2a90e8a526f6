"""Prometheus metrics of a product run: the registry from a run's days, the exposition read
back, the endpoint, the Pushgateway and the textfile; a port already taken or a Pushgateway
that is not there is said and the run goes on. The integration tests scrape a small bilinear
run of the demo world while it runs and check the values against its run log."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import urllib.request
import zoneinfo
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import downscale_sections, linear_gpp_model, small_pipeline
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from unique_cube.config.pipeline import load_pipeline
from unique_cube.errors import ConfigError
from unique_cube.product.day import RunContext, day_layout, make_windows, plan_day
from unique_cube.product.metrics import (
    DAY_SECONDS_BUCKETS,
    FAIL_REASONS,
    SKIP_REASONS,
    MetricsOptions,
    RunMetrics,
    RunState,
    reason_code,
)
from unique_cube.product.run import DayResult
from unique_cube.product.static import StaticLayers

STARTED = dt.datetime(2023, 6, 10, 6, 0, tzinfo=dt.UTC)
PIPELINE = SimpleNamespace(name="korea-daily", product=SimpleNamespace(time_zone="Asia/Seoul"))
LOST = {"item": "MOD09GA.A2023156", "asset": "sur_refl_b01", "attempts": 4, "reason": "503"}


def _day(day: str, status: str, reason: str = "", seconds: float = 0.0, **details) -> dict:
    return DayResult(dt.date.fromisoformat(day), status, reason, seconds, details).as_dict()


# Reasons as product/run.py and friends give them.
TOO_CLOUDY = ("GPP_M missing on 64% of the coarse grid (no clear MODIS within 45 days); at most "
              "50% is filled")  # fmt: skip
LOST_TOO_MUCH = ("2023-06-08: input reads that failed after their retries cover 40% of the "
                 "grid, more than product.max_lost_fraction (10%): a/b; the day is not written "
                 "and the next run redoes it")  # fmt: skip

#: A backfill's days, each outcome a run gives.
DAYS = [
    _day("2023-06-01", "already done"),
    _day("2023-06-02", "done", seconds=12.5, scheme="s2", tiles=9, lost_inputs=[LOST, LOST]),
    _day("2023-06-03", "done", seconds=40.0, scheme="s2", tiles=9),
    _day("2023-06-04", "done", seconds=2.0, scheme="bilinear", tiles=0),
    _day("2023-06-05", "skipped", TOO_CLOUDY),
    _day("2023-06-06", "skipped", "/out/locks/2023-06-06.lock: held by another run"),
    _day("2023-06-07", "skipped", "no modis-sr item within 16 days"),
    _day("2023-06-08", "failed", LOST_TOO_MUCH, seconds=3.0),
    _day("2023-06-09", "failed", "GPP_M: the weather of 2023-06-09 could not be read"),
]
REPORT = {"days": DAYS, "peak_rss_mb": 1536.0, "worker_rss_mb": {"tcp://a": 900.0,
                                                                  "tcp://b": 2048.0}}  # fmt: skip


def parsed(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition: (name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, pipeline: str = "korea-daily", **labels) -> float | None:
    return samples.get((name, tuple(sorted({"pipeline": pipeline, **labels}.items()))))


def _metrics(tmp_path: Path, options: MetricsOptions | None = None, say=None) -> RunMetrics:
    return RunMetrics(PIPELINE, tmp_path / "runs" / "metrics.prom", STARTED,
                      options or MetricsOptions(), say or (lambda text: None))  # fmt: skip


# --- the registry from a run's days ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        ("skipped", "GPP_M missing on 12% of the coarse grid inside the MODIS footprints (no "
         "clear MODIS within 45 days); at most 10% is filled", "gpp_m_missing"),
        ("skipped", "no GPP_M at all on the grid", "no_modis"),
        ("skipped", "no modis-sr item within 45 days", "no_modis"),
        ("skipped", "no era5 item for 2023-06-01..2023-06-30", "no_weather"),
        ("skipped", "no complete day of era5 reanalysis", "no_weather"),
        ("skipped", "S2 needs its static layers: no DEM item; no S1 fallback", "no_static_layers"),
        ("skipped", "/p/locks/2023-06-01.lock: held by another run", "lock_busy"),
        ("skipped", "the reference state is being updated by another run (x: held by another "
         "run); the next run makes the day", "lock_busy"),
        ("skipped", "something new", "other"),
        ("failed", "skipped (no GPP_M at all on the grid), and /p/stac: disk full",
         "skip_not_recorded"),
        ("failed", "GPP_M: no modis-sr item could be read", "gpp_m"),
        ("failed", "2023-06-01: input reads that failed after their retries cover 30% of the "
         "grid", "inputs_lost"),
        ("failed", "the reference state could not be updated (disk full); the next run "
         "retries the day", "reference_state"),
        ("failed", "the Dask scheduler went away", "other"),
    ],
)  # fmt: skip
def test_reasons_map_to_a_few_codes(status: str, reason: str, code: str) -> None:
    assert reason_code(status, reason) == code
    assert code in (SKIP_REASONS if status == "skipped" else FAIL_REASONS)


def test_the_registry_counts_the_days_by_status_reason_and_time(tmp_path: Path) -> None:
    metrics = _metrics(tmp_path)
    metrics.update(REPORT)
    samples = parsed(generate_latest(metrics.registry).decode())

    statuses = {"done": 3, "already_done": 1, "skipped": 3, "failed": 2}
    for status, count in statuses.items():
        assert value(samples, "unique_cube_days_total", status=status) == count
    skips = {code: 0 for code in SKIP_REASONS} | {"gpp_m_missing": 1, "lock_busy": 1,
                                                  "no_modis": 1}  # fmt: skip
    for code, count in skips.items():  # every code present, 0 when none: increase() works
        assert value(samples, "unique_cube_days_skipped_total", reason=code) == count
    fails = {code: 0 for code in FAIL_REASONS} | {"inputs_lost": 1, "gpp_m": 1}
    for code, count in fails.items():
        assert value(samples, "unique_cube_days_failed_total", reason=code) == count
    assert not [k for k in samples if "retries" in str(k) or "held by" in str(k)]  # no free text

    # The histogram holds the done days only (12.5, 40 and 2 s).
    assert value(samples, "unique_cube_day_seconds_count") == 3
    assert value(samples, "unique_cube_day_seconds_sum") == pytest.approx(54.5)
    buckets = {le: value(samples, "unique_cube_day_seconds_bucket", le=str(float(le)))
               for le in DAY_SECONDS_BUCKETS}  # fmt: skip
    assert (buckets[1], buckets[5], buckets[15], buckets[30], buckets[60]) == (0, 1, 2, 2, 3)
    assert value(samples, "unique_cube_day_seconds_bucket", le="+Inf") == 3

    # 18 tiles in the 52.5 s of the two downscaled days; the bilinear day sampled none.
    assert value(samples, "unique_cube_tiles_total") == 18
    assert value(samples, "unique_cube_tiles_per_second") == pytest.approx(18 / 52.5)
    assert value(samples, "unique_cube_lost_reads_total") == 2

    # The newest day made or found complete is 2023-06-04 (later ones were skipped or failed),
    # and it ended at midnight in Seoul.
    seoul_midnight = dt.datetime(2023, 6, 5, tzinfo=zoneinfo.ZoneInfo("Asia/Seoul"))
    assert value(samples, "unique_cube_newest_completed_day_timestamp_seconds") == (
        seoul_midnight.timestamp()
    )
    assert value(samples, "unique_cube_run_start_timestamp_seconds") == STARTED.timestamp()
    assert value(samples, "unique_cube_peak_memory_bytes") == 1536 * 2**20
    assert value(samples, "unique_cube_worker_memory_bytes") == 2048 * 2**20
    assert (tmp_path / "runs" / "metrics.prom").read_bytes() == generate_latest(metrics.registry)


def test_a_run_without_days_has_zeros_and_no_newest_day(tmp_path: Path) -> None:
    metrics = _metrics(tmp_path)
    samples = parsed(generate_latest(metrics.registry).decode())
    assert value(samples, "unique_cube_days_total", status="done") == 0
    assert value(samples, "unique_cube_day_seconds_count") == 0
    for absent in ("newest_completed_day_timestamp_seconds", "last_success_timestamp_seconds",
                   "tiles_per_second", "peak_memory_bytes", "worker_memory_bytes"):  # fmt: skip
        assert not [k for k in samples if k[0] == f"unique_cube_{absent}"], absent


def test_last_success_moves_only_when_a_day_is_done() -> None:
    state = RunState("p", "UTC", STARTED)
    state = state.with_report({"days": DAYS[:1]}, now=100.0)  # already done: not this run's
    assert state.last_success is None
    state = state.with_report({"days": DAYS[:2]}, now=200.0)
    assert state.last_success == 200.0
    state = state.with_report({"days": DAYS[:5]}, now=300.0)  # two more done
    assert state.last_success == 300.0
    state = state.with_report({"days": DAYS}, now=400.0)  # skipped and failed only
    assert state.last_success == 300.0


def test_options_come_from_the_command_line_or_the_environment(monkeypatch) -> None:
    for name in ("PORT", "PUSH", "JOB"):
        monkeypatch.delenv(f"UNIQUE_CUBE_METRICS_{name}", raising=False)
    assert MetricsOptions.from_environment() == MetricsOptions()  # off unless asked
    assert MetricsOptions().port is None and MetricsOptions().push_url is None
    monkeypatch.setenv("UNIQUE_CUBE_METRICS_PORT", "9464")
    monkeypatch.setenv("UNIQUE_CUBE_METRICS_PUSH", "http://pushgateway:9091")
    monkeypatch.setenv("UNIQUE_CUBE_METRICS_JOB", "gpp-daily")
    assert MetricsOptions.from_environment() == MetricsOptions(
        9464, "0.0.0.0", "http://pushgateway:9091", "gpp-daily"
    )
    given = MetricsOptions.from_environment("127.0.0.1:0", "http://elsewhere", "mine")
    assert given == MetricsOptions(0, "127.0.0.1", "http://elsewhere", "mine")
    assert MetricsOptions.from_environment("[::1]:9000").host == "::1"
    with pytest.raises(ConfigError, match=r"--metrics-port 'http': expected PORT or HOST:PORT"):
        MetricsOptions.from_environment("http")
    monkeypatch.setenv("UNIQUE_CUBE_METRICS_PORT", "99999")
    with pytest.raises(ConfigError, match=r"\$UNIQUE_CUBE_METRICS_PORT '99999'"):
        MetricsOptions.from_environment()


def test_a_malformed_metrics_port_is_a_usage_error_before_anything_runs(tmp_path, capsys):
    from unique_cube.cli import main

    code = main(["run", str(tmp_path / "none.yaml"), "--date", "2023-06-01",
                 "--metrics-port", "localhost"])  # fmt: skip
    assert code == 3
    assert "--metrics-port 'localhost': expected PORT or HOST:PORT" in capsys.readouterr().err


#: A downscaled (S1) product on a grid of 160 x 160 px, made in 4 windows of 128 px.
TILED = """
grid: {crs: "EPSG:32652", bounds: [346020, 4171890, 350820, 4176690]}
downscale: {test: {start: 2023-06-01, end: 2023-10-31}, output: ds}
product: {output: product, scheme: s1, samples: 2, tile: 64, overlap: 16, window: 128}
"""


def test_a_downscaled_day_counts_the_tiles_it_sampled(tmp_path: Path) -> None:
    """The day's ``tiles`` (its run log and item) are the tiles the sampler was given: a tile
    touching several windows counts once, as it is sampled once."""
    (tmp_path / "p.yaml").write_text(small_pipeline(tmp_path, tmp_path / "models", TILED))
    pipeline = load_pipeline(tmp_path / "p.yaml")
    layout = day_layout(pipeline)
    assert len(layout.windows) == 4
    s1 = SimpleNamespace(scheme="s1", model=SimpleNamespace(config={"cond_channels": 1}),
                         blend_options={"scale": 1.0, "non_negative": True})  # fmt: skip
    models = SimpleNamespace(card=SimpleNamespace(gap_fill_days=16), checkpoints={"s1": s1})
    sampled: list[tuple[int, int]] = []

    def sampler(ckpt, requests: list) -> list[np.ndarray]:
        sampled.extend((r.ty, r.tx) for r in requests)
        return [np.zeros((r.samples, *r.condition.shape[1:]), "float32") for r in requests]

    run = RunContext(pipeline, models, StaticLayers({}, {}), layout, sampler)
    gpp_m = np.full((10, 10), 5.0, dtype="float32")
    plan = plan_day(run, dt.date(2023, 6, 1), gpp_m, np.zeros((10, 10)),
                    np.zeros((10, 10), dtype=bool))  # fmt: skip
    make_windows(run, plan, lambda *args: None)
    assert sum(len(tiles) for tiles in layout.tiles) > len(sampled)  # tiles shared by windows
    assert plan.details["tiles"] == len(sampled) == len(set(sampled)) == 9  # 3 x 3 tiles


# --- the endpoint, the Pushgateway, the textfile --------------------------------------------


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.read().decode()


def test_the_endpoint_serves_the_run_registry_and_stops_with_the_run(tmp_path: Path) -> None:
    said: list[str] = []
    metrics = _metrics(tmp_path, MetricsOptions(0, "127.0.0.1"), said.append)
    with metrics:
        url = metrics.url
        assert said == [f"metrics at {url} (listening on 127.0.0.1:{url.split(':')[2][:-8]})"]
        assert value(parsed(_scrape(url)), "unique_cube_days_total", status="done") == 0
        metrics.update(REPORT)
        text = _scrape(url)
        assert parsed(text) == parsed(generate_latest(metrics.registry).decode())
        assert "python_gc_objects_collected_total" not in text  # the run's own registry only
    assert metrics.url is None
    with pytest.raises(OSError):
        _scrape(url)


def test_a_port_already_taken_is_said_and_the_run_goes_on(tmp_path: Path) -> None:
    said: list[str] = []
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with _metrics(tmp_path, MetricsOptions(port, "127.0.0.1"), said.append) as metrics:
            metrics.update(REPORT)
            metrics.finish(REPORT)
    (line,) = said
    assert line.startswith(f"warning: metrics: cannot listen on 127.0.0.1:{port} (")
    assert "the run goes on without its metrics endpoint" in line
    assert metrics.url is None
    text = (tmp_path / "runs" / "metrics.prom").read_text()  # the textfile still is written
    assert value(parsed(text), "unique_cube_days_total", status="done") == 3


class _Gateway(BaseHTTPRequestHandler):
    """A Pushgateway stand-in: records each request; answers ``status``."""

    status = 200
    received: list

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.command, self.path, body.decode()))
        self.send_response(self.status)
        self.end_headers()

    do_POST = do_PUT = _record

    def log_message(self, *args) -> None:
        pass


@contextmanager
def _gateway(status: int = 200):
    handler = type("Gateway", (_Gateway,), {"status": status, "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.received
    finally:
        server.shutdown()
        server.server_close()


def test_each_day_and_the_end_are_pushed_to_the_gateway(tmp_path: Path) -> None:
    said: list[str] = []
    with _gateway() as (url, received):
        metrics = _metrics(tmp_path, MetricsOptions(push_url=url, job="gpp-daily"), said.append)
        metrics.update({"days": DAYS[:2]})
        metrics.finish(REPORT)
    assert said == []
    assert [(method, path) for method, path, _ in received] == [
        ("POST", "/metrics/job/gpp-daily/pipeline/korea-daily")
    ] * 2  # POST: what a run leaves out (its last success) stays from the run before
    first, last = (parsed(body) for _, _, body in received)
    assert value(first, "unique_cube_days_total", status="done") == 1
    assert value(last, "unique_cube_days_total", status="done") == 3
    assert last == parsed(generate_latest(metrics.registry).decode())


@pytest.mark.parametrize("gateway", ["refused", "http-500"])
def test_a_failing_push_is_said_and_never_fails_the_run(tmp_path: Path, gateway: str) -> None:
    said: list[str] = []
    with _gateway(500) as (url, received):
        if gateway == "refused":  # no Pushgateway at all: a port nobody listens on
            with closing(socket.socket()) as free:
                free.bind(("127.0.0.1", 0))
                url = f"http://127.0.0.1:{free.getsockname()[1]}"
        metrics = _metrics(tmp_path, MetricsOptions(push_url=url), said.append)
        metrics.update({"days": DAYS[:2]})
        metrics.update({"days": DAYS[:3]})  # not pushed: the first push failed
        metrics.finish(REPORT)  # tried once more
    assert len(said) == 2, said
    assert said[0].startswith(f"warning: metrics: push to the Pushgateway {url} failed (")
    assert said[0].endswith("the run goes on; the next push is at its end")
    assert said[1].endswith("the run goes on")
    assert len(received) == (2 if gateway == "http-500" else 0)
    text = (tmp_path / "runs" / "metrics.prom").read_text()
    assert value(parsed(text), "unique_cube_days_total", status="done") == 3


def test_a_run_log_the_metrics_cannot_read_is_said_and_the_last_state_kept(tmp_path) -> None:
    said: list[str] = []
    metrics = _metrics(tmp_path, say=said.append)
    metrics.update({"days": DAYS[:2]})
    metrics.update({"days": [{"day": "2023-06-10", "status": "done"}]})  # no seconds
    metrics.update({"days": "not a list"})
    (line,) = said
    assert line.startswith("warning: metrics not updated (KeyError('seconds'))")
    samples = parsed(generate_latest(metrics.registry).decode())
    assert value(samples, "unique_cube_days_total", status="done") == 1


def test_a_textfile_that_cannot_be_written_is_said_once(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    said: list[str] = []
    metrics = RunMetrics(PIPELINE, blocker / "runs" / "metrics.prom", STARTED, MetricsOptions(),
                         said.append)  # fmt: skip
    metrics.update({"days": DAYS[:2]})
    metrics.update(REPORT)
    (line,) = said
    assert line.startswith(f"warning: metrics: {blocker}/runs/metrics.prom not written (")
    assert value(parsed(generate_latest(metrics.registry).decode()), "unique_cube_days_total",
                 status="done") == 3  # fmt: skip


# --- a small product run, scraped while it runs ---------------------------------------------

#: The product section: with MODIS gaps filled over at most 2 days and at most 10 % of the grid
#: neighbour-filled, 2023-06-05 and 06-06 are made and 06-07 and 06-08 skipped (their GPP_M is
#: missing on 14 % of the grid).
BILINEAR = """
output: {out}
scheme: bilinear
max_gap_days: 2
max_missing_fraction: 0.1
"""


@pytest.fixture
def bilinear_spec(demo_world, tmp_path: Path) -> Path:
    """A bilinear product of the small demo world (no downscaler, no Dask cluster) with a GPP_M
    model made in a blink."""
    world, manifest = demo_world
    product = BILINEAR.format(out=tmp_path / "product")
    spec = tmp_path / "pipeline.yaml"
    models = linear_gpp_model(tmp_path / "models")
    spec.write_text(small_pipeline(world, models, downscale_sections(world, manifest, tmp_path,
                                                                     product)))  # fmt: skip
    return spec


def _latest_run_log(product: Path) -> dict:
    logs = [json.loads(p.read_text()) for p in (product / "runs").glob("*.json")]
    return max(logs, key=lambda log: log["started"])


def _expected(log: dict) -> dict:
    """What the metrics must say of a run log."""
    days = log["days"]
    done = [d for d in days if d["status"] == "done"]
    return {
        "statuses": {s.replace(" ", "_"): sum(d["status"] == s for d in days)
                     for s in ("done", "already done", "skipped", "failed")},
        "skip_codes": sorted(reason_code("skipped", d["reason"]) for d in days
                             if d["status"] == "skipped"),
        "seconds": (len(done), sum(d["seconds"] for d in done)),
        "newest": max(d["day"] for d in days if d["status"] in ("done", "already done")),
    }  # fmt: skip


def _observed(samples: dict) -> dict:
    """What the metrics of the integration pipeline say, in the terms of :func:`_expected`."""

    def get(name: str, **labels) -> float | None:
        return value(samples, name, "small-demo", **labels)

    def newest() -> str:  # the day that ended at that midnight in Seoul (product.time_zone)
        end = get("unique_cube_newest_completed_day_timestamp_seconds")
        midnight = dt.datetime.fromtimestamp(end, zoneinfo.ZoneInfo("Asia/Seoul"))
        assert midnight.time() == dt.time()
        return (midnight.date() - dt.timedelta(days=1)).isoformat()

    codes = [(k[1], v) for k, v in samples.items() if k[0] == "unique_cube_days_skipped_total"]
    return {
        "statuses": {status: get("unique_cube_days_total", status=status)
                     for status in ("done", "already_done", "skipped", "failed")},
        "skip_codes": sorted(dict(labels)["reason"] for labels, n in codes for _ in range(int(n))),
        "seconds": (get("unique_cube_day_seconds_count"),
                    pytest.approx(get("unique_cube_day_seconds_sum"))),
        "newest": newest(),
    }  # fmt: skip


def test_the_endpoint_agrees_with_the_run_log_while_the_run_goes_on(bilinear_spec: Path) -> None:
    from unique_cube.demo.serve import served
    from unique_cube.product.run import run

    product = bilinear_spec.parent / "product"
    with served(load_pipeline(bilinear_spec)) as pipeline:
        run(pipeline, [dt.date(2023, 6, 5)])  # then kept: "already done"
        said: list[str] = []
        scraped: list[tuple[dict, dict]] = []

        def say(text: str) -> None:
            said.append(text)
            # A day's line comes before its result is recorded: at "[k/n]" the endpoint and
            # the run log both hold the days before k.
            if text.startswith(("[2/3]", "[3/3]")):
                url = next(t for t in said if t.startswith("metrics at ")).split()[2]
                scraped.append((_latest_run_log(product), parsed(_scrape(url))))

        days = [dt.date(2023, 6, 5) + dt.timedelta(days=i) for i in range(4)]
        report = run(pipeline, days, say=say, metrics=MetricsOptions(0, "127.0.0.1"))
    assert report["counts"] == {"already done": 1, "done": 1, "skipped": 2}
    assert len(scraped) == 2
    for log, samples in scraped:
        assert _observed(samples) == _expected(log)
    assert [len(log["days"]) for log, _ in scraped] == [2, 3]

    final = parsed((product / "runs" / "metrics.prom").read_text())  # after the run's end
    assert _observed(final) == _expected(report)
    assert _expected(report)["skip_codes"] == ["gpp_m_missing", "gpp_m_missing"]
    assert _expected(report)["newest"] == "2023-06-06"
    assert value(final, "unique_cube_peak_memory_bytes", "small-demo") == (
        report["peak_rss_mb"] * 2**20
    )
    assert value(final, "unique_cube_tiles_total", "small-demo") == 0  # bilinear
    assert {d["tiles"] for d in report["days"] if d["status"] == "done"} == {0}
    started = dt.datetime.fromisoformat(report["started"]).timestamp()
    assert value(final, "unique_cube_run_start_timestamp_seconds", "small-demo") == started
    assert value(final, "unique_cube_last_success_timestamp_seconds", "small-demo") > started


def test_a_taken_port_and_no_pushgateway_leave_the_run_to_go_on(bilinear_spec, capsys) -> None:
    from unique_cube.cli import main

    with closing(socket.socket()) as taken, closing(socket.socket()) as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))  # bound, never listening: a push is refused
        code = main(["run", str(bilinear_spec), "--date", "2023-06-05",
                     "--metrics-port", f"127.0.0.1:{taken.getsockname()[1]}",
                     "--metrics-push", f"http://127.0.0.1:{free.getsockname()[1]}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: metrics: cannot listen on 127.0.0.1:" in err
    assert "warning: metrics: push to the Pushgateway http://127.0.0.1:" in err
    log = _latest_run_log(bilinear_spec.parent / "product")
    assert log["counts"] == {"done": 1}
    final = parsed((bilinear_spec.parent / "product" / "runs" / "metrics.prom").read_text())
    assert value(final, "unique_cube_days_total", "small-demo", status="done") == 1
