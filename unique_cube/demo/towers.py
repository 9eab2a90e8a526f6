"""The demo world's eddy-covariance towers, written as FLUXNET2015 FULLSET daily files.

Each tower measures its own patch: GPP weighted by its flux footprint (a Gaussian of 90 m cut
at 300 m, :func:`~.world.tower_footprint`, over a fetch its own type does not fill) with the
random error of eddy covariance (larger on days with few good half-hours), the two
partitioning methods disagreeing a little (night-time vs day-time), a lasting bias at some
sites (energy-balance closure, partitioning: ±10-25 %), a calibration that drifts from year to
year and noisier years, meteorology at the tower (not at the reanalysis cell), gaps from
instrument failures, and towers that started later than others.
Missing values are -9999, as in FLUXNET2015.

The towers inside the region (:attr:`~.world.World.region_sites`) measure the region's own
pixels the same way (the footprint centred on the tower's pixel); their random traits come from
a stream of their own, so the other towers' files are the same with or without them.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

from .world import FETCH_RADIUS, PIXEL, Site, World, tower_footprint

__all__ = ["FOOTPRINT_PIXELS", "TowerRecorder"]

FOOTPRINT_PIXELS = 2 * int(FETCH_RADIUS // PIXEL)  # 600 m x 600 m centred on the tower
#: The same footprint around a tower at a pixel's centre (the region's towers): odd.
REGION_FOOTPRINT_PIXELS = FOOTPRINT_PIXELS + 1
BIASED_SITES = 0.25  # share of the sites with a lasting bias
NOISY_YEARS = 0.2  # share of site-years with twice the random error
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
        # The region's towers draw their traits from their own stream (see the module).
        self.region_rng = np.random.default_rng([world.seed, 21, 1])
        self.days: list[dt.date] = []
        self.rows: dict[str, list[tuple[float, ...]]] = {s.id: [] for s in world.towers}
        self.weights = tower_footprint(FOOTPRINT_PIXELS, PIXEL)
        self.region_weights = tower_footprint(REGION_FOOTPRINT_PIXELS, PIXEL)

    def record(self, day: dt.date, canopy, state, region=None) -> None:
        """Take the day's truth at each tower from the canopy that simulates the patches
        (``state``) and, when ``region`` (the region's state of the day) is given, at the
        towers inside the region."""
        self.days.append(day)
        h = FOOTPRINT_PIXELS // 2
        rows_of = dict(canopy.parts)
        for site in self.world.sites:
            rows = rows_of[site.area]
            # The tower stands at the patch's centre: the corner of four pixels when the
            # patch is even, so the window of an even number of pixels is centred on it.
            cy = (rows.start + rows.stop) // 2
            cx = state.gpp.shape[1] // 2
            window = (slice(cy - h, cy + h), slice(cx - h, cx + h))
            self.rows[site.id].append(_measured(state, window, self.weights, (cy, cx)))
        if region is None:
            return
        h = REGION_FOOTPRINT_PIXELS // 2
        origin_x, origin_y = self.world.domain_origin
        area = self.world.region
        for site in self.world.region_sites:
            # At a pixel's centre: the odd window is centred on it.
            cy = int((origin_y - site.y) // PIXEL) - area.row
            cx = int((site.x - origin_x) // PIXEL) - area.col
            window = (slice(cy - h, cy + h + 1), slice(cx - h, cx + h + 1))
            self.rows[site.id].append(_measured(region, window, self.region_weights, (cy, cx)))

    def write(self, directory: Path) -> list[Path]:
        """Write one ``FLX_<site>_FLUXNET2015_FULLSET_DD_<y0>-<y1>_1-4.csv`` per recorded site
        and ``sites.csv`` (SITE_ID, LOCATION_LAT, LOCATION_LONG, IGBP, ...)."""
        directory.mkdir(parents=True, exist_ok=True)
        towers = [(site, self.rng) for site in self.world.sites]
        towers += [(site, self.region_rng) for site in self.world.region_sites
                   if self.rows[site.id]]  # fmt: skip
        paths = [self._write_site(directory, site, rng) for site, rng in towers]
        table = directory / "sites.csv"
        with table.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["SITE_ID", "LOCATION_LAT", "LOCATION_LONG", "LOCATION_ELEV", "IGBP",
                 "PFT", "UTM_EPSG", "UTM_X", "UTM_Y", "FILE"]
            )  # fmt: skip
            for (site, _), path in zip(towers, paths, strict=True):
                writer.writerow(
                    [site.id, site.lat, site.lon, site.elevation, site.igbp,
                     site.pft, 32652, round(site.x, 1), round(site.y, 1), path.name]
                )  # fmt: skip
        return [table, *paths]

    def _write_site(self, directory: Path, site: Site, rng: np.random.Generator) -> Path:
        values = np.array(self.rows[site.id], dtype="float64")
        gpp, tair, sw, vpd, precip, fapar = values.T
        n = len(self.days)
        # A lasting bias at some sites (energy-balance closure, partitioning), a calibration
        # that drifts from year to year, and years with twice the random error.
        bias = 1.0
        if rng.random() < BIASED_SITES:
            bias += rng.choice((-1.0, 1.0)) * rng.uniform(0.10, 0.25)
        years = np.array([day.year for day in self.days])
        drift = {year: (rng.normal(1.0, 0.04), 2.0 if rng.random() < NOISY_YEARS else 1.0)
                 for year in np.unique(years)}  # fmt: skip
        scale = bias * np.array([drift[year][0] for year in years])
        noisier = np.array([drift[year][1] for year in years])
        true_gpp = gpp
        gpp = gpp * scale
        # Measurement: good-half-hour fraction, random error growing as it drops.
        qc = rng.beta(6.0, 1.3, n)
        sigma = (0.25 + 0.08 * gpp + 1.2 * (1 - qc)) * noisier
        gpp_nt = np.maximum(gpp * rng.normal(1.0, 0.04) + rng.normal(0, 1, n) * sigma, -0.5)
        gpp_dt = np.maximum(gpp * rng.normal(1.0, 0.06) + rng.normal(0, 1, n) * sigma, -0.5)
        reco = (
            scale
            * (0.9 + 0.25 * true_gpp.mean())
            * 2.0 ** ((tair - 15.0) / 10.0)
            * (0.6 + 0.4 * fapar)
        )
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


def _measured(state, window: tuple[slice, slice], weights: np.ndarray,
              at: tuple[int, int]) -> tuple[float, ...]:  # fmt: skip
    """The truth a tower records: footprint-weighted GPP (and fAPAR) over ``window``, the
    meteorology at its pixel ``at``."""
    return (
        float((state.gpp[window] * weights).sum()),
        float(state.tair[at]),
        float(state.shortwave[at]),
        float(state.vpd[at]),
        float(state.precipitation[at]),
        float((state.fapar[window] * weights).sum()),
    )


def _fmt(value: float, present: bool) -> str:
    return f"{value:.4f}" if present and np.isfinite(value) else str(MISSING)
