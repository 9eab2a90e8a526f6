"""The daily product under faults, end to end on the small demo world.

One Dask cluster serves the module (a CPU worker, two "GPU" workers), named to every run by
``$DASK_SCHEDULER_ADDRESS``, so undisturbed and disturbed runs sample with the same workers and
must give the same maps. Faults: signed asset URLs that expire, a lost MODIS read, workers
killed mid-run (a CPU worker, and downscaler actors' workers as the pool starts and as it
samples, each at a set step), the process killed
at several points of a day's write, and two runs of one day at once. After each, the store and
its STAC catalog are checked for consistency, and outputs and logs for secrets.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import downscale_sections, small_pipeline
from signed_assets import SignedAssetServer
from test_daily import PRODUCT
from worker_faults import die_at_tile, kill_at_actor_start, undo_die_at_tile

from unique_cube.cli import main
from unique_cube.config.catalog import CATALOG_DIR
from unique_cube.demo.serve import world_stac_files
from unique_cube.downscale.cluster import SCHEDULER_ADDRESS_ENV, dask_client, find_gpu_workers
from unique_cube.inputs.stac_server import LocalStacServer
from unique_cube.product.stac import file_checksum
from unique_cube.product.variables import QA_FLAGS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

KEY = "fake-subscription-key-5b1e0c7d"
# Early June: clear MODIS within 16 days of each pixel-day, so the runs read a month of MODIS
# (product.max_gap_days 16, below) instead of the monsoon's three (the default 45): the
# faults are the same, the module an order of minutes faster.
DAYS = ["2023-06-01", "2023-06-02"]


TIMINGS: list[dict] = []
"""Each run of the module: its fault, days, seconds and outcome (benchmarks/faults.py)."""


def _timed(fault: str, argv: list[str], days: int) -> int:
    began = time.perf_counter()
    code = main(argv)
    TIMINGS.append({"fault": fault, "days": days, "seconds": time.perf_counter() - began,
                    "exit": code})  # fmt: skip
    return code


@pytest.fixture(scope="module", autouse=True)
def _report_timings():
    yield
    target = os.environ.get("UNIQUE_CUBE_FAULT_TIMINGS")
    if target:
        Path(target).write_text(json.dumps(TIMINGS, indent=1))


@pytest.fixture(scope="module")
def cluster():
    """The module's Dask cluster; every run of the module connects to it. The fake key is in
    the environment before the workers start (they sign URLs too)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PC_SDK_SUBSCRIPTION_KEY", KEY)
        env.delenv(SCHEDULER_ADDRESS_ENV, raising=False)
        with dask_client(cpu_workers=1, gpu_workers=2, dashboard_address="127.0.0.1:0") as client:
            env.setenv(SCHEDULER_ADDRESS_ENV, client.scheduler.address)
            yield client


@pytest.fixture(scope="module")
def signed(demo_world, tmp_path_factory):
    """The world's COGs behind signed URLs that live 1 s, and its items in a STAC API; the
    catalog signs with ``signed_assets:sign``: (asset server, catalog file, STAC API URL)."""
    world = demo_world[0].resolve()
    tmp = tmp_path_factory.mktemp("signed")
    with SignedAssetServer(world, KEY, ttl=1.0) as assets:
        files = world_stac_files(world, tmp / "stac")
        for path in files:
            features = json.loads(path.read_text())
            for item in features.get("features", []):
                for asset in item["assets"].values():
                    if asset["href"].endswith(".tif"):  # Zarr weather stays a local store
                        asset["href"] = assets.href(Path(asset["href"].removeprefix("file://")))
            path.write_text(json.dumps(features))
        catalog = tmp / "signed.yaml"
        text = (CATALOG_DIR / "demo.yaml").read_text().replace("signing: none", "signing: x")
        catalog.write_text(text.replace("signing: x", "signing: signed_assets:sign"))
        with LocalStacServer(files) as stac:
            yield assets, catalog, stac.url


def _pipeline(demo_world, models, downscalers, out: Path, signed=None, **extra) -> Path:
    world, manifest = demo_world
    # The second of two runs at once waits; GPP_M reads MODIS within 16 days of the days.
    extra = {"lock_timeout_s": 300, "max_gap_days": 16, **extra}
    product = PRODUCT.format(out=out, extra="\n".join(f"{k}: {v}" for k, v in extra.items()))
    text = small_pipeline(world, models, downscale_sections(world, manifest, downscalers, product))
    if signed is not None:
        _, catalog, url = signed
        text = text.replace("catalog: demo", f"catalog: {catalog}\nstac_url: {url}")
        text = text.replace(f"serve_world: {world}\n", "")
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def setup(demo_world, trained_models, trained_downscalers, cluster):
    def make(out: Path, signed=None, **extra) -> Path:
        return _pipeline(demo_world, trained_models, trained_downscalers, out, signed, **extra)

    return make


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory) -> Path:
    """An undisturbed run of both days from the world's files: its product folder."""
    out = tmp_path_factory.mktemp("reference") / "product"
    argv = ["run", str(setup(out)), "--start", DAYS[0], "--end", DAYS[-1]]
    assert _timed("none, first run (imports, actors and caches cold)", argv, 2) == 0
    first = _maps(out)
    # Redone on the warm cluster: the baseline of the timings, and the same maps again (what
    # every comparison with this run relies on).
    assert _timed("none", [*argv, "--force"], 2) == 0
    for name, values in _maps(out).items():
        np.testing.assert_array_equal(values, first[name], err_msg=name)
    return out


def _maps(out: Path, days=DAYS) -> dict[str, np.ndarray]:
    with xr.open_zarr(out / "gpp.zarr", consolidated=False) as cube:
        return {v: cube[v].sel(time=list(days)).values for v in ("gpp", "gpp_sd", "qa", "gpp_m")}


def _assert_same_maps(out: Path, reference: Path, days=DAYS) -> None:
    got, expected = _maps(out, days), _maps(reference, days)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def _assert_consistent(out: Path, done: list[str]) -> None:
    """Markers, items, COG checksums and the collection agree; no half-written file is left."""
    markers = sorted(p.stem for p in (out / "state").glob("????-??-??.json"))
    assert markers == sorted(done)
    collection = json.loads((out / "stac/unique-cube-gpp/collection.json").read_text())
    links = [x["href"] for x in collection["links"] if x["rel"] == "item"]
    assert links == sorted(set(links)) == [f"./items/{d}.json" for d in sorted(done)]
    for day in done:
        item = json.loads((out / f"stac/unique-cube-gpp/items/{day}.json").read_text())
        marker = json.loads((out / f"state/{day}.json").read_text())
        for name, asset in item["assets"].items():
            if "file:checksum" in asset:
                path = (out / "stac/unique-cube-gpp/items" / asset["href"]).resolve()
                assert asset["file:checksum"] == file_checksum(path) == marker["checksums"][name]
        assert day not in collection.get("unique_cube:skipped_days", {})
    partial = [p for p in out.rglob("*.partial") if "gpp.zarr" not in p.parts]
    assert partial == []
    with xr.open_zarr(out / "gpp.zarr", consolidated=False) as cube:
        for day in done:
            assert np.isfinite(cube["gpp"].sel(time=day).values).all()


def _assert_no_secrets(out: Path, *texts: str, tokens=()) -> None:
    secrets = [KEY, "sig=", *tokens]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{secret!r} written into {path}"
    for text in texts:
        for secret in secrets:
            assert secret not in text


# ------------------------------------------------------------------------------ signed URLs


def test_signed_urls_that_expire_change_nothing_and_leak_nothing(
    setup, signed, reference, cluster, tmp_path, capfd, caplog, monkeypatch
) -> None:
    assets = signed[0]
    before = assets.status[403]
    out = tmp_path / "product"
    # Tokens live 1 s; however fast the run, every token issued at search time is dead when
    # GPP_M reads its MODIS (no race to win).
    run_module = importlib.import_module("unique_cube.product.run")  # the package's `run` is
    real_block = run_module.gpp_m_block  # the function

    def expired_first(*args, **kwargs):
        assets.expire_all()
        return real_block(*args, **kwargs)

    monkeypatch.setattr(run_module, "gpp_m_block", expired_first)
    with caplog.at_level("DEBUG"):
        argv = ["-v", "run", str(setup(out, signed)), "--start", DAYS[0], "--end", DAYS[-1]]
        code = _timed("signed URLs, every token expiring after 1 s", argv, 2)
    assert code == 0
    assert assets.status[403] > before  # tokens did expire during the run, and were renewed
    _assert_same_maps(out, reference)
    _assert_consistent(out, DAYS)
    captured = capfd.readouterr()
    worker_logs = json.dumps(cluster.get_worker_logs(), default=str)
    tokens = list(assets.tokens)
    _assert_no_secrets(out, captured.out, captured.err, caplog.text, worker_logs, tokens=tokens)


def _modis_files(demo_world, day: str) -> list[str]:
    """The world-relative paths of the COGs of the MODIS item of ``day``."""
    world = demo_world[0]
    features = json.loads((world / "stac/modis-09GA-061.json").read_text())["features"]
    (item,) = [f for f in features if f["properties"]["start_datetime"].startswith(day)]
    return [a["href"] for a in item["assets"].values() if a["href"].endswith(".tif")]


def _dem_files(demo_world) -> list[str]:
    features = json.loads((demo_world[0] / "stac/cop-dem-glo-30.json").read_text())["features"]
    return [a["href"] for f in features for a in f["assets"].values() if a["href"].endswith(".tif")]


def test_lost_reads_are_flagged_within_the_limit(
    setup, signed, demo_world, tmp_path, capsys
) -> None:
    """A corrupt MODIS item: its footprint is flagged that day. A corrupt DEM: S1 instead of
    S2 (the documented fallback), said in the run's output."""
    assets = signed[0]
    modis = _modis_files(demo_world, DAYS[1])
    files = modis + _dem_files(demo_world)
    assets.faults.update(dict.fromkeys(files, "corrupt"))
    try:
        out = tmp_path / "product"
        spec = setup(out, signed, max_lost_fraction=1.0, read_retries=1)
        argv = ["run", str(spec), "--date", DAYS[1]]
        assert _timed("a corrupt MODIS item and DEM (lost, flagged; S1)", argv, 1) == 0
    finally:
        for name in files:
            assets.faults.pop(name)
    assert "static layers incomplete (reads lost:" in capsys.readouterr().err
    item = json.loads((out / f"stac/unique-cube-gpp/items/{DAYS[1]}.json").read_text())
    assert item["properties"]["unique_cube:scheme"] == "s1"
    lost = item["properties"]["unique_cube:lost_inputs"]
    assert {r["item"] for r in lost} == {Path(modis[0]).parent.name}
    assert all(r["attempts"] == 2 and "sig=" not in r["reason"] for r in lost)
    fraction = item["properties"]["unique_cube:qa_fractions"]["input_lost"]
    qa = _maps(out, [DAYS[1]])["qa"][0]
    assert fraction == pytest.approx(((qa & QA_FLAGS["input_lost"]) > 0).mean()) and fraction > 0
    assert ((qa & 3) == QA_FLAGS["ddpm_s1"]).all()
    _assert_consistent(out, [DAYS[1]])
    _assert_no_secrets(out, tokens=list(assets.tokens))


def test_a_day_that_lost_too_much_fails_and_the_next_run_redoes_it(
    setup, signed, demo_world, reference, tmp_path, capsys
) -> None:
    assets = signed[0]
    files = _modis_files(demo_world, DAYS[1])
    out = tmp_path / "product"
    spec = setup(out, signed, read_retries=1)  # max_lost_fraction: the default
    assets.faults.update(dict.fromkeys(files, "404"))
    try:
        argv = ["run", str(spec), "--start", DAYS[0], "--end", DAYS[1]]
        assert _timed("MODIS item answering 404 (day fails)", argv, 2) == 6
    finally:
        for name in files:
            assets.faults.pop(name)
    err = capsys.readouterr().err
    assert f"{DAYS[1]}: failed" in err and "max_lost_fraction" in err and "sig=" not in err
    _assert_consistent(out, [DAYS[0]])  # the failed day left nothing behind
    assert _timed("the rerun after it", argv, 2) == 0
    _assert_consistent(out, DAYS)
    _assert_same_maps(out, reference, [DAYS[1]])


# ------------------------------------------------------------------------------ workers


class _KillOnce:
    """Worker plugin: the first CPU worker (no GPU resource) to start its ``after``-th task
    SIGKILLs itself, once in the whole cluster (an O_EXCL marker file)."""

    def __init__(self, marker: str, after: int = 5) -> None:
        self.marker, self.after, self.count = marker, after, 0

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "executing" or "GPU" in self.worker.state.total_resources:
            return
        self.count += 1
        if self.count < self.after:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def test_killed_workers_lose_nothing(setup, reference, cluster, tmp_path) -> None:
    """Three workers die during one run, each at a set step (:mod:`worker_faults`): a CPU
    worker at its fifth task, a GPU worker once its actor's model has loaded (the pool is
    starting), and the worker of an actor asked for its second tile. The run makes both days,
    the same as the undisturbed run."""
    from distributed.diagnostics.plugin import WorkerPlugin

    markers = {k: tmp_path / f"killed-{k}" for k in ("cpu", "actor-start", "actor-tile")}
    plugin = type("KillOnce", (_KillOnce, WorkerPlugin), {})(str(markers["cpu"]))
    cluster.register_plugin(plugin, name="kill-once")
    gpus = list(find_gpu_workers(cluster))
    cluster.run(die_at_tile, str(markers["actor-tile"]), 2, workers=gpus)
    try:
        with kill_at_actor_start(cluster, markers["actor-start"], "memory"):
            out = tmp_path / "product"
            argv = ["run", str(setup(out)), "--start", DAYS[0], "--end", DAYS[-1]]
            code = _timed("a CPU worker and two actors' workers killed", argv, 2)
    finally:
        cluster.unregister_worker_plugin("kill-once")
        cluster.run(undo_die_at_tile, workers=list(find_gpu_workers(cluster)))
    assert code == 0
    assert markers["cpu"].exists(), "no CPU-side task was interrupted"
    assert markers["actor-start"].read_text() in gpus, "no actor's worker died at start-up"
    assert markers["actor-tile"].read_text() in gpus, "no actor's worker died mid-map"
    _assert_same_maps(out, reference)
    _assert_consistent(out, DAYS)
    deadline = time.monotonic() + 180  # the Nannies bring the workers back for the next tests
    while len(cluster.scheduler_info()["workers"]) < 3:
        assert time.monotonic() < deadline, "the killed workers did not come back"
        time.sleep(0.2)


# ------------------------------------------------------------------------------ writes

KILL_AT = """
import os, signal, sys
from unique_cube.product import cog, store

point = sys.argv[1]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "cog":  # the second COG of the day is half-written
    real_finish = cog.StagedCog.finish
    calls = []
    def finish(self):
        calls.append(self.path)
        if len(calls) == 2:
            self.path.with_name(f".{self.path.name}.{os.getpid()}.partial").write_bytes(b"II*")
            die()
        return real_finish(self)
    cog.StagedCog.finish = finish
elif point == "zarr":  # the first window's Zarr region is written, nothing after it
    real_region = store.ProductStore._write_region
    def region(self, *args):
        real_region(self, *args)
        die()
    store.ProductStore._write_region = region
elif point == "item":  # the item is written, the collection not yet
    store.ProductStore._update_catalog = lambda self, **kw: die() if kw.get("done") else None
elif point == "marker":  # everything but the completion marker
    real_json = store.write_json
    def write_json(path, data):
        if path.parent.name == "state":
            die()
        real_json(path, data)
    store.write_json = write_json
from unique_cube.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("point", ["cog", "zarr", "item", "marker"])
def test_a_run_killed_while_writing_a_day_is_repaired(setup, reference, tmp_path, point) -> None:
    out = tmp_path / "product"
    spec = setup(out)
    args = ["run", str(spec), "--date", DAYS[0]]
    # Its own process group: the STAC server it started dies with it (as with its pod).
    killed = subprocess.Popen([sys.executable, "-c", KILL_AT, point, *args], text=True,
                              stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        err = killed.communicate(timeout=600)[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(killed.pid, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    assert not (out / f"state/{DAYS[0]}.json").exists()  # not done
    assert _timed(f"the rerun after a kill at {point}", args, 1) == 0
    _assert_consistent(out, [DAYS[0]])
    _assert_same_maps(out, reference, [DAYS[0]])


def test_two_runs_of_one_day_at_once_corrupt_nothing(setup, reference, tmp_path) -> None:
    out = tmp_path / "product"
    spec = setup(out)
    args = [sys.executable, "-m", "unique_cube.cli", "run", str(spec), "--date", DAYS[0]]
    began = time.perf_counter()
    runs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [run.communicate(timeout=600)[1] for run in runs]
    TIMINGS.append({"fault": "two runs of one day at once (processes, wall)", "days": 1,
                    "seconds": time.perf_counter() - began,
                    "exit": max(run.returncode for run in runs)})  # fmt: skip
    assert [run.returncode for run in runs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    logs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    statuses = sorted(day["status"] for log in logs for day in log["days"])
    assert statuses == ["already done", "done"]  # one made it, the other waited and kept it
    _assert_consistent(out, [DAYS[0]])
    _assert_same_maps(out, reference, [DAYS[0]])


# ------------------------------------------------------------------------------ write failures

FAIL_AT = """
import errno, resource, signal, sys
from unique_cube.errors import LoadError
from unique_cube.product import day, store

fault = sys.argv[1]
if fault == "full-disk":  # from when the product folder is opened, no file can pass 64 KB
    real_init = store.ProductStore.__init__
    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
    store.ProductStore.__init__ = init
elif fault == "corrupt-input":  # a day's input turns out unreadable while it is made
    def window_arrays(*args, **kwargs):
        raise LoadError("a corrupt input (injected)")
    day.window_arrays = window_arrays
elif fault == "read-only-stac":
    real_staged = store.staged_json
    def staged_json(path, data):
        if "stac" in path.parts:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_staged(path, data)
    store.staged_json = staged_json
from unique_cube.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _failing_run(fault: str, argv: list[str]) -> tuple[int, str]:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", FAIL_AT, fault, *argv], text=True,
                          capture_output=True, timeout=600)  # fmt: skip
    TIMINGS.append({"fault": fault, "days": len(DAYS), "seconds": time.perf_counter() - began,
                    "exit": done.returncode})  # fmt: skip
    return done.returncode, done.stderr


def _published(out: Path) -> dict[str, bytes]:
    """Every published file of a product folder but the datacube and the run logs."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parts[len(out.parts)] in ("cogs", "stac", "state")
            and "locks" not in p.parts}  # fmt: skip


def test_write_failures_fail_their_days_and_a_failed_force_keeps_the_day(
    setup, reference, tmp_path
) -> None:
    out = tmp_path / "product"
    spec = setup(out)
    both = ["run", str(spec), "--start", DAYS[0], "--end", DAYS[-1]]
    code, err = _failing_run("full-disk", both)
    assert code == 6, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (run_log,) = (out / "runs").glob("*.json")  # written whole although the disk was "full"
    days = json.loads(run_log.read_text())["days"]
    assert [d["status"] for d in days] == ["failed", "failed"]  # the backfill went on
    # GDAL's write errors carry no errno (EFBIG when zarr or Python writes first)
    assert all("staging its COGs" in d["reason"] or "EFBIG" in d["reason"] for d in days), days
    assert not list(out.rglob("*.partial")) and not list(out.glob("state/*.json"))
    assert _timed("a rerun after a full disk", both, 2) == 0  # room again: both days made
    _assert_consistent(out, DAYS)
    _assert_same_maps(out, reference)

    published = _published(out)
    for fault in ("corrupt-input", "read-only-stac"):
        code, err = _failing_run(fault, ["run", str(spec), "--date", DAYS[0], "--force"])
        assert code == 6, err[-3000:]
        assert "corrupt input" in err if fault == "corrupt-input" else "EROFS" in err
        assert _published(out) == published, fault  # the old day: published, done, unchanged
        _assert_consistent(out, DAYS)
        _assert_same_maps(out, reference)
