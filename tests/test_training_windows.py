"""Training on windows of a large grid (:mod:`unique_cube.downscale.regions`): windows drawn
where the catalog covers the grid, each window's pairs the whole grid's pairs cut to it, the
diffusion and the fusion trained on them, and a region the catalog does not cover refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from unique_cube.downscale.regions import draw_windows
from unique_cube.grid import Window, taken_whole


def test_a_small_grid_is_taken_whole() -> None:
    assert taken_whole((400, 400), 256, 16)
    assert draw_windows((400, 400), 256, 16, seed=0) == [Window(0, 400, 0, 400)]


def test_windows_are_whole_distinct_and_seeded() -> None:
    windows = draw_windows((1000, 700), 128, 5, seed=3)
    assert len(windows) == 5 and len(set(windows)) == 5
    for w in windows:
        assert w.shape == (128, 128) and w.y0 % 128 == 0 and w.x0 % 128 == 0
        assert w.y1 <= 1000 and w.x1 <= 700  # whole windows only: none past the grid's edge
    assert draw_windows((1000, 700), 128, 5, seed=3) == windows
    assert draw_windows((1000, 700), 128, 5, seed=4) != windows
    assert windows == sorted(windows, key=lambda w: (w.y0, w.x0))  # in row order


def test_only_covered_windows_are_drawn() -> None:
    def west_half(window: Window) -> bool:
        return window.x1 <= 512

    windows = draw_windows((1024, 1024), 128, 50, seed=0, covered=west_half)
    assert len(windows) == 32  # every covered window, no more
    assert all(w.x1 <= 512 for w in windows)
    assert draw_windows((1024, 1024), 128, 5, seed=0, covered=lambda w: False) == []


#: How far a window's maps may be from the whole grid's cut to it. The DEM is reprojected from
#: its lon/lat grid with GDAL's approximate transformer (within an eighth of a pixel, fitted to
#: the extent asked for): a window's elevation differs from the grid's by up to a metre, its
#: slopes and the GPP made with them (the terrain terms) by a little. The rest (HLS on its
#: own lattice, the weather, the models) is the same pixel for pixel.
TOLERANCE = {"gpp": 0.05, "elevation": 1.5, "slope": 0.5, "aspect_sin": 0.2}


def _windowed(pipeline, **settings):
    spec = dataclasses.replace(pipeline.downscale, **settings)
    return dataclasses.replace(pipeline, downscale=spec)


def _grid(pipeline, bounds):
    grid = dataclasses.replace(pipeline.grid, bounds=tuple(float(b) for b in bounds))
    return dataclasses.replace(pipeline, grid=grid)


def test_window_pairs_are_the_grids_pairs_cut_out(trained_downscalers: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """A window's pairs and static layers, made on the window alone, are those of the whole
    grid cut to it (within :data:`TOLERANCE`; the bilinear GPP_M within half a coarse pixel of
    the window's edge is the window's own), its clear pixels the same."""
    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.demo.serve import served
    from unique_cube.downscale.pairs import cached_pairs
    from unique_cube.downscale.regions import training_set, window_static
    from unique_cube.inputs.search import open_catalog
    from unique_cube.inputs.static import static_layers

    pipeline = load_pipeline(trained_downscalers / "pipeline.yaml")
    pipeline = _windowed(pipeline, output=str(tmp_path / "ds"), patch=32, training_window=48,
                         training_windows=4)  # fmt: skip
    period = pipeline.downscale.train
    said: list[str] = []
    with served(pipeline) as pipeline, open_catalog(pipeline) as catalog:
        data = training_set(pipeline, catalog, period, said.append, with_types=True)
        files = sorted(Path(tmp_path / "ds").glob("pairs-*.npz"))
        whole = cached_pairs(pipeline, catalog, period, min_clear=0.0)  # every HLS date
        raw, names = static_layers(catalog, pipeline.grid.geobox)
        one = window_static(catalog, pipeline.grid.geobox, data.windows[0].window)
    assert not data.whole and len(data.windows) == 4
    assert any("training on 4 windows of 48 px" in line for line in said)
    assert len(files) == 4  # cached per window
    for part in data.windows:
        cut = part.window.slices
        assert part.pairs.target.shape[1:] == (48, 48)
        assert part.geobox == pipeline.grid.geobox[cut]
        index = [whole.dates.index(d) for d in part.pairs.dates]
        target = whole.target[index][(slice(None), *cut)]
        np.testing.assert_array_equal(np.isnan(part.pairs.target), np.isnan(target))
        np.testing.assert_allclose(part.pairs.target, target, atol=TOLERANCE["gpp"])
        coarse = tuple(slice(s.start // 16, s.stop // 16) for s in cut)
        np.testing.assert_allclose(part.pairs.gpp_m, whole.gpp_m[index][(slice(None), *coarse)],
                                   atol=TOLERANCE["gpp"])  # fmt: skip
        inner = (slice(None), slice(8, -8), slice(8, -8))
        np.testing.assert_allclose(part.pairs.gpp_m_30m[inner],
                                   whole.gpp_m_30m[index][(slice(None), *cut)][inner],
                                   atol=TOLERANCE["gpp"])  # fmt: skip
        assert part.static.shape == (len(data.names), 48, 48)
        assert part.pairs.rows is not None
    # Static layers read on a window grown by a pixel: its edge slopes are the grid's.
    layers, own = one
    cut = data.windows[0].window.slices
    for name in ("elevation", "slope", "aspect_sin"):
        np.testing.assert_allclose(layers[own.index(name)], raw[names.index(name)][cut],
                                   atol=TOLERANCE[name])  # fmt: skip


def test_train_downscaler_on_windows(trained_downscalers: Path, tmp_path: Path) -> None:
    """S2 and the fusion train on the windows of a grid larger than the catalog covers: the
    windows lie where HLS and MODIS are, the checkpoints carry every window's layers."""
    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.demo.serve import served
    from unique_cube.downscale.checkpoint import load_checkpoint
    from unique_cube.downscale.regions import training_windows
    from unique_cube.downscale.train import train_downscaler
    from unique_cube.inputs.search import open_catalog

    pipeline = load_pipeline(trained_downscalers / "pipeline.yaml")
    left, bottom, right, top = pipeline.grid.bounds
    # Twice as wide, reaching past the region's MODIS footprint to the east.
    pipeline = _grid(pipeline, (left, bottom, right + (right - left), top))
    pipeline = _windowed(pipeline, output=str(tmp_path / "ds"), patch=32, training_window=48,
                         training_windows=3, steps=3)  # fmt: skip
    said: list[str] = []
    with served(pipeline) as pipeline:
        with open_catalog(pipeline) as catalog:
            # Asked for more than there are: every window the region's MODIS covers, no other.
            every = training_windows(_windowed(pipeline, training_windows=12), catalog,
                                     pipeline.downscale.train)  # fmt: skip
        s2 = train_downscaler(pipeline, "s2", said.append)
        fusion = train_downscaler(pipeline, "fusion", said.append)
    assert len(every) == 9 and all(w.x1 <= 160 for w in every)  # the region: 160 px wide
    text = "\n".join(said)
    assert "training on 3 windows of 48 px" in text
    assert "training s2 on" in text and "of 3 windows" in text
    ckpt = load_checkpoint(s2, "s2")
    assert ckpt.static["names"][:4] == ["elevation", "slope", "aspect_sin", "aspect_cos"]
    fused = load_checkpoint(fusion, "fusion")
    assert fused.meta["dates"] > 3 and fused.fusion["residual_std"] > 0


def test_a_training_region_the_catalog_does_not_cover_is_refused(
    trained_downscalers: Path, tmp_path: Path
) -> None:
    """A grid far from every item: a clear error before any map is made, nothing written."""
    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.demo.serve import served
    from unique_cube.downscale.train import train_downscaler
    from unique_cube.errors import DownscaleError

    pipeline = load_pipeline(trained_downscalers / "pipeline.yaml")
    left, bottom, right, top = pipeline.grid.bounds
    far = 300_000  # 300 km east: beyond the world's domain
    pipeline = _grid(pipeline, (left + far, bottom, right + far + 3 * (right - left), top))
    out = tmp_path / "ds"
    pipeline = _windowed(pipeline, output=str(out), patch=32, training_window=48,
                         training_windows=2)  # fmt: skip
    with served(pipeline) as pipeline, pytest.raises(DownscaleError) as caught:
        train_downscaler(pipeline, "s2")
    message = str(caught.value)
    assert "training region" in message and "hls-l30" in message
    assert not list(out.glob("*.pt")) and not list(out.glob("pairs-*"))


def test_a_large_grid_is_evaluated_on_windows_it_never_trained_on(
    trained_downscalers: Path, demo_world: tuple[Path, dict], tmp_path: Path
) -> None:
    """``evaluate`` on a grid above the window budget: the clear dates, the daily product
    and its scores on evaluation windows (none a training window), pooled over them; the
    product days made window by window, each window's in its own folder."""
    import shutil

    from conftest import downscale_sections, small_pipeline

    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.demo.serve import served
    from unique_cube.downscale.regions import training_windows
    from unique_cube.evaluation.evaluate import evaluate
    from unique_cube.grid import Window
    from unique_cube.inputs.search import open_catalog

    world, manifest = demo_world
    out = tmp_path / "out"
    (out / "ds").mkdir(parents=True)
    for checkpoint in (trained_downscalers / "ds").glob("*.pt"):
        shutil.copy(checkpoint, out / "ds")
    product = "output: {out}/product\nsamples: 2\nddim_steps: 3\ntile: 48\noverlap: 8"
    text = small_pipeline(
        world,
        trained_downscalers / "models",
        downscale_sections(world, manifest, out, product.format(out=out)),
    )
    text = text.replace("  reference_days: 48\n", "  reference_days: 48\n  patch: 32\n"
                        "  training_window: 48\n  training_windows: 2\n")  # fmt: skip
    text = text.replace("  daily_every: 16\n", "  daily_every: 200\n")  # one day: 2023-06-01
    spec = tmp_path / "windows.yaml"
    spec.write_text(text)
    pipeline = load_pipeline(spec)
    said: list[str] = []
    with served(pipeline) as pipeline:
        result = evaluate(pipeline, say=said.append)
        with open_catalog(pipeline) as catalog:
            trained = training_windows(pipeline, catalog, pipeline.downscale.train)
    scored = {label: Window(*rows) for label, rows in result["windows"]["scored"].items()}
    assert 1 <= len(scored) <= 2 and not set(scored.values()) & set(trained)
    assert any("evaluating on 2 windows of 48 px" in line for line in said)
    rows = result["per_date"]
    assert rows and {row["window"] for row in rows} <= set(scored)
    for scores in result["vs_gpp_l"].values():
        assert scores["n_dates"] == len(rows) and scores["rmse"] > 0
    assert result["gpp_l_vs_truth"]["n"] > 0
    for label in scored:  # each window's days in its own product folder
        assert (out / "eval" / "product" / "windows" / label / "gpp.zarr").exists()
        assert (out / "eval" / "product-nrt" / "windows" / label / "gpp.zarr").exists()
    daily = result["daily_vs_truth"]
    assert set(daily) == {"bilinear", "fusion"} and daily["fusion"]["n"] > 0
    assert daily["fusion"]["n"] <= result["daily_sample"]["days_scored"] * 48 * 48 * len(scored)
    assert result["nrt_vs_final"]["n_days"] > 0
    assert "spatial_holdout" not in result and "whole-grid" in result["towers"]["note"]
