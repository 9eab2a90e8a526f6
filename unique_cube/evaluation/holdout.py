"""Spatial hold-out: the product's scheme trained on the western part of the region only and
scored on the eastern part, so that a per-pixel fingerprint learnt in training cannot be
what scores. The region is cut at a 480 m block edge (the west gets the smaller half).

Scored on the clear test dates against GPP_L, on the eastern pixels: bilinear GPP_M, the
held-out model (``<scheme>``) and, for comparison, the model trained on the whole region
(``<scheme>_seen``) — the gap between the two is what memorising the region was worth. Both
are the means of ``product.samples`` members (the product's own ensemble size).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.conditions import normalise_static
from unique_cube.downscale.fit import train
from unique_cube.downscale.fusion_train import fit_fusion, training_settings, training_stacks
from unique_cube.downscale.pairs import Pairs, pair_conditions
from unique_cube.downscale.sampling import torch_threads
from unique_cube.evaluation.clear_dates import (
    ClearDates,
    fusion_members,
    pooled_scores,
    sample_members,
)
from unique_cube.grid import COARSE_FACTOR

__all__ = ["spatial_holdout", "split_column"]

log = logging.getLogger(__name__)


def split_column(width: int, factor: int = COARSE_FACTOR) -> int:
    """The column where the west ends: the last block edge at or before the middle."""
    blocks = width // factor
    if blocks < 2:
        raise ValueError(f"a {width} px wide region has fewer than 2 blocks of {factor} px: "
                         "nothing to hold out")  # fmt: skip
    return (blocks // 2) * factor


def spatial_holdout(pipeline: Pipeline, training: Pairs, raw: np.ndarray, names: list[str],
                    dates: ClearDates, say: Callable[[str], None]) -> dict:  # fmt: skip
    """Train the product's scheme on the west of ``training``'s pairs (the downscaler's own
    training pairs) and score it on the east of the clear test dates."""
    spec, scheme = pipeline.downscale, pipeline.product.scheme
    cut = split_column(training.target.shape[-1])
    if scheme == "fusion":
        members = _fusion_west(pipeline, training, raw, names, dates, cut, say)
        return _score_east(pipeline, scheme, members, dates, cut)
    static, info = (None, {})
    if scheme == "s2":
        # Normalised with the west's statistics only: nothing of the east is seen.
        west_static, info = normalise_static(raw[..., :cut], names)
        static = west_static
    valid = ~np.isnan(training.gpp_m_30m).all(axis=(1, 2))
    conditions = pair_conditions(_west(training, cut), static, scheme)[valid]
    say(f"hold-out: training {scheme} on the west {cut} px of {training.target.shape[-1]} "
        f"({int(valid.sum())} pairs, {spec.steps} steps)")  # fmt: skip
    with torch_threads(pipeline.evaluation.threads):
        ckpt, _ = train(conditions, training.target[valid][..., :cut], scheme=scheme,
                        static_info=info, steps=spec.steps, batch=spec.batch, patch=spec.patch,
                        base=spec.base, seed=spec.seed)  # fmt: skip
    # The product's ensemble size for both models (the means are what is scored here; the
    # whole-region model's first members are the same draws the clear-date figures use).
    k = min(pipeline.product.samples, dates.members[scheme].shape[1])
    members = sample_members(
        pipeline, {scheme: ckpt}, raw, dates.pairs, k, say, threads=pipeline.evaluation.threads
    )[scheme]
    return _score_east(pipeline, scheme, members, dates, cut)


def _fusion_west(pipeline: Pipeline, training: Pairs, raw: np.ndarray, names: list[str],
                 dates: ClearDates, cut: int, say) -> np.ndarray:  # fmt: skip
    """The fusion downscaler trained on the west of ``training`` (its reference pairs: every
    date with clear pixels); its members on the clear test dates."""
    stacks, features = training_stacks(pipeline, training, raw, names)
    say(f"hold-out: training fusion on the west {cut} px of {training.target.shape[-1]} "
        f"({len(training.dates)} dates, {pipeline.downscale.steps} steps)")  # fmt: skip
    k = min(pipeline.product.samples, dates.members["fusion"].shape[1])
    threads = pipeline.evaluation.threads
    with torch_threads(threads):
        ckpt, _ = fit_fusion(stacks[..., :cut], features, training.target[..., :cut],
                             **training_settings(pipeline, members=k), threads=threads,
                             say=say)  # fmt: skip
    members, _ = fusion_members(pipeline, ckpt, dates.pairs, dates.fusion, k, say,
                                threads=threads)  # fmt: skip
    return members


def _score_east(pipeline: Pipeline, scheme: str, members: np.ndarray, dates: ClearDates,
                cut: int) -> dict:  # fmt: skip
    """The held-out model's means beside the whole-region model's and bilinear GPP_M on the
    eastern pixels of the clear test dates."""
    k = members.shape[1]
    target = dates.pairs.target[..., cut:]
    maps = {
        "bilinear": dates.maps["bilinear"][..., cut:],
        scheme: members.mean(axis=1)[..., cut:],
        f"{scheme}_seen": dates.members[scheme][:, :k].mean(axis=1)[..., cut:],
    }
    out = {"west_columns": cut, "east_columns": int(target.shape[-1]), "members": k}
    ok = np.isfinite(target)  # the pixels where every method has a value
    for values in maps.values():
        ok &= np.isfinite(values)
    common = np.where(ok, target, np.nan)
    for name, values in maps.items():
        out[name] = pooled_scores(common, values, COARSE_FACTOR)
    return out


def _west(pairs: Pairs, cut: int) -> Pairs:
    return Pairs(pairs.dates, pairs.target[..., :cut], pairs.gpp_m, pairs.gpp_m_30m[..., :cut],
                 pairs.factor)  # fmt: skip
