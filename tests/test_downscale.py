"""The downscaler's mechanics: upsampling, conditions, checkpoints, tiled seeded inference."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from unique_cube.downscale.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from unique_cube.downscale.conditions import GPP_SCALE, condition_stack
from unique_cube.downscale.consistency import coarse_consistency
from unique_cube.downscale.sampling import downscale
from unique_cube.downscale.schedule import NoiseSchedule
from unique_cube.downscale.train import train
from unique_cube.errors import DownscaleError, UnsafeCheckpointError
from unique_cube.grid import upsample_bilinear
from unique_cube.scores import crps_ensemble


def test_upsampling_keeps_constants_and_fills_holes() -> None:
    coarse = np.full((2, 3, 3), 4.0, dtype="float32")
    coarse[0, 1, 1] = np.nan
    coarse[1] = np.nan
    fine = upsample_bilinear(coarse, 16)
    assert fine.shape == (2, 48, 48)
    np.testing.assert_allclose(fine[0], 4.0)  # the hole took its neighbours' value
    assert np.isnan(fine[1]).all()  # no data at all stays no data
    ramp = upsample_bilinear(np.array([[0.0, 16.0]], dtype="float32"), 16)
    assert ramp[0, 8] < ramp[0, 16] < ramp[0, 24]  # bilinear, not blocks


def test_condition_stacks_by_scheme() -> None:
    gpp_m = np.full((8, 8), 5.0, dtype="float32")
    static = np.zeros((3, 8, 8), dtype="float32")
    assert condition_stack(gpp_m, None, "s1").shape == (1, 8, 8)
    s2 = condition_stack(gpp_m, static, "s2")
    assert s2.shape == (4, 8, 8) and s2[0, 0, 0] == pytest.approx(5.0 / GPP_SCALE)
    with pytest.raises(DownscaleError, match="s2 needs the static layers"):
        condition_stack(gpp_m, None, "s2")
    with pytest.raises(DownscaleError, match="unknown scheme 's3'"):
        condition_stack(gpp_m, None, "s3")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    gpp_m = rng.uniform(2, 8, (4, 32, 32)).astype("float32")
    conditions = np.stack([condition_stack(g, None, "s1") for g in gpp_m])
    targets = gpp_m + rng.normal(0, 0.5, gpp_m.shape).astype("float32")
    targets[:, :4] = np.nan  # clouds: masked in the loss
    ckpt, losses = train(conditions, targets, scheme="s1", static_info={}, steps=4, batch=2,
                         patch=16, base=8, schedule_steps=50)  # fmt: skip
    assert len(losses) == 4 and all(np.isfinite(losses))
    path = tmp_path_factory.mktemp("ckpt") / "downscaler_s1.pt"
    save_checkpoint(path, ckpt)
    return path, conditions


def test_checkpoints_round_trip_weights_only(tiny, tmp_path: Path) -> None:
    path, conditions = tiny
    ckpt = load_checkpoint(path, "s1")
    again = load_checkpoint(path)
    a = downscale(ckpt, conditions[0], samples=2, ddim_steps=5, tile=16, overlap=4, seed=3)
    b = downscale(again, conditions[0], samples=2, ddim_steps=5, tile=16, overlap=4, seed=3)
    c = downscale(again, conditions[0], samples=2, ddim_steps=5, tile=16, overlap=4, seed=4)
    assert a.shape == (2, 32, 32) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # same seed, same map
    assert not np.array_equal(a, c)
    with pytest.raises(DownscaleError, match="scheme s1, not s2"):
        load_checkpoint(path, "s2")
    with pytest.raises(DownscaleError, match="takes 1 condition layers, got 3"):
        downscale(ckpt, np.zeros((3, 32, 32), dtype="float32"))
    bad = conditions[0].copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(DownscaleError, match="NaN or infinite"):
        downscale(ckpt, bad)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_carrying_code_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"format": "unique-cube-downscaler-1", "payload": _Exploit()}, f)
    with pytest.raises(UnsafeCheckpointError, match="not a weights-only checkpoint"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(DownscaleError, match="not a unique-cube downscaler checkpoint"):
        load_checkpoint(other)
    with pytest.raises(DownscaleError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


class _Oracle(torch.nn.Module):
    """Predicts exactly the noise that leads to the residual held in condition channel 1."""

    def __init__(self, schedule: NoiseSchedule):
        super().__init__()
        self.config = {"cond_channels": 2}
        self.abar = schedule.alphas_cumprod.float()

    def forward(self, x, t, condition):
        a = self.abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * condition[:, 1:2]) / (1 - a).sqrt()


def test_tiles_blend_without_seams() -> None:
    schedule = NoiseSchedule.make("cosine", 100)
    ckpt = Checkpoint(_Oracle(schedule), schedule, "s1", {}, {}, prediction="epsilon")
    yy, xx = np.mgrid[0:70, 0:90] / 30.0
    residual = (0.5 * np.sin(yy) * np.cos(xx)).astype("float32")
    base = np.full((70, 90), 1.0, dtype="float32")
    condition = np.stack([base, residual])
    members = downscale(ckpt, condition, samples=3, ddim_steps=8, tile=32, overlap=8, seed=1)
    expected = (base + residual) * GPP_SCALE
    np.testing.assert_allclose(members, np.broadcast_to(expected, members.shape), atol=1e-3)


def test_coarse_consistency_and_crps() -> None:
    rng = np.random.default_rng(2)
    fine = rng.uniform(0, 10, (32, 32)).astype("float32")
    coarse = np.array([[5.0, 6.0], [7.0, 8.0]], dtype="float32")
    corrected = coarse_consistency(fine, coarse, 16)
    blocks = corrected.reshape(2, 16, 2, 16).mean(axis=(1, 3))
    np.testing.assert_allclose(blocks, coarse, atol=1e-4)
    observed = rng.normal(size=(10, 10))
    same = np.stack([np.zeros((10, 10))] * 3)
    assert crps_ensemble(same, observed) == pytest.approx(np.abs(observed).mean())
    spread = rng.normal(size=(50, 10, 10))
    assert crps_ensemble(spread, observed) < crps_ensemble(same + 3.0, observed)


def test_train_and_evaluate_downscaler_on_the_small_world(
    trained_downscalers: Path, capsys
) -> None:
    """The CLI end to end on the small world, with a few training steps (mechanics only)."""
    import json

    from unique_cube.cli import main

    spec, out = trained_downscalers / "pipeline.yaml", trained_downscalers / "ds"
    assert main(["evaluate-downscaler", str(spec)]) == 0
    assert "s2: 2 dates x 2 members" in capsys.readouterr().err
    report = json.loads((out / "evaluation.json").read_text())
    assert len(report["dates"]) == 2
    for against in ("vs_gpp_l", "vs_truth"):
        assert set(report["table"][against]) == {"bilinear", "pure_pixel", "ddpm_s1", "ddpm_s2",
                                                 "fusion", "fusion_mean"}  # fmt: skip
        assert report["table"][against]["bilinear"]["rmse"] > 0
    assert set(report["ensemble"]) == {"s1", "s2", "fusion"}
    for scheme in ("s1", "s2", "fusion"):
        mismatch = report["coarse_consistency"][scheme]
        assert mismatch["after"] < 0.05 * max(mismatch["before"], 1e-3) + 1e-3
    assert (out / "quicklook.png").stat().st_size > 10_000
    s2 = load_checkpoint(out / "downscaler_s2.pt", "s2")
    assert s2.static["names"][:4] == ["elevation", "slope", "aspect_sin", "aspect_cos"]
    assert any(name.startswith("lc_") for name in s2.static["names"])


def test_evaluation_pairs_of_the_clearest_dates_equal_those_of_the_whole_period(
    trained_downscalers: Path,
) -> None:
    """Evaluation keeps only its clearest dates and reads MODIS around them only: the same
    dates, targets and GPP_M (the gap-filled time interpolation included) as the pairs of
    every clear date of the period."""
    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.demo.serve import served
    from unique_cube.downscale.pairs import make_pairs, pair_inputs
    from unique_cube.inputs.search import open_catalog

    pipeline = load_pipeline(trained_downscalers / "pipeline.yaml")
    period = pipeline.downscale.test
    with served(pipeline) as pipeline, open_catalog(pipeline) as catalog:
        inputs = pair_inputs(pipeline, catalog, period)
        every = make_pairs(pipeline, inputs)
        few = make_pairs(pipeline, inputs, clearest=2)
    assert len(every.dates) > 2 and len(few.dates) == 2
    assert set(few.dates) <= set(every.dates)
    expected = [every.dates.index(d) for d in few.dates]
    clear = np.isfinite(every.target).mean(axis=(1, 2))  # chosen by the QA: about this
    assert clear[expected].min() >= np.sort(clear)[-3] - 0.02
    np.testing.assert_array_equal(few.target, every.target[expected])
    np.testing.assert_allclose(few.gpp_m, every.gpp_m[expected], rtol=1e-6, atol=1e-6)
