"""The demo world's weather: a reanalysis on a coarse grid, and its downscaling to 30 m.

The reanalysis is daily on a 0.1° grid: a sea-level temperature with a seasonal cycle, a
year-to-year offset and autocorrelated day-to-day anomalies, cooled with elevation (the grid's
own smooth orography); a wet/dry Markov chain with an East-Asian monsoon peak, gamma amounts and
orographic enhancement; cloudiness tied to rain; shortwave from the top of the atmosphere and
cloudiness; dew point below air temperature by a depression that is large in the dry spring and
small in the humid summer. :func:`hourly` spreads a day over UTC hours as ERA5 is published.

At 30 m the truth uses each pixel's own elevation (lapse rate), so a tower on a ridge is colder
than its reanalysis cell: the mismatch real towers show.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .terrain import fractal_field
from .world import CRS, Area, World

__all__ = [
    "CELL_DEGREES",
    "LAPSE_RATE",
    "AreaSampler",
    "CellSampler",
    "Reanalysis",
    "make_reanalysis",
    "saturation_vapour_pressure",
    "toa_radiation",
]

CELL_DEGREES = 0.1
LAPSE_RATE = -0.0065  # K per m
DEW_LAPSE_RATE = -0.002  # K per m
UTC_OFFSET_HOURS = 9  # local standard time of the world (KST)


def saturation_vapour_pressure(t_celsius: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure (kPa) over water, Tetens' formula."""
    return 0.6108 * np.exp(17.27 * t_celsius / (t_celsius + 237.3))


def toa_radiation(lat_deg: np.ndarray | float, doy: np.ndarray | int) -> np.ndarray:
    """Daily top-of-atmosphere shortwave (MJ m-2 day-1), FAO-56 equation 21."""
    lat = np.radians(lat_deg)
    decl = 0.409 * np.sin(2 * np.pi * np.asarray(doy) / 365.0 - 1.39)
    dr = 1 + 0.033 * np.cos(2 * np.pi * np.asarray(doy) / 365.0)
    ws = np.arccos(np.clip(-np.tan(lat) * np.tan(decl), -1.0, 1.0))
    return (
        24 * 60 / np.pi * 0.0820 * dr
        * (ws * np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.sin(ws))
    )  # fmt: skip


@dataclass(frozen=True)
class Reanalysis:
    """Daily weather on the coarse grid, arrays (day, lat, lon); latitude descending."""

    days: list[dt.date]
    lat: np.ndarray
    lon: np.ndarray
    orography: np.ndarray
    """Grid elevation (m): the smoothed terrain, as a reanalysis sees it."""
    tair: np.ndarray
    """Daily mean 2 m air temperature (°C)."""
    tdew: np.ndarray
    """Daily mean 2 m dew point (°C)."""
    shortwave: np.ndarray
    """Downwelling shortwave (MJ m-2 day-1)."""
    precipitation: np.ndarray
    """Daily total (mm)."""
    cloud: np.ndarray
    """Daily cloudiness (0-1)."""


def _grid(world: World) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    x0, y0, x1, y1 = world.domain_bounds()
    xs = [x0, x1, x0, x1]
    ys = [y0, y0, y1, y1]
    lons, lats = to_lonlat.transform(xs, ys)
    step = CELL_DEGREES
    lon0 = np.floor(min(lons) / step) * step - step
    lon1 = np.ceil(max(lons) / step) * step + step
    lat0 = np.floor(min(lats) / step) * step - step
    lat1 = np.ceil(max(lats) / step) * step + step
    lon = np.round(np.arange(lon0, lon1 + step / 2, step), 4)
    lat = np.round(np.arange(lat1, lat0 - step / 2, -step), 4)
    return lat, lon


def _orography(world: World, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The terrain as a ~10 km reanalysis sees it: a Gaussian-weighted mean of the elevation
    of the simulated areas around each cell centre."""
    from pyproj import Transformer

    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    lon2, lat2 = np.meshgrid(lon, lat)
    cx, cy = to_utm.transform(lon2, lat2)
    points, heights = [], []
    for area in world.areas:
        step = 10
        xs, ys = world.area_xy(area, step)
        z = area.terrain.elevation[step // 2 :: step, step // 2 :: step]
        points.append(np.column_stack([xs.ravel(), ys.ravel()]))
        heights.append(z.ravel())
    pts = np.concatenate(points)
    z = np.concatenate(heights).astype("float64")
    d2 = (cx.ravel()[:, None] - pts[:, 0]) ** 2 + (cy.ravel()[:, None] - pts[:, 1]) ** 2
    w = np.exp(-d2 / (2 * 12_000.0**2))
    background = float(np.mean(z))
    weight = w.sum(axis=1)
    oro = (w @ z + 0.05 * background) / (weight + 0.05)
    return oro.reshape(lat2.shape).astype("float32")


def make_reanalysis(world: World, rng: np.random.Generator) -> Reanalysis:
    """Simulate the daily reanalysis over the world's domain and period."""
    days = world.size.days
    lat, lon = _grid(world)
    oro = _orography(world, lat, lon)
    n, ny, nx = len(days), lat.size, lon.size
    doy = np.array([d.timetuple().tm_yday for d in days])
    years = np.array([d.year for d in days])
    phase = 2 * np.pi * (doy - 20) / 365.25
    monsoon = np.exp(-(((doy - 200) / 28.0) ** 2))
    spring_dry = np.exp(-(((doy - 110) / 40.0) ** 2))

    # Temperature: seasonal cycle at sea level, yearly offsets, AR(1) anomalies (larger in
    # winter), a weak south-north gradient and a small smooth spatial anomaly each day.
    year_offset = {y: rng.normal(0.0, 0.6) for y in sorted(set(years))}
    sigma = 1.4 + 1.6 * (1 + np.cos(phase)) / 2
    anomaly = np.zeros(n)
    for i in range(1, n):
        anomaly[i] = 0.75 * anomaly[i - 1] + np.sqrt(1 - 0.75**2) * rng.normal(0.0, sigma[i])
    t_sea = 12.8 - 14.2 * np.cos(phase) + anomaly + np.array([year_offset[y] for y in years])
    lat_gradient = -0.9 * (lat - lat.mean())[:, None]
    spatial = np.stack([_smooth_noise((ny, nx), rng) for _ in range(8)])
    pick = rng.integers(0, 8, size=n)
    tair = t_sea[:, None, None] + lat_gradient[None] + LAPSE_RATE * oro[None] + 0.4 * spatial[pick]

    # Rain: a Markov chain per day for the whole domain, amounts varying across it.
    p_wet = np.clip(0.17 + 0.38 * monsoon + 0.05 * np.sin(phase), 0.05, 0.9)
    p_ww = np.minimum(0.9, p_wet + 0.3)
    p_wd = p_wet * (1 - p_ww) / (1 - p_wet)
    wet = np.zeros(n, dtype=bool)
    for i in range(1, n):
        wet[i] = rng.random() < (p_ww[i] if wet[i - 1] else p_wd[i])
    intensity = 4.0 + 26.0 * np.exp(-(((doy - 205) / 35.0) ** 2))
    amount = np.where(wet, rng.gamma(0.75, intensity / 0.75), 0.0)
    orographic = 1 + 0.0006 * oro
    rain_pattern = np.exp(0.35 * spatial[rng.integers(0, 8, size=n)])
    precipitation = amount[:, None, None] * orographic[None] * rain_pattern

    # Cloudiness: overcast on wet days, otherwise a seasonal mean with day-to-day spread.
    mean_dry = 0.30 + 0.25 * monsoon
    dry_cloud = rng.beta(2.0 * mean_dry / (1 - mean_dry), 2.0)
    cloud_domain = np.where(wet, rng.uniform(0.75, 1.0, n), dry_cloud)
    cloud = np.clip(cloud_domain[:, None, None] + 0.08 * spatial[pick[::-1]], 0.0, 1.0)

    toa = toa_radiation(lat[None, :, None], doy[:, None, None])
    shortwave = toa * (0.22 + 0.55 * (1 - cloud))

    depression = 1.5 + (3.5 + 7.0 * spring_dry + 4.0 * (1 - monsoon))[:, None, None] * (1 - cloud)
    tdew = tair - depression

    return Reanalysis(
        days=days,
        lat=lat,
        lon=lon,
        orography=oro,
        tair=tair.astype("float32"),
        tdew=tdew.astype("float32"),
        shortwave=shortwave.astype("float32"),
        precipitation=precipitation.astype("float32"),
        cloud=cloud.astype("float32"),
    )


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    padded = (max(shape[0], 8) * 2, max(shape[1], 8) * 2)
    field = fractal_field(padded, 1.0, rng, beta=3.0, scale_max=max(padded))
    return field[: shape[0], : shape[1]]


class CellSampler:
    """Bilinear interpolation of coarse-grid fields (lat, lon) at given points (x, y in the
    world's CRS); one sparse product per field."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, xs: np.ndarray, ys: np.ndarray):
        from pyproj import Transformer

        to_lonlat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
        lons, lats = to_lonlat.transform(np.ravel(xs), np.ravel(ys))
        fy = (lat[0] - np.asarray(lats)) / (lat[0] - lat[1])
        fx = (np.asarray(lons) - lon[0]) / (lon[1] - lon[0])
        iy = np.clip(np.floor(fy).astype(int), 0, lat.size - 2)
        ix = np.clip(np.floor(fx).astype(int), 0, lon.size - 2)
        wy, wx = np.clip(fy - iy, 0, 1), np.clip(fx - ix, 0, 1)
        rows = np.repeat(np.arange(fy.size), 4)
        cols = np.stack(
            [iy * lon.size + ix, iy * lon.size + ix + 1,
             (iy + 1) * lon.size + ix, (iy + 1) * lon.size + ix + 1], axis=1
        ).ravel()  # fmt: skip
        vals = np.stack(
            [(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=1
        ).ravel()
        self._matrix = sparse.csr_matrix((vals, (rows, cols)), shape=(fy.size, lat.size * lon.size))
        self._shape = np.shape(xs)

    def __call__(self, field: np.ndarray) -> np.ndarray:
        """The field at the points (float32, the points' shape)."""
        return (self._matrix @ field.ravel()).reshape(self._shape).astype("float32")


class AreaSampler:
    """A :class:`CellSampler` for the pixels of areas of equal width stacked top to bottom:
    interpolates at the centres of blocks of ``block`` pixels (the fields are smooth over
    ~10 km; ``block`` must divide the areas' sides) and repeats each block's value."""

    def __init__(
        self, world: World, areas: list[Area], lat: np.ndarray, lon: np.ndarray, block: int
    ):
        if any(n % block for area in areas for n in area.shape):
            raise ValueError(f"blocks of {block} pixels do not tile the areas")
        centres = [world.area_xy(area, block) for area in areas]
        xs = np.concatenate([c[0] for c in centres])
        ys = np.concatenate([c[1] for c in centres])
        self._cells = CellSampler(lat, lon, xs, ys)
        self._block = block

    def __call__(self, field: np.ndarray) -> np.ndarray:
        coarse = self._cells(field)
        return np.repeat(np.repeat(coarse, self._block, axis=0), self._block, axis=1)


def hourly(reanalysis: Reanalysis, index: int) -> dict[str, np.ndarray]:
    """One local day spread over its 24 hours as ERA5 publishes them (arrays (24, lat, lon)).

    Temperature follows a diurnal wave around the daily mean (amplitude larger on clear days),
    dew point stays at its daily mean, shortwave is distributed by the sun's elevation (J m-2
    per hour), precipitation falls evenly over the afternoon-evening hours (m per hour). The
    hours are local-day hours; :func:`utc_hours` gives their UTC times.
    """
    day = reanalysis.days[index]
    doy = day.timetuple().tm_yday
    hours = np.arange(24) + 0.5
    cloud = reanalysis.cloud[index]
    amplitude = (2.0 + 5.0 * (1 - cloud))[None]
    wave = np.cos(2 * np.pi * (hours - 15.0) / 24.0)[:, None, None]
    tair = reanalysis.tair[index][None] + amplitude * (wave - wave.mean())
    tdew = np.broadcast_to(reanalysis.tdew[index][None], tair.shape)
    decl = 0.409 * np.sin(2 * np.pi * doy / 365.0 - 1.39)
    lat = np.radians(reanalysis.lat)[None, :, None]
    hour_angle = np.radians(15.0 * (hours - 12.0))[:, None, None]
    sun = np.maximum(
        np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle), 0.0
    )
    sun = sun / np.maximum(sun.sum(axis=0, keepdims=True), 1e-9)
    shortwave = sun * reanalysis.shortwave[index][None] * 1e6
    rainy = ((hours >= 14) & (hours < 22)).astype("float64")[:, None, None] / 8.0
    precipitation = rainy * reanalysis.precipitation[index][None] / 1000.0
    return {
        "tair": (tair + 273.15).astype("float32"),
        "tdew": (tdew + 273.15).astype("float32"),
        "shortwave": shortwave.astype("float32"),
        "precipitation": np.broadcast_to(precipitation, tair.shape).astype("float32"),
    }


def utc_hours(day: dt.date) -> list[dt.datetime]:
    """UTC times (naive) of a local day's 24 hourly values (hour ending at the time)."""
    start = dt.datetime.combine(day, dt.time()) - dt.timedelta(hours=UTC_OFFSET_HOURS)
    return [start + dt.timedelta(hours=h + 1) for h in range(24)]
