"""Dask workers killed (or stalled) at set moments of the downscaler actors' lives, for the
fault tests.

Each fault fires once in a whole cluster: the worker that meets it first creates a marker file
(``O_EXCL``), writes its address into it and SIGKILLs itself (or stalls), so a restarted
worker, or a second one with the same fault, carries on. Where a worker dies is set by the
step it has reached, never by a sleep racing the work. Workers import this module by name
(``tests/`` is on their ``sys.path`` as on the test's).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = [
    "KillAtActorStart",
    "die_at_tile",
    "kill_at_actor_start",
    "stall_at_load",
    "undo_die_at_tile",
    "undo_stall_at_load",
]

ACTOR_KEY = "DownscalerActor-"  # how the pool names its actors' tasks


def _claim(marker: str, address: str) -> bool:
    """Whether this worker is the first to reach the fault (and now the one to die)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, address.encode())
    os.close(fd)
    return True


class KillAtActorStart(WorkerPlugin):
    """The first worker on which a downscaler actor's task reaches ``state`` dies: at
    ``"executing"`` its model is not loaded yet; at ``"memory"`` it has loaded but the
    scheduler has not been told (the worker dies before it sends the message)."""

    def __init__(self, marker: str, state: str) -> None:
        if state not in ("executing", "memory"):
            raise ValueError(f"no actor start-up step {state!r}")
        self.marker, self.state = marker, state

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        actor = finish == self.state and str(key).startswith(ACTOR_KEY)
        if actor and _claim(self.marker, self.worker.address):
            os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def kill_at_actor_start(client, marker: str | os.PathLike, state: str) -> Iterator[None]:
    """:class:`KillAtActorStart` on every worker of ``client``'s cluster while in the block."""
    client.register_plugin(KillAtActorStart(str(marker), state), name="kill-at-actor-start")
    try:
        yield
    finally:
        client.unregister_worker_plugin("kill-at-actor-start")


def die_at_tile(marker: str, tile: int) -> None:
    """Run on a worker (``client.run``): its downscaler actor SIGKILLs the worker when asked
    for its ``tile``-th tile (1: the first), before sampling it; see :func:`undo_die_at_tile`."""
    from unique_cube.downscale.actors import DownscalerActor

    sample = getattr(DownscalerActor.sample, "__wrapped__", DownscalerActor.sample)

    @functools.wraps(sample)
    def dying(self, request):
        if self.tiles_done + 1 == tile and _claim(marker, str(self.address)):
            os.kill(os.getpid(), signal.SIGKILL)
        return sample(self, request)

    DownscalerActor.sample = dying


def undo_die_at_tile() -> None:
    """Run on a worker: its actors sample as they should again."""
    from unique_cube.downscale.actors import DownscalerActor

    DownscalerActor.sample = getattr(DownscalerActor.sample, "__wrapped__", DownscalerActor.sample)


def stall_at_load(marker: str) -> None:
    """Run on a worker: the first downscaler actor of the cluster to load here waits (a stuck
    worker, alive but not answering) until :func:`undo_stall_at_load` is run here."""
    from distributed import get_worker

    from unique_cube.downscale.actors import DownscalerActor

    init = getattr(DownscalerActor.__init__, "__wrapped__", DownscalerActor.__init__)
    release = threading.Event()

    @functools.wraps(init)
    def stalled(self, *args, **kwargs):
        if _claim(marker, get_worker().address):
            release.wait()
        init(self, *args, **kwargs)

    stalled.release = release
    DownscalerActor.__init__ = stalled


def undo_stall_at_load() -> None:
    """Run on a worker: a stalled load goes on, and actors load at once again."""
    from unique_cube.downscale.actors import DownscalerActor

    init = DownscalerActor.__init__
    if hasattr(init, "release"):
        init.release.set()
        DownscalerActor.__init__ = init.__wrapped__
