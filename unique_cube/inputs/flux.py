"""Eddy-covariance tower data as users have it: daily GPP and tower meteorology.

:func:`read_flux` reads one file, :func:`read_flux_dir` a folder; plain or gzipped
(``.csv.gz``). Formats:

* FLUXNET2015 FULLSET and SUBSET daily files and other ONEFlux outputs,
  ``FLX_<site>_FLUXNET2015_{FULLSET,SUBSET}_DD_<y0>-<y1>_<version>.csv``: ``TIMESTAMP``
  (YYYYMMDD), ``TA_F`` (degC), ``SW_IN_F`` (W m-2), ``VPD_F`` (hPa), ``P_F`` (mm d-1),
  ``NEE_VUT_REF_QC`` (share of measured or good gap-filled half-hours), ``GPP_NT_VUT_REF``,
  ``GPP_DT_VUT_REF``, ... (gC m-2 d-1), with ``*_MDS`` and ``*_CUT_*`` variants in FULLSET;
* AmeriFlux FLUXNET, ``AMF_<site>_FLUXNET_{FULLSET,SUBSET}_DD_<y0>-<y1>_<version>.csv``, and
  ICOS, ``ICOSETC_<site>_FLUXNET_DD_L2.csv``: the same names and units;
* AmeriFlux BASE, ``AMF_<site>_BASE_{HH,HR}_<version>.csv``: ``# Site:``/``# Version:``
  lines, ``TIMESTAMP_START``/``TIMESTAMP_END`` (YYYYMMDDHHMM), ``GPP_PI_F``/``GPP``
  (µmol m-2 s-1), ``TA``, ``SW_IN``, ``VPD`` (hPa), ``P`` (mm per step), ``FC``, names with
  position qualifiers (``TA_1_1_1``) accepted; averaged to days;
* FluxDataKit / ingestr / rsofun daily tables: ``sitename``, ``date`` (YYYY-MM-DD), ``gpp``
  (gC m-2 d-1), ``temp`` (degC), ``vpd`` (Pa), ``ppfd`` (mol m-2 s-1), ``prec`` or ``rain``
  (mm s-1), ``gpp_qc``; ``netrad`` is net, not incoming shortwave, and is not used;
* multi-site tables of FLUXNET variables with a ``siteid``/``SITE_ID``/``site``/``sitename``
  column and ``TIMESTAMP`` in YYYYMMDD or YYYY-MM-DD (e.g. the AGDS book's FLUXNET2015 extract).

Every file becomes one frame: ``site``, ``date``, ``gpp`` (gC m-2 d-1), :data:`METEO` in
FLUXNET2015 names and units and ``nee_qc``. Each variable is taken from the first name of
:data:`GPP_FALLBACKS` / :data:`METEO_FALLBACKS` that holds a value; the choices and every unit
conversion are logged once per file (INFO). A meteorological variable under no name is kept
as an all-NaN column with a WARNING, or is an error where ``require`` names it. -9999, NA and
non-finite values are missing. :func:`read_sites` reads a site table.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from unique_cube.errors import ConfigError, FluxError

__all__ = [
    "GPP_FALLBACKS",
    "METEO",
    "METEO_FALLBACKS",
    "SITE_TABLE_NAMES",
    "read_flux",
    "read_flux_dir",
    "read_sites",
]

log = logging.getLogger(__name__)

#: Tower meteorology kept (FLUXNET2015 names, units: degC, W m-2, hPa, mm d-1).
METEO = ("TA_F", "SW_IN_F", "VPD_F", "P_F")

#: Where each of :data:`METEO` is looked for, in order: ONEFlux names (consolidated, then
#: MDS gap-filled), AmeriFlux BASE names (PI gap-filled, then measured), FluxDataKit names.
#: FluxDataKit's ``rain`` holds all of P_F (its ``snow`` is 0).
METEO_FALLBACKS: dict[str, tuple[str, ...]] = {
    "TA_F": ("TA_F", "TA_F_MDS", "TA_PI_F", "TA", "temp"),
    "SW_IN_F": ("SW_IN_F", "SW_IN_F_MDS", "SW_IN_PI_F", "SW_IN", "ppfd"),
    "VPD_F": ("VPD_F", "VPD_F_MDS", "VPD_PI_F", "VPD", "vpd"),
    "P_F": ("P_F", "P_PI_F", "P", "prec", "rain"),
}

#: GPP columns tried after the requested ``target``: night-time then day-time partitioning,
#: variable before constant u* threshold; then AmeriFlux BASE and FluxDataKit names.
GPP_FALLBACKS = (
    "GPP_NT_VUT_REF",
    "GPP_NT_CUT_REF",
    "GPP_DT_VUT_REF",
    "GPP_DT_CUT_REF",
    "GPP_F",
    "GPP_PI_F",
    "GPP_PI",
    "GPP",
    "gpp",
)

_COLUMNS = ("site", "date", "gpp", *METEO, "nee_qc")
_NEE_QC = ("NEE_VUT_REF_QC", "NEE_CUT_REF_QC", "nee_qc")
# Sub-daily files: a measured (not gap-filled) CO2 flux; its daily share of steps is nee_qc.
_MEASURED_FLUX = ("NEE_PI", "FC", "NEE")
_SITE_COLUMNS = ("siteid", "SITE_ID", "site", "sitename")
_DATE_COLUMNS = ("TIMESTAMP", "date")
_STEP_COLUMN = "TIMESTAMP_START"
_NA = ["NA", "NaN", "-9999", "-9999.0", "-9999.00"]

_FILE_SITE = re.compile(r"^(?:FLX|AMF|ICOSETC)_(?P<site>[A-Za-z]{2}-[A-Za-z0-9]{3})_")
# What read_flux_dir reads, by rank (most processed first): named products, then tables of
# any name. Other named products (HH/MM/YY, ERAI, AUXMETEO, ICOS METEO/FLUXES/SITEINFO) are
# left alone.
_PRODUCTS = (
    (0, re.compile(r"_FULLSET_DD_|^ICOSETC_.*_FLUXNET_DD_")),
    (1, re.compile(r"_SUBSET_DD_")),
    (3, re.compile(r"^AMF_.*_BASE_H[HR]_")),
)
_TABLE_RANK = 2

#: µmol CO2 m-2 s-1 → gC m-2 d-1.
UMOL_TO_GC_PER_DAY = 12.011e-6 * 86400
#: PPFD per incoming shortwave, µmol J-1 (Meek et al. 1984): FluxDataKit and ingestr make
#: ``ppfd`` (mol m-2 s-1) as SW_IN_F × 2.04e-6, so this inverts their conversion exactly.
PPFD_PER_SW = 2.04
# Days with a positive value needed before magnitudes may overrule a name's unit.
_MIN_DAYS = 30


def read_flux(
    path: str | Path,
    site: str | None = None,
    *,
    target: str = "GPP_NT_VUT_REF",
    min_qc: float = 0.5,
    require: Iterable[str] = (),
    min_coverage: float = 0.8,
) -> pd.DataFrame:
    """Daily tower data of one file (any format of the module docstring).

    Parameters
    ----------
    path
        The file, ``.csv`` or ``.csv.gz``.
    site
        The site id where the file has no site column; else taken from the file name
        (``FLX_<site>_``, ``AMF_<site>_``, ``ICOSETC_<site>_``).
    target
        The GPP variable wanted; when absent or empty, the first of :data:`GPP_FALLBACKS`
        holding a value is used and the log says so. A target not named ``GPP...``/``gpp``
        (another variable read in its place) has no fallback.
    min_qc
        Days whose NEE QC share (``NEE_VUT_REF_QC``, or the share of measured half-hours in a
        sub-daily file) or whose GPP column's own ``_QC``/``_qc`` share is below this are
        dropped; days without QC are kept.
    require
        Names of :data:`METEO` that must be found; any other is an all-NaN column (with a
        WARNING in the log) when the file has it under none of its names.
    min_coverage
        Sub-daily files: the share of a day's steps with a value needed for a daily value.

    Returns
    -------
    Columns ``site``, ``date`` (datetime64), ``gpp`` (gC m-2 d-1), :data:`METEO` (degC,
    W m-2, hPa, mm d-1) and ``nee_qc``; only days with a GPP value that pass ``min_qc``.
    """
    return _usable(_load(Path(path), site, target, _required(require), min_coverage), min_qc)


def read_flux_dir(
    directory: str | Path,
    sites: Iterable[str] | None = None,
    *,
    target: str = "GPP_NT_VUT_REF",
    min_qc: float = 0.5,
    require: Iterable[str] = (),
    min_coverage: float = 0.8,
) -> pd.DataFrame:
    """All flux files of a folder, as :func:`read_flux` (same keywords), optionally only
    ``sites`` — each of which must have a file or table rows, else a :class:`FluxError`.

    Read: ``*.csv`` and ``*.csv.gz`` named ``FLX_``/``AMF_`` FULLSET or SUBSET ``DD``,
    ``ICOSETC_<site>_FLUXNET_DD_``, ``AMF_<site>_BASE_HH_``/``_HR_``, and tables of any name
    with a site and a date column (so ``sites.csv`` is not one). A site-day in several files
    is taken from the most processed: FULLSET, then SUBSET, then tables, then BASE.
    """
    directory = Path(directory)
    files = _flux_files(directory)
    if not files:
        raise FluxError(
            f"{directory}: no FLX_/AMF_/ICOSETC_ daily files, AmeriFlux BASE files or tables "
            "with a site and a date column (*.csv, *.csv.gz)"
        )
    wanted = None if sites is None else {str(s) for s in sites}
    required = _required(require)
    frames = []
    for path in files:
        named = _FILE_SITE.match(path.name)
        if wanted is not None and named is not None and named["site"] not in wanted:
            continue
        frame = _load(path, None, target, required, min_coverage)
        frames.append(frame if wanted is None else frame[frame["site"].isin(wanted)])
    found = set().union(*(set(f["site"]) for f in frames))
    if wanted is not None and wanted - found:
        raise FluxError(
            f"{directory}: no flux file or table rows for site(s) "
            f"{', '.join(sorted(wanted - found))}"
        )
    parts = [f for f in frames if len(f)]
    if not parts:
        return pd.DataFrame(columns=list(_COLUMNS))
    table = pd.concat(parts, ignore_index=True)
    repeated = table.duplicated(["site", "date"])
    if repeated.any():
        log.info("%s: %d site-days in more than one file, kept from the most processed one",
                 directory, int(repeated.sum()))  # fmt: skip
    return _usable(table[~repeated], min_qc)


def _load(
    path: Path, site: str | None, target: str, required: set[str], min_coverage: float
) -> pd.DataFrame:
    """Every day of one file in output names and units, plus ``gpp_qc``; nothing dropped."""
    raw = _read_csv(path)
    sub_daily = _STEP_COLUMN in raw.columns and not any(c in raw.columns for c in _DATE_COLUMNS)
    frame = pd.DataFrame({"site": _site_ids(raw, path, site), "date": _dates(raw, path)})
    chosen = _choose(raw, path, target, sub_daily)
    for name, column in chosen.items():
        frame[name] = _numbers(raw[column]) if column is not None else np.nan
    if sub_daily:
        frame = _daily_from_steps(frame, path, min_coverage, measured=chosen["nee_qc"] is not None)
    notes = _to_fluxnet_units(frame, chosen)
    _report(path, target, chosen, notes, required)
    for name, rows in frame.groupby("site"):
        if rows["gpp"].notna().sum() == 0:
            raise FluxError(f"{path}: site {name} has no {chosen['gpp']} value at all")
    return frame


def _usable(frame: pd.DataFrame, min_qc: float) -> pd.DataFrame:
    """Days with a GPP value whose QC shares (where known) reach ``min_qc``."""
    keep = frame["gpp"].notna()
    if min_qc > 0:
        for qc in ("nee_qc", "gpp_qc"):
            keep &= frame[qc].isna() | (frame[qc] >= min_qc)
    return frame.loc[keep, list(_COLUMNS)].reset_index(drop=True)


def _required(require: Iterable[str]) -> set[str]:
    required = set(require)
    if required - set(METEO):
        raise ConfigError(
            f"require: {', '.join(sorted(required - set(METEO)))} not among {', '.join(METEO)}"
        )
    return required


# --- reading -------------------------------------------------------------------------------


def _read_csv(path: Path, nrows: int | None = None) -> pd.DataFrame:
    """A CSV table, gzipped or not, after its leading ``#`` lines (AmeriFlux BASE)."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt") as f:
            skip = 0
            for line in f:
                if not line.startswith("#"):
                    break
                skip += 1
        return pd.read_csv(
            path,
            skiprows=skip,
            nrows=nrows,
            na_values=_NA,
            dtype={c: str for c in (*_DATE_COLUMNS, _STEP_COLUMN, *_SITE_COLUMNS)},
            low_memory=False,
        )
    except (
        OSError,
        EOFError,
        zlib.error,
        UnicodeDecodeError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
    ) as err:
        raise FluxError(f"{path}: cannot read as a CSV flux file ({err})") from err


def _numbers(column: pd.Series) -> np.ndarray:
    """A column's numbers; text, -9999 and ±inf (``inf`` in a CSV, a logger's overflow) are
    missing: an infinite GPP would pass every NaN filter into the training targets."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", copy=True)
    values[~np.isfinite(values) | (values == -9999)] = np.nan
    return values


def _site_ids(raw: pd.DataFrame, path: Path, site: str | None) -> np.ndarray:
    """A site column, else ``site``, else the site of the file name."""
    column = next((c for c in _SITE_COLUMNS if c in raw.columns), None)
    if column is not None:
        return raw[column].astype(str).str.strip().to_numpy(dtype=object)
    return np.full(len(raw), site or _site_from_name(path), dtype=object)


def _site_from_name(path: Path) -> str:
    match = _FILE_SITE.match(path.name)
    if match is None:
        raise FluxError(
            f"{path}: no site id column ({', '.join(_SITE_COLUMNS)}) and the file name is not "
            "FLX_<site>_..., AMF_<site>_... or ICOSETC_<site>_...; pass the site explicitly"
        )
    return match.group("site")


def _dates(raw: pd.DataFrame, path: Path) -> pd.Series:
    """Days (``TIMESTAMP`` or ``date``: YYYYMMDD or YYYY-MM-DD) or step starts
    (``TIMESTAMP_START``: YYYYMMDDHHMM)."""
    column = next((c for c in (*_DATE_COLUMNS, _STEP_COLUMN) if c in raw.columns), None)
    if column is None:
        raise FluxError(
            f"{path}: no date column ({', '.join((*_DATE_COLUMNS, _STEP_COLUMN))}); found "
            f"{', '.join(map(str, raw.columns[:12]))}"
        )
    text = raw[column].astype(str).str.strip()
    formats = ("%Y%m%d%H%M",) if column == _STEP_COLUMN else ("%Y%m%d", "%Y-%m-%d")
    dates = pd.to_datetime(text, format=formats[0], errors="coerce")
    for fmt in formats[1:]:
        dates = dates.fillna(pd.to_datetime(text, format=fmt, errors="coerce"))
    if dates.isna().any():
        bad = text[dates.isna()].iloc[0]
        expected = "YYYYMMDDHHMM" if column == _STEP_COLUMN else "YYYYMMDD or YYYY-MM-DD"
        raise FluxError(f"{path}: {column} {bad!r} is not a date ({expected})")
    return dates


# --- choosing columns ----------------------------------------------------------------------


def _choose(raw: pd.DataFrame, path: Path, target: str, sub_daily: bool) -> dict[str, str | None]:
    """The column each output variable comes from (None: not in the file)."""
    # Only a GPP target falls back to other GPP columns: another variable read as the
    # target (a vegetation index, say) must never be replaced by GPP.
    is_gpp = target.upper().startswith("GPP")
    gpp_names = list(dict.fromkeys((target, *GPP_FALLBACKS))) if is_gpp else [target]
    gpp = _first_with_values(raw, gpp_names)
    if gpp is None:
        empty = [c for n in gpp_names for c in _spellings(n, raw.columns)]
        state = f"present but empty: {', '.join(empty)}" if empty else "none present"
        raise FluxError(
            f"{path}: no usable {'GPP' if is_gpp else target} column; looked for "
            f"{', '.join(gpp_names)} (also with position qualifiers such as _1_1_1): {state}"
        )
    chosen: dict[str, str | None] = {"gpp": gpp}
    for name, names in METEO_FALLBACKS.items():
        chosen[name] = _first_with_values(raw, names)
    chosen["nee_qc"] = _first_with_values(raw, _MEASURED_FLUX if sub_daily else _NEE_QC)
    own_qc = None if sub_daily else _first_with_values(raw, (f"{gpp}_QC", f"{gpp}_qc"))
    chosen["gpp_qc"] = own_qc
    return chosen


def _first_with_values(raw: pd.DataFrame, names: Sequence[str]) -> str | None:
    """The first of ``names`` (exact, then with AmeriFlux position qualifiers ``_H_V_R``,
    lowest first) whose column holds a finite value."""
    for name in names:
        for column in _spellings(name, raw.columns):
            if np.isfinite(_numbers(raw[column])).any():
                return column
    return None


def _spellings(name: str, columns: Iterable[object]) -> list[str]:
    """``name`` if a column, then the columns ``name_<i>[_<j>...]``, lowest indices first."""
    exact = [name] if name in columns else []
    pattern = re.compile(rf"{re.escape(name)}_(\d+(?:_\d+)*)")
    indexed = {
        c: [int(i) for i in m.group(1).split("_")]
        for c in map(str, columns)
        if (m := pattern.fullmatch(c))
    }
    return exact + sorted(indexed, key=indexed.__getitem__)


# --- sub-daily files -----------------------------------------------------------------------


def _daily_from_steps(
    frame: pd.DataFrame, path: str | Path, min_coverage: float, *, measured: bool
) -> pd.DataFrame:
    """Half-hourly or hourly values (``date`` = step start) → daily values.

    A day's value is the mean of its steps where at least ``min_coverage`` of them have one,
    else missing. GPP goes from µmol m-2 s-1 to gC m-2 d-1 (× 12.011e-6 × 86400), P from mm
    per step to mm d-1 (mean × steps per day). ``nee_qc`` holds a measured CO2 flux on input
    (when ``measured``) and the share of the day's steps that have one on output.
    """
    step = frame["date"].groupby(frame["site"]).diff().median()
    if pd.isna(step) or step <= pd.Timedelta(0) or pd.Timedelta(days=1) % step:
        raise FluxError(f"{path}: TIMESTAMP_START steps of {step} do not divide a day")
    per_day = pd.Timedelta(days=1) // step
    values = frame.drop(columns=["site", "date"])
    grouped = values.groupby([frame["site"], frame["date"].dt.floor("D")])
    share = grouped.count() / per_day
    daily = grouped.mean().where(share >= min_coverage)
    daily["nee_qc"] = share["nee_qc"] if measured else np.nan
    daily["gpp"] *= UMOL_TO_GC_PER_DAY
    daily["P_F"] *= per_day
    return daily.reset_index()


# --- units ---------------------------------------------------------------------------------


def _positive(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values) & (values > 0)]


def _ta_degc(values: np.ndarray, column: str) -> tuple[np.ndarray, str | None]:
    finite = values[np.isfinite(values)]
    if finite.size >= _MIN_DAYS and np.median(finite) > 150:  # no tower's median is 150 degC
        return values - 273.15, f"from {column} in K"
    return values, None


def _sw_wm2(values: np.ndarray, column: str) -> tuple[np.ndarray, str | None]:
    if column != "ppfd":
        return values, None
    # FluxDataKit's ppfd is in mol m-2 s-1 (daily means below 0.002); µmol if far above 1.
    micromol = _positive(values).size > 0 and np.median(_positive(values)) > 1
    umol = values if micromol else values * 1e6
    unit = "µmol m-2 s-1" if micromol else "mol m-2 s-1"
    return umol / PPFD_PER_SW, f"from ppfd in {unit} ÷ {PPFD_PER_SW} µmol J-1"


def _vpd_hpa(values: np.ndarray, column: str) -> tuple[np.ndarray, str | None]:
    """VPD in hPa. The name gives the unit (FluxDataKit ``vpd``: Pa, others: hPa) unless a
    year's worth of days says otherwise: the 99th percentile of positive daily VPD at a tower
    lies between ~7 and ~60 hPa, i.e. above 150 only in Pa and below 5 only in kPa."""
    unit = "Pa" if column == "vpd" else "hPa"
    positive = _positive(values)
    judged = ""
    if positive.size >= _MIN_DAYS:
        high = float(np.percentile(positive, 99))
        unit = "Pa" if high > 150 else "kPa" if high < 5 else "hPa"
        judged = f", 99th percentile {high:.3g}"
    if unit == "hPa":
        return values, None
    return values * {"Pa": 0.01, "kPa": 10.0}[unit], f"from {column} in {unit}{judged}"


def _p_mm_day(values: np.ndarray, column: str) -> tuple[np.ndarray, str | None]:
    """Precipitation in mm d-1. FluxDataKit/ingestr ``prec``/``rain`` are in mm s-1; a series
    whose wettest day is at most 0.05 (4320 mm d-1 if it were mm s-1) is taken as mm s-1."""
    per_second = column in ("prec", "rain")
    positive = _positive(values)
    if positive.size >= 10:
        per_second = bool(positive.max() <= 0.05)
    if not per_second:
        return values, None
    return values * 86400, f"from {column} in mm s-1"


_UNITS: dict[str, Callable[[np.ndarray, str], tuple[np.ndarray, str | None]]] = {
    "TA_F": _ta_degc,
    "SW_IN_F": _sw_wm2,
    "VPD_F": _vpd_hpa,
    "P_F": _p_mm_day,
}


def _to_fluxnet_units(frame: pd.DataFrame, chosen: dict[str, str | None]) -> dict[str, str]:
    """Convert :data:`METEO` in place; the conversions made, by variable."""
    notes = {}
    for name, convert in _UNITS.items():
        column = chosen[name]
        if column is None:
            continue
        values, note = convert(frame[name].to_numpy(dtype="float64"), column)
        frame[name] = values
        if note:
            notes[name] = note
    return notes


def _report(
    path: Path, target: str, chosen: dict[str, str | None], notes: dict[str, str],
    required: set[str],
) -> None:  # fmt: skip
    """Log the file's choices once; a meteorological variable under no name is a WARNING, or
    an error when required."""
    missing = [name for name in METEO if chosen[name] is None]
    absent = sorted(required.intersection(missing))
    if absent:
        looked = "; ".join(f"{n}: {', '.join(METEO_FALLBACKS[n])}" for n in absent)
        raise FluxError(f"{path}: no column for required {', '.join(absent)} (looked for {looked})")
    parts = []
    for name, column in chosen.items():
        if column is None:
            continue
        part = f"{name} from {column}"
        if name == "gpp" and column != target:
            part += f" ({target} absent or empty)"
        parts.append(part + (f" ({notes[name]})" if name in notes else ""))
    log.info("%s: %s", path.name, ", ".join(parts))
    for name in missing:
        log.warning("%s: no %s under any of %s; the column is left empty",
                    path.name, name, ", ".join(METEO_FALLBACKS[name]))  # fmt: skip


# --- folders and site tables ---------------------------------------------------------------


def _flux_files(directory: Path) -> list[Path]:
    """The folder's flux files, most processed first (see :func:`read_flux_dir`)."""
    ranked = []
    for path in sorted([*directory.glob("*.csv"), *directory.glob("*.csv.gz")]):
        if _FILE_SITE.match(path.name):
            rank = next((r for r, product in _PRODUCTS if product.search(path.name)), None)
        else:
            rank = _TABLE_RANK if _is_table(path) else None
        if rank is None:
            log.debug("%s: not a daily flux file or table, skipped", path)
        else:
            ranked.append((rank, path.name, path))
    return [path for *_, path in sorted(ranked)]


def _is_table(path: Path) -> bool:
    """A table of several sites: a site column and a date column."""
    try:
        columns = set(_read_csv(path, nrows=0).columns)
    except FluxError:
        return False
    return bool(columns & set(_SITE_COLUMNS)) and bool(columns & {*_DATE_COLUMNS, _STEP_COLUMN})


#: Spellings of the site table's columns (case-insensitive), by the name they get.
SITE_TABLE_NAMES = {
    "site": ("site", "site_id", "siteid", "sitename"),
    "lat": ("lat", "location_lat", "latitude"),
    "lon": ("lon", "location_long", "long", "longitude"),
    "elevation": ("elevation", "location_elev", "elv", "elev"),
    "igbp": ("igbp", "igbp_land_use", "classid"),
}


def read_sites(path: str | Path, required: Sequence[str] = ("lat", "lon", "igbp")) -> pd.DataFrame:
    """A site table: columns ``site``, ``lat``, ``lon``, ``igbp`` (and any others kept).

    Accepts the spellings of :data:`SITE_TABLE_NAMES`: FLUXNET (SITE_ID, LOCATION_LAT,
    LOCATION_LONG, LOCATION_ELEV, IGBP), FluxDataKit (sitename, lat, lon, elv,
    igbp_land_use), ingestr (classid) and plain ones (latitude, longitude, elevation).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as err:  # fmt: skip
        raise FluxError(f"{path}: cannot read as a CSV site table ({err})") from err
    lower = {str(c).lower(): c for c in table.columns}
    renames = {}
    for name, spellings in SITE_TABLE_NAMES.items():
        found = next((lower[s] for s in spellings if s in lower), None)
        if found is not None and name not in table.columns:
            renames[found] = name
    table = table.rename(columns=renames)
    missing = [c for c in ("site", *required) if c not in table.columns]
    if missing:
        raise FluxError(f"{path}: site table lacks column(s) {', '.join(missing)}")
    table["site"] = table["site"].astype(str).str.strip()
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
