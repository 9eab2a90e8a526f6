"""Shared fixtures: a tiny STAC world of real COGs served by ``rustac serve`` on 127.0.0.1.

The world sits around 37.75 N 127.15 E. Its target grid is EPSG:32652 (UTM 52N) at 30 m; the
items are deliberately on other grids — HLS-like scenes in EPSG:32651, an MCD43A4-like item on
the MODIS sinusoidal grid and a Copernicus-DEM-like tile on EPSG:4326 — so every load reprojects.
Pixel values are piecewise constant so reprojected values can be checked exactly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pytest
from odc.geo.geobox import GeoBox
from rasterio.transform import Affine

from unique_cube.config.catalog import Catalog, load_catalog
from unique_cube.demo.modis import SINUSOIDAL_WKT
from unique_cube.demo.publish import stac_item, write_cog
from unique_cube.inputs.stac_server import LocalStacServer

MODIS_PIXEL = 463.3127165279167

# Raw digital numbers of the HLS-like scenes (scale 0.0001).
HLS_DN = {"B01": 350, "B02": 400, "B03": 700, "B04": 500, "B05": 3000, "B06": 1800, "B07": 900}
HLS_DN_OLD = {
    "B01": 9000,
    "B02": 9000,
    "B03": 9000,
    "B04": 9000,
    "B05": 9000,
    "B06": 9000,
    "B07": 9000,
}
HLS_DN_LATER = {
    "B01": 250,
    "B02": 300,
    "B03": 600,
    "B04": 400,
    "B05": 3500,
    "B06": 1500,
    "B07": 700,
}
MODIS_DN = {1: 600, 2: 2800, 3: 450, 4: 750, 5: 2500, 6: 1900, 7: 1000}


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[None]:
    """Fail if Dask computes more than ``max_computes`` times inside the block."""
    count = 0

    def counting_scheduler(dsk, keys, **kwargs):
        nonlocal count
        count += 1
        if count > max_computes:
            raise RuntimeError(f"Too many computes: {count} > {max_computes}")
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_scheduler):
        yield


def _item(
    item_id: str,
    collection: str,
    when: dt.datetime,
    crs: str,
    transform: Affine,
    shape: tuple[int, int],
    assets: dict[str, dict],
    properties: dict,
) -> dict:
    props = {"datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"), **properties}
    return stac_item(item_id, collection, crs, transform, shape, props, assets)


def _cog_asset(href: Path, raster_band: dict | None = None) -> dict:
    asset = {
        "href": href.resolve().as_uri(),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
    }
    if raster_band is not None:
        asset["raster:bands"] = [raster_band]
    return asset


@dataclass
class StacWorld:
    """Files of the tiny world, the served catalog and the target grid."""

    root: Path
    items_file: Path
    items: list[dict]
    catalog: Catalog
    geobox: GeoBox
    bbox: tuple[float, float, float, float]
    cloud_box: tuple[slice, slice]
    water_box: tuple[slice, slice]


# UTM 52N target grid: 40 x 40 pixels of 30 m around (127.15 E, 37.75 N).
TARGET_X0, TARGET_Y0 = 336420.0, 4180290.0


def target_geobox(resolution: float = 30.0, size: int = 40) -> GeoBox:
    return GeoBox.from_bbox(
        (TARGET_X0, TARGET_Y0 - 1200, TARGET_X0 + 1200, TARGET_Y0),
        "EPSG:32652",
        resolution=resolution,
    )


def _hls_scene(root: Path, name: str, dn: dict[str, int], fmask: np.ndarray) -> dict[str, dict]:
    # EPSG:32651 grid, 120 x 120 pixels of 30 m, covering the target with a wide margin.
    assets = {}
    for band, value in dn.items():
        data = np.full(fmask.shape, value, dtype="int16")
        data[:10, :10] = -9999  # a no-data corner, far from the target
        write_cog(root / f"{name}_{band}.tif", data, "EPSG:32651", HLS_TRANSFORM, -9999)
        assets[band] = _cog_asset(root / f"{name}_{band}.tif")
    write_cog(root / f"{name}_Fmask.tif", fmask, "EPSG:32651", HLS_TRANSFORM, 255)
    assets["Fmask"] = _cog_asset(root / f"{name}_Fmask.tif")
    return assets


HLS_TRANSFORM = Affine(30.0, 0.0, 863700.0, 0.0, -30.0, 4188000.0)
HLS_SHAPE = (120, 120)


@pytest.fixture(scope="session")
def stac_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StacWorld]:
    root = tmp_path_factory.mktemp("stac_world")
    geobox = target_geobox()
    # Fmask in the HLS grid: a cloud block and a water block, located through the target
    # grid so that each covers a known part of it.
    fmask = np.zeros(HLS_SHAPE, dtype="uint8")
    cloud_box = (slice(5, 15), slice(5, 15))  # target rows/cols
    water_box = (slice(25, 35), slice(25, 35))
    _paint_target_box(fmask, geobox, cloud_box, 0b10)  # bit 1: cloud
    _paint_target_box(fmask, geobox, water_box, 0b100000)  # bit 5: water

    items = []
    day1 = dt.datetime(2023, 5, 3, 2, 20, tzinfo=dt.UTC)
    for name, dn, created in (
        ("HLS.L30.T52SCG.2023123T022000.v2.0", HLS_DN, "2023-05-10T00:00:00Z"),
        # Same tile and day, processed earlier: de-duplication must drop it.
        ("HLS.L30.T52SCG.2023123T022000.v1.9", HLS_DN_OLD, "2023-05-04T00:00:00Z"),
    ):
        assets = _hls_scene(root, name, dn, fmask)
        items.append(
            _item(
                name,
                "hls2-l30",
                day1,
                "EPSG:32651",
                HLS_TRANSFORM,
                HLS_SHAPE,
                assets,
                {"eo:cloud_cover": 12.0, "created": created, "platform": "landsat-8"},
            )
        )
    day2 = dt.datetime(2023, 5, 19, 2, 20, tzinfo=dt.UTC)
    name = "HLS.L30.T52SCG.2023139T022000.v2.0"
    items.append(
        _item(
            name,
            "hls2-l30",
            day2,
            "EPSG:32651",
            HLS_TRANSFORM,
            HLS_SHAPE,
            _hls_scene(root, name, HLS_DN_LATER, np.zeros(HLS_SHAPE, "uint8")),
            {"eo:cloud_cover": 3.0, "created": "2023-05-20T00:00:00Z", "platform": "landsat-9"},
        )
    )
    day3 = dt.datetime(2023, 5, 11, 2, 20, tzinfo=dt.UTC)
    name = "HLS.L30.T52SCG.2023131T022000.v2.0"
    items.append(
        _item(
            name,
            "hls2-l30",
            day3,
            "EPSG:32651",
            HLS_TRANSFORM,
            HLS_SHAPE,
            _hls_scene(root, name, HLS_DN_OLD, np.full(HLS_SHAPE, 2, "uint8")),
            {"eo:cloud_cover": 97.0, "created": "2023-05-12T00:00:00Z", "platform": "landsat-9"},
        )
    )
    items.append(_modis_item(root))
    items.append(_dem_item(root))

    items_file = root / "items.json"
    items_file.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    bbox = tuple(geobox.extent.to_crs("EPSG:4326").boundingbox)
    with LocalStacServer([items_file]) as server:
        yield StacWorld(
            root=root,
            items_file=items_file,
            items=items,
            catalog=load_catalog("demo").with_url(server.url),
            geobox=geobox,
            bbox=bbox,
            cloud_box=cloud_box,
            water_box=water_box,
        )


def _paint_target_box(qa: np.ndarray, geobox: GeoBox, box: tuple[slice, slice], value: int) -> None:
    """Set ``value`` in the HLS-grid pixels whose centres fall in a box of target pixels."""
    from pyproj import Transformer

    rows, cols = np.mgrid[0 : qa.shape[0], 0 : qa.shape[1]]
    x, y = HLS_TRANSFORM * (cols + 0.5, rows + 0.5)
    tx, ty = Transformer.from_crs(32651, 32652, always_xy=True).transform(x, y)
    inv = ~geobox.affine
    tcol, trow = inv * (tx, ty)
    inside = (
        (trow >= box[0].start - 1)
        & (trow < box[0].stop + 1)
        & (tcol >= box[1].start - 1)
        & (tcol < box[1].stop + 1)
    )
    qa[inside] |= value


def _modis_item(root: Path) -> dict:
    # 8 x 8 MODIS pixels on the sinusoidal grid; the target's centre is at the corner of
    # pixels (3, 3) and (4, 4). QA is fill (no retrieval) in the northern half.
    x0 = 11179125.68 - 4 * MODIS_PIXEL
    y0 = 4197613.21 + 4 * MODIS_PIXEL
    transform = Affine(MODIS_PIXEL, 0.0, x0, 0.0, -MODIS_PIXEL, y0)
    shape = (8, 8)
    assets = {}
    for band, value in MODIS_DN.items():
        data = np.full(shape, value, dtype="int16")
        path = root / f"mcd43a4_b{band}.tif"
        write_cog(path, data, SINUSOIDAL_WKT, transform, 32767)
        assets[f"Nadir_Reflectance_Band{band}"] = _cog_asset(
            path, {"data_type": "int16", "scale": 0.0001, "spatial_resolution": 500}
        )
        qa = np.zeros(shape, dtype="uint8")
        qa[:4, :] = 255
        path = root / f"mcd43a4_qa{band}.tif"
        write_cog(path, qa, SINUSOIDAL_WKT, transform, None)
        assets[f"BRDF_Albedo_Band_Mandatory_Quality_Band{band}"] = _cog_asset(
            path, {"data_type": "uint8", "spatial_resolution": 500}
        )
    return _item(
        "MCD43A4.A2023123.h28v05.061",
        "modis-43A4-061",
        dt.datetime(2023, 5, 3, tzinfo=dt.UTC),
        SINUSOIDAL_WKT,
        transform,
        shape,
        assets,
        {"modis:horizontal-tile": 28, "modis:vertical-tile": 5, "created": "2023-05-12T00:00:00Z"},
    )


def _dem_item(root: Path) -> dict:
    # 1 arc-second EPSG:4326 tile piece: elevation rises by 1 m per pixel eastwards.
    step = 1 / 3600
    transform = Affine(step, 0.0, 127.13, 0.0, -step, 37.77)
    shape = (144, 144)
    data = (100.0 + np.arange(shape[1], dtype="float32"))[None, :].repeat(shape[0], axis=0)
    path = root / "dem.tif"
    write_cog(path, data, "EPSG:4326", transform, None)
    return _item(
        "Copernicus_DSM_COG_10_N37_00_E127_00_DEM",
        "cop-dem-glo-30",
        dt.datetime(2021, 4, 22, tzinfo=dt.UTC),
        "EPSG:4326",
        transform,
        shape,
        {"data": _cog_asset(path)},
        {"gsd": 30},
    )


#: The subscription key of the signed asset server (a secret that must never reach a log).
SIGNING_KEY = "fake-subscription-key-0123456789"


@pytest.fixture
def store(stac_world: StacWorld, monkeypatch: pytest.MonkeyPatch):
    """The tiny world's files behind signed URLs (:class:`signed_assets.SignedAssetServer`)."""
    from signed_assets import SignedAssetServer

    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", SIGNING_KEY)
    with SignedAssetServer(stac_world.root, SIGNING_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The small demo world, generated once per test session: (folder, manifest)."""
    from unique_cube.demo.build import build_world

    path = tmp_path_factory.mktemp("demo") / "world"
    return path, build_world(path, "small", seed=11, workers=2)


@pytest.fixture(scope="session")
def demo_server(demo_world: tuple[Path, dict]) -> Iterator[LocalStacServer]:
    """The small demo world served by ``rustac serve`` on 127.0.0.1."""
    from unique_cube.demo.serve import serve_world

    with serve_world(demo_world[0]) as server:
        yield server


def small_pipeline(world: Path, models: Path, extra: str = "") -> str:
    """Pipeline YAML for the small demo world (2023; 4 spatial folds), plus ``extra`` text (its
    grid section: the towers inside the region are held out of training)."""
    return f"""
name: small-demo
catalog: demo
serve_world: {world}
flux: {{directory: {world}/flux, sites: {world}/flux/sites.csv, hold_out_region: true}}
gpp:
  train: {{start: 2023-01-01, end: 2023-12-31}}
  modis: {{source: modis-sr, min_clear: 1, gap_fill_days: 16}}
  landsat: {{source: hls-l30, min_clear: 5}}
  folds: 4
  learners: [lightgbm, linear]
  output: {models}
{extra}"""


def downscale_sections(world: Path, manifest: dict, out: Path, product: str = "") -> str:
    """Grid and downscale sections for the small world (a few training steps: mechanics only),
    and ``product`` as the body of a product section when given."""
    left, bottom, right, top = manifest["region"]["bbox"]
    text = f"""
grid: {{crs: "EPSG:32652", bounds: [{left}, {bottom}, {right}, {top}]}}
downscale:
  train: {{start: 2023-01-01, end: 2023-05-31}}
  test: {{start: 2023-06-01, end: 2023-10-31}}
  output: {out}/ds
  truth: {world}/truth/gpp.zarr
  steps: 5
  batch: 2
  base: 8
  samples: 2
  ddim_steps: 3
  tile: 64
  overlap: 16
  max_eval_dates: 2
  reference_days: 48
evaluation:
  output: {out}/eval
  members: 2
  daily_every: 16
  history_days: 32
"""
    if product:
        text += "product:\n" + "".join(f"  {line}\n" for line in product.strip().splitlines())
    return text


def linear_gpp_model(folder: Path) -> Path:
    """A GPP_M model and card in ``folder`` made in a blink (a ridge fit on random features):
    enough for ``run`` to check and apply it (a bilinear product needs no other model), not to
    make sense of GPP. Returns ``folder``."""
    from unique_cube.gpp.features import FEATURES
    from unique_cube.gpp.learners import fit_learner, save_model
    from unique_cube.gpp.model import ModelCard

    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).normal(size=(50, len(FEATURES)))
    ridge = fit_learner("linear", x, x[:, 0], threads=1, seed=0)
    card = ModelCard(
        name="gpp_modis", learner="linear", model_file="gpp_modis.model", features=FEATURES,
        model_sha256=save_model(ridge, folder / "gpp_modis.model", FEATURES),
        feature_ranges={f: (0.0, 1.0) for f in FEATURES}, target="GPP (gC m-2 day-1)",
        n_rows=0, n_sites=0, folds=2, fold_of_site={}, cv={}, learner_comparison={}, params={},
        training_data_sha256="0" * 64, versions={}, gap_fill_days=16,
    )  # fmt: skip
    card.write(folder / "gpp_modis.card.json")
    return folder


@dataclass
class DemoRun:
    """``unique-cube demo`` run once on the small world (see :func:`demo_run`)."""

    argv: list[str]
    """The command's arguments (a second run with them reuses every stage)."""
    out: Path
    """Its output folder: ``models/``, ``ds/``, ``product/``, ``report/``."""
    said: str
    """What the run wrote on stderr."""


#: The product section of the demo run: 3 days of the small world (early June: clear MODIS
#: within 16 days of every pixel-day, so a run reads a month of MODIS, not three).
DEMO_PRODUCT = """
output: demo-output/product
samples: 2
ddim_steps: 3
tile: 96
overlap: 16
max_gap_days: 16
period: {start: 2023-06-01, end: 2023-06-03}
"""


@pytest.fixture(scope="session")
def demo_run(demo_world: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """`unique-cube demo` on the small world with a pipeline made for it (4 spatial folds, a
    few downscaler training steps: mechanics only), once per session: both GPP models, S1, S2
    and the pure-pixel baseline, their evaluation, 3 product days and the report. Its trained
    models are every other test's (``trained_models``, ``trained_downscalers``)."""
    from unique_cube.cli import main

    path, manifest = demo_world
    folder = tmp_path_factory.mktemp("demo-run")
    spec = folder / "small.yaml"
    spec.write_text(
        small_pipeline(Path("demo-world"), Path("demo-output/models"),
                       downscale_sections(Path("demo-world"), manifest, Path("demo-output"),
                                          DEMO_PRODUCT))
    )  # fmt: skip
    out = folder / "out"
    argv = ["demo", "--world", str(path), "--size", "small", "--seed", str(manifest["seed"]),
            "--pipeline", str(spec), "--output", str(out)]  # fmt: skip
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        code = main(argv)
    assert code == 0, said.getvalue()[-3000:]
    # The pipeline of its models in the form the other tests write theirs.
    (out / "pipeline.yaml").write_text(
        small_pipeline(path, out / "models", downscale_sections(path, manifest, out))
    )
    return DemoRun(argv, out, said.getvalue())


@pytest.fixture(scope="session")
def trained_models(demo_run: DemoRun) -> Path:
    """Both GPP models trained on the small demo world (4 spatial folds): their folder."""
    return demo_run.out / "models"


@pytest.fixture(scope="session")
def trained_downscalers(demo_run: DemoRun) -> Path:
    """S1, S2 and the pure-pixel baseline trained on the small world (a few steps): the folder
    whose ``ds/`` holds them; ``pipeline.yaml`` there is the pipeline that trained them."""
    return demo_run.out


#: Fixtures that start a server or a cluster, build a world or train a model. A test that uses
#: one, directly or through another fixture, is an integration test (``make test-fast`` leaves
#: them out; ``make test`` runs everything).
INTEGRATION_FIXTURES = {
    "stac_world",
    "demo_world",
    "demo_server",
    "trained_models",
    "trained_downscalers",
    "demo_run",
    "cluster",
    "flaky",
    "model_card",
    "fitted",
    "tiny",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    _scale_timeouts(config, items)


# ------------------------------------------------------------------------------ load

#: A process that keeps one CPU busy until pytest (its parent) is gone, however pytest ends.
_BURN = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    sum(range(10**5))
"""
_BURNERS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-burners", type=int, default=0, metavar="N",
        help="run the tests beside N processes that each keep a CPU busy (make test-under-load)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    burners = config.getoption("--cpu-burners", 0)
    config.stash[_BURNERS] = [
        subprocess.Popen([sys.executable, "-c", _BURN, str(os.getpid())]) for _ in range(burners)
    ]


def _scale_timeouts(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Beside N burners the tests get about 1/(N + 1) of the CPUs: their timeouts (guards
    against a hang, not limits on speed) grow N + 1 times."""
    burners = config.getoption("--cpu-burners", 0)
    if not burners:
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker and marker.args else default
        if seconds:
            item.add_marker(pytest.mark.timeout(seconds * (burners + 1)), append=False)


def pytest_unconfigure(config: pytest.Config) -> None:
    for burner in config.stash.get(_BURNERS, []):
        burner.kill()
        burner.wait()
