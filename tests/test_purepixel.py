"""The pure-pixel baseline: block statistics, pure-block selection, the DNN and its file."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from unique_cube.downscale.pure_pixel import PurePixelModel, fit_pure_pixel
from unique_cube.downscale.purity import (
    block_aggregate,
    coarse_samples,
    dominant_type,
    ndvi_cov,
    pure_pixels,
)
from unique_cube.errors import PurePixelError, UniqueCubeError, UnsafeCheckpointError
from unique_cube.grid import upsample_bilinear

FACTOR = 16
TREE, GRASS, CROP, WATER = 10, 30, 40, 80
VEGETATED = (TREE, GRASS, CROP)
NAMES = ["ndvi", "shortwave", "tair"]


def truth_gpp(ndvi: np.ndarray, shortwave: np.ndarray, types: np.ndarray) -> np.ndarray:
    """A known nonlinear 30 m GPP (gC m-2 d-1) per type; water has none."""
    light = shortwave / 300.0
    tree = 14 * np.clip(ndvi, 0, None) ** 2 * light
    grass = 9 / (1 + np.exp(-12 * (ndvi - 0.45))) * light
    crop = 18 * np.clip(ndvi - 0.25, 0, None) ** 1.3 * light
    gpp = np.select([types == TREE, types == GRASS, types == CROP], [tree, grass, crop], 0.0)
    return gpp.astype("float32")


def synthetic_world(n_dates: int = 10, shape=(170, 165), seed: int = 0):
    """Features per date (NaN under a cloud), types, GPP_M (block means + noise), 30 m truth.

    A 30 m grid that is not a multiple of the factor; a third of the blocks hold two types
    (left and right halves) and every block has its own NDVI heterogeneity."""
    rng = np.random.default_rng(seed)
    h, w = shape
    cy, cx = -(-h // FACTOR), -(-w // FACTOR)
    types = np.empty((cy * FACTOR, cx * FACTOR), dtype="int16")
    amplitude = np.empty(types.shape, dtype="float32")
    for i in range(cy):
        for j in range(cx):
            a, b = rng.choice([TREE, GRASS, CROP, WATER], 2, p=[0.35, 0.25, 0.3, 0.1])
            block = np.full((FACTOR, FACTOR), a)
            if rng.random() < 0.35:
                block[:, FACTOR // 2 :] = b
            window = np.s_[i * FACTOR : (i + 1) * FACTOR, j * FACTOR : (j + 1) * FACTOR]
            types[window], amplitude[window] = block, rng.uniform(0.01, 0.25)
    types, amplitude = types[:h, :w], amplitude[:h, :w]
    level = np.select([types == TREE, types == GRASS, types == CROP], [0.7, 0.5, 0.55], 0.05)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 20)
    detail = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    smooth, detail = 0.15 * smooth / smooth.std(), detail / detail.std()
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    features, gpp_m, truth = [], [], []
    for t in range(n_dates):
        season = np.sin(np.pi * (t + 0.5) / n_dates)
        shift = np.where(types == CROP, 0.35, 0.1) * (season - 0.5)
        ndvi = np.clip(level + smooth + amplitude * detail + shift, -0.1, 0.95)
        ndvi = np.where(types == WATER, 0.05 + 0.02 * detail, ndvi).astype("float32")
        shortwave = (120 + 200 * season + 60 * (xx - 0.5) + 20 * rng.normal()).astype("float32")
        tair = (10 + 15 * season + 3 * (yy - 0.5)).astype("float32")
        gpp = truth_gpp(ndvi, shortwave, types)
        stack = np.stack([ndvi, shortwave, tair])
        stack[:, (yy - rng.uniform()) ** 2 + (xx - rng.uniform()) ** 2 < 0.04] = np.nan
        padded = np.pad(gpp, ((0, cy * FACTOR - h), (0, cx * FACTOR - w)), constant_values=np.nan)
        coarse = np.nanmean(padded.reshape(cy, FACTOR, cx, FACTOR), axis=(1, 3))
        features.append(stack)
        gpp_m.append((coarse + rng.normal(0, 0.05, coarse.shape)).astype("float32"))
        truth.append(gpp)
    return features, types, gpp_m, truth


@pytest.fixture(scope="module")
def world():
    return synthetic_world()


@pytest.fixture(scope="module")
def fitted(world):
    features, types, gpp_m, _ = world
    said: list[str] = []
    model = fit_pure_pixel(features[0::2], NAMES, types, gpp_m[0::2], FACTOR, VEGETATED,
                           say=said.append)  # fmt: skip
    return model, said


def rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a[mask] - b[mask]) ** 2)))


# --- block statistics and pure-block selection (hand-made cases) ---


def test_block_aggregate_means_valid_pixels_and_masks_sparse_or_ragged_blocks():
    f = np.array([[1, 3, 5, 7, 9],
                  [5, 7, np.nan, np.nan, 9],
                  [np.nan, np.nan, 2, 2, 4],
                  [np.nan, 1, 2, 2, 4]], dtype="float32")  # fmt: skip
    out = block_aggregate(np.stack([f, 2 * f]), 2, min_valid=0.5)
    assert out.shape == (2, 2, 3)
    expected = [[4.0, 6.0, 9.0], [np.nan, 2.0, 4.0]]  # 1 of 4 valid; ragged column: 2 of 4
    np.testing.assert_allclose(out[0], expected)
    np.testing.assert_allclose(out[1], 2 * np.asarray(expected))
    assert np.isnan(block_aggregate(f[None], 2, min_valid=0.6)[0, 0, 2])


def test_ndvi_cov_is_std_over_abs_mean_of_valid_pixels():
    ndvi = np.array([[0.2, 0.6, 0.5, 0.5],
                     [0.2, 0.6, 0.5, np.nan],
                     [0.0, 0.0, -0.2, -0.6],
                     [0.0, 0.0, -0.2, -0.6]], dtype="float32")  # fmt: skip
    cov = ndvi_cov(ndvi, 2, min_valid=0.5)
    np.testing.assert_allclose(cov, [[0.2 / 0.4, 0.0], [np.nan, 0.2 / 0.4]], atol=1e-6)


def test_dominant_type_breaks_ties_to_the_lower_code_and_shares_count_in_grid_pixels():
    types = np.array([[30, 10, 40], [10, 30, 40], [80, 80, 0]])
    dominant, share = dominant_type(types, 2)
    # the bottom-right block is one in-grid pixel (code 0); its cut-off part counts for no code
    np.testing.assert_array_equal(dominant, [[10, 40], [80, 0]])
    np.testing.assert_allclose(share, [[0.5, 1.0], [1.0, 1.0]])


def test_pure_pixels_keeps_the_lowest_30_percent_cov_of_each_vegetated_type():
    cov = np.array([[0.9, 0.1, 0.5, 0.3, 0.05],
                    [0.2, 0.8, 0.4, 0.6, np.nan],
                    [0.7, 0.15, 0.02, 0.01, 0.3]])  # fmt: skip
    dominant = np.array([[10, 10, 10, 10, 30],
                         [10, 10, 10, 10, 30],
                         [10, 10, 80, 80, 30]])  # fmt: skip
    pure = pure_pixels(cov, dominant, VEGETATED, fraction=0.3)
    # type 10: 10 blocks -> the 3 lowest (0.1, 0.15, 0.2); type 30: 2 finite -> ceil(0.6) = 1;
    # water is never pure, however low its CoV
    expected = np.zeros(cov.shape, dtype=bool)
    expected[0, 1] = expected[2, 1] = expected[1, 0] = expected[0, 4] = True
    np.testing.assert_array_equal(pure, expected)


def test_coarse_samples_gives_pure_blocks_with_finite_gpp_m(world):
    features, types, gpp_m, _ = world
    gpp = gpp_m[0].copy()
    samples = coarse_samples(features[0], NAMES, types, gpp, FACTOR, VEGETATED)
    cov = ndvi_cov(features[0][0], FACTOR)
    dominant, _ = dominant_type(types, FACTOR)
    pure = pure_pixels(cov, dominant, VEGETATED)
    assert samples.features.shape == (pure.sum(), 3)
    np.testing.assert_allclose(np.sort(samples.gpp), np.sort(gpp[pure]))
    iy, ix = np.argwhere(pure)[0]
    gpp[iy, ix] = np.nan
    fewer = coarse_samples(features[0], NAMES, types, gpp, FACTOR, VEGETATED)
    assert fewer.gpp.size == samples.gpp.size - 1 and np.isfinite(fewer.gpp).all()
    # GPP_M without the ragged edge (10 x 10 blocks instead of 11 x 11) is accepted too
    cropped = coarse_samples(features[0], NAMES, types, gpp_m[0][:10, :10], FACTOR, VEGETATED)
    assert 0 < cropped.gpp.size <= samples.gpp.size


# --- the model on a world with a known 30 m truth ---


def test_fitted_model_recovers_the_30m_truth_far_better_than_upsampled_gpp_m(world, fitted):
    features, types, gpp_m, truth = world
    model, said = fitted
    h, w = types.shape
    for i in range(1, len(features), 2):  # dates the model never saw
        pred = model.predict(features[i], NAMES, types)
        expected_nan = np.isnan(features[i]).any(axis=0) | (types == WATER)
        np.testing.assert_array_equal(np.isnan(pred), expected_nan)
        assert pred.dtype == np.float32
        ok = ~expected_nan
        bilinear = upsample_bilinear(gpp_m[i], FACTOR)[:h, :w]
        nearest = np.kron(gpp_m[i], np.ones((FACTOR, FACTOR)))[:h, :w]
        errors = [rmse(x, truth[i], ok) for x in (pred, bilinear, nearest)]
        print(f"date {i}: RMSE model {errors[0]:.2f}, bilinear {errors[1]:.2f}, "
              f"nearest {errors[2]:.2f} gC m-2 d-1")  # fmt: skip
        assert errors[0] < 0.5 * min(errors[1:])
    counts = model.meta["pure_blocks"]
    assert set(counts) == set(VEGETATED) and all(n > 0 for n in counts.values())
    assert said and all(f"{code}: {n}" in said[0] for code, n in counts.items())


def test_pure_block_counts_are_30_percent_of_each_types_candidates(world, fitted):
    features, types, _, _ = world
    model, _ = fitted
    dominant, _ = dominant_type(types, FACTOR)
    expected = dict.fromkeys(VEGETATED, 0)
    for stack in features[0::2]:
        cov = ndvi_cov(stack[0], FACTOR)
        for code in VEGETATED:
            expected[code] += math.ceil(0.3 * np.sum((dominant == code) & np.isfinite(cov)) - 1e-9)
    assert model.meta["pure_blocks"] == expected


def test_same_seed_same_model_other_seed_another(world):
    features, types, gpp_m, _ = world
    args = (features[:2], NAMES, types, gpp_m[:2], FACTOR, VEGETATED)
    maps = [
        fit_pure_pixel(*args, epochs=30, seed=seed, say=lambda _: None).predict(
            features[2], NAMES, types
        )
        for seed in (3, 3, 4)
    ]
    np.testing.assert_array_equal(maps[0], maps[1])
    assert not np.allclose(maps[0], maps[2], equal_nan=True)


def test_predict_takes_features_in_any_order_and_names_the_missing_ones(world, fitted):
    features, types, _, _ = world
    model, _ = fitted
    reference = model.predict(features[1], NAMES, types)
    shuffled = np.stack([features[1][2], np.zeros_like(types, "float32"), features[1][0],
                         features[1][1]])  # fmt: skip
    again = model.predict(shuffled, ["tair", "extra", "ndvi", "shortwave"], types)
    np.testing.assert_array_equal(again, reference)
    with pytest.raises(PurePixelError, match=r"lack \['shortwave'\]"):
        model.predict(features[1][[0, 2]], ["ndvi", "tair"], types)
    with pytest.raises(PurePixelError, match="types"):
        model.predict(features[1], NAMES, types[:-1])


# --- the file ---


def test_save_load_round_trip_predicts_identically(world, fitted, tmp_path):
    features, types, _, _ = world
    model, _ = fitted
    model.save(tmp_path / "m" / "purepixel.pt")
    loaded = PurePixelModel.load(tmp_path / "m" / "purepixel.pt")
    assert loaded.names == NAMES and loaded.type_codes == list(VEGETATED)
    assert loaded.meta["pure_blocks"] == model.meta["pure_blocks"]
    np.testing.assert_array_equal(loaded.predict(features[3], NAMES, types),
                                  model.predict(features[3], NAMES, types))  # fmt: skip


def _leave_a_mark(path: str) -> None:
    Path(path).write_text("code from the pickle ran")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _leave_a_mark, (str(self.marker),)


def test_load_refuses_a_pickle_carrying_code_and_foreign_files(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "unique-cube-purepixel-1", "meta": _Payload(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*refused to unpickle") as caught:
        PurePixelModel.load(evil)
    assert isinstance(caught.value, UniqueCubeError) and not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"plain\.pkl"):
        PurePixelModel.load(plain)
    assert not marker.exists()
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(PurePixelError, match=r"other\.pt: not a unique-cube pure-pixel model"):
        PurePixelModel.load(other)
    with pytest.raises(PurePixelError, match=r"missing\.pt: no such"):
        PurePixelModel.load(tmp_path / "missing.pt")


# --- bad input ---


def _fit(features, types, gpp_m, **kwargs):
    return fit_pure_pixel(features, NAMES, types, gpp_m, FACTOR, VEGETATED, epochs=1,
                          say=lambda _: None, **kwargs)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("types_shape", r"types \(169, 165\) do not match the features' 30 m grid \(170, 165\)"),
        (
            "gpp_m_shape",
            r"GPP_M \(11, 12\) is not the block grid .* expected \(11, 11\) or \(10, 10\)",
        ),
        ("dates", "2 feature dates but 1 GPP_M dates"),
        ("features_shape", r"F = 3 features \['ndvi', 'shortwave', 'tair'\], not \(2, 170, 165\)"),
        ("float_types", "integer codes, not float32"),
        ("all_nan_features", "no block has 50% of its 30 m ndvi finite"),
        ("all_nan_gpp_m", "GPP_M is NaN on every date"),
        (
            "no_vegetation",
            r"no block is dominated by a vegetated type \[10, 30, 40\] \(found \[80\]\)",
        ),
    ],
)
def test_bad_input_is_refused_with_what_was_wrong(world, case, message):
    features, types, gpp_m, _ = world
    features, gpp_m = features[:2], gpp_m[:2]
    if case == "types_shape":
        types = types[:-1]
    elif case == "gpp_m_shape":
        gpp_m = [np.zeros((11, 12), "float32")] * 2
    elif case == "dates":
        gpp_m = gpp_m[:1]
    elif case == "features_shape":
        features = [f[:2] for f in features]
    elif case == "float_types":
        types = types.astype("float32")
    elif case == "all_nan_features":
        features = [np.full_like(f, np.nan) for f in features]
    elif case == "all_nan_gpp_m":
        gpp_m = [np.full_like(g, np.nan) for g in gpp_m]
    elif case == "no_vegetation":
        types = np.full_like(types, WATER)
    with pytest.raises(PurePixelError, match=message):
        _fit(features, types, gpp_m)
