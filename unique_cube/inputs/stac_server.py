"""A local STAC API (``rustac serve``) on loopback, for the demo world and for tests.

The server loads item collections (and collections) from files into its in-memory backend
and answers item searches like any STAC API, so catalog code runs unchanged against it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        # A file, not a pipe: a chatty server must never block on a full pipe.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._log, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
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

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
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
