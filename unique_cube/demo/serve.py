"""Serving a generated world through a local STAC API (``rustac serve`` on 127.0.0.1).

The world's item collections keep hrefs relative to its directory, so a world can be moved or
copied; at serve time they become absolute ``file://`` URIs of where the world is now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import ConfigError
from unique_cube.inputs.stac_server import LocalStacServer

from .build import read_manifest

__all__ = ["serve_world", "served", "world_stac_files"]


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
    with tempfile.TemporaryDirectory(prefix="unique-cube-stac-") as tmp:
        files = world_stac_files(world_dir, tmp)
        with LocalStacServer(files, port=port) as server:
            yield server
