"""A local STAC API (``rustac serve``) on loopback, for the demo world and for tests.

The server loads item collections (and collections) from files into its in-memory backend
and answers item searches like any STAC API, so catalog code runs unchanged against it.

The server dies with the process that started it, however that process ends (``kill -9``,
a segfault, SIGTERM without a handler): on Linux the kernel sends it SIGKILL when its parent
goes (``prctl(PR_SET_PDEATHSIG)``), elsewhere a small watchdog process stops it.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not the process: a
server started from a worker thread would die with that thread. So every server is forked
from one daemon thread of this module that lives as long as the process. The flag is set by
a short Python trampoline that then becomes rustac (``exec``: the same process id), rather
than in a ``preexec_fn``: that would run Python between fork and exec, unsafe in a process
with threads (Dask's), and force a full fork of a large process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import requests

from unique_cube.errors import UniqueCubeError

__all__ = ["LocalStacServer", "free_port"]


log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _rustac_executable() -> str:
    beside_python = Path(sys.executable).parent / "rustac"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("rustac")
    if found is None:
        raise UniqueCubeError(
            "the rustac command is not installed (pip install rustac); it serves the local STAC API"
        )
    return found


# Runs as `python -I -S -c _DIE_WITH_PARENT PARENT_PID PROGRAM ARGS…`: asks the kernel for
# SIGKILL when the parent (thread) ends, checks the parent did not end already, becomes PROGRAM.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
    sys.exit(97)
if os.getppid() != int(sys.argv[1]):
    sys.exit(98)
os.execv(sys.argv[2], sys.argv[2:])
"""

# The fallback, beside the server: `python -I -c _WATCHDOG PARENT_PID SERVER_PID` stops the
# server once the parent has ended (or is a zombie); ends by itself when the server does.
_WATCHDOG = """\
import sys, time, psutil
parent, server = (psutil.Process(int(pid)) for pid in sys.argv[1:3])
def alive(process):
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
while alive(parent) and alive(server):
    time.sleep(0.25)
if alive(server):
    server.terminate()
    try:
        server.wait(5)
    except psutil.TimeoutExpired:
        server.kill()
"""

_NO_PDEATHSIG = 97


#: Whether the kernel can stop a server when its parent dies (Linux); else a watchdog does.
_PDEATHSIG = sys.platform.startswith("linux")


_spawner: tuple[int, queue.SimpleQueue] | None = None
_spawner_lock = threading.Lock()


def _spawned(start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """``start()`` run in this process's spawner thread (started on first use, and again in a
    forked child, which has no such thread), which never ends: see the module's docstring."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=_run_jobs, args=(jobs,), daemon=True,
                             name="unique-cube-stac-spawner").start()  # fmt: skip
            _spawner = (os.getpid(), jobs)
        jobs = _spawner[1]
    future: concurrent.futures.Future = concurrent.futures.Future()
    jobs.put((start, future))
    return future.result()


def _run_jobs(jobs: queue.SimpleQueue) -> None:
    while True:
        start, future = jobs.get()
        try:
            future.set_result(start())
        except BaseException as err:  # handed to the caller
            future.set_exception(err)


class LocalStacServer:
    """``rustac serve`` on 127.0.0.1, started on enter and stopped on exit.

    Parameters
    ----------
    hrefs
        Files with an item collection (GeoJSON FeatureCollection), items or collections.
    port
        Port to listen on; default a free one.
    create_collections
        Create a collection for items whose collection is not among ``hrefs``.
    """

    def __init__(
        self,
        hrefs: Sequence[str | Path],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        create_collections: bool = True,
        startup_timeout: float = 20.0,
    ) -> None:
        missing = [str(h) for h in hrefs if not Path(h).exists()]
        if missing:
            raise UniqueCubeError(
                f"cannot serve STAC files that do not exist: {', '.join(missing)}"
            )
        self.hrefs = [str(Path(h).resolve()) for h in hrefs]
        self.host = host
        self.port = port or free_port(host)
        self.create_collections = create_collections
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        """Root URL of the API."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalStacServer:
        """Start the server and wait until it answers its landing page."""
        args = [_rustac_executable(), "serve", *self.hrefs, "--addr", f"{self.host}:{self.port}"]
        if self.create_collections:
            args.append("--create-collections")
        # A file, not a pipe: a chatty server must never block on a full pipe.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self._process = _spawned(lambda: self._popen(args))
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                if code == _NO_PDEATHSIG and self._watchdog is None:
                    self._fall_back_to_watchdog()
                    self._process = _spawned(lambda: self._popen(args))
                    continue
                self._log.seek(0)
                err = self._log.read().decode(errors="replace").strip()
                self.stop()
                raise UniqueCubeError(f"rustac serve exited with code {code}: {err}")
            try:
                if requests.get(self.url, timeout=1).ok:
                    log.info("local STAC API serving %d file(s) at %s", len(self.hrefs), self.url)
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise UniqueCubeError(
            f"rustac serve did not answer at {self.url} within {self.startup_timeout} s"
        )

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    def _popen(self, args: list[str]) -> subprocess.Popen[bytes]:
        """Start rustac so that it dies with this process (in the spawner thread)."""
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        if _PDEATHSIG:
            args = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *args]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._log, env=env)
        if not _PDEATHSIG:
            watchdog = [sys.executable, "-I", "-c", _WATCHDOG, str(os.getpid()), str(process.pid)]
            self._watchdog = subprocess.Popen(watchdog, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL)  # fmt: skip
        return process

    def _fall_back_to_watchdog(self) -> None:
        global _PDEATHSIG
        log.warning("prctl(PR_SET_PDEATHSIG) is refused here: a watchdog process stops the "
                    "local STAC API if this process dies")  # fmt: skip
        _PDEATHSIG = False
        self._log.seek(0)
        self._log.truncate()

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        process, self._process = self._process, None
        watchdog, self._watchdog = self._watchdog, None
        for child in (process, watchdog):
            if child is not None and child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalStacServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
