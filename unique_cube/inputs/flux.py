"""Eddy-covariance tower data: daily FLUXNET2015 / ONEFlux / AmeriFlux-FLUXNET files.

:func:`read_flux` reads one file (FULLSET ``DD`` layout: ``TIMESTAMP`` as YYYYMMDD, or a
multi-site table with a ``siteid`` column and ISO dates) into a tidy frame with -9999 and NA
as missing, and drops days whose ``NEE_VUT_REF_QC`` (the fraction of measured or good-quality
gap-filled half-hours) is below a threshold. :func:`read_sites` reads a site table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from unique_cube.errors import FluxError

__all__ = ["METEO", "read_flux", "read_flux_dir", "read_sites"]


#: Tower meteorology kept (FLUXNET2015 names, units: degC, W m-2, hPa, mm d-1).
METEO = ("TA_F", "SW_IN_F", "VPD_F", "P_F")


_FILE_SITE = re.compile(r"^(?:FLX|AMF)_(?P<site>[A-Za-z]{2}-[A-Za-z0-9]{3})_")


_MISSING = (-9999, -9999.0)


def read_flux(
    path: str | Path,
    *,
    target: str = "GPP_NT_VUT_REF",
    min_qc: float = 0.5,
    site: str | None = None,
) -> pd.DataFrame:
    """Daily tower data of one file: columns ``site``, ``date``, ``gpp`` (the ``target``
    variable, gC m-2 d-1), the :data:`METEO` variables present and ``nee_qc``.

    Days without a target value, and days whose ``NEE_VUT_REF_QC`` is below ``min_qc`` (when
    the file has it), are dropped. The site comes from a ``siteid``/``SITE_ID`` column, else
    from ``site``, else from the FLUXNET file name (``FLX_<site>_...``).
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, na_values=["NA", "-9999", "-9999.0"], low_memory=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise FluxError(f"{path}: cannot read as a CSV flux file ({err})") from err
    site_column = next((c for c in ("siteid", "SITE_ID", "site") if c in raw.columns), None)
    required = ["TIMESTAMP", target]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise FluxError(
            f"{path}: missing column(s) {', '.join(missing)}; a daily FLUXNET file has "
            f"TIMESTAMP (YYYYMMDD) and {target} (found: {', '.join(map(str, raw.columns[:12]))})"
        )
    if site_column is not None:
        sites = raw[site_column].astype(str)
    else:
        name = site or _site_from_name(path)
        sites = pd.Series(name, index=raw.index)

    stamp = raw["TIMESTAMP"].astype(str).str.strip()
    dates = pd.to_datetime(stamp, format="%Y%m%d", errors="coerce")
    iso = dates.isna()
    dates[iso] = pd.to_datetime(stamp[iso], format="%Y-%m-%d", errors="coerce")
    if dates.isna().any():
        bad = stamp[dates.isna()].iloc[0]
        raise FluxError(f"{path}: TIMESTAMP {bad!r} is not a date (YYYYMMDD or YYYY-MM-DD)")

    out = pd.DataFrame({"site": sites.values, "date": dates.values})
    out["gpp"] = _numbers(raw[target])
    for name in METEO:
        if name in raw.columns:
            out[name] = _numbers(raw[name])
    if "NEE_VUT_REF_QC" in raw.columns:
        out["nee_qc"] = _numbers(raw["NEE_VUT_REF_QC"])
    else:
        out["nee_qc"] = np.nan

    for name, rows in out.groupby("site"):
        if rows["gpp"].notna().sum() == 0:
            raise FluxError(f"{path}: site {name} has no {target} value at all")
    keep = out["gpp"].notna()
    if min_qc > 0:
        keep &= out["nee_qc"].isna() | (out["nee_qc"] >= min_qc)
    return out[keep].reset_index(drop=True)


def _numbers(column: pd.Series) -> np.ndarray:
    """A column's numbers; text and ±inf (``inf`` in a CSV, a logger's overflow) are missing,
    like -9999: an infinite GPP would pass every NaN filter into the training targets."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", copy=True)
    values[np.isinf(values)] = np.nan
    return values


def _site_from_name(path: Path) -> str:
    match = _FILE_SITE.match(path.name)
    if match is None:
        raise FluxError(
            f"{path}: no site id column and the file name is not FLX_<site>_... or "
            "AMF_<site>_...; pass the site explicitly"
        )
    return match.group("site")


def read_flux_dir(
    directory: str | Path,
    sites: Iterable[str] | None = None,
    *,
    target: str = "GPP_NT_VUT_REF",
    min_qc: float = 0.5,
) -> pd.DataFrame:
    """All ``FLX_*``/``AMF_*`` daily files of a folder (optionally only ``sites``)."""
    directory = Path(directory)
    files = sorted(p for p in directory.glob("*.csv") if _FILE_SITE.match(p.name))
    if not files:
        raise FluxError(f"{directory}: no FLX_<site>_... or AMF_<site>_... CSV files")
    wanted = None if sites is None else set(sites)
    frames = [
        read_flux(p, target=target, min_qc=min_qc)
        for p in files
        if wanted is None or _site_from_name(p) in wanted
    ]
    return pd.concat(frames, ignore_index=True)


def read_sites(path: str | Path, required: Sequence[str] = ("lat", "lon", "igbp")) -> pd.DataFrame:
    """A site table: columns ``site``, ``lat``, ``lon``, ``igbp`` (and any others kept).

    Accepts FLUXNET names (SITE_ID, LOCATION_LAT, LOCATION_LONG, IGBP) or short ones.
    """
    path = Path(path)
    table = pd.read_csv(path)
    names = {
        "SITE_ID": "site",
        "siteid": "site",
        "LOCATION_LAT": "lat",
        "LOCATION_LONG": "lon",
        "LOCATION_ELEV": "elevation",
        "IGBP": "igbp",
    }
    table = table.rename(columns={k: v for k, v in names.items() if k in table.columns})
    missing = [c for c in ("site", *required) if c not in table.columns]
    if missing:
        raise FluxError(f"{path}: site table lacks column(s) {', '.join(missing)}")
    for column in ("lat", "lon"):
        if column in required:
            values = pd.to_numeric(table[column], errors="coerce")
            bad = table["site"][values.isna() | (values.abs() > (90 if column == "lat" else 180))]
            if len(bad):
                raise FluxError(f"{path}: site {bad.iloc[0]} has no valid {column}")
            table[column] = values
    if table["site"].duplicated().any():
        raise FluxError(f"{path}: site {table['site'][table['site'].duplicated()].iloc[0]} twice")
    return table
