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
