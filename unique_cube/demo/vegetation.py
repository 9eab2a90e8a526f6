"""The demo world's true canopy: phenology, light-use-efficiency GPP and surface reflectance.

GPP = ε · fAPAR · PAR · f(T) · f(VPD) · f(water), per 30 m pixel and day, in gC m-2 d-1:

* **natural vegetation** (forests, grassland) — deciduous canopies green up when growing
  degree-days (base 5 °C, since 1 January) pass a threshold and senesce when the 10-day mean
  temperature falls below another after midsummer, so both come later (and earlier) with
  elevation and with a cold (warm) spring; evergreen needleleaf keeps most of its leaves. The
  vegetation is a mosaic of **stands** of about 4 ha (:mod:`.stands`), each with a vigour (its
  peak LAI; a weak stand's ε too) that drifts from year to year, its own green-up threshold
  each year, and — in the forest, a few stands a year — a thinning or storm damage that
  removes leaves and recovers over the following years. A year's changes come in over
  January–March.
* **fields** (:mod:`.crops`) — cropland and paddy are cut into parcels
  (:attr:`.Terrain.parcels_10m`); each 30 m pixel follows the parcel that covers most of it.
  Every parcel has a *plan* each year — maize, soybean, rice, winter barley followed by soybean
  or late rice, spring potato followed by autumn cabbage, or fallow — kept or changed from the
  year before (:data:`.PLANS`). Each crop is sown when the parcel's spring (or the field) is
  ready, develops with temperature (:class:`.Crop`), reaches a peak LAI of its own that year,
  ripens and is harvested; paddies are flooded from a week before transplanting until the
  grain ripens; bare and fallow parcels carry weeds. Crop pixels take their light-use
  parameters from the crop in their parcel.
* **sites** — each area (the region, every tower patch) draws its own ε, peak LAI, optimum
  temperature and VPD closure for every plant type: the same type is no clone everywhere.
* **PAR** — 45 % of shortwave, redistributed by slope and aspect for the direct beam at noon
  (diffuse light by sky view);
* **water** — a bucket filled by rain and snow-melt, emptied by evapotranspiration; it holds
  150 mm where the soil is of middling depth, less on steep slopes and in patches of shallow
  soil (50-300 mm), so a dry spell stresses some stands and not others; flooded paddies do
  not dry;
* **reflectance** — each band mixes soil (darker when wet) and an infinitely thick canopy of the
  type by exp(-c·LAI); water, built-up ground and visible snow mix in by area.

Built-up and water pixels have no GPP; mixed 30 m pixels carry their vegetated fraction.
Everything random comes from the generator given to :class:`Canopy`; what changes from year to
year is drawn from streams of (the canopy's seed, the year), so it does not depend on the order
of the calls. The state is kept day by day: :meth:`Canopy.step` advances one day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from unique_cube.inputs.static import slope_aspect

from .crops import CROPS, PLANS, Crop, Fields
from .stands import RAMP_DAYS, Stands, ramp_day
from .terrain import fractal_field
from .weather import DEW_LAPSE_RATE, LAPSE_RATE, AreaSampler, Reanalysis
from .weather import saturation_vapour_pressure as esat
from .world import Area, World

__all__ = ["BANDS", "CROPS", "PLANS", "Canopy", "Crop", "DayState", "block_mean"]

#: Reflective bands simulated (HLS L30 / OLI order: coastal, blue, green, red, nir, swir16,
#: swir22); MODIS uses the same channels plus none of its own.
BANDS = ("coastal", "blue", "green", "red", "nir", "swir16", "swir22")

# Per vegetation type (index = PFT code; 0, 7 and 8 have no vegetation). Crops (4, 5) take
# their parameters from the crop of their parcel instead (CROPS).
#                   -    DBF    ENF    MF    crop  paddy  grass  built  water
_EPS = np.array([0.0, 2.20, 1.75, 2.00, 2.25, 2.20, 1.90, 0.0, 0.0])  # gC per MJ APAR
_TMIN = np.array([0.0, 1.0, -3.0, -1.0, 5.0, 8.0, 0.0, 0.0, 0.0])
_TOPT = np.array([1.0, 22.0, 19.0, 20.0, 26.0, 27.0, 22.0, 1.0, 1.0])
_TMAX = np.array([2.0, 38.0, 36.0, 37.0, 40.0, 40.0, 38.0, 2.0, 2.0])
_VPD_CLOSE = np.array([1.0, 3.5, 3.0, 3.2, 4.0, 4.5, 3.8, 1.0, 1.0])  # kPa, f(VPD) = 0
_LAI_MAX = np.array([0.0, 5.0, 4.5, 4.8, 4.5, 5.0, 2.5, 0.0, 0.0])
_LAI_MIN = np.array([0.0, 0.4, 3.0, 1.5, 0.0, 0.0, 0.3, 0.0, 0.0])
_GDD_ON = np.array([1e9, 120.0, 90.0, 110.0, 1e9, 1e9, 150.0, 1e9, 1e9])
_T_OFF = np.array([-99.0, 13.0, 9.0, 11.0, -99.0, -99.0, 11.0, -99.0, -99.0])
_UP_DAYS = np.array([1.0, 25.0, 40.0, 30.0, 1.0, 1.0, 30.0, 1.0, 1.0])
_DOWN_DAYS = np.array([1.0, 25.0, 60.0, 30.0, 1.0, 1.0, 35.0, 1.0, 1.0])
VPD_OPEN = 0.65  # kPa, f(VPD) = 1 below
BUCKET_MM = 150.0  # soil water a pixel holds, where the soil is of middling depth

# How far an area's plants differ from the type's values (uniform, ±): ε and peak LAI as
# factors, optimum temperature in °C, VPD closure as a factor.
_SITE_SPREAD = {"eps": 0.10, "lai": 0.15, "topt": 2.0, "vpd_close": 0.15}

# Reflectance end-members (rows: bands in BANDS order).
_SOIL = np.array([0.06, 0.08, 0.11, 0.14, 0.22, 0.30, 0.24])
_WATER = np.array([0.05, 0.05, 0.05, 0.03, 0.015, 0.008, 0.005])
_BUILT = np.array([0.12, 0.13, 0.15, 0.17, 0.23, 0.26, 0.22])
_SNOW = np.array([0.85, 0.85, 0.82, 0.78, 0.70, 0.12, 0.08])
_CANOPY = {
    "broadleaf": np.array([0.020, 0.025, 0.060, 0.030, 0.42, 0.20, 0.09]),
    "needleleaf": np.array([0.020, 0.020, 0.045, 0.025, 0.28, 0.13, 0.06]),
    "herbaceous": np.array([0.025, 0.030, 0.080, 0.035, 0.45, 0.22, 0.10]),
}
_CANOPY_OF = {1: "broadleaf", 2: "needleleaf", 4: "herbaceous", 5: "herbaceous", 6: "herbaceous"}
_EXTINCTION = np.array([0.65, 0.65, 0.6, 0.65, 0.45, 0.5, 0.55])
_FOREST = (1, 2, 3)


@dataclass(frozen=True)
class DayState:
    """One day of the true world in an area (arrays of the area's shape, float32)."""

    gpp: np.ndarray
    """Gross primary productivity (gC m-2 day-1)."""
    lai: np.ndarray
    fapar: np.ndarray
    tair: np.ndarray
    """Daily mean air temperature (°C)."""
    vpd: np.ndarray
    """Daily mean vapour-pressure deficit (kPa)."""
    shortwave: np.ndarray
    """Shortwave on a horizontal surface (MJ m-2 day-1)."""
    precipitation: np.ndarray
    """mm day-1."""
    snow: np.ndarray
    """Fraction of the pixel seen as snow-covered (0-1)."""
    flooded: np.ndarray
    """Flooded paddy (bool)."""
    wetness: np.ndarray
    """Soil water as a fraction of the bucket (0-1)."""


class Canopy:
    """Simulates areas day after day; keeps phenology, crops, snow and soil water as state.

    Areas of the same width are simulated together, stacked top to bottom (the tower patches);
    :attr:`parts` says which rows are which area, :meth:`split` cuts a stacked array.
    """

    def __init__(
        self,
        world: World,
        areas: list[Area],
        reanalysis: Reanalysis,
        rng: np.random.Generator,
    ):
        if len({area.shape[1] for area in areas}) != 1:
            raise ValueError("areas simulated together must have the same width")
        self.reanalysis = reanalysis
        # The areas are stacked top to bottom: every step is one set of array operations.
        self.parts: list[tuple[int, slice]] = []
        row = 0
        for area in areas:
            self.parts.append((world.areas.index(area), slice(row, row + area.shape[0])))
            row += area.shape[0]
        self.shape = (row, areas[0].shape[1])
        self._land_cover(areas)
        self._terrain(world, areas)
        self._weather_offsets(world, areas, reanalysis)
        site = self._plant_traits(rng)
        seed = int(rng.integers(2**62))
        first_year = reanalysis.days[0].year
        self.fields = Fields(areas, self.crop, self.vigour, site, rng, seed, first_year)
        self.parcel = self.fields.parcel
        """Each pixel's field parcel (0: none; see :class:`.Fields`)."""
        self.stands = Stands(areas, self.forest, rng, seed, first_year)
        self._initial_state()

    def _land_cover(self, areas: list[Area]) -> None:
        """Land-cover fractions of each 30 m pixel (from the 10 m map) and its dominant type."""
        ny, nx = self.shape
        pft10 = np.concatenate([area.terrain.pft_10m for area in areas])
        counts = np.stack(
            [(pft10 == code).reshape(ny, 3, nx, 3).mean(axis=(1, 3)) for code in range(9)]
        ).astype("float32")
        self.frac_water = counts[8]
        self.frac_built = counts[7]
        self.frac_veg = 1.0 - counts[7] - counts[8] - counts[0]
        vegetated = counts.copy()
        vegetated[[0, 7, 8]] = -1.0
        self.pft = np.where(self.frac_veg > 0, vegetated.argmax(axis=0), 0).astype("int8")
        self.water_pixel = self.frac_water >= 0.5

    def _terrain(self, world: World, areas: list[Area]) -> None:
        """Slope and aspect: the noon sun's incidence and the sky view."""
        slopes, aspects = [], []
        for area in areas:
            xs, ys = world.area_xy(area)
            dem = xr.DataArray(
                area.terrain.elevation, dims=("y", "x"), coords={"y": ys[:, 0], "x": xs[0]}
            )
            terrain = slope_aspect(dem)
            slopes.append(np.radians(terrain.slope.values))
            aspects.append(np.radians(np.nan_to_num(terrain.aspect.values)))
        slope, aspect = np.concatenate(slopes), np.concatenate(aspects)
        # Noon sun is due south: cos(incidence) = cos z cos s + sin z sin s cos(180° - aspect).
        self.cos_slope = np.cos(slope).astype("float32")
        self.sin_slope_south = (np.sin(slope) * np.cos(np.pi - aspect)).astype("float32")
        self.sky_view = ((1 + np.cos(slope)) / 2).astype("float32")

    def _weather_offsets(self, world: World, areas: list[Area], reanalysis: Reanalysis) -> None:
        """How the reanalysis is sampled, and the lapse-rate offsets of each pixel's elevation."""
        z = np.concatenate([area.terrain.elevation for area in areas])
        # Weather varies over ~10 km: per 300 m block in the region, once per tower patch.
        block = min(10, *(min(area.shape) for area in areas))
        if len(areas) > 1:
            block = min(area.shape[0] for area in areas)
        self.sample = AreaSampler(world, areas, reanalysis.lat, reanalysis.lon, block)
        dz = z - self.sample(reanalysis.orography)
        self.dt_lapse = (LAPSE_RATE * dz).astype("float32")
        self.dtdew_lapse = (DEW_LAPSE_RATE * dz).astype("float32")
        self.rain_factor = np.clip(1 + 0.0005 * dz, 0.5, 2.0).astype("float32")
        self.lat = float(np.mean(reanalysis.lat))

    def _plant_traits(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Per-pixel parameters of the pixel's plant type in its area, with a spatially varying
        vigour and green-up threshold (the stands' yearly changes come on top); returns the
        area's own traits (:meth:`_site_traits`), which crops take instead of their type's."""
        ny, nx = self.shape
        p = self.pft.astype(int)
        self.forest = np.isin(self.pft, _FOREST)
        self.crop = np.isin(self.pft, (4, 5))
        site = self._site_traits(rng)
        self.eps_type = (_EPS[p] * site["eps"]).astype("float32")
        self.tmin, self.tmax = (a[p].astype("float32") for a in (_TMIN, _TMAX))
        self.topt = (_TOPT[p] + site["topt"]).astype("float32")
        self.vpd_close = (_VPD_CLOSE[p] * site["vpd_close"]).astype("float32")
        vigour = 1.0 + 0.08 * fractal_field(self.shape, 30.0, rng, beta=2.5, scale_max=2_000)
        self.vigour = (np.clip(vigour, 0.75, 1.25) * site["lai"]).astype("float32")
        self.lai_max_type = (_LAI_MAX[p] * self.vigour).astype("float32")
        self.lai_min_type = np.minimum(_LAI_MIN[p] * self.vigour, self.lai_max_type).astype(
            "float32"
        )
        self.gdd_on_type = (
            _GDD_ON[p] * (1 + 0.06 * fractal_field(self.shape, 30.0, rng, beta=2.5, scale_max=1e3))
        ).astype("float32")
        self.t_off = _T_OFF[p].astype("float32")
        self.up = (1.0 / _UP_DAYS[p]).astype("float32")
        self.down = (1.0 / _DOWN_DAYS[p]).astype("float32")
        soil = 1.0 + 0.12 * fractal_field(self.shape, 30.0, rng, beta=2.5, scale_max=3_000)
        self.soil_brightness = np.clip(soil, 0.7, 1.3).astype("float32")
        # Soil depth: patchy, and shallow on steep slopes; dry spells show it, wet years not.
        depth = np.exp(0.35 * fractal_field(self.shape, 30.0, rng, beta=2.5, scale_max=600))
        sin_slope = np.sqrt(1.0 - self.cos_slope.astype("float64") ** 2)
        depth = np.clip(depth * (1.15 - 0.6 * sin_slope), 0.35, 2.0)
        self.bucket = (BUCKET_MM * depth).astype("float32")
        self.per_bucket = (1.0 / self.bucket).astype("float32")

        canopy = np.zeros((len(BANDS), ny, nx), dtype="float32")
        for code, kind in _CANOPY_OF.items():
            canopy[:, self.pft == code] = _CANOPY[kind][:, None]
        mixed = self.pft == 3
        canopy[:, mixed] = (0.5 * (_CANOPY["broadleaf"] + _CANOPY["needleleaf"]))[:, None]
        self.canopy = canopy
        return site

    def _site_traits(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Each area's own ε, peak LAI, optimum temperature and VPD closure per plant type:
        factors (shift for ``topt``, °C) per pixel."""
        traits = {name: np.zeros(self.shape, "float32") for name in _SITE_SPREAD}
        for _, rows in self.parts:
            codes = self.pft[rows]
            for name, spread in _SITE_SPREAD.items():
                draw = rng.uniform(-spread, spread, len(_EPS))
                traits[name][rows] = (draw if name == "topt" else 1.0 + draw)[codes]
        return traits

    def _initial_state(self) -> None:
        shape = self.shape
        self.gdd = np.zeros(shape, "float32")
        self.green = np.zeros(shape, "float32")
        self.senescing = np.zeros(shape, bool)
        self.t_ema = np.full(shape, 5.0, "float32")
        self.swe = np.zeros(shape, "float32")
        self.soil_water = 0.8 * self.bucket
        self.lai_max = self.lai_max_type.copy()
        self.lai_min = self.lai_min_type.copy()
        self.eps = self.eps_type.copy()
        self.gdd_on = self.gdd_on_type.copy()
        self._member_cache: dict[int, tuple[np.ndarray, ...]] = {}

    def split(self, values: np.ndarray, factor: int = 1) -> list[tuple[int, np.ndarray]]:
        """(area index, the area's part of ``values``) for a stacked array (last two axes),
        on the 30 m grid or on blocks of ``factor`` pixels."""
        return [
            (index, values[..., rows.start // factor : rows.stop // factor, :])
            for index, rows in self.parts
        ]

    def step(self, index: int) -> DayState:
        """Advance to day ``index`` of the reanalysis and return that day's state."""
        r = self.reanalysis
        day = r.days[index]
        doy = day.timetuple().tm_yday
        if doy == 1 or index == 0:
            self.gdd[:] = 0.0
            self.senescing[:] = False
            self._new_year(day.year, first=index == 0)
        if ramp_day(doy):
            self._ramp(doy / RAMP_DAYS)
        tair = self.sample(r.tair[index]) + self.dt_lapse
        tdew = np.minimum(self.sample(r.tdew[index]) + self.dtdew_lapse, tair)
        vpd = np.maximum(esat(tair) - esat(tdew), 0.0)
        sw = self.sample(r.shortwave[index])
        precip = self.sample(r.precipitation[index]) * self.rain_factor
        cloud = float(r.cloud[index].mean())

        # Snow and the soil bucket.
        snowfall = np.where(tair < 1.0, precip, 0.0)
        self.swe += snowfall
        melt = np.minimum(self.swe, 3.0 * np.maximum(tair, 0.0))
        self.swe -= melt
        snow_cover = np.minimum(self.swe / 15.0, 1.0)
        liquid = precip - snowfall + melt

        # Phenology of natural vegetation.
        self.gdd += np.maximum(tair - 5.0, 0.0)
        self.t_ema += (tair - self.t_ema) / 10.0
        self.senescing |= (doy > 215) & (self.t_ema < self.t_off)
        growing = (self.gdd > self.gdd_on) & ~self.senescing
        self.green = np.clip(
            self.green + np.where(growing, self.up, 0.0) - np.where(self.senescing, self.down, 0.0),
            0.0,
            1.0,
        )
        lai = self.lai_min + (self.lai_max - self.lai_min) * self.green
        flooded = np.zeros(self.shape, bool)
        if self.fields.index.size:
            # Crops take their parameters from the crop in their parcel; all of them when
            # the stands' ramp has rewritten ε.
            params = {
                "eps": self.eps,
                "tmin": self.tmin,
                "topt": self.topt,
                "tmax": self.tmax,
                "vpd_close": self.vpd_close,
            }
            flooded = self.fields.step(doy, tair, self.gdd, self.t_ema, lai, params, ramp_day(doy))
        fapar = 0.95 * (1.0 - np.exp(-0.5 * lai))

        # Light on the slope at noon: direct beam by incidence, diffuse by sky view.
        decl = 0.409 * np.sin(2 * np.pi * doy / 365.0 - 1.39)
        zenith = np.radians(self.lat) - decl
        cos_i = np.cos(zenith) * self.cos_slope + np.sin(zenith) * self.sin_slope_south
        diffuse = 0.25 + 0.6 * cloud
        direct = (1 - diffuse) / np.cos(zenith)
        # Capped: noon incidence overstates a steep south slope's daily gain.
        terrain = np.minimum(direct * np.maximum(cos_i, 0.0) + diffuse * self.sky_view, 1.3)
        par = (0.45 * sw) * terrain

        pet = 0.0135 * (tair + 17.8) * sw / 2.45 * (0.25 + 0.75 * fapar)
        wetness = self.soil_water * self.per_bucket
        self.soil_water = np.clip(
            self.soil_water + liquid - pet * np.minimum(2.0 * wetness, 1.0), 0.0, self.bucket
        )
        self.soil_water[flooded] = self.bucket[flooded]
        wetness = self.soil_water * self.per_bucket
        f_water = np.clip(2.5 * wetness, 0.1, 1.0)

        f_t = np.where(
            tair < self.topt,
            (tair - self.tmin) / (self.topt - self.tmin),
            (self.tmax - tair) / (self.tmax - self.topt),
        )
        f_t = np.clip(f_t, 0.0, 1.0)
        f_vpd = np.clip((self.vpd_close - vpd) / (self.vpd_close - VPD_OPEN), 0.0, 1.0)
        under_snow = np.where(self.forest, 0.0, 0.8 * snow_cover)
        # Diffuse light is used more efficiently than direct (the cloudiness-index LUE of
        # Wang et al. 2015): ε falls to 65 % of its value under a clear sky.
        eps = self.eps * (0.65 + 0.35 * cloud)
        gpp = eps * fapar * par * f_t * f_vpd * f_water * self.frac_veg * (1 - under_snow)

        snow_seen = snow_cover * np.where(self.forest, 0.35, 1.0)
        return DayState(
            gpp=gpp.astype("float32"),
            lai=lai.astype("float32"),
            fapar=fapar.astype("float32"),
            tair=tair.astype("float32"),
            vpd=vpd.astype("float32"),
            shortwave=sw.astype("float32"),
            precipitation=precip.astype("float32"),
            snow=snow_seen.astype("float32"),
            flooded=flooded,
            wetness=wetness.astype("float32"),
        )

    def _new_year(self, year: int, first: bool) -> None:
        """1 January: the stands' vigour, damage and green-up threshold of the year, and the
        parcels' plans and management."""
        green_up = self.stands.new_year(year, first)
        self.gdd_on = (self.gdd_on_type * green_up).astype("float32")
        self.fields.new_year(year)
        if first:
            self._ramp(1.0)

    def _ramp(self, weight: float) -> None:
        """Natural vegetation's LAI range and ε, ``weight`` of the way from last year's stand
        factors to this year's."""
        lai_factor, eps_factor = self.stands.factors(weight)
        self.lai_max = self.lai_max_type * lai_factor
        self.lai_min = self.lai_min_type * lai_factor
        self.eps = self.eps_type * eps_factor

    def reflectance(self, day: DayState, factor: int = 1) -> np.ndarray:
        """Clear-sky surface reflectance (band, y, x) in :data:`BANDS` order, on the 30 m grid
        (``factor`` 1) or on blocks of ``factor`` x ``factor`` pixels (state and end-members
        averaged over the block first: MODIS only needs it for its point-spread function)."""
        veg, water, built, canopy, soil = self._members(factor)
        lai, flooded, snow, wet = (
            block_mean(a, factor) for a in (day.lai, day.flooded, day.snow, day.wetness)
        )
        soil_scale = soil * (1.0 - 0.25 * wet)
        out = np.empty((len(BANDS), *lai.shape), dtype="float32")
        cover = {}
        for b in range(len(BANDS)):
            c = float(_EXTINCTION[b])
            if c not in cover:
                cover[c] = np.exp(-c * lai)
            background = _SOIL[b] * soil_scale
            background += flooded * (_WATER[b] - background)
            value = veg * (canopy[b] + (background - canopy[b]) * cover[c])
            value += water * _WATER[b] + built * _BUILT[b]
            out[b] = value + (_SNOW[b] - value) * snow
        return out

    def _members(self, factor: int):
        if factor not in self._member_cache:
            self._member_cache[factor] = tuple(
                block_mean(a, factor)
                for a in (
                    self.frac_veg,
                    self.frac_water,
                    self.frac_built,
                    self.canopy,
                    self.soil_brightness,
                )
            )
        return self._member_cache[factor]


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean over blocks of ``factor`` x ``factor`` of the last two axes (float32)."""
    values = np.asarray(values)
    if factor == 1:
        return values.astype("float32", copy=False)
    # Strided sums: several times faster than reshape(...).mean() on large arrays.
    total = np.zeros(
        (*values.shape[:-2], values.shape[-2] // factor, values.shape[-1] // factor), "float32"
    )
    for dy in range(factor):
        for dx in range(factor):
            total += values[..., dy::factor, dx::factor]
    total *= 1.0 / factor**2
    return total
