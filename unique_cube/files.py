"""Files written whole or not at all, and their hashes.

:func:`write_atomic` writes beside the final name (``.NAME.PID.partial``) and renames: a
reader sees the old file or the new one, never half of one, and a process killed meanwhile
leaves only a ``.partial`` file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "local_path",
    "partial_path",
    "partial_pid",
    "pid_alive",
    "sha256_file",
    "staged_json",
    "write_atomic",
    "write_json",
]


def partial_path(path: Path, tag: str = "") -> Path:
    """Where this process writes ``path`` before it is complete: ``.NAME.PID[TAG].partial``
    beside it (the process id keeps two writers of one file apart)."""
    return path.with_name(f".{path.name}.{os.getpid()}{tag}.partial")


@contextlib.contextmanager
def write_atomic(path: Path) -> Iterator[Path]:
    """The temporary path to write ``path``'s new content to: renamed to ``path`` when the
    block ends, removed if it raises. Readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON at ``path``, written whole or not at all."""
    with staged_json(path, data):
        pass


@contextlib.contextmanager
def staged_json(path: Path, data: dict) -> Iterator[Path]:
    """``data`` written as JSON beside ``path`` before the block runs (a full disk fails
    here), renamed to ``path`` when the block ends, removed if it raises."""
    with write_atomic(path) as partial:
        partial.write_text(json.dumps(data, indent=1, default=str))
        yield partial


_PARTIAL = re.compile(r"\.(?P<pid>\d+)(?:\.[A-Za-z0-9_-]+)?\.partial$")


def partial_pid(path: Path) -> int | None:
    """The process id in a :func:`partial_path` name, or ``None``."""
    match = _PARTIAL.search(path.name)
    return int(match["pid"]) if match else None


def pid_alive(pid: int | None) -> bool:
    """Whether a process ``pid`` runs on this machine (``None``: unknown, so assumed alive)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file in hex, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_path(href: str) -> Path | None:
    """The local file an asset href names, or ``None`` for a remote one (``https://``,
    ``s3://`` …). A ``file://`` URI (as ``Path.as_uri()`` writes it) is percent-decoded:
    ``file:///data/d%C3%A9%20mo/x.tif`` is ``/data/dé mo/x.tif``; a plain path is itself."""
    import urllib.parse
    import urllib.request

    scheme = href.split("://", 1)[0].lower() if "://" in href else ""
    if not scheme:
        return Path(href)
    if scheme != "file":
        return None
    parts = urllib.parse.urlsplit(href)
    if parts.netloc not in ("", "localhost"):  # file://server/share/x: a UNC path
        return Path(urllib.request.url2pathname(f"//{parts.netloc}{parts.path}"))
    return Path(urllib.request.url2pathname(parts.path))
