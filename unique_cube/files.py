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
from collections.abc import Iterator
from pathlib import Path

__all__ = ["partial_path", "sha256_file", "write_atomic", "write_json"]


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
    with write_atomic(path) as partial:
        partial.write_text(json.dumps(data, indent=1, default=str))


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file in hex, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
