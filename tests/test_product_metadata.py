"""What the ecosystem's readers make of a product: odc-stac and a STAC API's datetime filter
find each day on its own local date, the assets' ``raster:bands`` and the COGs themselves say
the data type, nodata, unit and the QA bits."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

from unique_cube.product.stac import day_item
from unique_cube.product.store import ProductStore
from unique_cube.product.variables import COLLECTION_ID, GPP_UNITS, QA_FLAGS

GRID = GeoBox((64, 48), Affine(30, 0, 340000, 0, -30, 4180000), "EPSG:32652")

SEOUL = ZoneInfo("Asia/Seoul")

#: Three local days (Asia/Seoul, UTC+9), each with its own GPP, so a day off shows.
DAYS = {dt.date(2023, 6, 3): 1.0, dt.date(2023, 6, 4): 2.0, dt.date(2023, 6, 5): 3.0}

#: The QA of every valid pixel: the S2 path, GPP_M gap-filled, an input lost.
QA = QA_FLAGS["ddpm_s2"] | QA_FLAGS["gpp_m_gap_filled"] | QA_FLAGS["input_lost"]


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A product folder of :data:`DAYS`, written as ``unique-cube run`` writes a day; the
    first row of each day has no value (NaN GPP, QA 0)."""
    root = tmp_path_factory.mktemp("product")
    store = ProductStore(root, GRID, GRID.zoom_out(16))
    pipeline = SimpleNamespace(gpp=SimpleNamespace(utc_offset_hours=9.0),
                               product=SimpleNamespace(samples=2))  # fmt: skip
    for day, value in DAYS.items():
        gpp = np.full(GRID.shape, value, "float32")
        qa = np.full(GRID.shape, QA, "uint16")
        gpp[0], qa[0] = np.nan, 0
        with store.open_day(day, {"date": day.isoformat()}) as writer:
            writer.write(None, gpp, np.full(GRID.shape, 0.1, "float32"), qa)
            cogs = writer.finish(np.full(store.coarse.shape, value, "float32"))
            item = day_item(pipeline, store, day, cogs, {}, {"scheme": "s2"}, {})
            store.commit(writer, item, {"day": day.isoformat()})
    return root


def _item_paths(product: Path) -> list[Path]:
    return sorted((product / "stac" / COLLECTION_ID / "items").glob("*.json"))


def _items(product: Path) -> list:
    import pystac

    return [pystac.Item.from_file(path) for path in _item_paths(product)]


def test_odc_stac_selects_each_day_on_its_own_local_date(product: Path) -> None:
    import odc.stac

    cube = odc.stac.load(_items(product), bands=["gpp", "qa"])
    assert [str(t)[:10] for t in cube.time.values] == [str(day) for day in DAYS]
    for day, value in DAYS.items():
        gpp = cube["gpp"].sel(time=str(day)).squeeze("time").values
        assert np.nanmean(gpp) == value, day


def test_odc_stac_loads_qa_as_integer_flags_with_its_nodata(product: Path) -> None:
    import odc.stac

    cube = odc.stac.load(_items(product), bands=["gpp", "qa"])
    qa = cube["qa"].sel(time="2023-06-04").squeeze("time")
    assert qa.dtype == np.uint16 and qa.attrs["nodata"] == 0
    assert (qa.values[1:] == QA).all() and (qa.values[0] == 0).all()
    assert cube["gpp"].dtype == np.float32 and np.isnan(cube["gpp"].attrs["nodata"])


def test_items_and_collection_span_the_local_days_in_utc(product: Path) -> None:
    props = json.loads(_item_paths(product)[1].read_text())["properties"]  # 2023-06-04
    assert props["unique_cube:local_day"] == "2023-06-04"
    assert props["start_datetime"] == "2023-06-03T15:00:00Z"  # local midnight
    assert props["datetime"] == "2023-06-04T03:00:00Z"  # local noon
    assert props["end_datetime"] == "2023-06-04T14:59:59Z"
    collection = json.loads((product / "stac" / COLLECTION_ID / "collection.json").read_text())
    assert collection["extent"]["temporal"]["interval"] == [
        ["2023-06-02T15:00:00Z", "2023-06-05T14:59:59Z"]
    ]


@pytest.mark.integration
def test_a_stac_api_datetime_search_on_a_day_returns_its_item(
    product: Path, tmp_path: Path
) -> None:
    from pystac_client import Client

    from unique_cube.inputs.stac_server import LocalStacServer

    features = [json.loads(path.read_text()) for path in _item_paths(product)]
    served = tmp_path / "items.json"
    served.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with LocalStacServer([served]) as server:
        client = Client.open(server.url)

        def found(when: str) -> list:
            return list(client.search(collections=[COLLECTION_ID], datetime=when).items())

        for day in DAYS:
            # The local day, by its bounds: exactly its item, stamped inside the day.
            (item,) = found(f"{day}T00:00:00+09:00/{day}T23:59:59+09:00")
            assert item.id == f"{COLLECTION_ID}-{day}"
            assert item.datetime.astimezone(SEOUL).date() == day
            # The item's own instant finds it alone.
            assert [i.id for i in found(item.datetime.isoformat())] == [item.id]
        # pystac-client's "2023-06-04" is that UTC day, which overlaps two Seoul days: both
        # items intersect it; the one stamped on that date is the day's.
        said = found("2023-06-04")
        assert [i.id for i in said if str(i.datetime.date()) == "2023-06-04"] == [
            f"{COLLECTION_ID}-2023-06-04"
        ]


def test_cogs_name_their_band_and_unit_and_document_the_qa_flags(product: Path) -> None:
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    folder = product / "cogs/2023/06/04"
    for name, units in {"gpp": GPP_UNITS, "gpp_sd": GPP_UNITS, "gpp_m": GPP_UNITS}.items():
        with rasterio.open(folder / f"{name}.tif") as cog:
            assert cog.descriptions == (name,) and cog.units == (units,)
            assert cog.scales == (1.0,) and cog.offsets == (0.0,)
            assert cog.tags(1)["long_name"]
    with rasterio.open(folder / "qa.tif") as cog:
        assert cog.descriptions == ("qa",) and cog.nodata == 0 and cog.dtypes == ("uint16",)
        tags = cog.tags(1)
    assert tags["flag_meanings"].split() == list(QA_FLAGS)
    assert [int(v) for v in tags["flag_values"].split()] == list(QA_FLAGS.values())
    # CF: a pixel has a flag where (qa & mask) == value.
    masks = [int(v) for v in tags["flag_masks"].split()]
    flags = [name for name, mask, value in zip(QA_FLAGS, masks, QA_FLAGS.values(), strict=True)
             if QA & mask == value]  # fmt: skip
    assert flags == ["ddpm_s2", "gpp_m_gap_filled", "input_lost"]
    for name in ("gpp", "qa"):
        valid, errors, _ = cog_validate(str(folder / f"{name}.tif"), strict=True)
        assert valid, errors


def test_item_assets_carry_raster_bands_and_the_qa_bitfields(product: Path) -> None:
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.raster import RasterExtension

    item = _items(product)[1]
    for name in ("gpp", "gpp_sd", "gpp_m", "qa"):
        (band,) = RasterExtension.ext(item.assets[name]).bands
        if name == "qa":
            assert (band.data_type, band.nodata, band.unit) == ("uint16", 0, None)
        else:
            assert (band.data_type, band.unit, band.scale, band.offset) == (
                "float32", GPP_UNITS, 1.0, 0.0)  # fmt: skip
            assert np.isnan(float(band.nodata))  # STAC's "nan"
    assert RasterExtension.ext(item.assets["qa"]).bands[0].spatial_resolution == 30
    assert RasterExtension.ext(item.assets["gpp_m"]).bands[0].spatial_resolution == 480
    # A reader decodes a pixel's QA from the item alone.
    bitfields = ClassificationExtension.ext(item.assets["qa"]).bitfields
    said = set()
    for field in bitfields:
        value = (QA >> field.offset) & ((1 << field.length) - 1)
        said |= {c.name for c in field.classes if c.value == value}
    assert said == {"ddpm_s2", "gpp_m_gap_filled", "input_lost"}
    covered = {c.name for field in bitfields for c in field.classes}
    assert covered >= set(QA_FLAGS)
