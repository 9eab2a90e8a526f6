"""Downscaling on a local Dask cluster: GPU-pinned actors, supervision, the scheduler address.

One cluster on 127.0.0.1 serves the module: a CPU worker and two "GPU" workers (resource GPU=1,
one thread; on this CPU-only machine they sample on the CPU), each a process under a Nanny.
Workers are killed at defined steps of an actor's life (:mod:`worker_faults`), never by a
sleep racing the work; one test starts a cluster of its own, whose worker is not to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import distributed
import numpy as np
import psutil
import pytest
import torch
from worker_faults import kill_at_actor_start, stall_at_load, undo_stall_at_load

from unique_cube.downscale.actors import DownscalerActor, model_loads
from unique_cube.downscale.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from unique_cube.downscale.cluster import (
    GPU,
    SCHEDULER_ADDRESS_ENV,
    dask_client,
    find_gpu_workers,
    local_cluster,
)
from unique_cube.downscale.conditions import condition_stack
from unique_cube.downscale.network import ConditionalUNet
from unique_cube.downscale.pool import ActorPool, actor_lost, downscale_distributed
from unique_cube.downscale.sampling import downscale
from unique_cube.downscale.schedule import NoiseSchedule
from unique_cube.errors import ActorPoolError, ClusterError, DownscaleError

SAMPLING = {"samples": 2, "ddim_steps": 3, "tile": 16, "overlap": 4}  # 3 x 3 tiles of 40 x 40
SEEDS = [3, 4]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    """Wait for something that will happen (a Nanny restarting a worker takes a while on a
    busy machine); ``timeout`` only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small S1 network with random weights: every tile's output depends on its noise."""
    torch.manual_seed(0)
    model = ConditionalUNet(1, base=8, mults=(1, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "downscaler_s1.pt"
    save_checkpoint(path, Checkpoint(model, NoiseSchedule.make("cosine", 50), "s1", {}, {}))
    return path


@pytest.fixture(scope="module")
def conditions() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [condition_stack(rng.uniform(2, 8, (40, 40)).astype("float32"), None, "s1")
            for _ in SEEDS]  # fmt: skip


@pytest.fixture(scope="module")
def announced() -> list[str]:
    """What ``dask_client`` said when it started the module's cluster."""
    return []


@pytest.fixture(scope="module")
def cluster(announced: list[str]) -> Iterator:
    """The module's client; on exit, no worker process is left behind."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv(SCHEDULER_ADDRESS_ENV, raising=False)
        with dask_client(cpu_workers=1, gpu_workers=2, dashboard_address="127.0.0.1:0",
                         say=announced.append) as client:  # fmt: skip
            yield client
            pids = list(client.run(os.getpid).values())
    assert pids and not any(psutil.pid_exists(pid) for pid in pids)


@pytest.fixture(autouse=True)
def _whole_cluster(request: pytest.FixtureRequest) -> None:
    """A test of the module's cluster starts once its workers are all up and answering (a
    worker an earlier test killed is restarted by its Nanny, which takes a while on a busy
    machine)."""
    if "cluster" not in request.fixturenames:
        return
    client = request.getfixturevalue("cluster")

    def whole() -> bool:
        workers = client.scheduler_info()["workers"].values()
        if len(workers) < 3 or any(w.get("status", "running") != "running" for w in workers):
            return False
        try:
            return len(client.run(os.getpid, wait=True)) == 3
        except OSError:  # a worker that is going away
            return False

    _wait_for(whole, "the module's three workers to be up")


@pytest.fixture(scope="module")
def reference(checkpoint: Path, conditions: list[np.ndarray], cluster) -> list[np.ndarray]:
    """``downscale()`` in this process, with the workers' torch thread count (the last bits
    of a CPU convolution depend on it)."""
    threads = cluster.run(torch.get_num_threads, workers=list(find_gpu_workers(cluster)))
    (workers_threads,) = set(threads.values())
    ckpt = load_checkpoint(checkpoint)
    with _torch_threads(workers_threads):
        return [
            downscale(ckpt, c, seed=s, **SAMPLING) for c, s in zip(conditions, SEEDS, strict=True)
        ]


def test_local_cluster_has_a_cpu_group_and_a_gpu_group(cluster, announced) -> None:
    workers = cluster.scheduler_info()["workers"].values()
    groups = sorted((w["name"], w["nthreads"], w["resources"]) for w in workers)
    assert groups == [("cpu-0", 1, {}), ("gpu-0", 1, {GPU: 1}), ("gpu-1", 1, {GPU: 1})]
    assert all(address.startswith("tcp://127.0.0.1:") for address in find_gpu_workers(cluster))
    assert announced == [
        f"Dask scheduler {cluster.scheduler.address}; dashboard {cluster.dashboard_link}"
    ]
    with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as page:
        assert page.status == 200


def test_distributed_maps_equal_local_maps(cluster, checkpoint, conditions, reference) -> None:
    with ActorPool(cluster, checkpoint) as pool:
        several = downscale_distributed(pool, checkpoint, conditions, seed=SEEDS, **SAMPLING)
        one = downscale_distributed(pool, checkpoint, conditions[1], seed=SEEDS[1], **SAMPLING)
        other_seed = downscale_distributed(pool, checkpoint, conditions[0], seed=9, **SAMPLING)
    assert len(several) == 2
    for got, expected in zip(several, reference, strict=True):
        assert got.shape == (2, 40, 40) and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(one, reference[1])
    assert not np.array_equal(other_seed, reference[0])
    # with a client, a pool is made for the call
    single = downscale_distributed(cluster, checkpoint, conditions[0], seed=SEEDS[0], **SAMPLING)
    np.testing.assert_array_equal(single, reference[0])


def test_one_actor_per_gpu_worker_and_one_model_load_each(cluster, checkpoint, conditions):
    gpus = set(find_gpu_workers(cluster))
    loads_before = cluster.run(model_loads)
    with ActorPool(cluster, checkpoint) as pool:
        for _ in range(2):
            downscale_distributed(pool, checkpoint, conditions, seed=SEEDS, **SAMPLING)
        actors = pool.info()
    assert sorted(a["address"] for a in actors) == sorted(gpus)  # one each, none on the CPU
    assert {a["device"] for a in actors} == {"cuda" if torch.cuda.is_available() else "cpu"}
    assert sum(a["tiles_done"] for a in actors) == 2 * 2 * 9
    loads = {a: n - loads_before.get(a, 0) for a, n in cluster.run(model_loads).items()}
    assert loads == {a: int(a in gpus) for a in loads}  # once per actor, not per tile or day
    # placed by its resource alone, an actor still lands on a GPU worker
    future = cluster.submit(DownscalerActor, str(checkpoint), actor=True, resources={GPU: 1})
    assert future.result(timeout=60).info().result()["address"] in gpus
    future.release()


def test_a_killed_gpu_worker_loses_no_tile(cluster, checkpoint, conditions, reference) -> None:
    """The worker holding the pool's only actor is killed (SIGKILL) as its first tile comes
    back: the caller's next call meets a dead worker, so the actor must be re-created on the
    other GPU worker and the lost tiles resubmitted, and the maps must not change."""
    killed: list[str] = []

    def kill_on_first_tile(index: int, address: str) -> None:
        if killed:
            return
        killed.append(address)
        pid = pids[address]
        os.kill(pid, signal.SIGKILL)
        # Return only once it is dead: the next call cannot reach it.
        _wait_for(lambda: _dead(pid), f"worker process {pid} to die")

    with ActorPool(cluster, checkpoint, max_actors=1, on_result=kill_on_first_tile) as pool:
        pids = {a["address"]: a["pid"] for a in pool.info()}
        maps = downscale_distributed(pool, checkpoint, conditions, seed=SEEDS, **SAMPLING)
        (survivor,) = pool.info()
    assert len(killed) == 1 and survivor["address"] != killed[0]
    assert survivor["address"] in find_gpu_workers(cluster)
    assert pool.recreated == 1 and pool.resubmitted >= 1
    for got, expected in zip(maps, reference, strict=True):
        np.testing.assert_array_equal(got, expected)
    # the Nanny restarts the killed worker: the cluster is whole again for the other tests
    _wait_for(
        lambda: len(find_gpu_workers(cluster)) == 2 and killed[0] not in find_gpu_workers(cluster),
        "the killed GPU worker to come back",
    )


#: The moments of a pool's start-up at which the worker of its (only) actor is killed:
#: before the actor's model loads, once it has loaded but before the scheduler heard, once the
#: scheduler has the actor but before the pool took the handle (the future then raises
#: "Worker holding Actor was lost"), once the pool holds the handle but has not yet called it,
#: and once the pool has started (its first ``map`` meets the loss).
START_UP_POINTS = ["executing", "memory", "finished", "handed", "started"]

#: What the pool logs when it meets the loss at each point (the step that noticed it).
NOTICED = {
    "executing": "no downscaler actor on {address}: ",
    "memory": "no downscaler actor on {address}: ",
    "finished": "no downscaler actor on {address}: RuntimeError: Worker holding Actor was lost",
    "handed": "downscaler actor on {address} lost: ",
    "started": "downscaler actor on {address} lost (",
}


def _kill(client, address: str, pids: dict[str, int]) -> None:
    """SIGKILL the worker at ``address``; return once the scheduler has removed it."""
    os.kill(pids[address], signal.SIGKILL)
    _wait_for(lambda: _dead(pids[address]), f"worker process {pids[address]} to die")
    _wait_for(lambda: address not in find_gpu_workers(client), f"the scheduler to drop {address}")


@pytest.mark.parametrize("point", START_UP_POINTS)
def test_an_actor_lost_at_any_point_of_start_up_is_replaced(
    cluster, checkpoint, conditions, reference, monkeypatch, caplog, tmp_path, point
) -> None:
    """The worker of the pool's only actor is killed at one point of the pool's start-up (a
    worker plugin, or a step of the pool that kills once it is done): the pool still starts,
    on another GPU worker, and maps the same."""
    pids = cluster.run(os.getpid)
    marker = tmp_path / "killed"
    killed: list[str] = []

    def kill_once(address: str) -> None:
        if not killed:
            killed.append(address)
            _kill(cluster, address, pids)

    if point == "finished":
        submitted = ActorPool._submit

        def submit_then_kill(self, address):
            future = submitted(self, address)
            if not killed:
                distributed.wait(future, timeout=120)  # the scheduler holds the actor
                kill_once(address)
                _wait_for(lambda: future.status == "error", "the actor's future to err")
            return future

        monkeypatch.setattr(ActorPool, "_submit", submit_then_kill)
    elif point == "handed":
        loaded = ActorPool._load

        def load_then_kill(self, slot):
            ok = loaded(self, slot)
            if ok:
                kill_once(slot.address)
            return ok

        monkeypatch.setattr(ActorPool, "_load", load_then_kill)
    in_worker = point in ("executing", "memory")
    with (
        caplog.at_level("WARNING", logger="unique_cube.downscale.pool"),
        kill_at_actor_start(cluster, marker, point) if in_worker else contextlib.nullcontext(),
        ActorPool(cluster, checkpoint, max_actors=1) as pool,
    ):
        if point == "started":
            kill_once(pool.info()[0]["address"])
        maps = downscale_distributed(pool, checkpoint, conditions, seed=SEEDS, **SAMPLING)
        (survivor,) = pool.info()
    if marker.exists():
        killed.append(marker.read_text())
    assert len(killed) == 1 and survivor["address"] != killed[0]
    assert survivor["address"] in find_gpu_workers(cluster) and survivor["pid"] != pids[killed[0]]
    assert pool.recreated == 1
    assert NOTICED[point].format(address=killed[0]) in caplog.text
    for got, expected in zip(maps, reference, strict=True):
        np.testing.assert_array_equal(got, expected)
    _wait_for(
        lambda: len(find_gpu_workers(cluster)) == 2 and killed[0] not in find_gpu_workers(cluster),
        "the killed GPU worker to come back",
    )


def test_an_actor_lost_at_start_up_is_made_again_at_the_first_map(
    cluster, checkpoint, conditions, reference, tmp_path
) -> None:
    """Of a pool of two actors, one loses its worker once its model has loaded: the pool
    starts with the other, and its first map, once a GPU worker is free again (the restarted
    one), makes the second actor; both sample."""
    marker = tmp_path / "killed"
    with kill_at_actor_start(cluster, marker, "memory"), ActorPool(cluster, checkpoint) as pool:
        assert len(pool.info()) == 1
        killed = marker.read_text()
        _wait_for(lambda: len(find_gpu_workers(cluster)) == 2, "the killed GPU worker to return")
        maps = downscale_distributed(pool, checkpoint, conditions, seed=SEEDS, **SAMPLING)
        actors = pool.info()
    assert sorted(a["address"] for a in actors) == sorted(find_gpu_workers(cluster))
    assert killed not in {a["address"] for a in actors} and pool.recreated == 1
    assert all(a["tiles_done"] > 0 for a in actors)
    for got, expected in zip(maps, reference, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_an_actor_that_does_not_load_in_time_is_placed_elsewhere(
    cluster, checkpoint, conditions, reference, tmp_path
) -> None:
    """The worker given the pool's only actor is stuck (alive, the load never ends): after
    ``worker_timeout`` the actor counts as lost and the pool starts on the other GPU worker."""
    marker = tmp_path / "stalled"
    gpus = list(find_gpu_workers(cluster))
    cluster.run(stall_at_load, str(marker), workers=gpus)
    try:
        # long enough for a model load on a busy machine; the stalled worker waits it out
        with ActorPool(cluster, checkpoint, max_actors=1, worker_timeout=60) as pool:
            maps = downscale_distributed(pool, checkpoint, conditions, seed=SEEDS, **SAMPLING)
            (actor,) = pool.info()
    finally:
        cluster.run(undo_stall_at_load, workers=gpus)
    assert marker.read_text() in gpus and actor["address"] != marker.read_text()
    assert pool.recreated == 1
    for got, expected in zip(maps, reference, strict=True):
        np.testing.assert_array_equal(got, expected)


def _close_when_its_worker_exits(dask_worker) -> None:
    """Run on a Nanny: do not restart the worker when it dies (as when a node is gone)."""
    dask_worker.close_gracefully(reason="test: the worker is not to come back")


@pytest.mark.integration
def test_start_up_fails_clearly_when_no_gpu_worker_is_left(checkpoint, tmp_path) -> None:
    """The only GPU worker dies once its actor's model has loaded and nothing restarts it: the
    pool gives up after ``worker_timeout`` with ActorPoolError (exit 6), naming the loss."""
    from distributed import Client

    marker = tmp_path / "killed"
    with (
        local_cluster(cpu_workers=0, gpu_workers=1, dashboard_address=None) as alone,
        Client(alone) as client,
    ):
        client.run(_close_when_its_worker_exits, nanny=True)
        # torch imported before the pool's clock starts: only the model's load is timed
        client.run(lambda: __import__("unique_cube.downscale.actors"))
        with (
            kill_at_actor_start(client, marker, "memory"),
            pytest.raises(ActorPoolError, match="could not start a downscaler actor of") as err,
        ):
            ActorPool(client, checkpoint, worker_timeout=20)
        assert find_gpu_workers(client) == {}
    assert err.value.exit_code == 6
    assert str(checkpoint) in str(err.value) and marker.read_text() in str(err.value)


@pytest.mark.integration
def test_a_pool_whose_scheduler_is_gone_fails_clearly(checkpoint) -> None:
    """The client has lost its scheduler (its information then lists no workers at all): a
    pool fails with ActorPoolError after ``worker_timeout``, not with a KeyError."""
    from distributed import Client

    with local_cluster(cpu_workers=0, gpu_workers=0, dashboard_address=None) as gone:
        client = Client(gone)
    with client, pytest.raises(ActorPoolError, match="no worker with the GPU resource joined"):
        assert find_gpu_workers(client) == {}
        ActorPool(client, checkpoint, worker_timeout=0.5)


def test_lost_actor_errors_are_told_from_the_actors_own() -> None:
    """Every error distributed raises for a lost actor counts as a loss (start-up and map
    retry it elsewhere); the actor's own errors do not (they are raised as they are)."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import NoValidWorkerError, NoWorkerError

    lost = [
        RuntimeError("Worker holding Actor was lost"),
        RuntimeError("Worker holding Actor was lost.  Status: error"),
        KilledWorker("DownscalerActor-gpu-0-1", None, 3),
        NoValidWorkerError("DownscalerActor-gpu-0-1", set(), {"tcp://127.0.0.1:1"}, {}, 1.0),
        NoWorkerError("DownscalerActor-gpu-0-1", 1.0),
        FutureCancelledError("DownscalerActor-gpu-0-1", "scheduler-connection-lost"),
        asyncio.CancelledError(),
        CommClosedError("in <TCP (closed) ConnectionPool.actor_execute>: Stream is closed"),
        OSError("Unable to contact Actor's worker"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("Timed out trying to connect to tcp://127.0.0.1:1 after 30 s"),
    ]
    own = [
        DownscaleError("downscaler_s1.pt: no such checkpoint"),
        RuntimeError("CUDA out of memory"),
        ValueError("bad tile"),
        KeyError("DownscalerActor-gpu-0-1"),
    ]
    assert [actor_lost(e) for e in lost] == [True] * len(lost)
    assert [actor_lost(e) for e in own] == [False] * len(own)


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_scheduler_named_in_the_environment_is_used(cluster, checkpoint, monkeypatch):
    monkeypatch.setenv(SCHEDULER_ADDRESS_ENV, cluster.scheduler.address)
    lines: list[str] = []
    with dask_client(say=lines.append) as client:
        assert client.cluster is None  # nothing started here
        assert client.scheduler.address == cluster.scheduler.address
        assert len(find_gpu_workers(client)) == 2
    assert lines == [f"Dask scheduler {cluster.scheduler.address}; dashboard "
                     f"{cluster.dashboard_link}"]  # fmt: skip
    # a scheduler without GPU workers: a clear error, not a hang
    with local_cluster(cpu_workers=0, gpu_workers=0, dashboard_address=None) as bare:
        monkeypatch.setenv(SCHEDULER_ADDRESS_ENV, bare.scheduler_address)
        with dask_client() as client, pytest.raises(ActorPoolError, match="no worker with the GPU"):
            ActorPool(client, checkpoint, worker_timeout=0.5)
    monkeypatch.setenv(SCHEDULER_ADDRESS_ENV, bare.scheduler_address)  # now closed
    with (
        pytest.raises(ClusterError, match="cannot reach the Dask scheduler"),
        dask_client(timeout=1),
    ):
        pass


def test_bad_inputs_are_refused(cluster, checkpoint, conditions, tmp_path) -> None:
    with ActorPool(cluster, checkpoint, max_actors=1) as pool:
        with pytest.raises(DownscaleError, match="takes 1 condition layers, got 3"):
            downscale_distributed(pool, checkpoint, np.zeros((3, 40, 40), "float32"))
        bad = conditions[0].copy()
        bad[0, 5, 5] = np.inf
        with pytest.raises(DownscaleError, match="NaN or infinite"):
            downscale_distributed(pool, checkpoint, [conditions[1], bad])
        with pytest.raises(ValueError, match="2 seeds for 1 condition stacks"):
            downscale_distributed(pool, checkpoint, [conditions[0]], seed=SEEDS)
        with pytest.raises(ValueError, match="the pool holds"):
            downscale_distributed(pool, tmp_path / "other.pt", conditions[0])
    with pytest.raises(DownscaleError, match="no such checkpoint"):
        ActorPool(cluster, tmp_path / "missing.pt")
