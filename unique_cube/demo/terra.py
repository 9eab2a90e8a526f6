"""How Terra sees the demo world: its 16-day repeat, the day's view geometry and the
anisotropy of reflectance at that view.

Terra's 16-day repeat sets the day's view: the domain is seen from nadir to ~62° view zenith,
east or west of the ground track (:func:`terra_view`). Reflectance is anisotropic
(Ross-Thick/Li-Sparse kernels, by band and for forest or open land, forward and backscatter
differing; :func:`modis_anisotropy`). :mod:`.modis` builds the day's footprints from the view.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

__all__ = ["TERRA_REPEAT", "ModisView", "modis_anisotropy", "terra_cycle_day", "terra_view"]

# Terra: 705 km high, 98.2° inclination, 233 orbits in its 16-day repeat, descending over the
# domain at about 10:30 local solar time (a little earlier at 37° N).
_EARTH_RADIUS = 6_371_007.0
_TERRA_ALTITUDE = 705_000.0
_TERRA_INCLINATION = 98.2
_TERRA_ORBITS_PER_DAY = 233 / 16
_TERRA_SOLAR_HOUR = 10.35
TERRA_REPEAT = 16  #: days in Terra's repeat cycle
_TERRA_CYCLE_START = dt.date(2000, 1, 1)


@dataclass(frozen=True)
class ModisView:
    """How Terra sees a place on one day of its 16-day repeat cycle."""

    cycle_day: int
    cross_track: float
    """Metres from the ground track to the place (positive: east of it)."""
    scan_angle: float
    """Degrees off nadir at the satellite."""
    view_zenith: float
    """Degrees from the zenith at the ground (the scan angle plus the Earth's curvature)."""
    view_azimuth: float
    """Degrees clockwise from north, from the ground towards the satellite."""
    heading: float
    """Degrees clockwise from north: the ground track's direction (descending)."""
    utc_hours: float
    """When Terra passes, in hours after 0 UTC."""

    def when(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time()) + dt.timedelta(hours=self.utc_hours)


def terra_cycle_day(day: dt.date) -> int:
    """The day's place in Terra's 16-day repeat cycle (0-15)."""
    return (day - _TERRA_CYCLE_START).days % TERRA_REPEAT


def terra_view(cycle_day: int, lat: float, lon: float) -> ModisView:
    """Terra's view of (lat, lon) on day ``cycle_day`` of its repeat cycle.

    The ground track moves 9/16 of the track spacing each day, so over the 16 days a place is
    seen once from each of 16 cross-track distances, from near nadir to the swath's edge
    (~±1100 km at 37° N: ~62° view zenith), east and west of the track alternately."""
    phi = np.radians(lat)
    spacing = 2 * np.pi * _EARTH_RADIUS * np.cos(phi) / _TERRA_ORBITS_PER_DAY
    tilt = np.arcsin(np.cos(np.radians(_TERRA_INCLINATION)) / np.cos(phi))  # west of south
    phase = lon / 360.0 * _TERRA_ORBITS_PER_DAY
    along_parallel = ((phase + cycle_day * 9 / 16) % 1.0 - 0.5) * spacing
    cross = along_parallel * np.cos(tilt)
    arc = abs(cross) / _EARTH_RADIUS
    scan = np.arctan2(
        _EARTH_RADIUS * np.sin(arc), _EARTH_RADIUS + _TERRA_ALTITUDE - _EARTH_RADIUS * np.cos(arc)
    )
    heading = (180.0 - np.degrees(tilt)) % 360.0
    # The satellite is on the far side of the track from the place.
    view_azimuth = (heading + (90.0 if cross > 0 else -90.0) + 180.0) % 360.0
    solar = _TERRA_SOLAR_HOUR + np.degrees(along_parallel / (_EARTH_RADIUS * np.cos(phi))) / 15
    return ModisView(
        cycle_day=cycle_day,
        cross_track=float(cross),
        scan_angle=float(np.degrees(scan)),
        view_zenith=float(np.degrees(scan + arc)),
        view_azimuth=float(view_azimuth),
        heading=float(heading),
        utc_hours=float(solar - lon / 15.0),
    )


# Ross-Thick/Li-Sparse-R kernel weights relative to the isotropic one (f_vol/f_iso,
# f_geo/f_iso), BANDS order, for open land (crops, grass, soil, towns) and for forest (more
# shadow-hiding in the visible, more volume scattering in the NIR), after MCD43 retrievals.
_BRDF_VOL = np.array(
    [[0.30, 0.30, 0.35, 0.30, 0.45, 0.28, 0.25], [0.45, 0.45, 0.50, 0.50, 0.65, 0.55, 0.50]]
)
_BRDF_GEO = np.array(
    [[0.20, 0.20, 0.18, 0.22, 0.10, 0.16, 0.18], [0.28, 0.28, 0.22, 0.30, 0.12, 0.18, 0.24]]
)


def _kernels(sun_zenith, view_zenith, relative_azimuth) -> tuple[float, float]:
    """Ross-Thick and Li-Sparse-Reciprocal kernels (h/b 2, b/r 1); angles in radians, the
    relative azimuth 0 when the sensor looks with the sun at its back (backscatter)."""
    cs, cv = np.cos(sun_zenith), np.cos(view_zenith)
    ss, sv = np.sin(sun_zenith), np.sin(view_zenith)
    cos_phase = np.clip(cs * cv + ss * sv * np.cos(relative_azimuth), -1.0, 1.0)
    phase = np.arccos(cos_phase)
    k_vol = ((np.pi / 2 - phase) * cos_phase + np.sin(phase)) / (cs + cv) - np.pi / 4
    ts, tv = np.tan(sun_zenith), np.tan(view_zenith)
    sec = 1 / cs + 1 / cv
    d = np.sqrt(max(ts**2 + tv**2 - 2 * ts * tv * np.cos(relative_azimuth), 0.0))
    cos_t = np.clip(2.0 * np.sqrt(d**2 + (ts * tv * np.sin(relative_azimuth)) ** 2) / sec, -1, 1)
    t = np.arccos(cos_t)
    overlap = (t - np.sin(t) * cos_t) * sec / np.pi
    k_geo = overlap - sec + 0.5 * (1 + cos_phase) / (cs * cv)
    return float(k_vol), float(k_geo)


def modis_anisotropy(
    view: ModisView, sun: tuple[float, float], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Reflectance seen at the day's view over reflectance seen from nadir (same sun), per
    band: (2, band) for open land and forest; ``rng`` varies the kernel weights by scene."""
    sun_zenith, sun_azimuth = sun
    relative = np.radians(view.view_azimuth - sun_azimuth)
    sz = np.radians(min(sun_zenith, 75.0))
    k_vol, k_geo = _kernels(sz, np.radians(view.view_zenith), relative)
    n_vol, n_geo = _kernels(sz, 0.0, 0.0)
    vol, geo = _BRDF_VOL, _BRDF_GEO
    if rng is not None:
        vol = vol * rng.lognormal(0.0, 0.15, size=(2, 1))
        geo = geo * rng.lognormal(0.0, 0.15, size=(2, 1))
    return (1 + vol * k_vol + geo * k_geo) / (1 + vol * n_vol + geo * n_geo)
