"""The downscaler actor of a GPU worker, and the tile requests it answers.

Each GPU worker holds one :class:`DownscalerActor`, which loads the checkpoint once
(``torch.load(weights_only=True)``) onto its device and samples the tiles it is sent
(:class:`TileRequest`); :mod:`unique_cube.downscale.pool` supervises the actors. Actor calls do
not show on the Dask dashboard's task stream.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    pass
from unique_cube.downscale.checkpoint import load_checkpoint
from unique_cube.downscale.sampling import sample_tile

__all__ = ["DownscalerActor", "TileRequest", "model_loads"]


log = logging.getLogger(__name__)


_model_loads = 0  # checkpoints loaded by actors in this process (reported by `info`)


def model_loads() -> int:
    """Checkpoints loaded by :class:`DownscalerActor` in this process (run it on workers)."""
    return _model_loads


@dataclass(frozen=True, eq=False)
class TileRequest:
    """One tile to sample, with everything that makes its residual reproducible."""

    condition: np.ndarray
    """The tile's conditions (C, h, w)."""
    samples: int
    ddim_steps: int
    seed: int
    """The map's seed; the generator's seed also takes the tile's position."""
    ty: int
    tx: int


class DownscalerActor:
    """A downscaler held on one device of one worker: the checkpoint is loaded once.

    Create it with ``client.submit(DownscalerActor, path, device=..., actor=True,
    resources={"GPU": 1})``; ``path`` is read on the worker. ``device`` defaults to
    ``"cuda"`` where available, else ``"cpu"``.
    """

    def __init__(
        self, checkpoint_path: str, device: str | None = None, torch_threads: int | None = None
    ) -> None:
        global _model_loads
        from distributed import get_worker

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch_threads and self.device == "cpu":
            # A worker process starts with one BLAS/OpenMP thread; on a CPU-only machine the
            # network is the work, so it may take the cores it is given.
            torch.set_num_threads(torch_threads)
        self.ckpt = load_checkpoint(checkpoint_path)
        self.ckpt.model.to(self.device)
        _model_loads += 1
        self.tiles_done = 0
        try:
            self.address = get_worker().address
        except ValueError:  # built outside a worker
            self.address = None

    def sample(self, request: TileRequest) -> np.ndarray:
        """The tile's residual members (K, h, w) (see :func:`downscale.sample_tile`)."""
        residual = sample_tile(
            self.ckpt, request.condition, samples=request.samples,
            ddim_steps=request.ddim_steps, seed=request.seed, ty=request.ty, tx=request.tx,
            device=self.device,
        )  # fmt: skip
        self.tiles_done += 1
        return residual

    def sample_many(self, requests: list[TileRequest]) -> list[np.ndarray]:
        """Several tiles in one call (fewer round trips, more lost when the worker dies)."""
        return [self.sample(request) for request in requests]

    def info(self) -> dict[str, Any]:
        """Where the actor lives, what it holds and how much it has done."""
        return {
            "address": self.address,
            "pid": os.getpid(),
            "device": self.device,
            "torch_threads": torch.get_num_threads(),  # CPU results depend on it (in the last bits)
            "scheme": self.ckpt.scheme,
            "cond_channels": self.ckpt.model.config["cond_channels"],
            "blend_options": self.ckpt.blend_options,
            "tiles_done": self.tiles_done,
            "model_loads": _model_loads,
        }
