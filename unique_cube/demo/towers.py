"""The demo world's eddy-covariance towers, written as FLUXNET2015 FULLSET daily files.

Each tower measures its own patch: GPP over a ~150 m footprint with the random error of
eddy covariance (larger on days with few good half-hours), the two partitioning methods
disagreeing a little (night-time vs day-time), meteorology at the tower (not at the reanalysis
cell), gaps from instrument failures, and towers that started later than others.
Missing values are -9999, as in FLUXNET2015.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

from .world import Site, World

__all__ = ["FOOTPRINT_PIXELS", "TowerRecorder"]

FOOTPRINT_PIXELS = 5  # 150 m x 150 m around the tower
COLUMNS = (
    "TIMESTAMP",
    "TA_F",
    "SW_IN_F",
    "VPD_F",
    "P_F",
    "NEE_VUT_REF",
    "NEE_VUT_REF_QC",
    "RECO_NT_VUT_REF",
    "GPP_NT_VUT_REF",
    "GPP_DT_VUT_REF",
)
MISSING = -9999


class TowerRecorder:
    """Collects the true values at every tower day by day, then writes the files."""

    def __init__(self, world: World, rng: np.random.Generator):
        self.world = world
        self.rng = rng
        self.days: list[dt.date] = []
        self.rows: dict[str, list[tuple[float, ...]]] = {s.id: [] for s in world.sites}

    def record(self, day: dt.date, canopy, state) -> None:
        """Take the day's truth at each tower from the canopy that simulates the patches."""
        self.days.append(day)
        h = FOOTPRINT_PIXELS // 2
        rows_of = dict(canopy.parts)
        for site in self.world.sites:
            rows = rows_of[site.area]
            cy = (rows.start + rows.stop) // 2
            cx = state.gpp.shape[1] // 2
            window = (slice(cy - h, cy + h + 1), slice(cx - h, cx + h + 1))
            self.rows[site.id].append(
                (
                    float(state.gpp[window].mean()),
                    float(state.tair[cy, cx]),
                    float(state.shortwave[cy, cx]),
                    float(state.vpd[cy, cx]),
                    float(state.precipitation[cy, cx]),
                    float(state.fapar[window].mean()),
                )
            )

    def write(self, directory: Path) -> list[Path]:
        """Write one ``FLX_<site>_FLUXNET2015_FULLSET_DD_<y0>-<y1>_1-4.csv`` per site and
        ``sites.csv`` (SITE_ID, LOCATION_LAT, LOCATION_LONG, IGBP, ...)."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for site in self.world.sites:
            paths.append(self._write_site(directory, site))
        table = directory / "sites.csv"
        with table.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["SITE_ID", "LOCATION_LAT", "LOCATION_LONG", "LOCATION_ELEV", "IGBP",
                 "PFT", "UTM_EPSG", "UTM_X", "UTM_Y", "FILE"]
            )  # fmt: skip
            for site, path in zip(self.world.sites, paths, strict=True):
                writer.writerow(
                    [site.id, site.lat, site.lon, site.elevation, site.igbp,
                     site.pft, 32652, round(site.x, 1), round(site.y, 1), path.name]
                )  # fmt: skip
        return [table, *paths]

    def _write_site(self, directory: Path, site: Site) -> Path:
        rng = self.rng
        values = np.array(self.rows[site.id], dtype="float64")
        gpp, tair, sw, vpd, precip, fapar = values.T
        n = len(self.days)
        # Measurement: good-half-hour fraction, random error growing as it drops.
        qc = rng.beta(6.0, 1.3, n)
        sigma = 0.25 + 0.08 * gpp + 1.2 * (1 - qc)
        gpp_nt = np.maximum(gpp * rng.normal(1.0, 0.04) + rng.normal(0, 1, n) * sigma, -0.5)
        gpp_dt = np.maximum(gpp * rng.normal(1.0, 0.06) + rng.normal(0, 1, n) * sigma, -0.5)
        reco = (0.9 + 0.25 * gpp.mean()) * 2.0 ** ((tair - 15.0) / 10.0) * (0.6 + 0.4 * fapar)
        nee = reco - gpp_nt
        observed = np.ones(n, dtype=bool)
        observed[rng.random(n) < 0.04] = False  # lost days
        for _ in range(rng.integers(0, 4)):  # instrument failures of 1-6 weeks
            start = rng.integers(0, n)
            observed[start : start + rng.integers(7, 42)] = False
        if rng.random() < 0.3:  # a tower that started later
            observed[: rng.integers(30, max(31, n // 3))] = False
        met_gap = rng.random(n) < 0.01
        y0, y1 = self.days[0].year, self.days[-1].year
        path = directory / f"FLX_{site.id}_FLUXNET2015_FULLSET_DD_{y0}-{y1}_1-4.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for i, day in enumerate(self.days):
                flux = observed[i]
                met = not met_gap[i]
                writer.writerow(
                    [
                        day.strftime("%Y%m%d"),
                        _fmt(tair[i] + rng.normal(0, 0.3), met),
                        _fmt(sw[i] / 0.0864 * rng.normal(1.0, 0.03), met),
                        _fmt(max(vpd[i] * 10.0 * rng.normal(1.0, 0.05), 0.0), met),
                        _fmt(precip[i] * rng.normal(1.0, 0.1) if precip[i] > 0.1 else 0.0, met),
                        _fmt(nee[i], flux),
                        _fmt(qc[i], flux),
                        _fmt(reco[i], flux),
                        _fmt(gpp_nt[i], flux),
                        _fmt(gpp_dt[i], flux),
                    ]
                )
        return path


def _fmt(value: float, present: bool) -> str:
    return f"{value:.4f}" if present and np.isfinite(value) else str(MISSING)
