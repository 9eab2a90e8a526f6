"""Reading daily flux-tower files and site tables, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from unique_cube.errors import FluxError
from unique_cube.inputs.flux import read_flux, read_flux_dir, read_sites

HEADER = "TIMESTAMP,TA_F,SW_IN_F,VPD_F,P_F,NEE_VUT_REF_QC,GPP_NT_VUT_REF,GPP_DT_VUT_REF\n"


def _write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "\n".join(rows) + "\n")
    return path


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
    with pytest.raises(FluxError, match=r"FLX_KR-Abc_x\.csv: missing column\(s\) GPP_NT_VUT_REF"):
        read_flux(path)


def test_a_site_without_any_gpp_is_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "FLX_KR-Emp_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv",
        ["20200101,1,1,1,0,1,-9999,-9999", "20200102,1,1,1,0,1,NA,NA"],
    )
    with pytest.raises(FluxError, match="site KR-Emp has no GPP_NT_VUT_REF value"):
        read_flux(path)


def test_bad_dates_and_unnamed_files(tmp_path: Path) -> None:
    bad = _write(tmp_path / "FLX_KR-Bad_x.csv", ["2020-13-45,1,1,1,0,1,1,1"])
    with pytest.raises(FluxError, match="TIMESTAMP '2020-13-45' is not a date"):
        read_flux(bad)
    anonymous = _write(tmp_path / "tower.csv", ["20200101,1,1,1,0,1,1,1"])
    with pytest.raises(FluxError, match="no site id column"):
        read_flux(anonymous)
    assert read_flux(anonymous, site="KR-Own")["site"].iloc[0] == "KR-Own"


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
