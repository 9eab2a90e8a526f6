"""What a user sees on the terminal: no progress bar in logs, no warning for a taken port."""

from __future__ import annotations

import io
import socket

from unique_cube.downscale.cluster import free_dashboard_address
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
