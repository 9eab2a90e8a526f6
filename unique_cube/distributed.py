"""Downscaling on a Dask cluster: one supervised, GPU-pinned actor per GPU worker.

GPU workers form their own group: one thread and the resource ``GPU=1`` each (a machine
without CUDA declares the resource all the same and samples on the CPU). Each holds one
:class:`DownscalerActor`, which loads the checkpoint once (``torch.load(weights_only=True)``)
onto its device. :class:`ActorPool` spreads tiles over the actors and supervises them: when a
worker dies, its actor dies with it (Dask does not re-create actors), so the pool re-creates the
actor on a GPU worker without one and resubmits the lost tiles. Tiles are seeded by their
position (:func:`~unique_cube.downscale.sample_tile`), so a map does not depend on which actor
sampled which tile: :func:`downscale_distributed` returns what
:func:`~unique_cube.downscale.downscale` returns.

Actor calls do not show on the Dask dashboard's task stream; the pool logs its recoveries.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .downscale import (
    blend_tiles,
    load_checkpoint,
    sample_tile,
    tile_plan,
    validate_condition,
)
from .errors import UniqueCubeError

if TYPE_CHECKING:
    from distributed import Client, Future, SpecCluster

__all__ = [
    "GPU",
    "SCHEDULER_ADDRESS_ENV",
    "ActorPool",
    "ActorPoolError",
    "ClusterError",
    "DownscalerActor",
    "TileRequest",
    "dask_client",
    "downscale_distributed",
    "find_gpu_workers",
    "local_cluster",
    "model_loads",
]

log = logging.getLogger(__name__)

GPU = "GPU"
"""The worker resource that marks a GPU worker (one per GPU)."""
SCHEDULER_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
#: Where a local cluster's dashboard listens (default 127.0.0.1:8787; 0.0.0.0:8787 in a pod).
DASHBOARD_ADDRESS_ENV = "UNIQUE_CUBE_DASHBOARD_ADDRESS"
"""Environment variable naming a running scheduler to connect to instead of a local cluster."""

_model_loads = 0  # checkpoints loaded by actors in this process (reported by `info`)


class ClusterError(UniqueCubeError):
    """The Dask cluster cannot do the work (scheduler unreachable, workers gone)."""

    exit_code = 6


class ActorPoolError(ClusterError):
    """The pool cannot keep a downscaler actor alive (no GPU worker, tiles lost too often)."""


def model_loads() -> int:
    """Checkpoints loaded by :class:`DownscalerActor` in this process (run it on workers)."""
    return _model_loads


# --- clusters ----------------------------------------------------------------------------


def _cpu_model_nanny(*args, cores: int = 1, **kwargs):
    """A GPU-group worker on a machine without CUDA, where the network runs on the CPU. A
    Nanny starts its worker with one OpenMP thread (``distributed.nanny.pre-spawn-environ``),
    fixed before torch is imported and not undone by ``torch.set_num_threads``; this one gets
    ``cores``."""
    from distributed import Nanny

    nanny = Nanny(*args, **kwargs)
    nanny.pre_spawn_env.update(OMP_NUM_THREADS=str(cores), MKL_NUM_THREADS=str(cores))
    nanny.pre_spawn_env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return nanny


def local_cluster(
    *,
    cpu_workers: int = 1,
    cpu_threads: int = 1,
    gpu_workers: int = 1,
    dashboard_address: str | None = "127.0.0.1:8787",
    silence_logs: int = logging.WARNING,
) -> SpecCluster:
    """A cluster of worker processes on 127.0.0.1, in two groups.

    ``cpu_workers`` processes (``cpu-N``) with ``cpu_threads`` threads each for array work,
    and ``gpu_workers`` processes (``gpu-N``) with one thread and the resource ``GPU=1`` for
    the downscaler actors; with several CUDA devices, GPU worker N sees device N only. The
    dashboard moves to a free port when ``dashboard_address`` is taken (``None``: none).
    """
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    memory = MEMORY_LIMIT // max(1, cpu_workers + gpu_workers)
    common = {"host": "127.0.0.1", "memory_limit": memory, "silence_logs": silence_logs,
              "dashboard": False}  # fmt: skip
    workers: dict[str, dict] = {
        f"cpu-{i}": {"cls": Nanny, "options": {**common, "nthreads": cpu_threads}}
        for i in range(cpu_workers)
    }
    devices = torch.cuda.device_count()
    cores = max(1, (os.cpu_count() or 1) // max(1, gpu_workers))
    for i in range(gpu_workers):
        env = {"CUDA_VISIBLE_DEVICES": str(i % devices)} if devices else {}
        options = {**common, "nthreads": 1, "resources": {GPU: 1}, "env": env}
        if devices:
            workers[f"gpu-{i}"] = {"cls": Nanny, "options": options}
        else:
            workers[f"gpu-{i}"] = {"cls": _cpu_model_nanny, "options": {**options, "cores": cores}}
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "port": 0, "dashboard": dashboard_address is not None,
                    "dashboard_address": dashboard_address},
    }  # fmt: skip
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=silence_logs,
                       name="unique-cube")  # fmt: skip


@contextmanager
def dask_client(
    *,
    cpu_workers: int = 1,
    cpu_threads: int = 1,
    gpu_workers: int = 1,
    dashboard_address: str | None = None,
    timeout: float = 30.0,
    say: Callable[[str], None] = log.info,
) -> Iterator[Client]:
    """A client of the scheduler named by ``$DASK_SCHEDULER_ADDRESS``, or else of a
    :func:`local_cluster` started here (and closed on exit).

    ``say`` receives one line naming the scheduler and its dashboard link. Worker options
    apply to the local cluster only, its dashboard at ``dashboard_address`` or else
    ``$UNIQUE_CUBE_DASHBOARD_ADDRESS`` or 127.0.0.1:8787; ``timeout`` (s) bounds connecting
    to a remote scheduler.
    """
    from distributed import Client

    if dashboard_address is None:  # in a pod the dashboard Service needs 0.0.0.0
        dashboard_address = os.environ.get(DASHBOARD_ADDRESS_ENV, "127.0.0.1:8787")
    address = os.environ.get(SCHEDULER_ADDRESS_ENV, "").strip()
    with ExitStack() as stack:
        if address:
            try:
                client = stack.enter_context(Client(address, timeout=timeout))
            except OSError as err:  # TimeoutError included
                raise ClusterError(
                    f"cannot reach the Dask scheduler {address} (${SCHEDULER_ADDRESS_ENV}): {err}"
                ) from err
        else:
            cluster = stack.enter_context(
                local_cluster(cpu_workers=cpu_workers, cpu_threads=cpu_threads,
                              gpu_workers=gpu_workers, dashboard_address=dashboard_address)
            )  # fmt: skip
            client = stack.enter_context(Client(cluster))
        link = client.dashboard_link or "none"
        say(f"Dask scheduler {client.scheduler.address}; dashboard {link}")
        yield client


def find_gpu_workers(client: Client) -> dict[str, dict]:
    """Running workers with the GPU resource, by address, in the order of their names."""
    workers = client.scheduler_info()["workers"]
    found = {
        address: info
        for address, info in workers.items()
        if info.get("resources", {}).get(GPU, 0) >= 1 and info.get("status") == "running"
    }
    return dict(sorted(found.items(), key=lambda item: str(item[1].get("name"))))


# --- the actor ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TileRequest:
    """One tile to sample, with everything that makes its residual reproducible."""

    condition: np.ndarray
    """The tile's conditions (C, h, w)."""
    samples: int
    ddim_steps: int
    seed: int
    """The map's seed; the generator's seed also takes the tile's position."""
    ty: int
    tx: int


class DownscalerActor:
    """A downscaler held on one device of one worker: the checkpoint is loaded once.

    Create it with ``client.submit(DownscalerActor, path, device=..., actor=True,
    resources={"GPU": 1})``; ``path`` is read on the worker. ``device`` defaults to
    ``"cuda"`` where available, else ``"cpu"``.
    """

    def __init__(
        self, checkpoint_path: str, device: str | None = None, torch_threads: int | None = None
    ) -> None:
        global _model_loads
        from distributed import get_worker

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch_threads and self.device == "cpu":
            # A worker process starts with one BLAS/OpenMP thread; on a CPU-only machine the
            # network is the work, so it may take the cores it is given.
            torch.set_num_threads(torch_threads)
        self.ckpt = load_checkpoint(checkpoint_path)
        self.ckpt.model.to(self.device)
        _model_loads += 1
        self.tiles_done = 0
        try:
            self.address = get_worker().address
        except ValueError:  # built outside a worker
            self.address = None

    def sample(self, request: TileRequest) -> np.ndarray:
        """The tile's residual members (K, h, w) (see :func:`downscale.sample_tile`)."""
        residual = sample_tile(
            self.ckpt, request.condition, samples=request.samples,
            ddim_steps=request.ddim_steps, seed=request.seed, ty=request.ty, tx=request.tx,
            device=self.device,
        )  # fmt: skip
        self.tiles_done += 1
        return residual

    def sample_many(self, requests: list[TileRequest]) -> list[np.ndarray]:
        """Several tiles in one call (fewer round trips, more lost when the worker dies)."""
        return [self.sample(request) for request in requests]

    def info(self) -> dict[str, Any]:
        """Where the actor lives, what it holds and how much it has done."""
        return {
            "address": self.address,
            "pid": os.getpid(),
            "device": self.device,
            "torch_threads": torch.get_num_threads(),  # CPU results depend on it (in the last bits)
            "scheme": self.ckpt.scheme,
            "cond_channels": self.ckpt.model.config["cond_channels"],
            "tiles_done": self.tiles_done,
            "model_loads": _model_loads,
        }


# --- the supervised pool -----------------------------------------------------------------


class _ActorLost(Exception):
    """The worker holding an actor died (or cannot be reached)."""


@dataclass(eq=False)
class _Slot:
    """One actor of the pool, replaced in place when its worker dies."""

    future: Future | None = None
    actor: Any = None
    address: str | None = None
    generation: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Run:
    """The tiles of one :meth:`ActorPool.map` call: a queue, results and retry counts."""

    def __init__(self, count: int) -> None:
        self.queue: deque[int] = deque(range(count))
        self.results: list[np.ndarray | None] = [None] * count
        self.retries = [0] * count
        self.remaining = count
        self.error: BaseException | None = None
        self.cv = threading.Condition()

    def take(self) -> int | None:
        """The next tile, waiting while others are in flight; ``None`` once all are done."""
        with self.cv:
            while not self.queue and self.remaining and self.error is None:
                self.cv.wait()
            if self.error is not None or not self.remaining:
                return None
            return self.queue.popleft()

    def done(self, index: int, residual: np.ndarray) -> None:
        with self.cv:
            self.results[index] = residual
            self.remaining -= 1
            self.cv.notify_all()

    def put_back(self, index: int) -> None:
        with self.cv:
            self.queue.appendleft(index)
            self.cv.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.cv:
            if self.error is None:
                self.error = error
            self.cv.notify_all()

    @property
    def over(self) -> bool:
        return self.error is not None or not self.remaining


class ActorPool:
    """One :class:`DownscalerActor` per GPU worker (at most ``max_actors``), supervised.

    Tiles go to whichever actor is free, ``in_flight`` calls per actor (the actor runs them
    one at a time; the second hides the round trip). When an actor's worker dies, its tiles
    go back in the queue and the actor is re-created on a GPU worker that holds none of the
    pool's actors, waiting up to ``worker_timeout`` seconds for one (a restarted worker, a
    new node) while the other actors carry on; the same timeout bounds loading a model. A
    tile is resubmitted at most ``max_retries`` times. ``on_result(index, address)`` is
    called from the pool's threads after each tile. ``recreated`` and ``resubmitted`` count
    the recoveries; ``scheme`` and ``cond_channels`` describe the checkpoint.
    """

    def __init__(
        self,
        client: Client,
        checkpoint_path: str | Path,
        *,
        device: str | None = None,
        torch_threads: int | None = None,
        max_actors: int | None = None,
        in_flight: int = 2,
        max_retries: int = 3,
        worker_timeout: float = 60.0,
        on_result: Callable[[int, str], None] | None = None,
    ) -> None:
        self.client = client
        self.checkpoint_path = str(checkpoint_path)
        self.device = device
        self.torch_threads = torch_threads
        self.in_flight = in_flight
        self.max_retries = max_retries
        self.worker_timeout = worker_timeout
        self.on_result = on_result
        self.recreated = 0
        self.resubmitted = 0
        self._placement = threading.Lock()  # one placement at a time: never two on a worker
        self._slots: list[_Slot] = []
        deadline = time.monotonic() + worker_timeout
        while not (workers := list(find_gpu_workers(client))):
            if time.monotonic() > deadline:
                raise ActorPoolError(
                    f"no worker with the {GPU} resource joined the scheduler "
                    f"{client.scheduler.address} within {worker_timeout:g} s"
                )
            time.sleep(0.25)
        futures: list[tuple[str, Future]] = []
        try:
            for address in workers[:max_actors]:  # all submitted first: the models load at once
                futures.append((address, self._submit(address)))
            for address, future in futures:
                try:
                    self._slots.append(_Slot(future, self._await(future, address), address))
                except _ActorLost as lost:
                    log.warning("no downscaler actor on %s: %s", address, lost)
            info = self._describe()
        except BaseException:
            for _, future in futures:
                future.release()
            self.close()
            raise
        self.scheme: str = info["scheme"]
        self.cond_channels: int = info["cond_channels"]
        log.info("downscaler actors on %s", ", ".join(s.address for s in self._slots))

    def _describe(self) -> dict[str, Any]:
        """The checkpoint's description from a live actor. An actor whose worker died since it
        started is dropped; while none is left, one is placed anew on any GPU worker (a
        restarted one included), for up to ``worker_timeout`` seconds."""
        deadline = time.monotonic() + self.worker_timeout
        while True:
            for slot in list(self._slots):
                try:
                    return slot.actor.info().result()
                # Its worker died after the actor started: "Unable to contact Actor's worker"
                # (OSError), or "Worker holding Actor was lost" once the scheduler knows.
                except (OSError, RuntimeError) as err:
                    log.warning("downscaler actor on %s lost: %s", slot.address, err)
                    self._drop(slot)
                    self._slots.remove(slot)
            if time.monotonic() > deadline:
                raise ActorPoolError(
                    f"every GPU worker left while loading {self.checkpoint_path} (waited "
                    f"{self.worker_timeout:g} s for one to hold a downscaler actor)"
                )
            for address in find_gpu_workers(self.client):
                try:
                    future = self._submit(address)
                    self._slots.append(_Slot(future, self._await(future, address), address))
                    break
                except _ActorLost as lost:
                    log.warning("no downscaler actor on %s: %s", address, lost)
            else:
                time.sleep(0.25)

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the actors (their workers drop the models)."""
        for slot in self._slots:
            self._drop(slot)
        self._slots = []

    def info(self) -> list[dict[str, Any]]:
        """:meth:`DownscalerActor.info` of every live actor."""
        calls = [slot.actor.info() for slot in self._slots if slot.actor is not None]
        return [call.result() for call in calls]

    def map(self, requests: Sequence[TileRequest]) -> list[np.ndarray]:
        """The residual of every request, in order."""
        run = _Run(len(requests))
        if not requests:
            return []
        for slot in self._slots:  # actors a previous map() could not re-create in time
            if slot.actor is None:  # wait for a GPU worker only if no actor is left
                alive = any(other.actor is not None for other in self._slots)
                self._replace(slot, slot.generation, run, patience=0.0 if alive else None)
        threads = [
            threading.Thread(target=self._drive, args=(slot, requests, run), daemon=True,
                             name=f"actor-pool-{i}-{j}")
            for i, slot in enumerate(self._slots) if slot.actor is not None
            for j in range(self.in_flight)
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if run.error is not None:
            raise run.error
        if run.remaining:
            raise ActorPoolError(f"{run.remaining} tiles left and no downscaler actor alive")
        return run.results  # type: ignore[return-value]

    def _drive(self, slot: _Slot, requests: Sequence[TileRequest], run: _Run) -> None:
        """One caller of one actor: takes tiles until none is left."""
        try:
            while (index := run.take()) is not None:
                with slot.lock:  # waits while another caller re-creates the actor
                    actor, future, generation = slot.actor, slot.future, slot.generation
                    address = slot.address
                if actor is None:  # retired: no GPU worker came back in time
                    run.put_back(index)
                    return
                try:
                    residual = self._call(actor, future, requests[index])
                except _ActorLost as lost:
                    log.warning("downscaler actor on %s lost (%s); resubmitting tile %d",
                                address, lost, index)  # fmt: skip
                    if not self._resubmit(index, run) or not self._replace(slot, generation, run):
                        return
                    continue
                run.done(index, residual)
                if self.on_result is not None:
                    self.on_result(index, address)
        except BaseException as err:  # raised by map()
            run.fail(err)

    @staticmethod
    def _call(actor: Any, future: Future, request: TileRequest) -> np.ndarray:
        try:
            call = actor.sample(request)
        except RuntimeError as err:  # "Worker holding Actor was lost"
            raise _ActorLost(err) from err
        while True:
            try:
                return call.result(timeout=0.5)
            except TimeoutError:
                # A call to a dead worker may never return: watch the actor's own future.
                if future.status not in ("pending", "finished"):
                    raise _ActorLost(f"actor {future.status}") from None
            except OSError as err:  # CommClosedError, "Unable to contact Actor's worker"
                raise _ActorLost(err) from err

    def _resubmit(self, index: int, run: _Run) -> bool:
        with run.cv:
            run.retries[index] += 1
            if run.retries[index] > self.max_retries:
                run.fail(
                    ActorPoolError(
                        f"tile {index} lost its actor {run.retries[index]} times "
                        f"(max_retries={self.max_retries})"
                    )
                )
                return False
            self.resubmitted += 1
        run.put_back(index)
        return True

    def _submit(self, address: str) -> Future:
        name = self.client.scheduler_info()["workers"].get(address, {}).get("name", address)
        return self.client.submit(
            DownscalerActor, self.checkpoint_path, device=self.device,
            torch_threads=self.torch_threads,
            key=f"DownscalerActor-{name}-{uuid.uuid4().hex[:8]}", actor=True,
            resources={GPU: 1}, workers=[address], allow_other_workers=False,
        )  # fmt: skip

    def _await(self, future: Future, address: str) -> Any:
        """The actor handle, bound to this pool's client (not to the default one);
        :class:`_ActorLost` if its worker leaves while the model loads."""
        from distributed import CancelledError, KilledWorker

        deadline = time.monotonic() + self.worker_timeout
        try:
            with self.client.as_current():
                while True:
                    try:
                        return future.result(timeout=0.5)
                    except TimeoutError:
                        if address not in find_gpu_workers(self.client):
                            raise _ActorLost(f"{address} left while loading the model") from None
                        if time.monotonic() > deadline:
                            raise ActorPoolError(
                                f"the downscaler actor on {address} did not start within "
                                f"{self.worker_timeout:g} s"
                            ) from None
                    except (OSError, KilledWorker, CancelledError) as err:
                        raise _ActorLost(err) from err
        except BaseException:
            future.release()
            raise

    def _replace(
        self, slot: _Slot, generation: int, run: _Run, patience: float | None = None
    ) -> bool:
        """Re-create the slot's actor on a free GPU worker, waiting up to ``patience`` seconds
        (default ``worker_timeout``) for one; False if the slot's callers should stop."""
        with slot.lock:
            if slot.generation != generation:  # another caller of this actor did it
                return slot.actor is not None
            lost_on = slot.address
            self._drop(slot)
            slot.generation += 1
            patience = self.worker_timeout if patience is None else patience
            deadline = time.monotonic() + patience
            while not run.over:
                with self._placement:
                    taken = {lost_on} | {other.address for other in self._slots}
                    free = [
                        address for address in find_gpu_workers(self.client) if address not in taken
                    ]
                    if free:
                        try:
                            future = self._submit(free[0])
                            slot.actor = self._await(future, free[0])
                        except _ActorLost as lost:
                            log.warning("no downscaler actor on %s: %s", free[0], lost)
                            continue
                        slot.future, slot.address = future, free[0]
                        self.recreated += 1
                        log.warning("downscaler actor re-created on %s (lost on %s)",
                                    free[0], lost_on)  # fmt: skip
                        return True
                if time.monotonic() > deadline:
                    alive = sum(other.actor is not None for other in self._slots)
                    if alive:
                        log.warning("no free GPU worker within %g s; going on with %d actors",
                                    patience, alive)  # fmt: skip
                    else:
                        run.fail(
                            ActorPoolError(
                                f"lost the downscaler actor on {lost_on} and no worker with "
                                f"the {GPU} resource was free within {patience:g} s"
                            )
                        )
                    return False
                time.sleep(0.25)
            return False

    @staticmethod
    def _drop(slot: _Slot) -> None:
        if slot.future is not None:
            slot.future.release()
        slot.future = slot.actor = slot.address = None


# --- the map -----------------------------------------------------------------------------


def downscale_distributed(
    pool_or_client: ActorPool | Client,
    checkpoint_path: str | Path,
    conditions: np.ndarray | Sequence[np.ndarray],
    *,
    samples: int = 4,
    ddim_steps: int = 25,
    tile: int = 128,
    overlap: int = 32,
    seed: int | Sequence[int] = 0,
) -> np.ndarray | list[np.ndarray]:
    """:func:`~unique_cube.downscale.downscale` on the pool's actors, tile by tile.

    ``conditions`` is one stack (C, H, W), giving members (K, H, W), or a list of stacks
    (several days, one tile queue), giving a list; ``seed`` is one seed for all or one per
    stack. The result equals ``downscale(ckpt, condition, seed=...)`` with the same
    arguments. With a client, a pool is made for this call and closed after it.
    """
    single = isinstance(conditions, np.ndarray) and conditions.ndim == 3
    stacks = [conditions] if single else [np.asarray(c) for c in conditions]
    seeds = [seed] * len(stacks) if isinstance(seed, int) else list(seed)
    if len(seeds) != len(stacks):
        raise ValueError(f"{len(seeds)} seeds for {len(stacks)} condition stacks")
    with ExitStack() as stack:
        if isinstance(pool_or_client, ActorPool):
            pool = pool_or_client
            if Path(pool.checkpoint_path) != Path(checkpoint_path):
                raise ValueError(f"the pool holds {pool.checkpoint_path}, not {checkpoint_path}")
        else:
            pool = stack.enter_context(ActorPool(pool_or_client, checkpoint_path))
        for condition in stacks:
            validate_condition(condition, pool.cond_channels, pool.scheme)
        plans = [tile_plan(c.shape[1], c.shape[2], tile=tile, overlap=overlap) for c in stacks]
        requests = [
            TileRequest(np.ascontiguousarray(condition[(slice(None), *t.window)]), samples,
                        ddim_steps, day_seed, t.ty, t.tx)
            for condition, day_seed, plan in zip(stacks, seeds, plans, strict=True)
            for t in plan
        ]  # fmt: skip
        residuals = pool.map(requests)
    maps, start = [], 0
    for condition, plan in zip(stacks, plans, strict=True):
        maps.append(blend_tiles(condition, plan, residuals[start : start + len(plan)],
                                overlap=overlap))  # fmt: skip
        start += len(plan)
    return maps[0] if single else maps
