"""The unique-cube command line: help, catalogs, search, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unique_cube.cli import main


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "unique-cube"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for command in ("catalogs", "search", "serve", "demo-world", "serve-catalog", "demo"):
        assert command in result.stdout


def test_catalogs_lists_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalogs"]) == 0
    out = capsys.readouterr().out
    assert "planetary-computer: https://planetarycomputer.microsoft.com/api/stac/v1" in out
    assert "hls2-l30" in out and "cop-dem-glo-30" in out


def test_bad_catalog_file_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstac_url: 3\nsources: {}\n")
    assert main(["catalogs", str(bad)]) == 3
    assert f"{bad}: stac_url: expected a string, got 3 (int)" in capsys.readouterr().err


@pytest.mark.integration
def test_search_prints_items(stac_world, capsys: pytest.CaptureFixture[str]) -> None:
    bbox = [str(v) for v in stac_world.bbox]
    args = ["search", "hls-l30", "--stac-url", stac_world.catalog.stac_url, "--bbox", *bbox]
    assert main([*args, "--datetime", "2023-05-01/2023-05-31"]) == 0
    captured = capsys.readouterr()
    assert "HLS.L30.T52SCG.2023123T022000.v2.0" in captured.out
    assert "2 item(s)" in captured.err
    assert main([*args, "--datetime", "2023-05-01/2023-05-31", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [it["id"] for it in items][-1] == "HLS.L30.T52SCG.2023139T022000.v2.0"


@pytest.mark.integration
def test_search_exit_codes(stac_world, capsys: pytest.CaptureFixture[str]) -> None:
    bbox = [str(v) for v in stac_world.bbox]
    args = ["search", "hls-l30", "--stac-url", stac_world.catalog.stac_url, "--bbox", *bbox]
    assert main([*args, "--datetime", "2023-05-31/2023-05-01"]) == 3
    assert "the range is reversed" in capsys.readouterr().err
    assert main([*args, "--datetime", "2019-01-01/2019-01-02"]) == 4
    assert "no items for collection 'hls2-l30'" in capsys.readouterr().err


def test_demo_serves_the_world_and_loads_one_day(demo_world, capsys) -> None:
    """`unique-cube demo` on the (reused) small world: serve → search → load MODIS and HLS."""
    path, manifest = demo_world
    code = main(["demo", "--world", str(path), "--size", "small", "--seed", str(manifest["seed"])])
    assert code == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out[: captured.out.rindex("}") + 1])
    assert report["hls-l30"]["collection"] == "hls2-l30"
    assert report["modis-sr"]["collection"] == "modis-09GA-061"
    assert len(report["hls-l30"]["items"]) == 1 and len(report["modis-sr"]["items"]) == 1
    assert report["hls-l30"]["dims"] == {"time": 1, "y": 160, "x": 160}
    assert report["hls-l30"]["clear_fraction"] > 0.5  # the clearest summer scene
    assert 0.3 < report["hls-l30"]["mean_ndvi"] < 1.0
    assert "reusing the demo world" in captured.err
    assert "Not wired into `unique-cube demo` yet" in captured.err


def test_serve_catalog_refuses_a_folder_that_is_not_a_world(tmp_path, capsys) -> None:
    assert main(["serve-catalog", str(tmp_path)]) == 3
    assert "not a complete demo world" in capsys.readouterr().err
