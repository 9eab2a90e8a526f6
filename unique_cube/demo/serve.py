"""Serving a generated world through a local STAC API (``rustac serve`` on 127.0.0.1).

The world's item collections keep hrefs relative to its directory, so a world can be moved or
copied; at serve time they become absolute ``file://`` URIs of where the world is now
(``Path.as_uri()``: percent-encoded, read back with :func:`unique_cube.files.local_path`).

Those files are written to a temporary folder ``unique-cube-stac-<pid>.<host>-…`` named after
the process that serves them; a process killed before it could remove its folder leaves it
behind, and the next :func:`serve_world` on the machine removes the folders of processes
that are gone (never one of a process that still runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import ConfigError
from unique_cube.files import pid_alive
from unique_cube.inputs.stac_server import LocalStacServer

from .build import read_manifest

__all__ = ["remove_stale_folders", "serve_world", "served", "world_stac_files"]


log = logging.getLogger(__name__)


_PREFIX = "unique-cube-stac-"


# Folders made before their names carried the owner: removed once this old (s).
_UNOWNED_AGE = 24 * 3600


def world_stac_files(world_dir: str | Path, into: str | Path) -> list[Path]:
    """Write the world's collections and item collections into ``into`` with absolute hrefs;
    returns the files (collections first)."""
    world_dir = Path(world_dir).resolve()
    if read_manifest(world_dir) is None:
        raise ConfigError(
            f"{world_dir} is not a complete demo world (no {world_dir / 'world.json'}); "
            "build it with `unique-cube demo-world --out DIR`"
        )
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    files = []
    stac = world_dir / "stac"
    for collection in json.loads((stac / "collections.json").read_text()):
        path = into / f"collection-{collection['id']}.json"
        path.write_text(json.dumps(collection))
        files.append(path)
    for source in sorted(stac.glob("*.json")):
        if source.name == "collections.json":
            continue
        features = json.loads(source.read_text())
        for item in features["features"]:
            for asset in item["assets"].values():
                href = asset["href"]
                if "://" not in href:
                    asset["href"] = (world_dir / href).as_uri()
        path = into / source.name
        path.write_text(json.dumps(features))
        files.append(path)
    return files


@contextlib.contextmanager
def served(pipeline: Pipeline) -> Iterator[Pipeline]:
    """The pipeline with its catalog's STAC API up: a ``serve_world`` (a demo world) is served
    on 127.0.0.1 for the block and handed over as ``stac_url``, as a deployment hands over
    the Planetary Computer's URL; the stages never start servers themselves. A pipeline
    without ``serve_world`` (or with a ``stac_url``) is returned as it is."""
    if not pipeline.serve_world or pipeline.stac_url:
        yield pipeline
        return
    with serve_world(pipeline.serve_world) as server:
        yield dataclasses.replace(pipeline, stac_url=server.url)


@contextlib.contextmanager
def serve_world(world_dir: str | Path, port: int | None = None) -> Iterator[LocalStacServer]:
    """Serve a world on 127.0.0.1 (``port`` default: a free one) for the ``with`` block."""
    remove_stale_folders()
    with tempfile.TemporaryDirectory(prefix=f"{_PREFIX}{os.getpid()}.{_host_tag()}-") as tmp:
        files = world_stac_files(world_dir, tmp)
        with LocalStacServer(files, port=port) as server:
            yield server


def _host_tag() -> str:
    """This machine, in a folder name: a process id means something only on its own host
    (containers sharing a /tmp)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


_OWNED = re.compile(rf"{re.escape(_PREFIX)}(?P<pid>\d+)\.(?P<host>[0-9a-f]{{8}})-")


def remove_stale_folders(parent: str | Path | None = None) -> list[Path]:
    """Remove the ``unique-cube-stac-*`` folders in ``parent`` (default: the temporary
    directory) whose process is gone on this host; returns them. A folder of a running
    process, or of another host, is kept; one from before the names carried their owner
    only once it is a day old."""
    parent = Path(parent or tempfile.gettempdir())
    host, removed = _host_tag(), []
    for folder in parent.glob(f"{_PREFIX}*"):
        owner = _OWNED.match(folder.name)
        if owner is not None:
            stale = owner["host"] == host and not pid_alive(int(owner["pid"]))
        else:
            try:
                stale = time.time() - folder.stat().st_mtime > _UNOWNED_AGE
            except OSError:
                continue
        if stale and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                log.info("removed %s, left by a process that is gone", folder)
                removed.append(folder)
    return removed
