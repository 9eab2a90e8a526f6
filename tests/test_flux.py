"""Reading flux-tower files as users have them, site tables, and their errors.

Each format is written here from generated values with the real column layout (headers
abridged where a real file has hundreds of columns; the order is the real one).
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import unique_cube
from unique_cube.errors import ConfigError, FluxError
from unique_cube.inputs import flux
from unique_cube.inputs.flux import read_flux, read_flux_dir, read_sites

HEADER = "TIMESTAMP,TA_F,SW_IN_F,VPD_F,P_F,NEE_VUT_REF_QC,GPP_NT_VUT_REF,GPP_DT_VUT_REF\n"
REAL_EXTRACT = Path("/work/shared/data/fluxnet2015-4sites/df_for_stepwise_regression.csv")

# FLUXNET2015 / ONEFlux daily products (abridged, in the real order).
FULLSET_DD = (
    "TIMESTAMP,TA_F_MDS,TA_F_MDS_QC,TA_ERA,TA_F,TA_F_QC,SW_IN_POT,SW_IN_F_MDS,SW_IN_F_MDS_QC,"
    "SW_IN_ERA,SW_IN_F,SW_IN_F_QC,LW_IN_F_MDS,LW_IN_F_MDS_QC,LW_IN_ERA,LW_IN_F,LW_IN_F_QC,"
    "VPD_F_MDS,VPD_F_MDS_QC,VPD_ERA,VPD_F,VPD_F_QC,PA,PA_ERA,PA_F,PA_F_QC,P,P_ERA,P_F,P_F_QC,"
    "WS,WS_ERA,WS_F,WS_F_QC,USTAR,USTAR_QC,NETRAD,NETRAD_QC,PPFD_IN,PPFD_IN_QC,SW_OUT,"
    "SW_OUT_QC,CO2_F_MDS,CO2_F_MDS_QC,TS_F_MDS_1,TS_F_MDS_1_QC,SWC_F_MDS_1,SWC_F_MDS_1_QC,"
    "G_F_MDS,G_F_MDS_QC,LE_F_MDS,LE_F_MDS_QC,LE_CORR,H_F_MDS,H_F_MDS_QC,H_CORR,NEE_VUT_REF,"
    "NEE_VUT_REF_QC,NEE_VUT_REF_RANDUNC,NEE_CUT_REF,NEE_CUT_REF_QC,RECO_NT_VUT_REF,"
    "GPP_NT_VUT_REF,GPP_NT_VUT_25,GPP_NT_VUT_50,GPP_NT_VUT_75,GPP_NT_CUT_REF,RECO_DT_VUT_REF,"
    "GPP_DT_VUT_REF,GPP_DT_CUT_REF,RECO_SR,RECO_SR_N"
)
SUBSET_DD = (
    "TIMESTAMP,TA_F,TA_F_QC,SW_IN_POT,SW_IN_F,SW_IN_F_QC,LW_IN_F,LW_IN_F_QC,VPD_F,VPD_F_QC,"
    "PA_F,PA_F_QC,P_F,P_F_QC,WS_F,WS_F_QC,CO2_F_MDS,CO2_F_MDS_QC,TS_F_MDS_1,TS_F_MDS_1_QC,"
    "SWC_F_MDS_1,SWC_F_MDS_1_QC,G_F_MDS,G_F_MDS_QC,LE_F_MDS,LE_F_MDS_QC,LE_CORR,H_F_MDS,"
    "H_F_MDS_QC,H_CORR,NEE_VUT_REF,NEE_VUT_REF_QC,NEE_VUT_REF_RANDUNC,RECO_NT_VUT_REF,"
    "GPP_NT_VUT_REF,RECO_DT_VUT_REF,GPP_DT_VUT_REF,RECO_SR,RECO_SR_N"
)
# AmeriFlux BASE half-hourly/hourly (position qualifiers as sites write them).
BASE = (
    "TIMESTAMP_START,TIMESTAMP_END,CO2_1_1_1,H2O_1_1_1,FC,H,LE,USTAR,TA_1_1_1,TA_1_2_1,"
    "RH_1_1_1,VPD,SW_IN,SW_OUT,LW_IN,LW_OUT,NETRAD,PPFD_IN,P,WS,PA,G_1_1_1,SWC_1_1_1,"
    "TS_1_1_1,NEE_PI,RECO_PI,GPP_PI_F"
)
# FluxDataKit / ingestr daily drivers joined with GPP (rsofun forcing order).
FLUXDATAKIT = (
    "sitename,date,temp,vpd,ppfd,netrad,patm,snow,rain,tmin,tmax,fapar,co2,ccov,gpp,gpp_qc"
)


def _write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def _year(seed: int, days: int = 365) -> dict[str, np.ndarray]:
    """Plausible daily tower values in FLUXNET2015 units (degC, W m-2, hPa, mm d-1, gC)."""
    rng = np.random.default_rng(seed)
    season = np.sin(2 * np.pi * (np.arange(days) - 100) / 365)
    return {
        "TA": 10 + 12 * season + rng.normal(0, 2, days),
        "SW": np.clip(180 + 120 * season + rng.normal(0, 30, days), 5, None),
        "VPD": np.clip(6 + 5 * season + rng.normal(0, 1.5, days), 0.05, None),
        "P": np.where(rng.random(days) < 0.3, rng.gamma(1.5, 4.0, days), 0.0),
        "GPP": np.clip(4 + 4 * season + rng.normal(0, 0.8, days), 0, None),
        "QC": rng.uniform(0.0, 1.0, days),
    }


def _days(n: int, start: str = "2020-01-01") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="D")


def _write_table(path: Path, header: str, values: dict[str, object]) -> Path:
    """The header's columns in order, -9999 where ``values`` has none; .gz compresses."""
    n = len(next(iter(values.values())))
    names = header.split(",")
    table = pd.DataFrame({name: values.get(name, np.full(n, -9999)) for name in names})
    table.to_csv(path, index=False)
    return path


def _fluxnet_dd(header: str, year: dict[str, np.ndarray]) -> dict[str, object]:
    """A year in a ONEFlux daily layout: consolidated and MDS variables, QC, both GPPs."""
    n = len(year["GPP"])
    values = {
        "TIMESTAMP": _days(n).strftime("%Y%m%d"),
        "TA_F": year["TA"], "TA_F_MDS": year["TA"], "SW_IN_F": year["SW"],
        "SW_IN_F_MDS": year["SW"], "VPD_F": year["VPD"], "VPD_F_MDS": year["VPD"],
        "P_F": year["P"], "P": year["P"], "NEE_VUT_REF_QC": year["QC"],
        "GPP_NT_VUT_REF": year["GPP"], "GPP_DT_VUT_REF": year["GPP"] * 1.1,
        "GPP_NT_CUT_REF": year["GPP"] * 0.9, "NETRAD": year["SW"] * 0.6 - 30,
    }  # fmt: skip
    return {k: v for k, v in values.items() if k in header.split(",")}


# --- the FLUXNET2015 layout (kept from the first reader) -----------------------------------


def test_fullset_dd_file_with_missing_values_and_qc(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "FLX_KR-Abc_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv",
        [
            "20200101,-2.5,80.0,1.2,0.0,0.9,0.8,0.7",
            "20200102,-1.0,-9999,1.0,2.0,0.2,1.5,1.4",  # low QC: dropped
            "20200103,0.5,90.0,NA,0.0,0.8,-9999,1.1",  # no target: dropped
            "20200104,1.5,95.0,1.1,0.0,-9999,2.0,1.9",  # QC unknown: kept
        ],
    )
    table = read_flux(path, min_qc=0.5)
    assert list(table["site"].unique()) == ["KR-Abc"]
    assert [d.day for d in table["date"]] == [1, 4]
    assert table["gpp"].tolist() == [0.8, 2.0]
    assert table["SW_IN_F"].notna().all()
    assert len(read_flux(path, min_qc=0.0)) == 3
    dt_target = read_flux(path, target="GPP_DT_VUT_REF", min_qc=0.0)
    assert dt_target["gpp"].tolist() == [0.7, 1.4, 1.1, 1.9]
    assert list(table.columns) == ["site", "date", "gpp", *flux.METEO, "nee_qc"]
    assert pd.api.types.is_datetime64_any_dtype(table["date"])


def test_multi_site_table_with_iso_dates(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "towers.csv",
        ["A-One,2001-06-01,20.0,1.5", "B-Two,2001-06-01,NA,3.5"],
        header="siteid,TIMESTAMP,TA_F,GPP_NT_VUT_REF\n",
    )
    table = read_flux(path)
    assert table["site"].tolist() == ["A-One", "B-Two"]
    assert str(table["date"].iloc[0].date()) == "2001-06-01"


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "FLX_KR-Abc_x.csv", ["20200101,1.0"], header="TIMESTAMP,TA_F\n")
    with pytest.raises(
        FluxError,
        match=r"FLX_KR-Abc_x\.csv: no usable GPP column; looked for GPP_NT_VUT_REF, "
        r"GPP_NT_CUT_REF, GPP_DT_VUT_REF, .*GPP_PI_F, .*gpp .*none present",
    ):
        read_flux(path)


def test_only_a_gpp_target_falls_back(tmp_path: Path) -> None:
    path = _write(tmp_path / "FLX_KR-Fpr_x.csv", ["20200101,1,1,1,0,1,2.0,2.1"])
    with pytest.raises(FluxError, match=r"no usable FPAR column; looked for FPAR \("):
        read_flux(path, target="FPAR")  # a vegetation column read as the target: no GPP
    assert read_flux(path, target="GPP_NT_CUT_REF")["gpp"].tolist() == [2.0]


def test_a_site_without_any_gpp_is_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "FLX_KR-Emp_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv",
        ["20200101,1,1,1,0,1,-9999,-9999", "20200102,1,1,1,0,1,NA,NA"],
    )
    with pytest.raises(
        FluxError, match=r"no usable GPP column.*present but empty: GPP_NT_VUT_REF, GPP_DT_VUT_REF"
    ):
        read_flux(path)
    table = _write(
        tmp_path / "towers.csv",
        ["A-One,2001-06-01,1.5", "B-Two,2001-06-01,-9999"],
        header="siteid,TIMESTAMP,GPP_NT_VUT_REF\n",
    )
    with pytest.raises(FluxError, match="site B-Two has no GPP_NT_VUT_REF value"):
        read_flux(table)


def test_bad_dates_and_unnamed_files(tmp_path: Path) -> None:
    bad = _write(tmp_path / "FLX_KR-Bad_x.csv", ["2020-13-45,1,1,1,0,1,1,1"])
    with pytest.raises(FluxError, match=r"FLX_KR-Bad_x\.csv: TIMESTAMP '2020-13-45' is not a date"):
        read_flux(bad)
    odd = _write(tmp_path / "FLX_KR-Odd_x.csv", ["01/02/2020,1,1,1,0,1,1,1"])
    with pytest.raises(FluxError, match=r"FLX_KR-Odd_x\.csv: TIMESTAMP '01/02/2020'"):
        read_flux(odd)
    anonymous = _write(tmp_path / "tower.csv", ["20200101,1,1,1,0,1,1,1"])
    with pytest.raises(FluxError, match="no site id column"):
        read_flux(anonymous)
    assert read_flux(anonymous, site="KR-Own")["site"].iloc[0] == "KR-Own"
    named = _write(tmp_path / "FLX_KR-Nam_x.csv", ["20200101,1,1,1,0,1,1,1"])
    assert read_flux(named, "KR-Arg")["site"].iloc[0] == "KR-Arg"  # the argument wins


def test_folder_and_site_table(tmp_path: Path) -> None:
    for site in ("KR-Aaa", "KR-Bbb"):
        _write(tmp_path / f"FLX_{site}_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv",
               ["20200101,1,1,1,0,1,3.0,3.0"])  # fmt: skip
    assert sorted(read_flux_dir(tmp_path)["site"]) == ["KR-Aaa", "KR-Bbb"]
    assert list(read_flux_dir(tmp_path, ["KR-Bbb"])["site"]) == ["KR-Bbb"]
    table = tmp_path / "sites.csv"
    table.write_text("SITE_ID,LOCATION_LAT,LOCATION_LONG,IGBP\nKR-Aaa,37.5,127.1,DBF\n")
    sites = read_sites(table)
    assert sites.loc[0, ["site", "lat", "lon", "igbp"]].tolist() == ["KR-Aaa", 37.5, 127.1, "DBF"]
    table.write_text("SITE_ID,LOCATION_LAT,LOCATION_LONG,IGBP\nKR-Aaa,97.5,127.1,DBF\n")
    with pytest.raises(FluxError, match="site KR-Aaa has no valid lat"):
        read_sites(table)
    table.write_text("SITE_ID,LOCATION_LAT,IGBP\nKR-Aaa,37.5,DBF\n")
    with pytest.raises(FluxError, match=r"lacks column\(s\) lon"):
        read_sites(table)
    with pytest.raises(FluxError, match="no FLX_"):
        read_flux_dir(tmp_path / "empty")


# --- one test per format ------------------------------------------------------------------


def test_fluxnet2015_fullset_gzipped(tmp_path: Path) -> None:
    year = _year(1)
    values = _fluxnet_dd(FULLSET_DD, year)
    gz = _write_table(tmp_path / "FLX_DE-Gzp_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv.gz",
                      FULLSET_DD, values)  # fmt: skip
    assert gz.read_bytes()[:2] == b"\x1f\x8b"  # really gzipped
    table = read_flux(gz, min_qc=0.5)
    good = year["QC"] >= 0.5
    assert (table["site"] == "DE-Gzp").all() and len(table) == good.sum()
    np.testing.assert_allclose(table["gpp"], year["GPP"][good])
    np.testing.assert_allclose(table["VPD_F"], year["VPD"][good])  # hPa, as written
    np.testing.assert_allclose(table["P_F"], year["P"][good])
    plain = _write_table(tmp_path / "FLX_DE-Gzp_plain.csv", FULLSET_DD, values)
    pd.testing.assert_frame_equal(read_flux(plain, min_qc=0.5), table)


def test_fluxnet2015_subset_dd(tmp_path: Path) -> None:
    year = _year(2)
    path = _write_table(tmp_path / "FLX_FI-Sub_FLUXNET2015_SUBSET_DD_2020-2020_1-4.csv",
                        SUBSET_DD, _fluxnet_dd(SUBSET_DD, year))  # fmt: skip
    table = read_flux(path, min_qc=0.0)
    assert len(table) == 365 and (table["site"] == "FI-Sub").all()
    np.testing.assert_allclose(table["TA_F"], year["TA"])
    np.testing.assert_allclose(table["SW_IN_F"], year["SW"])
    np.testing.assert_allclose(table["nee_qc"], year["QC"])


@pytest.mark.parametrize(
    ("name", "site"),
    [
        ("AMF_US-Ame_FLUXNET_FULLSET_DD_2020-2020_3-5.csv", "US-Ame"),
        ("ICOSETC_BE-Ico_FLUXNET_DD_L2.csv", "BE-Ico"),
    ],
)
def test_ameriflux_fluxnet_and_icos_daily(tmp_path: Path, name: str, site: str) -> None:
    year = _year(3)
    path = _write_table(tmp_path / name, FULLSET_DD, _fluxnet_dd(FULLSET_DD, year))
    table = read_flux(path, min_qc=0.0)
    assert (table["site"] == site).all() and len(table) == 365
    np.testing.assert_allclose(table["gpp"], year["GPP"])
    assert read_flux_dir(tmp_path)["site"].unique().tolist() == [site]


def _base_file(tmp_path: Path, minutes: int) -> Path:
    """Three days of AmeriFlux BASE steps: day 1 and 2 complete (FC measured in 3/4 and 1/4
    of the steps), day 3 with GPP in only 3/10 of its steps."""
    per_day = 1440 // minutes
    start = pd.date_range("2022-06-01", periods=3 * per_day, freq=f"{minutes}min")
    n = len(start)
    step = np.arange(n) % per_day
    day = np.arange(n) // per_day
    gpp = np.where((day < 2) | (step < 0.3 * per_day), 10.0, -9999)
    fc = np.where(step < np.where(day == 0, 0.75, 0.25) * per_day, -5.0, -9999)
    values = {
        "TIMESTAMP_START": start.strftime("%Y%m%d%H%M"),
        "TIMESTAMP_END": (start + pd.Timedelta(minutes=minutes)).strftime("%Y%m%d%H%M"),
        "FC": fc, "TA_1_1_1": np.where(day == 0, 20.0, 22.0), "TA_1_2_1": np.full(n, 99.0),
        "VPD": np.full(n, 8.0), "SW_IN": np.full(n, 300.0), "P": np.full(n, 0.1),
        "NETRAD": np.full(n, 150.0), "GPP_PI_F": gpp,
    }  # fmt: skip
    kind = "HH" if minutes == 30 else "HR"
    path = tmp_path / f"AMF_US-Xyz_BASE_{kind}_4-5.csv"
    path.write_text("# Site: US-Xyz\n# Version: 4-5\n")
    with path.open("a") as f:
        columns = {c: values.get(c, np.full(n, -9999)) for c in BASE.split(",")}
        pd.DataFrame(columns).to_csv(f, index=False)
    return path


@pytest.mark.parametrize("minutes", [30, 60])
def test_ameriflux_base_steps_become_days(
    tmp_path: Path, minutes: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = _base_file(tmp_path, minutes)
    with caplog.at_level(logging.INFO, logger=flux.__name__):
        table = read_flux(path, min_qc=0.0)
    # Day 3 lacks 80 % of its GPP steps; µmol m-2 s-1 → gC m-2 d-1; P per step → per day.
    assert [d.date() for d in table["date"]] == [dt.date(2022, 6, 1), dt.date(2022, 6, 2)]
    np.testing.assert_allclose(table["gpp"], 10.0 * 12.011e-6 * 86400)
    np.testing.assert_allclose(table["TA_F"], [20.0, 22.0])  # TA_1_1_1, not TA_1_2_1
    np.testing.assert_allclose(table["P_F"], 0.1 * 1440 / minutes)
    np.testing.assert_allclose(table["VPD_F"], 8.0)
    np.testing.assert_allclose(table["nee_qc"], [0.75, 0.25])
    assert "TA_F from TA_1_1_1" in caplog.text and "gpp from GPP_PI_F" in caplog.text
    assert len(read_flux(path, min_qc=0.5)) == 1  # FC measured in a quarter of day 2
    assert len(read_flux(path, min_qc=0.0, min_coverage=0.25)) == 3


def test_fluxdatakit_daily_table_units(tmp_path: Path) -> None:
    year = _year(4)
    n = len(year["GPP"])
    values = {
        "sitename": np.full(n, "CH-Fdk"), "date": _days(n).strftime("%Y-%m-%d"),
        "temp": year["TA"], "vpd": year["VPD"] * 100, "ppfd": year["SW"] * 2.04e-6,
        "netrad": year["SW"] * 0.6 - 30, "patm": np.full(n, 95000.0), "snow": np.zeros(n),
        "rain": year["P"] / 86400, "ccov": np.full(n, 40.0), "gpp": year["GPP"],
        "gpp_qc": year["QC"],
    }  # fmt: skip
    path = _write_table(tmp_path / "fluxdatakit_daily.csv", FLUXDATAKIT, values)
    table = read_flux(path, min_qc=0.5)
    good = year["QC"] >= 0.5  # FluxDataKit's own gpp_qc is honoured
    assert (table["site"] == "CH-Fdk").all() and len(table) == good.sum()
    np.testing.assert_allclose(table["TA_F"], year["TA"][good])
    np.testing.assert_allclose(table["VPD_F"], year["VPD"][good])  # Pa → hPa
    np.testing.assert_allclose(table["SW_IN_F"], year["SW"][good])  # ppfd ÷ 2.04e-6
    np.testing.assert_allclose(table["P_F"], year["P"][good], atol=1e-9)  # mm s-1 → mm d-1
    assert table["nee_qc"].isna().all()


def test_netrad_is_not_taken_for_shortwave(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path / "drivers.csv", ["CH-Net,2020-01-01,1.0,400.0,80.0,2.0"],
                  header="sitename,date,temp,vpd,netrad,gpp\n")  # fmt: skip
    with caplog.at_level(logging.INFO, logger=flux.__name__):
        table = read_flux(path)
    assert table["SW_IN_F"].isna().all() and table["P_F"].isna().all()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no SW_IN_F under any of SW_IN_F, SW_IN_F_MDS" in m for m in warned)
    assert any("no P_F" in m for m in warned)


@pytest.mark.skipif(not REAL_EXTRACT.exists(), reason="the shared FLUXNET2015 extract is absent")
def test_the_real_fluxnet2015_extract_reads() -> None:
    table = read_flux(REAL_EXTRACT)
    counts = table.groupby("site").size().to_dict()
    # PROVENANCE.md: days with GPP per site; the file has no QC column, so none is dropped.
    assert counts == {"CH-Dav": 6179, "CH-Lae": 3518, "FI-Hyy": 6166, "FR-Pue": 4722}
    assert table["VPD_F"].quantile(0.99) > 10  # hPa, not converted
    assert table[list(flux.METEO)].notna().mean().min() > 0.95


# --- fallbacks, units, QC -----------------------------------------------------------------


def test_fallbacks_are_logged_once_per_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(
        tmp_path / "FLX_IT-Fbk_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv",
        ["20200101,-9999,3.0,120.0,4.0,1.5,0.9,-9999,2.5",
         "20200102,-9999,4.0,130.0,5.0,0.0,0.9,-9999,2.7"],
        header="TIMESTAMP,TA_F,TA_F_MDS,SW_IN_F_MDS,VPD_F_MDS,P,NEE_VUT_REF_QC,"
        "GPP_NT_VUT_REF,GPP_DT_VUT_REF\n",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger=flux.__name__):
        table = read_flux(path)
    assert table["gpp"].tolist() == [2.5, 2.7] and table["TA_F"].tolist() == [3.0, 4.0]
    assert table["P_F"].tolist() == [1.5, 0.0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    for said in ("gpp from GPP_DT_VUT_REF (GPP_NT_VUT_REF absent or empty)",
                 "TA_F from TA_F_MDS", "SW_IN_F from SW_IN_F_MDS", "VPD_F from VPD_F_MDS",
                 "P_F from P,", "nee_qc from NEE_VUT_REF_QC"):  # fmt: skip
        assert said in infos[0]


@pytest.mark.parametrize(("scale", "unit"), [(1.0, None), (0.1, "kPa"), (100.0, "Pa")])
def test_vpd_unit_is_judged_from_a_year_of_values(
    tmp_path: Path, scale: float, unit: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    year = _year(5)
    values = _fluxnet_dd(SUBSET_DD, year) | {"VPD_F": year["VPD"] * scale}
    path = _write_table(tmp_path / "FLX_ES-Vpd_FLUXNET2015_SUBSET_DD_2020-2020_1-4.csv",
                        SUBSET_DD, values)  # fmt: skip
    with caplog.at_level(logging.INFO, logger=flux.__name__):
        table = read_flux(path, min_qc=0.0)
    np.testing.assert_allclose(table["VPD_F"], year["VPD"])
    assert (f"from VPD_F in {unit}," in caplog.text) == (unit is not None)


def test_a_few_days_keep_the_unit_their_name_says(tmp_path: Path) -> None:
    # Too few days to judge magnitudes: FLUXNET's VPD_F stays hPa, FluxDataKit's vpd is Pa.
    short = _write(tmp_path / "FLX_ES-Few_x.csv", ["20200101,1,1,0.8,0,1,1,1"])
    assert read_flux(short)["VPD_F"].tolist() == [0.8]
    drivers = _write(tmp_path / "d.csv", ["ES-Fdk,2020-01-01,800.0,0.0001,2.0"],
                     header="sitename,date,vpd,prec,gpp\n")  # fmt: skip
    table = read_flux(drivers)
    assert table["VPD_F"].tolist() == [8.0]
    np.testing.assert_allclose(table["P_F"], [8.64])


def test_qc_of_nee_and_of_the_target_itself(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "FLX_US-Qcq_own.csv",
        ["20200101,0.9,0.9,1.0", "20200102,0.2,0.9,2.0", "20200103,0.9,0.1,3.0",
         "20200104,-9999,-9999,4.0"],
        header="TIMESTAMP,NEE_VUT_REF_QC,GPP_NT_VUT_REF_QC,GPP_NT_VUT_REF\n",
    )  # fmt: skip
    assert read_flux(path, min_qc=0.5)["gpp"].tolist() == [1.0, 4.0]
    assert read_flux(path, min_qc=0.0)["gpp"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_missing_meteo_is_an_empty_column_or_an_error_when_required(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path / "FLX_US-Nom_x.csv", ["20200101,3.0,2.0"],
                  header="TIMESTAMP,TA_F,GPP_NT_VUT_REF\n")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger=flux.__name__):
        table = read_flux(path)
    assert list(table.columns) == ["site", "date", "gpp", *flux.METEO, "nee_qc"]
    assert table[["SW_IN_F", "VPD_F", "P_F"]].isna().all(axis=None)
    assert "no VPD_F under any of VPD_F, VPD_F_MDS, VPD_PI_F, VPD, vpd" in caplog.text
    read_flux(path, require=["TA_F"])
    with pytest.raises(
        FluxError, match=r"FLX_US-Nom_x\.csv: no column for required SW_IN_F, VPD_F "
        r"\(looked for SW_IN_F: SW_IN_F, SW_IN_F_MDS, SW_IN_PI_F, SW_IN, ppfd; VPD_F: "
    ):  # fmt: skip
        read_flux(path, require=["VPD_F", "SW_IN_F", "TA_F"])
    with pytest.raises(ConfigError, match="require: NETRAD not among"):
        read_flux(path, require=["NETRAD"])


# --- folders, errors, site tables ---------------------------------------------------------


def test_a_folder_of_mixed_formats(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    year = _year(6)
    full = _fluxnet_dd(FULLSET_DD, year) | {"NEE_VUT_REF_QC": np.ones(365)}
    _write_table(tmp_path / "FLX_DE-Aaa_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv.gz",
                 FULLSET_DD, full)  # fmt: skip
    subset = _fluxnet_dd(SUBSET_DD, year) | {"GPP_NT_VUT_REF": np.full(365, 99.0),
                                            "NEE_VUT_REF_QC": np.ones(365)}  # fmt: skip
    _write_table(tmp_path / "FLX_DE-Aaa_FLUXNET2015_SUBSET_DD_2020-2020_1-4.csv",
                 SUBSET_DD, subset)  # fmt: skip
    _write_table(tmp_path / "ICOSETC_BE-Ccc_FLUXNET_DD_L2.csv", FULLSET_DD, full)
    _base_file(tmp_path, 30)
    rows = ["CH-Ddd,2020-01-01,1,500,0.0003,100,0,0,1e-5,0,0,0,0,0,2.0,1",
            "CH-Eee,2020-01-01,1,500,0.0003,100,0,0,1e-5,0,0,0,0,0,3.0,1"]  # fmt: skip
    _write(tmp_path / "fdk.csv", rows, header=FLUXDATAKIT + "\n")
    (tmp_path / "sites.csv").write_text("SITE_ID,LOCATION_LAT,LOCATION_LONG,IGBP\n")
    # Products that are not daily tower data: left alone (they have no GPP to read).
    for other in (
        "FLX_DE-Aaa_FLUXNET2015_ERAI_DD_1989-2014_1-3.csv",
        "ICOSETC_BE-Ccc_METEO_L2.csv",
        "FLX_DE-Aaa_FLUXNET2015_FULLSET_MM_2020_1-4.csv",
    ):
        _write(tmp_path / other, ["20200101,1.0"], header="TIMESTAMP,TA_ERA\n")  # fmt: skip
    with caplog.at_level(logging.INFO, logger=flux.__name__):
        table = read_flux_dir(tmp_path, min_qc=0.0)
    per_site = table.groupby("site").size().to_dict()
    assert per_site == {"DE-Aaa": 365, "BE-Ccc": 365, "US-Xyz": 2, "CH-Ddd": 1, "CH-Eee": 1}
    # DE-Aaa's days are in FULLSET and SUBSET: FULLSET's are kept.
    np.testing.assert_allclose(table.loc[table["site"] == "DE-Aaa", "gpp"], year["GPP"])
    assert "365 site-days in more than one file" in caplog.text
    some = read_flux_dir(tmp_path, ["CH-Eee", "US-Xyz"], min_qc=0.0)
    assert sorted(some["site"].unique()) == ["CH-Eee", "US-Xyz"]
    with pytest.raises(FluxError, match=r"no flux file or table rows for site\(s\) KR-No1, KR-No2"):
        read_flux_dir(tmp_path, ["KR-No2", "CH-Eee", "KR-No1"])


def test_unreadable_files_and_bad_steps(tmp_path: Path) -> None:
    broken = tmp_path / "FLX_DE-Brk_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv.gz"
    broken.write_bytes(gzip.compress(b"TIMESTAMP,GPP_NT_VUT_REF\n20200101,1\n")[:20])
    with pytest.raises(FluxError, match=r"DD_2020-2020_1-4\.csv\.gz: cannot read as a CSV"):
        read_flux(broken)
    stamps = tmp_path / "AMF_US-Bad_BASE_HH_1-1.csv"
    stamps.write_text("# Site: US-Bad\n# Version: 1-1\nTIMESTAMP_START,TIMESTAMP_END,GPP_PI_F\n"
                      "202201010000,202201010030,1\n2022-01-01 00:30,202201010100,1\n")  # fmt: skip
    with pytest.raises(FluxError, match=r"TIMESTAMP_START '2022-01-01 00:30' is not a date"):
        read_flux(stamps)
    odd = tmp_path / "AMF_US-Odd_BASE_HH_1-1.csv"
    odd.write_text("TIMESTAMP_START,GPP_PI_F\n202201010000,1\n202201010007,1\n202201010014,1\n")
    with pytest.raises(FluxError, match=r"AMF_US-Odd_BASE_HH_1-1\.csv: TIMESTAMP_START steps"):
        read_flux(odd)


def test_site_table_spellings(tmp_path: Path) -> None:
    table = tmp_path / "siteinfo.csv.gz"
    pd.DataFrame(
        {"sitename": ["CH-Dav", "FR-Pue"], "lon": [9.86, 3.6], "lat": [46.8, 43.7],
         "elv": [1639, 270], "igbp_land_use": ["ENF", "EBF"]}
    ).to_csv(table, index=False)  # fmt: skip
    sites = read_sites(table)
    assert sites[["site", "lat", "lon", "elevation", "igbp"]].values.tolist() == [
        ["CH-Dav", 46.8, 9.86, 1639, "ENF"],
        ["FR-Pue", 43.7, 3.6, 270, "EBF"],
    ]
    plain = tmp_path / "plain.csv"
    plain.write_text("siteid,Latitude,Longitude,classid\nUS-Ha1,42.5,-72.2,DBF\n")
    assert read_sites(plain).loc[0, ["site", "lat", "lon", "igbp"]].tolist() == [
        "US-Ha1",
        42.5,
        -72.2,
        "DBF",
    ]


def test_the_readers_are_public() -> None:
    assert unique_cube.read_flux is read_flux
    assert unique_cube.read_flux_dir is read_flux_dir
    assert {"read_flux", "read_flux_dir"} <= set(unique_cube.__all__)
