"""The Dask cluster of a product run: a local one, or the one ``$DASK_SCHEDULER_ADDRESS`` names.

GPU workers form their own group: one thread and the resource ``GPU=1`` each (a machine
without CUDA declares the resource all the same and samples on the CPU); CPU workers do the
array work with the threads the pipeline gives them. :func:`find_gpu_workers` lists the
workers that can hold a downscaler actor (:mod:`unique_cube.downscale.actors`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from distributed import Client, SpecCluster

from unique_cube.errors import ClusterError

__all__ = [
    "DASHBOARD_ADDRESS_ENV",
    "GPU",
    "SCHEDULER_ADDRESS_ENV",
    "close_workers",
    "dask_client",
    "find_gpu_workers",
    "free_dashboard_address",
    "local_cluster",
]


log = logging.getLogger(__name__)


GPU = "GPU"


SCHEDULER_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"


#: Where a local cluster's dashboard listens (default 127.0.0.1:8787; 0.0.0.0:8787 in a pod).
DASHBOARD_ADDRESS_ENV = "UNIQUE_CUBE_DASHBOARD_ADDRESS"


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


def free_dashboard_address(address: str) -> str:
    """``address`` (``host:port``) if its port can be listened on, else the same host with
    port 0 (any free one). Distributed would move a taken port itself, but with a warning
    ("Port 8787 is already in use") that a user who did nothing wrong should not see; the
    link said on start (``client.dashboard_link``) names the port actually used."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return address
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # as the dashboard's server binds (SO_REUSEADDR): a port in TIME_WAIT is free to it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError:
            return f"{host}:0"
    return address


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

    if dashboard_address is not None:
        dashboard_address = free_dashboard_address(dashboard_address)
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
            stack.callback(close_workers, cluster)  # after the client, before the cluster
            client = stack.enter_context(Client(cluster))
        link = client.dashboard_link or "none"
        say(f"Dask scheduler {client.scheduler.address}; dashboard {link}")
        yield client


#: How long a local worker process is given to end by itself when the cluster closes.
WORKER_CLOSE_S = 30.0


def close_workers(cluster: SpecCluster, timeout: float = WORKER_CLOSE_S) -> None:
    """Close a local cluster's workers, each process given ``timeout`` seconds to end.

    Closing the cluster closes them with distributed's fixed 5 s, of which its Nanny waits
    4 s before it kills the process with a warning ("Worker process still alive after 4.0
    seconds, killing"); a worker that has loaded torch and the package takes longer than that
    to end on a busy machine, so every run ended with that warning. Closed here first, with
    time, the cluster then finds them closed."""
    import asyncio

    async def close_all() -> None:
        await asyncio.gather(*(worker.close(timeout=timeout) for worker in
                               list(cluster.workers.values())), return_exceptions=True)  # fmt: skip

    try:
        cluster.sync(close_all)
    except Exception as err:  # the cluster's own close still ends them
        log.debug("closing the workers first failed: %s", err)


def find_gpu_workers(client: Client) -> dict[str, dict]:
    """Running workers with the GPU resource, by address, in the order of their names (none
    while the client has lost its scheduler: its information then has no workers at all)."""
    workers = client.scheduler_info().get("workers", {})
    found = {
        address: info
        for address, info in workers.items()
        if info.get("resources", {}).get(GPU, 0) >= 1 and info.get("status") == "running"
    }
    return dict(sorted(found.items(), key=lambda item: str(item[1].get("name"))))
