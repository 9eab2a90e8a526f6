"""A day made window by window equals the day made on the whole grid: the upsampled GPP_M,
the coarse QA and the blended ensemble, each tile sampled once."""

from __future__ import annotations

import numpy as np
import pytest

from unique_cube.downscale.conditions import condition_stack
from unique_cube.downscale.sampling import downscale, sample_tile
from unique_cube.downscale.tiling import (
    ResidualCache,
    blend_tiles,
    extent_of,
    local_plan,
    tile_plan,
    tiles_touching,
)
from unique_cube.downscale.train import train
from unique_cube.grid import (
    Window,
    bilinear_window,
    blocks_window,
    day_windows,
    fine_fraction,
    upsample_bilinear,
)

FACTOR = 16


def test_windows_cover_the_grid_once() -> None:
    shape = (300, 170)
    windows = day_windows(shape, 128)
    assert [w.shape for w in windows[:2]] == [(128, 128), (128, 42)]
    covered = np.zeros(shape, dtype=int)
    for window in windows:
        covered[window.slices] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("shape", [(160, 160), (150, 205)])  # the coarse grid may overhang
def test_bilinear_and_blocks_of_a_window_equal_those_of_the_grid(shape) -> None:
    rng = np.random.default_rng(3)
    coarse = rng.uniform(0, 10, (-(-shape[0] // FACTOR), -(-shape[1] // FACTOR)))
    coarse = coarse.astype("float32")
    whole = upsample_bilinear(coarse, FACTOR)[: shape[0], : shape[1]]
    blocks = np.kron(coarse, np.ones((FACTOR, FACTOR), "float32"))[: shape[0], : shape[1]]
    extents = [*day_windows(shape, 64), Window(5, 77, 30, 31), Window(0, shape[0], 0, shape[1])]
    for window in extents:
        np.testing.assert_array_equal(bilinear_window(coarse, FACTOR, window), whole[window.slices])
        np.testing.assert_array_equal(blocks_window(coarse, FACTOR, window), blocks[window.slices])
    mask = coarse > 6
    expected = np.kron(mask, np.ones((FACTOR, FACTOR), bool))[: shape[0], : shape[1]].mean()
    assert fine_fraction(mask, FACTOR, shape) == pytest.approx(expected)


@pytest.fixture(scope="module")
def checkpoint():
    """A barely trained S1 downscaler: its samples vary with the noise, as a real one's do."""
    rng = np.random.default_rng(0)
    gpp_m = rng.uniform(2, 8, (4, 32, 32)).astype("float32")
    conditions = np.stack([condition_stack(g, None, "s1") for g in gpp_m])
    targets = gpp_m + rng.normal(0, 0.5, gpp_m.shape).astype("float32")
    ckpt, _ = train(conditions, targets, scheme="s1", static_info={}, steps=3, batch=2,
                    patch=16, base=8, schedule_steps=50)  # fmt: skip
    return ckpt


def test_windowed_ensemble_equals_the_whole_grid_and_samples_each_tile_once(checkpoint) -> None:
    rng = np.random.default_rng(1)
    shape, tile, overlap, seed = (100, 130), 32, 8, 7
    condition = condition_stack(rng.uniform(2, 8, shape).astype("float32"), None, "s1")
    whole = downscale(checkpoint, condition, samples=2, ddim_steps=3, tile=tile,
                      overlap=overlap, seed=seed)  # fmt: skip
    assert whole.std(axis=0).max() > 0  # the members differ: the noise matters

    plan = tile_plan(*shape, tile=tile, overlap=overlap)
    windows = day_windows(shape, 48)
    touching = [tiles_touching(w, plan) for w in windows]
    cache = ResidualCache(touching)
    sampled: list[tuple[int, int]] = []
    out = np.full((2, *shape), np.nan, dtype="float32")
    for window, tiles in zip(windows, touching, strict=True):
        extent = extent_of(tiles)
        part = condition[(slice(None), *extent.slices)]

        def sample(missing, part=part, extent=extent):
            sampled.extend((t.ty, t.tx) for t in missing)
            return [sample_tile(checkpoint, part[(slice(None), *t.window)], samples=2,
                                ddim_steps=3, seed=seed, ty=t.ty, tx=t.tx)
                    for t in local_plan(missing, extent)]  # fmt: skip

        members = blend_tiles(part, local_plan(tiles, extent), cache.residuals(tiles, sample),
                              overlap=overlap)  # fmt: skip
        out[(slice(None), *window.slices)] = members[(slice(None), *window.within(extent))]
        assert extent.shape[0] < shape[0] or extent.shape[1] < shape[1]  # not the whole grid
    np.testing.assert_array_equal(out, whole)
    assert sorted(sampled) == sorted((t.ty, t.tx) for t in plan)  # each tile once
    assert len(cache) == 0  # nothing kept after the last window
