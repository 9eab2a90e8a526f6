"""Catalog files load into validated frozen dataclasses.

Bad files fail with the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from unique_cube.config.catalog import CATALOG_DIR, load_catalog
from unique_cube.errors import ConfigError, UnknownSourceError

GOOD = """
name: t
stac_url: http://127.0.0.1:1
sources:
  hls:
    collection: hls2-l30
    type: optical
    resolution: 30
    bands:
      blue: {asset: B02, scale: 0.0001}
      green: {asset: B03}
      red: {asset: B04}
      nir: {asset: B05}
      swir16: {asset: B06}
      swir22: {asset: B07}
    qa:
      assets: [Fmask]
      flags:
        cloud: {offset: 1}
      not_clear: [cloud]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["planetary-computer", "demo"])
def test_shipped_catalogs_load(name: str) -> None:
    catalog = load_catalog(name)
    assert catalog.name == name
    for source in ("hls-l30", "modis-sr", "modis-nbar", "dem", "worldcover", "era5"):
        assert source in catalog.sources
    assert catalog.source("hls-l30").bands["nir"].asset == "B05"
    assert catalog.source("hls-s30").bands["nir"].asset == "B8A"
    assert catalog.source("dem").resolution_units == "degree"


def test_demo_takes_its_sources_from_planetary_computer() -> None:
    pc, demo = load_catalog("planetary-computer"), load_catalog("demo")
    for name, source in demo.sources.items():
        assert source == pc.sources[name]
    assert demo.signing == "none" and pc.signing == "planetary-computer"
    assert demo.stac_url.startswith("http://127.0.0.1:")


def test_catalog_is_frozen() -> None:
    catalog = load_catalog("demo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        catalog.sources["x"] = catalog.sources["dem"]  # type: ignore[index]


def test_good_file_and_defaults(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD))
    source = catalog.source("hls")
    assert source.bands["blue"].scale == pytest.approx(1e-4)
    assert source.bands["green"].scale is None
    assert source.qa.flags["cloud"].length == 1 and source.qa.flags["cloud"].values == (1,)
    assert source.max_cloud_cover == 100.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # unknown key
        (
            ("      blue: {asset: B02, scale: 0.0001}", "      blue: {asset: B02, scal: 0.0001}"),
            "sources.hls.bands.blue.scal: unknown key; expected one of asset, scale",
        ),
        # missing role
        (
            ("      swir22: {asset: B07}\n", ""),
            "sources.hls: bands: missing role(s) swir22; a optical source needs blue, green",
        ),
        # wrong type
        (
            ("resolution: 30", "resolution: thirty"),
            "sources.hls.resolution: expected a number, got 'thirty' (str)",
        ),
        (
            ("      blue: {asset: B02, scale: 0.0001}", "      blue: {asset: 2}"),
            "sources.hls.bands.blue.asset: expected a string, got 2 (int)",
        ),
        # a value outside the allowed ones
        (
            ("type: optical", "type: radar"),
            "sources.hls.type: expected one of optical, terrain, landcover, weather, got 'radar'",
        ),
        # missing key
        (("    collection: hls2-l30\n", ""), "sources.hls: missing key 'collection' (a string)"),
        # QA rules that refer to an undefined flag
        (
            ("not_clear: [cloud]", "not_clear: [cloud, shadow]"),
            "sources.hls.qa: not_clear: ['shadow'] are not defined under flags",
        ),
        (
            ("cloud: {offset: 1}", "cloud: {offset: 1, values: [2]}"),
            "sources.hls.qa.flags.cloud: values [2] do not fit in 1 bit(s)",
        ),
    ],
)
def test_bad_catalog_names_file_key_and_expectation(tmp_path: Path, change, expected) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as err:
        load_catalog(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nsources: {a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"catalog.yaml: malformed YAML at line \d+"):
        load_catalog(path)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_catalog(path)


def test_unknown_source_lists_known_ones() -> None:
    with pytest.raises(UnknownSourceError) as err:
        load_catalog("demo").source("sentinel-9")
    assert "unknown source 'sentinel-9'" in str(err.value)
    assert "hls-l30" in str(err.value)


def test_unknown_catalog_name_lists_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="shipped catalogs are: demo, planetary-computer"):
        load_catalog("no-such-catalog")


def test_base_sources_must_exist(tmp_path: Path) -> None:
    text = "name: t\nstac_url: http://x\nbase: planetary-computer\nbase_sources: [hls-l99]\n"
    path = write(tmp_path, text + "sources: {}\n")
    with pytest.raises(ConfigError, match="base_sources: hls-l99 not in"):
        load_catalog(path)


def test_catalog_dir_is_the_repository_folder() -> None:
    assert (CATALOG_DIR / "planetary-computer.yaml").exists()


@pytest.mark.parametrize("name, first", [("demo.yaml", "2022-01-01"),
                                         ("demo-full.yaml", "2020-01-01")])  # fmt: skip
def test_pipeline_files_are_validated(tmp_path: Path, name: str, first: str) -> None:
    from unique_cube.config.pipeline import load_pipeline

    demo = load_pipeline(Path(__file__).parents[1] / "pipelines" / name)
    assert str(demo.gpp.train.start) == first and demo.gpp.train.end.year == 2022
    assert demo.gpp.folds == 20
    text = (Path(__file__).parents[1] / "pipelines" / name).read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("learners: [lightgbm,", "learners: [xgboost,"))
    with pytest.raises(ConfigError, match=r"bad\.yaml: gpp: unknown learner\(s\) \['xgboost'\]"):
        load_pipeline(bad)
    bad.write_text(text.replace("end: 2022-12-31", "end: 2019-12-31"))
    with pytest.raises(ConfigError, match=f"end 2019-12-31 is before start {first}"):
        load_pipeline(bad)
    bad.write_text(text.replace("end: 2022-12-31", "end: soon"))
    with pytest.raises(ConfigError, match=r"gpp\.train\.end: expected a date"):
        load_pipeline(bad)
    bad.write_text(text.replace("  seed: 0\n  coarse", "  seed: 0\n  window: 1000\n  coarse"))
    with pytest.raises(ConfigError, match=r"window must be a multiple of 128.*got 1000"):
        load_pipeline(bad)


def test_a_path_key_is_refused_where_the_file_sets_it(tmp_path: Path) -> None:
    from unique_cube.config.pipeline import load_pipeline

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("path: elsewhere.yaml\n" + (CATALOG_DIR.parent / "pipelines" /
                                                    "demo.yaml").read_text())  # fmt: skip
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("path: elsewhere.yaml\n" + (CATALOG_DIR / "demo.yaml").read_text())
    for path, load in ((pipeline, load_pipeline), (catalog, load_catalog)):
        with pytest.raises(ConfigError, match=r"path: unknown key; it is set from the file"):
            load(path)


# --- pipeline values: every number in its range, the grid in whole 480 m blocks -------------

#: A pipeline with every section, its grid one 480 m block (the smallest a product day is made
#: on); each case below breaks one value.
SMALLEST = """\
name: t
catalog: demo
flux: {directory: flux, sites: flux/sites.csv}
gpp:
  train: {start: 2023-01-01, end: 2023-12-31}
  modis: {source: modis-sr, gap_fill_days: 16}
  landsat: {source: hls-l30, min_clear: 5}
  output: models
grid: {crs: "EPSG:32652", bounds: [346020, 4171890, 346500, 4172370], resolution: 30}
downscale:
  test: {start: 2023-06-01, end: 2023-10-31}
  output: ds
  base: 8
  tile: 64
  overlap: 16
product:
  output: product
  tile: 64
  overlap: 32
  period: {start: 2023-06-01, end: 2023-06-07}
"""


def _pipeline_with(tmp_path: Path, section: str, key: str, value) -> Path:
    """:data:`SMALLEST` with ``section.key`` (``gpp.modis`` for a nested one) set to ``value``."""
    import yaml

    data = yaml.safe_load(SMALLEST)
    where = data
    for name in section.split("."):
        where = where[name]
    where[key] = value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_smallest_pipeline_loads_and_validates(tmp_path: Path, monkeypatch) -> None:
    from unique_cube.config.pipeline import load_pipeline, validate_pipeline

    monkeypatch.chdir(tmp_path)  # its relative folders
    path = tmp_path / "smallest.yaml"
    path.write_text(SMALLEST)
    pipeline = load_pipeline(path)
    assert pipeline.grid.geobox.shape == (16, 16)  # one 480 m block of 30 m pixels
    lines = validate_pipeline(path)
    assert list(tmp_path.iterdir()) == [path]  # validating writes nothing
    assert "16 x 16 pixels of 30 m" in lines[1] and "GPP_M on 1 x 1 pixels of 480 m" in lines[1]
    assert "downscale: " in lines[2] and "trains on the whole grid" in lines[2]
    assert "backfills of at most 366 days" in lines[3]


INF, NAN = float("inf"), float("nan")

BAD_VALUES = [
    ("flux", "min_qc", 1.5, "must be within [0, 1], got 1.5"),
    ("flux", "min_qc", NAN, "must be a finite number, got nan"),
    ("gpp.modis", "min_clear", 0, "must be within [1, 9] (pixels of the 3×3 window), got 0"),
    ("gpp.landsat", "min_clear", 10, "must be within [1, 9]"),
    ("gpp.modis", "gap_fill_days", -1, "must be within [0, 366]"),
    ("gpp", "utc_offset_hours", 15, "must be within [-12, 14] (hours east of UTC), got 15.0"),
    ("gpp", "utc_offset_hours", INF, "must be a finite number, got inf"),
    ("gpp", "folds", 1, "must be at least 2"),
    ("gpp", "threads", 0, "must be at least 1, got 0"),
    ("gpp", "learners", [], "must name at least one of ['lightgbm', 'lightgbm_rf', 'linear']"),
    ("grid", "resolution", 25, "must be 30 m, got 25: the GPP models and the downscaler are "
                               "made for 30 m pixels and a 480 m coarse grid"),
    ("grid", "resolution", NAN, "must be a finite number, got nan"),
    ("grid", "bounds", [346020, NAN, 346500, 4172370], "must be a finite number, got nan"),
    ("grid", "bounds", [346020, 4171890, 346500, -INF], "must be a finite number, got -inf"),
    ("grid", "bounds", [346020, 4171890, 346050, 4171920],
     "the grid is 30 m x 30 m; its width and height must be whole multiples of 480 m (the "
     "coarse grid of GPP_M: 16 x 30 m pixels), e.g. [346020.0, 4171890.0, 346500.0, 4172370.0]"),
    ("grid", "bounds", [346020, 4171890, 346530, 4172370], "the grid is 510 m x 480 m"),
    ("grid", "bounds", [346500, 4171890, 346020, 4172370], "is empty (right <= left"),
    ("downscale", "min_clear_fraction", -0.1, "must be within [0, 1]"),
    ("downscale", "steps", 0, "must be at least 1"),
    ("downscale", "batch", 0, "must be at least 1"),
    ("downscale", "patch", 8, "must be at least 16 (one 480 m block of 30 m pixels"),
    ("downscale", "base", 12, "must be a multiple of 8 (the network's group norms"),
    ("downscale", "base", 0, "must be a multiple of 8"),
    ("downscale", "samples", 0, "must be at least 1"),
    ("downscale", "ddim_steps", 0, "must be at least 1"),
    ("downscale", "tile", 0, "must be at least 16 px (one 480 m block"),
    ("downscale", "overlap", 33, "must be within [0, tile / 2 = 32] px"),
    ("downscale", "overlap", -8, "must be within [0, tile / 2 = 32] px"),
    ("downscale", "seed", -1, "must be within [0, 9999999]"),
    ("downscale", "max_eval_dates", 0, "must be at least 1"),
    ("downscale", "threads", 0, "must be at least 1"),
    ("downscale", "training_window", 100, "must be a multiple of 16 px (whole 480 m blocks)"),
    ("downscale", "training_window", 32, "and at least patch (64), got 32"),
    ("downscale", "training_windows", 0, "must be at least 1, got 0"),
    ("product", "samples", 0, "must be at least 1"),
    ("product", "ddim_steps", -1, "must be at least 1"),
    ("product", "tile", 0, "must be at least 16 px"),
    ("product", "tile", -64, "must be at least 16 px"),
    ("product", "overlap", 64, "must be within [0, tile / 2 = 32] px"),
    ("product", "overlap", -8, "must be within [0, tile / 2 = 32] px (the blend ramps"),
    ("product", "seed", 10_000_000, "must be within [0, 9999999] (a day's and a tile's"),
    ("product", "max_gap_days", -5, "must be within [0, 366]"),
    ("product", "max_missing_fraction", 1.5, "must be within [0, 1], got 1.5"),
    ("product", "max_missing_fraction", NAN, "must be a finite number, got nan"),
    ("product", "max_lost_fraction", -0.1, "must be within [0, 1]"),
    ("product", "read_retries", -1, "must be at least 0"),
    ("product", "block_days", 0, "must be at least 1, got 0"),
    ("product", "max_backfill_days", 0, "must be at least 1, got 0"),
    ("product", "final_reference", "after", "must be nearest or before, got 'after'"),
    ("product", "lock_timeout_s", -1, "must be at least 0, got -1.0"),
    ("product", "lock_timeout_s", INF, "must be a finite number, got inf"),
    ("product", "cpu_threads", 0, "must be at least 1"),
    ("product", "torch_threads", 0, "must be at least 1"),
    ("product", "window", 1000, "window must be a multiple of 128"),
    ("product", "max_backfill_days", 5, "spans 7 days, more than max_backfill_days (5)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    BAD_VALUES,
    ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD_VALUES],
)
def test_a_value_out_of_range_names_file_key_and_range(
    tmp_path: Path, section: str, key: str, value, expected: str
) -> None:
    from unique_cube.config.pipeline import load_pipeline, validate_pipeline

    path = _pipeline_with(tmp_path, section, key, value)
    # the key the message names: max_backfill_days cuts the period short
    named = "period" if expected.startswith("spans") else key
    for check in (load_pipeline, validate_pipeline):  # `unique-cube validate` says the same
        with pytest.raises(ConfigError) as err:
            check(path)
        message = str(err.value)
        assert message.startswith(f"{path}: {section}.{named}: "), message
        assert expected in message, message
        assert "(line " in message


@pytest.mark.parametrize("name", ["demo.yaml", "demo-full.yaml", "korea-daily.yaml"])
def test_shipped_pipelines_keep_whole_480m_blocks(name: str) -> None:
    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.grid import COARSE_FACTOR, coarse_geobox

    pipeline = load_pipeline(Path(__file__).parents[1] / "pipelines" / name)
    fine, coarse = pipeline.grid.geobox, coarse_geobox(pipeline.grid.geobox)
    assert (coarse.shape[0] * COARSE_FACTOR, coarse.shape[1] * COARSE_FACTOR) == fine.shape
    assert coarse.resolution.x == 480
