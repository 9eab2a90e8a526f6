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
    for command in ("catalogs", "search", "serve", "demo"):
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


def test_demo_says_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 1
    assert "demo-world generator" in capsys.readouterr().err


def test_usage_error_exit_code() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["search"])
    assert exc.value.code == 2
