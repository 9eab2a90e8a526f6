"""Bad input through the ``unique-cube`` command line: each case exits with the code of its
kind and a message naming what was wrong and where (file, key, line), and leaves every file
already written as it was.

Covered elsewhere and not repeated: bad catalog files (test_config.py), ``run`` dates against a
trained world, coverage and missing models (test_daily.py), search arguments
(test_search_and_load.py), unpickling refused at the library level (test_downscale.py,
test_purepixel.py), NaN or inf in a downscaler's conditions (test_downscale.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pystac
import pytest
import torch
from conftest import (
    HLS_SHAPE,
    HLS_TRANSFORM,
    _cog_asset,
    _item,
    linear_gpp_model,
    target_geobox,
)

from unique_cube.cli import main

# A pipeline that loads cleanly; each case breaks one thing. Its grid is the small demo world's.
PIPELINE = """\
name: bad-input
catalog: demo
flux: {{directory: {root}/flux, sites: {root}/flux/sites.csv}}
gpp:
  train: {{start: 2023-01-01, end: 2023-12-31}}
  modis: {{source: modis-sr}}
  landsat: {{source: hls-l30}}
  output: {root}/models
grid: {{crs: "EPSG:32652", bounds: [346020.0, 4171890.0, 350820.0, 4176690.0]}}
downscale:
  test: {{start: 2023-06-01, end: 2023-10-31}}
  output: {root}/ds
product:
  output: {root}/product
  scheme: bilinear
"""
DAY = ("--date", "2023-08-01")


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse: usage errors
        return int(exit.code)


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: content hash and modification time."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Outputs of earlier runs the failing command must not touch: GPP model files (a card
    and a small ridge model, which ``run`` checks before anything else) and a product folder."""
    linear_gpp_model(tmp_path / "models")
    (tmp_path / "product/runs").mkdir(parents=True)
    (tmp_path / "product/runs/20230801T000000-1.json").write_text('{"counts": {"done": 1}}')
    (tmp_path / "product/cogs/2023/07/31").mkdir(parents=True)
    (tmp_path / "product/cogs/2023/07/31/gpp.tif").write_bytes(b"II*\x00 a day already made")
    return tmp_path


def _line(text: str, needle: str) -> int:
    """1-based line of the first line of ``needle`` in ``text``."""
    first = needle.splitlines()[0]
    return next(i for i, line in enumerate(text.splitlines(), 1) if first in line)


# (change to PIPELINE: old, new), command and arguments, exit code, message parts. {spec} is
# the pipeline file, {line} the line of the change.
CASES = [
    pytest.param(
        ("  scheme: bilinear", "\tscheme: bilinear"),
        ["run", "{spec}", *DAY],
        3,
        ["{spec}: malformed YAML at line {line}", "'\\t' that cannot start any token"],
        id="yaml-tab",
    ),
    pytest.param(
        ("4176690.0]}", "4176690.0}"),
        ["run", "{spec}", *DAY],
        3,
        ["{spec}: malformed YAML at line {line}", "expected ',' or ']', but got '}'"],
        id="yaml-unclosed-bracket",
    ),
    pytest.param(
        ("name: bad-input", "name: bad-input\nname: another"),
        ["run", "{spec}", *DAY],
        3,
        ["{spec}: malformed YAML at line 2", "found the key 'name' twice (lines 1 and 2)"],
        id="yaml-duplicate-key",
    ),
    pytest.param(
        (None, b"\x80\x02}q\x00(X\x06\x00\x00\x00format"),  # a pickle given as the pipeline
        ["run", "{spec}", *DAY],
        3,
        ["{spec}: not a UTF-8 text file (byte 0: invalid start byte)"],
        id="not-text",
    ),
    pytest.param(
        ("product:", "produkt:"),
        ["run", "{spec}", *DAY],
        3,
        [
            "{spec}: produkt: unknown key; expected one of name, catalog",
            "did you mean 'product'? (line {line})",
        ],
        id="unknown-key-top-level",
    ),
    pytest.param(
        ("  scheme: bilinear", "  samplez: 2\n  scheme: bilinear"),
        ["run", "{spec}", *DAY],
        3,
        [
            "{spec}: product.samplez: unknown key; expected one of output, scheme, samples",
            "did you mean 'samples'? (line {line})",
        ],
        id="unknown-key-nested",
    ),
    pytest.param(
        None,
        ["run", "{spec}", "--date", "2023-02-30"],
        3,
        ["--date 2023-02-30: no such day (day is out of range for month)"],
        id="date-february-30",
    ),
    pytest.param(
        None,
        ["run", "{spec}", "--date", "23-1-1"],
        3,
        ["--date: unknown date '23-1-1': expected YYYY-MM-DD, 'today' or 'yesterday'"],
        id="date-not-iso",
    ),
    pytest.param(
        None,
        ["run", "{spec}", "--date", "2999-01-01"],
        3,
        ["2999-01-01 has not ended yet in Asia/Seoul"],
        id="date-in-the-future",
    ),
    pytest.param(
        None,
        ["run", "{spec}", "--start", "2023-08-02", "--end", "2023-08-01"],
        3,
        ["--end 2023-08-01 is before --start 2023-08-02"],
        id="start-after-end",
    ),
    pytest.param(
        None,
        ["run", "{spec}", *DAY, "--end", "2023-08-05"],
        3,
        ["--end needs --start"],
        id="end-without-start",
    ),
    pytest.param(
        None,
        ["run", "{spec}", *DAY, "--start", "2023-08-01"],
        2,
        ["argument --start: not allowed with argument --date"],
        id="usage-date-and-start",
    ),
    pytest.param(
        ("train: {start: 2023-01-01", "train: {start: 2023-13-01"),
        ["run", "{spec}", *DAY],
        3,
        [
            "{spec}: gpp.train.start: expected a date (YYYY-MM-DD), got '2023-13-01' (str): "
            "month must be in 1..12 (line {line})"
        ],
        id="pipeline-month-13",
    ),
    pytest.param(
        ('crs: "EPSG:32652"', 'crs: "EPSG:999999"'),
        ["run", "{spec}", *DAY],
        3,
        [
            "{spec}: grid.crs: 'EPSG:999999' is not a coordinate reference system PROJ knows",
            "crs not found",
            "(line {line})",
        ],
        id="crs-unknown-code",
    ),
    pytest.param(
        ('crs: "EPSG:32652"', 'crs: "UTM 52 north"'),
        ["validate", "{spec}"],
        3,
        [
            "{spec}: grid.crs: 'UTM 52 north' is not a coordinate reference system PROJ knows",
            "(line {line})",
        ],
        id="crs-garbage",
    ),
    pytest.param(
        (
            'crs: "EPSG:32652", bounds: [346020.0, 4171890.0, 350820.0, 4176690.0]',
            'crs: "EPSG:4326", bounds: [127.0, 37.7, 127.3, 37.9]',
        ),
        ["run", "{spec}", *DAY],
        3,
        [
            "{spec}: grid.crs: EPSG:4326 is geographic (degrees), but grid.bounds and "
            "grid.resolution are in metres",
            "(line {line})",
        ],
        id="crs-degrees-with-30m-pixels",
    ),
    pytest.param(
        ("downscale:\n  test: {start: 2023-06-01, end: 2023-10-31}\n  output: {root}/ds\n", ""),
        ["evaluate-downscaler", "{spec}"],
        3,
        [
            "{spec}: `unique-cube evaluate-downscaler` needs the grid and downscale sections; "
            "downscale missing"
        ],
        id="evaluate-without-downscale-section",
    ),
]


@pytest.mark.parametrize(("change", "argv", "code", "parts"), CASES)
def test_bad_input_exits_with_its_code_and_says_what_and_where(
    workspace: Path, capsys, change, argv: list[str], code: int, parts: list[str]
) -> None:
    spec = workspace / "pipeline.yaml"
    text = PIPELINE.format(root=workspace)
    line = None
    if change is not None and change[0] is None:
        spec.write_bytes(change[1])
    else:
        if change is not None:
            old, new = (part.replace("{root}", str(workspace)) for part in change)
            assert old in text
            text = text.replace(old, new, 1)
            line = _line(text, new) if new else None
        spec.write_text(text)
    before = _snapshot(workspace)

    assert _exit_code([arg.format(spec=spec) for arg in argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for part in parts:
        assert part.replace("{spec}", str(spec)).replace("{line}", str(line)) in err
    assert _snapshot(workspace) == before


# --- model files that carry code ---------------------------------------------------------


class _Payload:
    """Unpickling this would run a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _torch_save(path: Path, payload: object) -> None:
    torch.save({"format": "unique-cube-downscaler-1", "meta": payload}, path)


def _pickle_dump(path: Path, payload: object, protocol: int) -> None:
    path.write_bytes(pickle.dumps({"format": "unique-cube-purepixel-1", "meta": payload},
                                  protocol=protocol))  # fmt: skip


def _untrained_s1(path: Path) -> None:
    from unique_cube.downscale.checkpoint import Checkpoint, save_checkpoint
    from unique_cube.downscale.network import ConditionalUNet
    from unique_cube.downscale.schedule import NoiseSchedule

    model = ConditionalUNet(1, base=8, mults=(1, 2), time_dim=16)
    save_checkpoint(path, Checkpoint(model, NoiseSchedule.make("cosine", 10), "s1", {}, {}))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # torch's, on it
@pytest.mark.parametrize(
    ("argv", "scheme", "evil", "write", "noun"),
    [
        # `run` loads the product's downscaler (and the S1 fallback) before anything else
        (["run", "{spec}", *DAY], "s2", "ds/downscaler_s2.pt", _torch_save, "checkpoint"),
        (
            ["evaluate-downscaler", "{spec}"],
            "bilinear",
            "ds/downscaler_s1.pt",
            lambda p, x: _pickle_dump(p, x, 2),
            "checkpoint",
        ),
        # the pure-pixel baseline, beside a sound S1 checkpoint
        (
            ["evaluate-downscaler", "{spec}"],
            "bilinear",
            "ds/pure_pixel.pt",
            lambda p, x: _pickle_dump(p, x, 4),
            "model",
        ),
    ],
    ids=["run-s2-torch-save", "evaluate-s1-pickle-2", "evaluate-pure-pixel-pickle-4"],
)
def test_a_model_file_carrying_code_is_refused_before_it_runs(
    workspace: Path, capsys, argv, scheme, evil, write, noun
) -> None:
    spec = workspace / "pipeline.yaml"
    spec.write_text(
        PIPELINE.format(root=workspace).replace("scheme: bilinear", f"scheme: {scheme}")
    )
    (workspace / "ds").mkdir()
    if evil.endswith("pure_pixel.pt"):
        _untrained_s1(workspace / "ds/downscaler_s1.pt")
    marker = workspace / "code-ran"
    write(workspace / evil, _Payload(marker))
    before = _snapshot(workspace)

    assert _exit_code([arg.format(spec=spec) for arg in argv]) == 7
    err = capsys.readouterr().err
    assert f"{workspace / evil}: refused to unpickle this {noun}: it would import " in err
    assert "system, which is code, not weights" in err and "nothing in it was run" in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert _snapshot(workspace) == before


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            lambda p: p.write_bytes(b"not a checkpoint"),
            "not a weights-only checkpoint: the file is damaged or not a PyTorch file "
            "(refused to unpickle it: UnpicklingError: Unsupported operand",
        ),
        (lambda p: p.write_bytes(b""), "(refused to unpickle it: EOFError (empty or cut short))"),
        (
            lambda p: torch.save({"format": "unique-cube-downscaler-1", "scheme": "s2"}, p),
            "a damaged downscaler checkpoint (KeyError('unet'))",
        ),
    ],
    ids=["garbage", "empty", "keys-missing"],
)
def test_a_damaged_checkpoint_is_a_configuration_error(
    workspace: Path, capsys, write, message
) -> None:
    """Damaged is not unsafe: exit 3 (retrain), not 7 (find out where the file came from)."""
    spec = workspace / "pipeline.yaml"
    spec.write_text(PIPELINE.format(root=workspace).replace("scheme: bilinear", "scheme: s2"))
    (workspace / "ds").mkdir()
    write(workspace / "ds/downscaler_s2.pt")
    before = _snapshot(workspace)

    assert _exit_code(["run", str(spec), *DAY]) == 3
    err = capsys.readouterr().err
    assert f"{workspace}/ds/downscaler_s2.pt: " in err and message in err
    assert "weights_only=False" not in err  # torch's advice to load it anyway is not passed on
    assert _snapshot(workspace) == before


# --- an area outside the data --------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("argv", "parts"),
    [
        (
            ["run", "{spec}", *DAY],
            [
                "2023-08-01..2023-08-01 over the grid (bbox [129.",
                "outside the inputs' coverage",
                "no era5 reanalysis for these dates or this area",
            ],
        ),
        (
            ["train-downscaler", "{spec}", "--scheme", "s1"],
            [
                "no items for collection 'cop-dem-glo-30' (source 'dem')",
                "bbox [129.",
                "the area or period is outside what the collection covers",
            ],
        ),
    ],
    ids=["run", "train-downscaler"],
)
def test_a_grid_outside_the_world_is_a_search_error(
    demo_world, workspace: Path, capsys, argv, parts
) -> None:
    world, manifest = demo_world
    left, bottom, right, top = manifest["region"]["bbox"]
    far = [left + 200_000, bottom, right + 200_000, top]  # 200 km east: the sea off Korea
    text = PIPELINE.format(root=workspace).replace(
        "bounds: [346020.0, 4171890.0, 350820.0, 4176690.0]", f"bounds: {far}"
    )
    spec = workspace / "pipeline.yaml"
    spec.write_text(f"serve_world: {world}\n{text}")
    before = _snapshot(workspace)

    assert _exit_code([arg.format(spec=spec) for arg in argv]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for part in parts:
        assert part in err
    assert _snapshot(workspace) == before


# --- NaN and inf in inputs -----------------------------------------------------------------


def _hls_item_with_non_finite(root: Path, fmask: np.ndarray | None = None) -> pystac.Item:
    """An HLS-like scene of float32 bands holding +inf, -inf and NaN in known blocks."""
    from unique_cube.demo.publish import write_cog

    assets = {}
    for band in ("B01", "B02", "B03", "B04", "B05", "B06", "B07"):
        data = np.full(HLS_SHAPE, 1000.0, dtype="float32")
        data[40:60, 40:60] = np.inf
        data[70:90, 40:60] = -np.inf
        data[40:60, 70:90] = np.nan
        write_cog(root / f"{band}.tif", data, "EPSG:32651", HLS_TRANSFORM, None)
        assets[band] = _cog_asset(root / f"{band}.tif")
    qa = np.zeros(HLS_SHAPE, "uint8") if fmask is None else fmask
    write_cog(root / "Fmask.tif", qa, "EPSG:32651", HLS_TRANSFORM, 255)
    assets["Fmask"] = _cog_asset(root / "Fmask.tif")
    when = dt.datetime(2023, 5, 3, 2, 20, tzinfo=dt.UTC)
    item = _item("HLS.L30.T52SCG.2023123T022000.v2.0", "hls2-l30", when, "EPSG:32651",
                 HLS_TRANSFORM, HLS_SHAPE, assets, {"eo:cloud_cover": 0.0})  # fmt: skip
    return pystac.Item.from_dict(item)


def _source_pixels(geobox, rows: slice, cols: slice) -> np.ndarray:
    """Target pixels whose centres fall inside a block of the HLS grid."""
    from pyproj import Transformer

    y, x = np.meshgrid(geobox.coords["y"].values, geobox.coords["x"].values, indexing="ij")
    sx, sy = Transformer.from_crs(32652, 32651, always_xy=True).transform(x, y)
    col, row = ~HLS_TRANSFORM * (sx, sy)
    return (row >= rows.start) & (row < rows.stop) & (col >= cols.start) & (col < cols.stop)


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_inf_and_nan_in_a_cog_are_no_data(tmp_path: Path, resampling: str) -> None:
    from unique_cube.config.catalog import load_catalog
    from unique_cube.inputs.cube import load

    geobox = target_geobox(resolution=30.0, size=40)
    item = _hls_item_with_non_finite(tmp_path)
    source = load_catalog("demo").source("hls-l30")
    cube = load([item], source, geobox, resampling=resampling).isel(time=0).compute()
    red, clear = cube["red"].values, cube["clear"].values
    assert not np.isinf(red).any()
    for block in ((slice(40, 60), slice(40, 60)), (slice(70, 90), slice(40, 60)),
                  (slice(40, 60), slice(70, 90))):  # fmt: skip
        inside = _source_pixels(geobox, *block)
        assert inside.sum() > 100  # the block is within the target grid
        assert np.isnan(red[inside]).all() and not clear[inside].any()
    assert np.isfinite(red[clear]).all() and clear.sum() > 200
    np.testing.assert_allclose(red[clear], 1000.0 * 1e-4, rtol=1e-6)


def test_inf_and_nan_in_a_flux_file_are_missing_values(tmp_path: Path) -> None:
    from unique_cube.inputs.flux import read_flux

    path = tmp_path / "FLX_KR-Inf_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv"
    path.write_text(
        "TIMESTAMP,TA_F,SW_IN_F,VPD_F,P_F,NEE_VUT_REF_QC,GPP_NT_VUT_REF\n"
        "20200101,1.0,80.0,1.2,0.0,0.9,inf\n"
        "20200102,1.0,80.0,1.2,0.0,0.9,-inf\n"
        "20200103,1.0,80.0,1.2,0.0,0.9,NaN\n"
        "20200104,1.0,80.0,1.2,0.0,0.9,1e999\n"
        "20200105,inf,Infinity,nan,0.0,0.9,2.5\n"
    )
    table = read_flux(path)
    assert [d.day for d in table["date"]] == [5]  # days without a finite GPP are dropped
    assert table["gpp"].tolist() == [2.5]
    assert table[["TA_F", "SW_IN_F", "VPD_F"]].isna().all(axis=None)
    assert not np.isinf(table.select_dtypes("number").to_numpy()).any()


# --- exit codes ------------------------------------------------------------------------------


def test_every_error_class_has_a_documented_distinct_code() -> None:
    import unique_cube.cli as cli
    from unique_cube.errors import (
        CatalogError,
        ClusterError,
        ConfigError,
        DownscaleError,
        FluxError,
        LoadError,
        MissingModelError,
        ModelError,
        PurePixelError,
        StoreError,
        UnsafeCheckpointError,
    )

    codes = {
        ConfigError: 3, MissingModelError: 3, DownscaleError: 3, PurePixelError: 3,
        ModelError: 3, FluxError: 3, CatalogError: 4, LoadError: 5, StoreError: 5,
        ClusterError: 6, UnsafeCheckpointError: 7,
    }  # fmt: skip
    assert {cls: cls.exit_code for cls in codes} == codes
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code in sorted(set(codes.values()) | {2}):
        assert f"\n- {code} " in cli.__doc__
        assert f"\n| {code} | " in readme
