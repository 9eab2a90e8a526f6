"""``unique-cube train-downscaler``: the fusion downscaler, the paper's S1/S2, or the pure-pixel
baseline.

:func:`train_downscaler` is the command: the pipeline's training pairs
(:mod:`unique_cube.downscale.pairs`) over the whole grid or windows of a large one
(:mod:`unique_cube.downscale.regions`), static layers for S2, a checkpoint written at the end;
the fusion downscaler's training is in :mod:`unique_cube.downscale.fusion_train`, the
diffusion training loop (:func:`train`) in :mod:`unique_cube.downscale.fit`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import dask
import numpy as np

from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.checkpoint import save_checkpoint
from unique_cube.downscale.conditions import apply_static_normalisation, normalise_static
from unique_cube.downscale.fit import train
from unique_cube.downscale.fusion_train import train_fusion
from unique_cube.downscale.pairs import pair_conditions
from unique_cube.downscale.pure_pixel import PurePixelModel
from unique_cube.downscale.purity import Samples
from unique_cube.downscale.regions import TrainingSet, training_set
from unique_cube.downscale.sampling import torch_threads
from unique_cube.errors import DownscaleError
from unique_cube.gpp.features import FEATURES
from unique_cube.inputs.search import open_catalog

__all__ = ["train", "train_downscaler"]


log = logging.getLogger(__name__)


def train_downscaler(pipeline: Pipeline, scheme: str, say: Callable[[str], None] = log.info, *,
                     max_seconds: float | None = None) -> Path:  # fmt: skip
    """Train one scheme (``fusion``, ``s1``, ``s2`` or the ``pure_pixel`` baseline) on the
    GPP model's training period; writes the checkpoint. With ``max_seconds`` the diffusion's
    training stops after that long, keeps its state beside the checkpoint and raises
    :class:`~unique_cube.downscale.fit.TrainingPaused`; the next run goes on from there."""
    pipeline.require("grid", "downscale", command="unique-cube train-downscaler")
    spec = pipeline.downscale
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    state = output / f"downscaler_{scheme}.state.pt"
    if scheme == "fusion":
        return train_fusion(pipeline, output, say, state_path=state, max_seconds=max_seconds)
    with open_catalog(pipeline) as catalog, dask.config.set(num_workers=pipeline.gpp.threads):
        data = training_set(pipeline, catalog, spec.train or pipeline.gpp.train, say,
                            with_types=True)  # fmt: skip
    if scheme == "pure_pixel":
        return _train_pure_pixel(data, spec, output, say)
    static, info = [None] * len(data.windows), {}
    if scheme == "s2":
        _, info = normalise_static(data.static_stack(), data.names)
        static = [apply_static_normalisation(w.static, info) for w in data.windows]
    conditions, targets = [], []
    for window, layers in zip(data.windows, static, strict=True):
        pairs = window.pairs
        valid = ~np.isnan(pairs.gpp_m_30m).all(axis=(1, 2))
        conditions.append(pair_conditions(pairs, layers, scheme)[valid])
        targets.append(pairs.target[valid])
    n = sum(len(t) for t in targets)
    where = "" if data.whole else f" of {len(data.windows)} windows"
    say(f"training {scheme} on {n} pairs{where} ({spec.steps} steps)")
    with torch_threads(spec.threads):
        ckpt, losses = train(
            np.concatenate(conditions), np.concatenate(targets), scheme=scheme,
            static_info=info, steps=spec.steps, batch=spec.batch, patch=spec.patch,
            base=spec.base, seed=spec.seed, progress=say, state_path=state,
            max_seconds=max_seconds,
        )  # fmt: skip
    path = output / f"downscaler_{scheme}.pt"
    save_checkpoint(path, ckpt)
    state.unlink(missing_ok=True)  # the checkpoint is written: the paused state is done
    say(f"wrote {path} (final loss {np.mean(losses[-100:]):.4f})")
    return path


def _train_pure_pixel(data: TrainingSet, spec, output: Path, say) -> Path:
    found = [w.pairs.rows for w in data.windows if w.pairs.rows is not None]
    rows = Samples.concat(found) if found else None
    if rows is None or len(rows.gpp) == 0:
        raise DownscaleError("no pure-pixel training rows (no vegetated pure coarse pixel)")
    say(f"training the pure-pixel DNN on {len(rows.gpp)} pure coarse pixels {rows.counts()}")
    model = PurePixelModel(FEATURES, np.unique(rows.types))
    model.fit(rows, seed=spec.seed)
    path = output / "pure_pixel.pt"
    model.save(path)
    say(f"wrote {path}")
    return path
