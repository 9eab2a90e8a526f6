"""Downscaling on a local Dask cluster: GPU-pinned actors, supervision, the scheduler address.

One cluster on 127.0.0.1 serves the module: a CPU worker and two "GPU" workers (resource GPU=1,
one thread; on this CPU-only machine they sample on the CPU), each a process under a Nanny.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

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
from unique_cube.downscale.pool import ActorPool, downscale_distributed
from unique_cube.downscale.sampling import downscale
from unique_cube.downscale.schedule import NoiseSchedule
from unique_cube.errors import ActorPoolError, ClusterError, DownscaleError

pytestmark = pytest.mark.integration

SAMPLING = {"samples": 2, "ddim_steps": 3, "tile": 16, "overlap": 4}  # 3 x 3 tiles of 40 x 40
SEEDS = [3, 4]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
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
        _wait_for(lambda: _dead(pid), f"worker process {pid} to die", timeout=10)

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


def test_an_actor_lost_while_the_pool_starts_is_replaced(
    cluster, checkpoint, conditions, reference, monkeypatch
) -> None:
    """The worker of the pool's only actor is killed just after the actor started, before the
    pool asked it anything: the pool still starts, on another GPU worker, and maps the same."""
    killed: list[str] = []
    pids = cluster.run(os.getpid)
    started = ActorPool._await

    def start_then_kill(self, future, address):
        actor = started(self, future, address)
        if not killed:
            killed.append(address)
            os.kill(pids[address], signal.SIGKILL)
            _wait_for(lambda: _dead(pids[address]), f"worker process {pids[address]} to die")
        return actor

    monkeypatch.setattr(ActorPool, "_await", start_then_kill)
    with ActorPool(cluster, checkpoint, max_actors=1) as pool:
        maps = downscale_distributed(pool, checkpoint, conditions, seed=SEEDS, **SAMPLING)
        (survivor,) = pool.info()
    assert len(killed) == 1 and survivor["address"] != killed[0]
    for got, expected in zip(maps, reference, strict=True):
        np.testing.assert_array_equal(got, expected)
    _wait_for(
        lambda: len(find_gpu_workers(cluster)) == 2 and killed[0] not in find_gpu_workers(cluster),
        "the killed GPU worker to come back",
    )


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
