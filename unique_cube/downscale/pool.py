"""A supervised pool of downscaler actors: tiles spread over the GPU workers' actors, lost
actors re-created, lost tiles resubmitted.

When a worker dies its actor dies with it (Dask does not re-create actors), so
:class:`ActorPool` re-creates the actor on a GPU worker without one and resubmits the tiles
it held, whether the worker died while the pool was starting or while it was mapping
(:func:`actor_lost` says which errors mean a lost actor); tiles are seeded by their place in
the grid's plan, so a map does not depend on which actor sampled which tile.
:func:`downscale_distributed` is :func:`~unique_cube.downscale.sampling.downscale` on the pool.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unique_cube.downscale.actors import DownscalerActor, TileRequest
from unique_cube.downscale.cluster import GPU, find_gpu_workers
from unique_cube.downscale.conditions import validate_condition
from unique_cube.downscale.tiling import blend_tiles, tile_plan
from unique_cube.errors import ActorPoolError

if TYPE_CHECKING:
    from distributed import Client, Future

log = logging.getLogger(__name__)

__all__ = ["ActorPool", "actor_lost", "downscale_distributed"]


#: How often a wait on an actor looks whether its worker is still there (seconds).
_POLL_S = 0.5

#: The scheduler's verdict on an actor whose worker left (distributed/scheduler.py).
_LOST_ACTOR = "Worker holding Actor was lost"


class _ActorLost(Exception):
    """The worker holding an actor died (or cannot be reached)."""


def actor_lost(error: BaseException) -> bool:
    """Whether ``error`` says that an actor's worker died or cannot be reached (the actor is
    gone and may be made again on another worker), not that the actor's own code failed.

    What distributed raises for a lost actor depends on the moment the loss is met:

    * ``RuntimeError("Worker holding Actor was lost")``: the scheduler's verdict once the
      worker has left, from the actor's future (the worker died after the actor started, before
      the client took the handle) or from ``actor.<method>`` (the future has erred);
    * ``KilledWorker``: the actor's task started on more workers than
      ``distributed.scheduler.allowed-failures`` allows, and each of them died;
    * ``NoValidWorkerError``, ``NoWorkerError``: the task, pinned to a worker that left, waited
      longer than ``distributed.scheduler.no-workers-timeout``;
    * ``CancelledError`` (``FutureCancelledError``; asyncio's own): the task was released, or
      the client lost the scheduler and with it its futures;
    * ``OSError``: the way to the worker is closed: ``CommClosedError``, "Unable to contact
      Actor's worker", a refused or reset connection, a connect timeout. The actor's own code
      raises none (a checkpoint it cannot read is a ``DownscaleError``), so an ``OSError`` is
      always the way, never the work.
    """
    from distributed import KilledWorker
    from distributed.scheduler import NoValidWorkerError, NoWorkerError

    lost = (_ActorLost, KilledWorker, NoValidWorkerError, NoWorkerError, CancelledError,
            asyncio.CancelledError, OSError)  # fmt: skip
    if isinstance(error, lost):
        return True
    return isinstance(error, RuntimeError) and str(error).startswith(_LOST_ACTOR)


#: The key prefix of a tile's task: the Dask dashboard's task stream and progress bars show
#: the tiles under this name while a day is sampled.
TILE_TASK = "unique-cube-tile"


def _sample(client: Client, actor: Any, request: TileRequest, address: str) -> Future:
    """A tile sampled by ``actor`` as a task on its worker (``address``): the scheduler sees
    every tile (task stream, progress, profiles), which actor method calls never show."""
    return client.submit(
        _sample_on_worker, actor.key, request, workers=[address], allow_other_workers=False,
        pure=False, key=f"{TILE_TASK}-{request.ty}-{request.tx}-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip


def _sample_on_worker(actor_key: str, request: TileRequest) -> np.ndarray:
    """On the actor's worker: the tile sampled by the actor's model, in the task's thread.
    An actor no longer there is a lost actor (its tile goes to another)."""
    from distributed import get_worker

    actor = get_worker().state.actors.get(actor_key)
    if actor is None:
        raise RuntimeError(f"{_LOST_ACTOR}: no actor {actor_key} on this worker")
    return actor.sample(request)


def _start_tile(started: list, client: Client, actor: Any, request: TileRequest,
                address: str) -> Future:  # fmt: skip
    """:func:`_sample`, the task kept in ``started`` (to be cancelled if the actor is lost)."""
    started.append(_sample(client, actor, request, address))
    return started[-1]


@dataclass(eq=False)
class _Slot:
    """One actor of the pool, replaced in place when its worker dies (empty meanwhile)."""

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
    one at a time; the second hides the round trip). When an actor's worker dies, whether the
    pool is starting or mapping (:func:`actor_lost` says what counts as a loss), its tiles go
    back in the queue and the actor is re-created on a GPU worker that holds none of the
    pool's actors, waiting up to ``worker_timeout`` seconds for one (a restarted worker, a new
    node) while the other actors carry on; the same timeout bounds loading a model (an actor
    that has not loaded within it counts as lost), and starting with no actor alive. A tile
    is resubmitted at most ``max_retries`` times. ``on_result(index, address)`` is called
    from the pool's threads after each tile. ``recreated`` and ``resubmitted`` count the
    recoveries; ``scheme`` and ``cond_channels`` describe the checkpoint.
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
        if max_actors is not None and max_actors < 1:
            raise ValueError(f"max_actors must be at least 1 (or None), not {max_actors}")
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
        self._failed: set[str] = set()  # workers that lost an actor while the pool started
        self._last_loss = "none"  # said when start-up gives up
        try:
            info = self._start(max_actors)
        except BaseException:
            self.close()
            raise
        self.scheme: str = info["scheme"]
        self.cond_channels: int = info["cond_channels"]
        self.blend_options: dict = info["blend_options"]
        live = [slot.address for slot in self._slots if slot.actor is not None]
        log.info("downscaler actors on %s", ", ".join(live))

    def _start(self, max_actors: int | None) -> dict[str, Any]:
        """Place the actors and ask one of them for the checkpoint's description.

        All are submitted first, so that the models load at once. A worker may die at any
        moment of this (before or while its model loads, once it has loaded but before the
        scheduler or this client heard, after the handle came back): its slot is left empty,
        for :meth:`map` to fill when a GPU worker is free. While no actor is alive, one is
        placed on any free GPU worker (a restarted one included); after ``worker_timeout``
        seconds without one, :class:`ActorPoolError`."""
        deadline = time.monotonic() + self.worker_timeout
        while not (workers := list(find_gpu_workers(self.client))):
            if time.monotonic() > deadline:
                scheduler = self.client.scheduler  # None once the client lost it
                raise ActorPoolError(
                    f"no worker with the {GPU} resource joined the scheduler "
                    f"{scheduler.address if scheduler else '(lost)'} within "
                    f"{self.worker_timeout:g} s"
                )
            time.sleep(0.25)
        for address in workers[:max_actors]:
            self._slots.append(_Slot(self._submit(address), None, address))
        for slot in self._slots:
            self._load(slot)
        deadline = time.monotonic() + self.worker_timeout
        while True:
            for slot in self._slots:
                if slot.actor is None:
                    continue
                try:
                    return self._wait(lambda s=slot: s.actor.info(), slot.future, slot.address)
                except _ActorLost as lost:  # its worker died after the actor started
                    log.warning("downscaler actor on %s lost: %s", slot.address, lost)
                    self._lost(slot, lost)
            if time.monotonic() > deadline:
                raise ActorPoolError(
                    f"could not start a downscaler actor of {self.checkpoint_path} on any GPU "
                    f"worker within {self.worker_timeout:g} s; the last one was lost "
                    f"{self._last_loss}"
                )
            free = self._free_workers(self._failed)  # a restarted worker has a new address
            if free and self._place(self._slots[0], free[0]):  # every slot is empty here
                self.recreated += 1
            elif not free:
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
        """:meth:`DownscalerActor.info` of every live actor (one lost meanwhile left out)."""
        answers = []
        for slot in self._slots:
            if slot.actor is None:
                continue
            try:
                answers.append(self._wait(lambda s=slot: s.actor.info(), slot.future, slot.address))
            except _ActorLost as lost:
                log.warning("downscaler actor on %s lost: %s", slot.address, lost)
        return answers

    def map(self, requests: Sequence[TileRequest]) -> list[np.ndarray]:
        """The residual of every request, in order."""
        run = _Run(len(requests))
        if not requests:
            return []
        for slot in self._slots:  # actors lost at start-up or not re-created in time since
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
                task: list[Future] = []
                try:
                    call = partial(_start_tile, task, self.client, actor, requests[index], address)
                    residual = self._wait(call, future, address)
                except _ActorLost as lost:
                    for pending in task:  # waiting for a worker that is gone
                        pending.cancel()
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

    def _wait(
        self,
        start: Callable[[], Any],
        future: Future,
        address: str,
        *,
        timeout: float | None = None,
    ) -> Any:
        """The result of ``start()``, an actor's call or the actor's own future, once it comes;
        :class:`_ActorLost` if the actor's worker is lost first, whatever distributed raises
        for that (:func:`actor_lost`), or with a ``timeout`` (s), if none came within it (a
        stuck worker is as good as lost)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self.client.as_current():  # an actor's handle binds to this pool's client
                call = start()
                while True:
                    try:
                        return call.result(timeout=_POLL_S)
                    except TimeoutError:
                        # Done meanwhile (a race the poll lost): its own outcome, a result or
                        # its own error, never the poll's TimeoutError (an OSError, which would
                        # pass for a lost worker).
                        if call.done():
                            return call.result()
                    # A call to a dead worker may never return: watch the actor's task, and its
                    # worker while the task is pinned there but not yet done.
                    status = future.status
                    if status not in ("pending", "finished"):
                        raise _ActorLost(f"its task is {status}")
                    if status == "pending" and address not in find_gpu_workers(self.client):
                        raise _ActorLost(f"{address} left before the actor started")
                    if deadline is not None and time.monotonic() > deadline:
                        raise _ActorLost(f"no answer within {timeout:g} s (stuck or too slow)")
        except _ActorLost:
            raise
        except (Exception, asyncio.CancelledError) as err:
            if actor_lost(err):
                raise _ActorLost(f"{type(err).__name__}: {err}") from err
            raise

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
        workers = self.client.scheduler_info().get("workers", {})
        name = workers.get(address, {}).get("name", address)
        return self.client.submit(
            DownscalerActor, self.checkpoint_path, device=self.device,
            torch_threads=self.torch_threads,
            key=f"DownscalerActor-{name}-{uuid.uuid4().hex[:8]}", actor=True,
            resources={GPU: 1}, workers=[address], allow_other_workers=False,
        )  # fmt: skip

    def _load(self, slot: _Slot) -> bool:
        """Wait up to ``worker_timeout`` for the slot's submitted actor (its model loading);
        False, with the slot emptied, if its worker is lost (or stuck) first."""
        future, address = slot.future, slot.address
        try:
            slot.actor = self._wait(lambda: future, future, address, timeout=self.worker_timeout)
        except _ActorLost as lost:
            log.warning("no downscaler actor on %s: %s", address, lost)
            self._lost(slot, lost)
            return False
        return True

    def _lost(self, slot: _Slot, lost: _ActorLost) -> None:
        """Empty the slot of a lost actor, and remember where (start-up tries elsewhere)."""
        if slot.address is not None:
            self._failed.add(slot.address)
        self._last_loss = f"on {slot.address}: {lost}"
        self._drop(slot)

    def _place(self, slot: _Slot, address: str) -> bool:
        """Make the (empty) slot's actor on ``address``: see :meth:`_load`."""
        slot.future, slot.address = self._submit(address), address
        return self._load(slot)

    def _free_workers(self, exclude: set[str | None] = frozenset()) -> list[str]:
        """GPU workers holding none of the pool's actors (nor being given one)."""
        taken = exclude | {slot.address for slot in self._slots}
        return [address for address in find_gpu_workers(self.client) if address not in taken]

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
                    free = self._free_workers({lost_on})
                    if free and self._place(slot, free[0]):
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
                if not free:
                    time.sleep(0.25)
            return False

    @staticmethod
    def _drop(slot: _Slot) -> None:
        if slot.future is not None:
            slot.future.release()
        slot.future = slot.actor = slot.address = None


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
    """:func:`~unique_cube.downscale.sampling.downscale` on the pool's actors, tile by tile.

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
                                overlap=overlap, **pool.blend_options))  # fmt: skip
        start += len(plan)
    return maps[0] if single else maps
