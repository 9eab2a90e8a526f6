"""What a user sees on the terminal: no progress bar in logs, no warning for a taken port."""

from __future__ import annotations

import io
import logging
import os
import socket
import warnings

import psutil
import pytest
from rasterio.errors import NotGeoreferencedWarning

from unique_cube.downscale.cluster import (
    GPU,
    SCHEDULER_ADDRESS_ENV,
    dask_client,
    free_dashboard_address,
)
from unique_cube.inputs.reads import quiet_spurious_warnings
from unique_cube.progress import progress_lines


def test_no_progress_bar_when_stderr_is_not_a_terminal():
    stream = io.StringIO()  # isatty() is False, as for a log file or a pod's stderr
    with progress_lines(stream) as say:
        say("step 1/10: loss 0.5")
        say("day 2023-06-01 done")
    assert stream.getvalue() == "step 1/10: loss 0.5\nday 2023-06-01 done\n"


def test_dashboard_moves_to_a_free_port_when_its_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert free_dashboard_address(f"127.0.0.1:{port}") == "127.0.0.1:0"
    assert free_dashboard_address(f"127.0.0.1:{port}") == f"127.0.0.1:{port}"


def _shown(message: str, module: str) -> bool:
    """Whether a NotGeoreferencedWarning raised from ``module`` reaches the user once the
    product's filter is set (pytest resets the filters per test: set here as at a run's start).
    The spurious one comes at random, on a worker thread's first warped read (odc-geo #131), so
    it is raised here as rasterio raises it: from ``rasterio.warp``."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_spurious_warnings()
        warnings.warn_explicit(message, NotGeoreferencedWarning, "warp.py", 387, module=module)
    return bool(seen)


def test_rasterios_spurious_warning_on_warped_reads_is_silenced_and_nothing_else():
    spurious = ("Dataset has no geotransform, gcps, or rpcs. The identity matrix will be "
                "returned.")  # fmt: skip
    assert not _shown(spurious, "rasterio.warp")
    assert _shown("another message", "rasterio.warp")
    assert _shown(spurious, "unique_cube.product.cog")  # the product's own files are never quiet


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_every_line_is_kept_above_the_bar():
    stream = _Terminal()
    with progress_lines(stream) as say:
        say("[2/5] 2023-06-02: done in 3.1 s")
        say("training the pure-pixel DNN")  # no count: the bar spins
    text = stream.getvalue()
    assert "[2/5] 2023-06-02: done in 3.1 s" in text
    assert "training the pure-pixel DNN" in text


@pytest.mark.integration
def test_a_local_cluster_ends_without_killing_its_workers(monkeypatch) -> None:
    """Its workers have loaded torch (as a product run's do) and are given time to end by
    themselves: no "Worker process still alive after 4.0 seconds, killing" at every exit."""
    said: list[str] = []

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    handler = Said(logging.WARNING)
    nanny = logging.getLogger("distributed.nanny")
    nanny.addHandler(handler)
    monkeypatch.delenv(SCHEDULER_ADDRESS_ENV, raising=False)
    try:
        with dask_client(cpu_workers=1, gpu_workers=1, dashboard_address=None,
                         say=said.append) as client:  # fmt: skip
            pids = list(client.run(os.getpid).values())
            assert client.submit(_torch_sum, resources={GPU: 1}).result() == 3.0
    finally:
        nanny.removeHandler(handler)
    assert not [m for m in said if "still alive" in m], said
    assert not any(psutil.pid_exists(pid) for pid in pids)


def _torch_sum() -> float:
    import torch

    return float(torch.ones(3).sum())
