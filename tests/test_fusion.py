"""The fusion downscaler: its reference state, features, mean, calibrated residual and
checkpoint (unit tests on synthetic fields), and the product's reference store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from odc.geo.geobox import GeoBox

from unique_cube.downscale.checkpoint import load_checkpoint, save_checkpoint
from unique_cube.downscale.fusion import (
    FusionMean,
    block_anomaly,
    fusion_features,
    illumination,
    terrain_features,
)
from unique_cube.downscale.fusion_train import (
    calibrate,
    calibration_dates,
    fit_fusion,
    fusion_condition,
    fusion_stacks,
    out_of_range,
)
from unique_cube.downscale.reference import NEVER, Reference, references_before
from unique_cube.errors import DownscaleError, StoreError
from unique_cube.grid import COARSE_FACTOR, Window, upsample_bilinear
from unique_cube.product.reference import ReferenceStore

DAY = dt.date(2023, 6, 10)


def _static(shape=(32, 32), slope=10.0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    elevation = 100 + rng.normal(0, 5, shape)
    layers = [elevation, np.full(shape, slope), np.zeros(shape), np.full(shape, -1.0),
              rng.uniform(0, 1, shape)]  # fmt: skip
    return np.stack(layers).astype("float32"), ["elevation", "slope", "aspect_sin",
                                                "aspect_cos", "lc_cropland"]  # fmt: skip


def test_the_reference_is_each_pixels_last_clear_date_before_the_day_only() -> None:
    days = [dt.date(2023, 5, 1), dt.date(2023, 5, 20), DAY, dt.date(2023, 1, 1)]
    gpp_l = np.full((4, 2, 2), np.nan, "float32")
    gpp_l[0] = 1.0  # every pixel clear on May 1
    gpp_l[1, 0, 0] = 2.0  # one pixel clear again on May 20
    gpp_l[2] = 9.0  # the day itself: never its own reference
    gpp_l[3, 1, 1] = 5.0  # January: older than max_days
    gpp_m = np.full((4, 2, 2), 0.5, "float32")
    [(day, ref)] = list(references_before(days, gpp_l, gpp_m, [DAY], max_days=60))
    assert day == DAY
    assert ref.gpp[0, 0] == 2.0 and ref.gpp[0, 1] == 1.0 and ref.gpp[1, 1] == 1.0
    assert ref.age(DAY)[0, 0] == (DAY - days[1]).days
    assert ref.age(DAY)[1, 1] == (DAY - days[0]).days
    assert ref.count[0, 0] == 2 and ref.count[1, 1] == 1  # January is out of the window
    assert ref.offset[0, 0] == pytest.approx(((1.0 - 0.5) + (2.0 - 0.5)) / 2)
    empty = Reference.empty((2, 2))
    assert (empty.day == NEVER).all() and np.isnan(empty.age(DAY)).all()


def test_a_reference_from_the_future_or_another_grid_is_refused() -> None:
    ref = Reference.empty((32, 32))
    ref.update(np.ones((32, 32)), np.ones((32, 32)), DAY)
    static, names = _static()
    terrain, terrain_names = terrain_features(static, names, DAY, 37.5)
    gpp_m = np.ones((32, 32), "float32")
    with pytest.raises(DownscaleError, match="future of the day"):
        fusion_features(DAY, gpp_m, gpp_m, ref, terrain, terrain_names)
    with pytest.raises(DownscaleError, match="another grid"):
        ref.update(np.ones((8, 8)), np.ones((8, 8)), DAY)


def test_block_anomalies_follow_the_grids_blocks_wherever_the_array_starts() -> None:
    values = np.random.default_rng(1).normal(size=(64, 64)).astype("float32")
    whole = block_anomaly(values, COARSE_FACTOR)
    part = block_anomaly(values[8:56, 16:64], COARSE_FACTOR, offset=(8, 16))
    # Rows 16..47 are whole blocks in both: the same anomalies.
    np.testing.assert_allclose(part[8:40], whole[16:48, 16:64], atol=1e-6)
    assert abs(float(np.nanmean(whole[:16, :16]))) < 1e-6  # a block's anomalies average 0


def test_terrain_sun_facing_slopes_are_brighter_and_flat_ground_faces_nowhere() -> None:
    slope = np.array([30.0, 0.0, 30.0])
    aspect_cos = np.array([-1.0, np.nan, 1.0])  # south-, un-, north-facing (downslope)
    lit = illumination(slope, aspect_cos, dt.date(2023, 12, 21), 37.5)
    assert lit[1] == pytest.approx(1.0)
    assert lit[0] > lit[1] > lit[2] >= 0
    static, names = _static(slope=0.0)
    static[names.index("aspect_cos")] = np.nan  # the DEM has no aspect on flat ground
    terrain, terrain_names = terrain_features(static, names, DAY, 37.5)
    assert (terrain[terrain_names.index("northness")] == 0).all()
    assert terrain_names[-1] == "lc_cropland"
    with pytest.raises(DownscaleError, match="static layers"):
        terrain_features(static[:1], names[:1], DAY, 37.5)


def _world(n: int = 8, size: int = 32, seed: int = 0):
    """Synthetic dates: a fixed 30 m pattern over a seasonal coarse field, half clear."""
    rng = np.random.default_rng(seed)
    days = [dt.date(2023, 4, 1) + dt.timedelta(days=8 * i) for i in range(n)]
    pattern = rng.normal(0, 1.5, (size, size)).astype("float32")
    level = 4 + 3 * np.sin(np.linspace(0, 2, n))
    coarse = level[:, None, None] + rng.normal(0, 0.3, (n, size // 16, size // 16))
    coarse = coarse.astype("float32")
    fine = upsample_bilinear(coarse, COARSE_FACTOR)
    truth = fine + pattern + rng.normal(0, 0.2, (n, size, size))
    clear = rng.random((n, size, size)) < 0.6
    return days, coarse, fine, np.where(clear, truth, np.nan).astype("float32")


def test_the_fusion_mean_learns_that_the_last_clear_pattern_persists() -> None:
    days, coarse, fine, target = _world(n=10, size=48)
    static, names = _static((48, 48))
    stacks, features, ages = fusion_stacks(days, coarse, fine, (days, target, fine), static,
                                           names, 37.5, 120)  # fmt: skip
    assert stacks.shape[:2] == (10, len(features)) and features[0] == "gpp_m"
    assert np.isnan(ages[0]).all() and np.nanmax(ages[-1]) <= 8 * 9
    rows = np.moveaxis(stacks, 1, -1).reshape(-1, len(features))
    y = target.reshape(-1)
    ok = np.isfinite(y)
    model = FusionMean.fit(rows[ok], y[ok], features, rounds=100)
    last = model.predict(stacks[-1], features)
    seen = np.isfinite(target[-1]) & np.isfinite(ages[-1])
    bilinear_error = np.sqrt(np.mean((fine[-1] - target[-1])[seen] ** 2))
    fusion_error = np.sqrt(np.mean((last - target[-1])[seen] ** 2))
    assert fusion_error < 0.5 * bilinear_error
    with pytest.raises(DownscaleError, match="features"):
        model.predict(stacks[-1], features[::-1])


def test_calibration_keeps_the_mean_weight_and_scales_the_spread() -> None:
    members = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)]).astype("float32")
    mean = np.zeros((2, 2), "float32")
    info = {"residual_weight": 0.5, "spread_scale": 2.0}
    out = calibrate(members, mean, info, non_negative=False)
    np.testing.assert_allclose(out[:, 0, 0], [-1.0, 3.0])  # centre 2·0.5 = 1, deviations ±2
    clamped = calibrate(members - 5, mean, {"residual_weight": 1.0, "spread_scale": 1.0})
    assert (clamped >= 0).all()
    assert list(calibration_dates(10, 0.2)) == [2, 7]
    assert len(calibration_dates(2, 0.2)) == 0


def test_fit_fusion_writes_a_checkpoint_that_loads_and_conditions_the_residual(tmp_path) -> None:
    days, coarse, fine, target = _world(n=6, size=32)
    static, names = _static()
    stacks, features, _ = fusion_stacks(days, coarse, fine, (days, target, fine), static, names,
                                        37.5, 120)  # fmt: skip
    ckpt, measured = fit_fusion(
        stacks, features, target, max_days=120, calibration_fraction=0.34, members=2,
        unet={"steps": 3, "batch": 2, "patch": 16, "base": 8},
        sampling={"ddim_steps": 2, "tile": 32, "overlap": 8}, say=lambda _: None,
    )  # fmt: skip
    assert measured["calibration_dates"] == 2 and 0 <= ckpt.fusion["residual_weight"] <= 1
    assert 0.25 <= ckpt.fusion["spread_scale"] <= 8
    path = tmp_path / "downscaler_fusion.pt"
    save_checkpoint(path, ckpt)
    loaded = load_checkpoint(path, "fusion")
    assert loaded.normalisation["scale"] == pytest.approx(measured["residual_std"])
    assert loaded.blend_options == {"scale": pytest.approx(measured["residual_std"]),
                                    "non_negative": True}  # fmt: skip
    mean = FusionMean(loaded.fusion["mean_model"], loaded.fusion["features"])
    predicted = mean.predict(stacks[-1], features)
    condition = fusion_condition(loaded, stacks[-1], features, predicted)
    assert condition.shape == (len(features) + 2, 32, 32) and np.isfinite(condition).all()
    np.testing.assert_allclose(condition[0] * loaded.normalisation["scale"], predicted,
                               rtol=1e-5)  # fmt: skip
    high = stacks[-1].copy()
    high[0, :2, :2] = 1e4  # GPP_M far beyond anything seen in training
    assert out_of_range(loaded, high)[:2, :2].all() and not out_of_range(loaded, stacks[-1]).any()
    with pytest.raises(DownscaleError, match="features"):
        fusion_condition(loaded, stacks[-1][1:], features[1:], predicted)


def test_s1_and_s2_checkpoints_keep_the_gpp_normalisation(tmp_path) -> None:
    from unique_cube.downscale.conditions import GPP_SCALE
    from unique_cube.downscale.train import train

    conditions = np.zeros((2, 1, 16, 16), "float32")
    targets = np.ones((2, 16, 16), "float32")
    ckpt, _ = train(conditions, targets, scheme="s1", static_info={}, steps=1, batch=1,
                    patch=16, base=8)  # fmt: skip
    save_checkpoint(tmp_path / "s1.pt", ckpt)
    loaded = load_checkpoint(tmp_path / "s1.pt", "s1")
    assert loaded.blend_options == {"scale": GPP_SCALE, "non_negative": True}
    assert loaded.fusion is None


def _geobox(size: int = 32) -> GeoBox:
    from odc.geo.geobox import GeoBox as Box

    return Box.from_bbox((300000, 4000000, 300000 + 30 * size, 4000000 + 30 * size),
                         "EPSG:32652", resolution=30)  # fmt: skip


def test_the_product_reference_store_folds_dates_as_of_the_day(tmp_path: Path) -> None:
    store = ReferenceStore(tmp_path, _geobox())
    windows = [Window(0, 16, 0, 32), Window(16, 32, 0, 32)]
    coarse = np.full((2, 2), 3.0, "float32")
    first, second = dt.date(2023, 5, 1), dt.date(2023, 5, 9)
    store.write(first, ["hls-a"], coarse, windows, lambda w: np.full(w.shape, 1.0, "float32"))
    half = np.full((32, 32), np.nan, "float32")
    half[:, :16] = 2.0
    store.write(second, ["hls-b"], coarse, windows, lambda w: half[w.slices])
    assert store.dates() == [first, second]
    used: set = set()
    state = store.state(dt.date(2023, 5, 10), Window(0, 32, 0, 32), 120, used)
    assert (state.gpp[:, :16] == 2.0).all() and (state.gpp[:, 16:] == 1.0).all()
    assert used == {first, second} and store.items(used) == ["hls-a", "hls-b"]
    # As of the second date itself, only the first is before it; the second is its own clear.
    earlier = store.state(second, Window(0, 32, 0, 32), 120)
    assert (earlier.gpp == 1.0).all()
    assert np.array_equal(store.clear(second, Window(0, 16, 0, 16)), half[:16, :16],
                          equal_nan=True)  # fmt: skip
    assert store.clear(dt.date(2023, 5, 10), Window(0, 16, 0, 16)) is None
    assert store.before(dt.date(2023, 9, 20), 120) == []  # all older than 120 days
    other = ReferenceStore(tmp_path, _geobox(48))
    with pytest.raises(StoreError, match="another grid"):
        other.state(dt.date(2023, 5, 10), Window(0, 16, 0, 16), 120)


def test_a_partial_reference_date_of_a_dead_run_is_removed(tmp_path: Path) -> None:
    store = ReferenceStore(tmp_path, _geobox())
    leftover = store.folder / ".2023-05-01.999999999.partial"
    leftover.mkdir(parents=True)
    assert store.dates() == []
    assert store.clean_leftovers() == [str(leftover)] and not leftover.exists()


def test_training_paused_at_its_time_limit_resumes_to_the_same_weights(tmp_path) -> None:
    import torch

    from unique_cube.downscale.fit import TrainingPaused, train

    rng = np.random.default_rng(3)
    conditions = rng.normal(size=(3, 2, 16, 16)).astype("float32")
    targets = (5 * rng.normal(size=(3, 16, 16))).astype("float32")
    settings = {"scheme": "s1", "static_info": {}, "steps": 6, "batch": 2, "patch": 16,
                "base": 8}  # fmt: skip
    with torch_threads_one():
        whole, whole_losses = train(conditions, targets, **settings)
        state = tmp_path / "state.pt"
        paused = 0
        while True:
            try:
                resumed, losses = train(conditions, targets, state_path=state, max_seconds=0,
                                        **settings)  # fmt: skip
                break
            except TrainingPaused as stop:
                paused += 1
                assert stop.path == state and state.exists() and stop.step == paused
    assert paused == 5  # one step per call
    assert losses == pytest.approx(whole_losses)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    # A state of other settings or data is not taken: training starts over.
    said: list[str] = []
    _, other = train(conditions, targets, state_path=state, progress=said.append,
                     **{**settings, "steps": 4})  # fmt: skip
    assert len(other) == 4 and "starting over" in said[0]
    said.clear()
    _, other = train(conditions, targets[::-1].copy(), state_path=state, progress=said.append,
                     **settings)  # fmt: skip
    assert len(other) == 6 and "starting over" in said[0]


def torch_threads_one():
    from unique_cube.downscale.sampling import torch_threads

    return torch_threads(1)
