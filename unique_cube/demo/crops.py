"""The fields of the demo world: crops, their yearly plans and each parcel's calendar.

Cropland and paddy are cut into parcels (:attr:`.Terrain.parcels_10m`); each 30 m pixel follows
the parcel that covers most of it (:class:`Fields`). Every parcel has a *plan* each year —
maize, soybean, rice, winter barley followed by soybean or late rice, spring potato followed by
autumn cabbage, or fallow — kept or changed from the year before (:data:`PLANS`). A first crop
is sown (rice transplanted) a farmer's wait of up to two weeks after the parcel's degree-days
since 1 January pass the crop's threshold; it develops with temperature (:class:`Crop`),
reaches a peak LAI of its own that year, ripens, and is harvested some days after maturity (or
by the farmer's last date); a second crop follows the first's harvest, winter barley is sown in
October for the next year. Paddies are flooded from a week before transplanting until the grain
ripens. Bare and fallow parcels carry weeds. The parcels' days are kept by :class:`Parcels`;
:class:`.vegetation.Canopy` turns the crops' LAI and light-use parameters into GPP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .terrain import make_parcels
from .world import Area

__all__ = ["CROPS", "PLANS", "Crop", "Fields", "Parcels"]


@dataclass(frozen=True)
class Crop:
    """A crop of the fields: its development by temperature, and its light-use parameters.

    Development (0 at sowing or transplanting, 1 at maturity) advances each day by
    clip((T - base_t) / (opt_t - base_t), 0, 1) / days; from half-way on, by at least half of
    that (shortening days hasten ripening), so a cool autumn delays harvest without stalling it.
    """

    name: str
    base_t: float
    """Temperature (°C) below which it does not develop."""
    opt_t: float
    """Temperature (°C) from which it develops fastest."""
    days: float
    """Days from sowing to maturity at ``opt_t`` or warmer."""
    half_cover: float
    """Development stage at which it reaches half its peak LAI."""
    juvenile: float
    """Share of the peak LAI a young crop already has (winter barley's tillers)."""
    lai: float
    """Mean peak LAI (each parcel's varies from year to year)."""
    eps: float
    """Light-use efficiency (gC per MJ APAR)."""
    tmin: float
    topt: float
    tmax: float
    """Temperatures (°C) of no, best and again no photosynthesis."""
    vpd_close: float
    """VPD (kPa) at which stomata close."""
    sow_gdd: float
    """As a first crop: sown (paddies flooded) once degree-days (base 5 °C) since 1 January
    pass this, after the farmer's wait of the year."""
    sow_day: int
    """As a second (or autumn-sown) crop: sown from this day of year on, once the field is free."""
    last_day: int
    """Harvested by this day of year at the latest (by some farmers two weeks earlier)."""
    rice: bool = False
    """Grown flooded."""


# Tuned to the sowing and harvest dates of central Korea in an average year: maize early May
# to early September, soybean late May to mid October, rice transplanted late May and harvested
# early October (late rice after barley: late June to mid October), winter barley sown in
# October and harvested early June, spring potato April to June, autumn cabbage late August to
# November.
#: The crops, by code (the index); the last one, weeds, is what grows on bare or fallow fields.
CROPS: tuple[Crop, ...] = (
    #    name          base opt days half juv  LAI   ε   Tmin  Topt  Tmax  VPD  GDD  day last
    Crop("winter_barley", 0, 20, 79, 0.60, 0.15, 3.6, 2.0, -2, 17, 32, 3.5, 0, 285, 190),
    Crop("maize", 8, 28, 101, 0.30, 0.0, 4.8, 2.3, 8, 27, 40, 4.2, 230, 0, 290),
    Crop("soybean", 10, 26, 114, 0.35, 0.0, 4.0, 2.1, 7, 25, 38, 3.8, 500, 0, 305),
    Crop("rice", 10, 24, 121, 0.30, 0.06, 5.0, 2.2, 8, 27, 40, 4.5, 400, 0, 310, True),
    Crop("late_rice", 10, 24, 106, 0.30, 0.06, 4.5, 2.2, 8, 27, 40, 4.5, 0, 0, 315, True),
    Crop("potato", 5, 20, 59, 0.35, 0.0, 3.2, 2.1, 3, 19, 32, 3.5, 70, 0, 200),
    Crop("cabbage", 5, 20, 62, 0.40, 0.0, 3.4, 2.0, 1, 18, 32, 3.5, 0, 228, 340),
    Crop("weeds", 5, 20, 1, 0.50, 0.0, 1.0, 1.9, 0, 22, 38, 3.8, 0, 0, 366),
)
_CODE = {crop.name: code for code, crop in enumerate(CROPS)}
_BARLEY, _RICE, _LATE_RICE, _WEEDS = (
    _CODE[name] for name in ("winter_barley", "rice", "late_rice", "weeds")
)
_NONE = -1

#: A parcel's plan for a year: (first crop, second crop, share of upland parcels, share of
#: paddies). Winter barley is sown the autumn before; ``None, None`` is fallow.
PLANS: tuple[tuple[str | None, str | None, float, float], ...] = (
    ("maize", None, 0.40, 0.0),
    ("soybean", None, 0.18, 0.05),
    ("winter_barley", "soybean", 0.12, 0.0),
    ("potato", "cabbage", 0.18, 0.0),
    ("rice", None, 0.0, 0.78),
    ("winter_barley", "late_rice", 0.0, 0.10),
    (None, None, 0.12, 0.07),
)
# Chance that a parcel keeps last year's plan (otherwise drawn afresh): uplands rotate more.
_KEEP_PLAN = {"upland": 0.4, "paddy": 0.85}
# Farmers' timing, drawn per parcel and year (days, from-to): the wait after the sowing
# threshold (and after the earliest day of a second crop), from harvest to the next sowing,
# from maturity to harvest; paddies are flooded this much longer before transplanting.
_WAIT_DAYS, _GAP_DAYS, _HARVEST_DELAY, _FLOOD_LEAD_DAYS = (0, 15), (3, 13), (0, 13), 6
_PEAK_SD = 0.15  # relative sd of a parcel's peak LAI from year to year
_PEAK_RANGE = (0.6, 1.35)  # with the parcel's fertility, of the crop's mean
_RIPENING_FLOOR = 0.5  # least development rate from half-way on
_WINTER_STAGE = 0.27  # winter barley on 1 January, sown the October before


def _table(field: str) -> np.ndarray:
    return np.array([getattr(crop, field) for crop in CROPS], dtype="float64")


_C_BASE, _C_OPT, _C_DAYS, _C_HALF, _C_JUVENILE, _C_LAI = (
    _table(f) for f in ("base_t", "opt_t", "days", "half_cover", "juvenile", "lai")
)
_C_SOW_GDD, _C_SOW_DAY, _C_LAST_DAY = (_table(f) for f in ("sow_gdd", "sow_day", "last_day"))
_C_RICE = _table("rice").astype(bool)
_C_GPP = {f: _table(f) for f in ("eps", "tmin", "topt", "tmax", "vpd_close")}
_PLAN_FIRST = np.array([_CODE.get(first, _NONE) for first, *_ in PLANS])
_PLAN_SECOND = np.array([_CODE.get(second, _NONE) for _, second, *_ in PLANS])
_PLAN_SHARE = {
    "upland": np.array([plan[2] for plan in PLANS]),
    "paddy": np.array([plan[3] for plan in PLANS]),
}
_FALLOW = next(i for i, plan in enumerate(PLANS) if plan[0] is None)

# Topics of the yearly random streams (with the canopy's seed and the year); topic 3 is the
# stands' (.stands).
_PLAN_STREAM, _MANAGEMENT_STREAM, _FERTILITY_STREAM = 1, 2, 4
# Where a parcel is in its year.
_WAITING, _FIRST, _BETWEEN, _SECOND, _DONE, _AUTUMN = range(6)


def _stream(seed: int, year: int, topic: int) -> np.random.Generator:
    """The random stream of one topic and year: the same whatever was drawn before."""
    return np.random.default_rng([seed, year, topic])


def _dominant(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The most common non-zero id of each 3 x 3 block of a 10 m id map (0 where none)."""
    ny, nx = shape
    cells = ids.reshape(ny, 3, nx, 3).transpose(0, 2, 1, 3).reshape(ny, nx, 9)
    votes = np.zeros(cells.shape, "int8")
    for j in range(9):
        votes += cells == cells[..., j : j + 1]
    votes[cells == 0] = 0
    best = votes.argmax(axis=-1)
    return np.take_along_axis(cells, best[..., None], axis=-1)[..., 0]


class Parcels:
    """The crops of the field parcels, day by day: vectors over the parcels (0: no parcel,
    always bare). ``upland`` says which parcels are upland (the others are paddies); the
    parcels' years are drawn from streams of (``seed``, the year)."""

    def __init__(self, upland: np.ndarray, seed: int, first_year: int):
        n = upland.size
        self.upland, self.seed, self.first_year = upland, seed, first_year
        self._plans: dict[int, np.ndarray] = {}
        # A parcel's lasting fertility: its share of the crop's peak LAI, every year.
        fertility = _stream(seed, 0, _FERTILITY_STREAM).lognormal(0.0, 0.08, n)
        self.fertility = np.clip(fertility, 0.8, 1.25)
        self.crop = np.full(n, _NONE)
        """The crop in the field (code in :data:`CROPS`; -1: none)."""
        self.phase = np.full(n, _WAITING)
        self.stage = np.zeros(n)
        """Development of the crop in the field (0: sown, 1: mature)."""
        self.ready_days = np.zeros(n, int)
        self.ripe_days = np.zeros(n, int)
        self.since_harvest = np.zeros(n, int)
        self.peak = np.zeros(n)
        self.delay = np.zeros(n, int)
        self.weed_green = np.zeros(n)

    def plan(self, year: int) -> np.ndarray:
        """Each parcel's plan (index in :data:`PLANS`) of ``year``: last year's, or a new
        one drawn from the shares of its kind of land."""
        if year not in self._plans:
            rng = _stream(self.seed, year, _PLAN_STREAM)
            n = self.upland.size
            drawn = np.where(
                self.upland,
                rng.choice(len(PLANS), n, p=_PLAN_SHARE["upland"]),
                rng.choice(len(PLANS), n, p=_PLAN_SHARE["paddy"]),
            )
            if year >= self.first_year:
                keep = np.where(self.upland, _KEEP_PLAN["upland"], _KEEP_PLAN["paddy"])
                drawn = np.where(rng.random(n) < keep, self.plan(year - 1), drawn)
            drawn[0] = _FALLOW
            self._plans[year] = drawn
        return self._plans[year]

    def new_year(self, year: int) -> None:
        """1 January: the year's plans and each farmer's timing and yields."""
        rng = _stream(self.seed, year, _MANAGEMENT_STREAM)
        n = self.upland.size
        plan = self.plan(year)
        self.first, self.second = _PLAN_FIRST[plan], _PLAN_SECOND[plan]
        self.next_first = _PLAN_FIRST[self.plan(year + 1)]
        self.wait = rng.integers(*_WAIT_DAYS, n) + np.where(
            _C_RICE[self.first] & (self.first != _NONE), _FLOOD_LEAD_DAYS, 0
        )
        self.gap = rng.integers(*_GAP_DAYS, n)
        self.delays = rng.integers(*_HARVEST_DELAY, (2, n))
        peaks = rng.lognormal(0.0, _PEAK_SD, (2, n)) * self.fertility
        self.peaks = np.clip(peaks, *_PEAK_RANGE)
        self.weed_peak = np.where(self.first == _NONE, rng.uniform(0.8, 2.0, n), 0.25)
        self.weed_peak[0] = 0.0
        # Winter barley sown last autumn stays (in the first year it is taken as sown);
        # anything else still standing is cleared.
        barley = self.first == _BARLEY
        unsown = barley & (self.crop != _BARLEY)
        self.stage = np.where(unsown, _WINTER_STAGE, self.stage)
        self.crop = np.where(barley, _BARLEY, _NONE)
        self.phase = np.where(barley, _FIRST, _WAITING)
        self.peak = np.where(barley, _C_LAI[_BARLEY] * self.peaks[0], 0.0)
        self.delay = self.delays[0].copy()
        self.ready_days[:] = 0
        self.ripe_days[:] = 0

    def _sow(self, where: np.ndarray, crop, peak: np.ndarray, delay, phase: int) -> None:
        self.crop = np.where(where, crop, self.crop)
        self.stage = np.where(where, 0.0, self.stage)
        self.ripe_days = np.where(where, 0, self.ripe_days)
        self.peak = np.where(where, _C_LAI[crop] * peak, self.peak)
        self.delay = np.where(where, delay, self.delay)
        self.phase = np.where(where, phase, self.phase)

    def step(
        self, doy: int, tair: np.ndarray, gdd: np.ndarray, t_ema: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One day of every parcel, given its air temperature, degree-days (base 5 °C) since
        1 January and 10-day mean temperature: (LAI, crop code or weeds, flooded)."""
        first, second = self.first, self.second
        growing = self.crop != _NONE
        crop = self.crop
        rate = np.clip((tair - _C_BASE[crop]) / (_C_OPT[crop] - _C_BASE[crop]), 0.0, 1.0)
        rate = np.where(self.stage >= 0.5, np.maximum(rate, _RIPENING_FLOOR), rate)
        self.stage += np.where(growing, rate / _C_DAYS[crop], 0.0)
        self.since_harvest += 1

        # A first crop is sown some days after the parcel's spring is warm enough.
        waiting = (self.phase == _WAITING) & (first != _NONE)
        self.ready_days += waiting & (gdd >= _C_SOW_GDD[first])
        self._sow(waiting & (self.ready_days > self.wait), first, self.peaks[0], self.delays[0],
                  _FIRST)  # fmt: skip

        # Harvest: some days after maturity, or by the crop's last day (the farmer's).
        growing = self.crop != _NONE
        self.ripe_days += growing & (self.stage >= 1.0)
        this_year = (self.phase == _FIRST) | (self.phase == _SECOND)
        harvest = growing & this_year
        harvest &= (self.ripe_days > self.delay) | (doy >= _C_LAST_DAY[self.crop] - self.wait)
        self.crop = np.where(harvest, _NONE, self.crop)
        self.phase = np.where(harvest, self.phase + 1, self.phase)
        self.since_harvest = np.where(harvest, 0, self.since_harvest)

        # A second crop follows once the field has been free a few days.
        sow = (self.phase == _BETWEEN) & (second != _NONE) & (self.since_harvest >= self.gap)
        sow &= doy >= _C_SOW_DAY[second] + self.wait
        self._sow(sow, second, self.peaks[1], self.delays[1], _SECOND)

        # Winter barley for next year, on a field free in autumn.
        free = (self.phase == _DONE) | ((self.phase == _BETWEEN) & (second == _NONE))
        free = (self.crop == _NONE) & (free | (first == _NONE))
        sow = free & (self.next_first == _BARLEY)
        sow &= doy >= _C_SOW_DAY[_BARLEY] + self.wait
        self._sow(sow, _BARLEY, self.fertility, 0, _AUTUMN)

        growing = self.crop != _NONE
        crop = np.where(growing, self.crop, _WEEDS)
        growth = 1.0 / (1.0 + np.exp(-(self.stage - _C_HALF[crop]) / 0.07))
        ripening = np.clip(1.0 - 2.0 * (self.stage - 0.7), 0.4, 1.0)  # yellowing from 70 %
        young = _C_JUVENILE[crop] * np.minimum(self.stage / 0.2, 1.0)
        crop_lai = self.peak * np.maximum(growth * ripening, young)
        # Weeds green up and die back as grass does.
        autumn = (doy > 215) & (t_ema < 11.0)
        change = np.where(autumn, -1.0 / 30.0, np.where(gdd >= 150.0, 1.0 / 30.0, 0.0))
        self.weed_green = np.clip(self.weed_green + change, 0.0, 1.0)
        lai = np.where(growing, crop_lai, self.weed_peak * self.weed_green)

        # Paddies: flooded from a week before transplanting until some weeks before harvest.
        flooded = growing & _C_RICE[crop] & (self.stage < 0.85)
        flooded |= (self.phase == _WAITING) & (first == _RICE) & (self.ready_days > 0)
        late_rice = (self.phase == _BETWEEN) & (second == _LATE_RICE)
        flooded |= late_rice & (self.since_harvest >= self.gap - _FLOOD_LEAD_DAYS)
        return lai, crop, flooded


class Fields:
    """The crop pixels of areas stacked top to bottom (``crop``, a mask), each following the
    parcel that covers most of it: their parcels, and their LAI and light-use parameters day
    by day. ``vigour`` and ``site`` (per pixel) are the pixels' share of the crop's peak LAI
    and their area's own factors on ε and VPD closure and shift of the optimum temperature
    (drawn by :class:`.vegetation.Canopy`); ``rng`` cuts the parcels of an area that has
    none."""

    def __init__(
        self,
        areas: list[Area],
        crop: np.ndarray,
        vigour: np.ndarray,
        site: dict[str, np.ndarray],
        rng: np.random.Generator,
        seed: int,
        first_year: int,
    ):
        ny, nx = crop.shape
        self.index = np.flatnonzero(crop)
        """The crop pixels (flat indices)."""
        ids10, offset = [], 0
        for area in areas:
            parcels = area.terrain.parcels_10m
            if parcels is None:
                parcels = make_parcels(area.terrain.pft_10m, rng)
            ids10.append(np.where(parcels > 0, parcels.astype("int64") + offset, 0))
            offset += int(parcels.max())
        ids10 = np.concatenate(ids10)
        upland_10m = np.zeros(offset + 1, dtype=bool)
        upland_10m[ids10] = np.concatenate([area.terrain.pft_10m for area in areas]) == 4
        dominant = np.where(crop, _dominant(ids10, (ny, nx)), 0).ravel()
        labels, first_pixel, parcel = np.unique(dominant, return_index=True, return_inverse=True)
        if labels[0] != 0:  # every pixel is in a parcel: id 0 (none) is still reserved
            labels, first_pixel, parcel = np.r_[0, labels], np.r_[0, first_pixel], parcel + 1
        self.parcel = parcel.reshape(ny, nx).astype("int32")
        """Each pixel's parcel (0: none), an index into the parcels' state."""
        # A pixel of each parcel (flat index), where the parcel's weather is read.
        self.parcel_pixel = first_pixel
        self.crop_parcel = self.parcel.ravel()[self.index]
        self.crop_vigour = vigour.ravel()[self.index]
        self.site = {name: values.ravel()[self.index] for name, values in site.items()}
        self.parcels = Parcels(upland_10m[labels], seed, first_year)
        self._codes = np.full(self.parcel_pixel.size, -2)  # none yet

    def new_year(self, year: int) -> None:
        """1 January: the parcels' plans and management of ``year``."""
        self.parcels.new_year(year)

    def step(
        self,
        doy: int,
        tair: np.ndarray,
        gdd: np.ndarray,
        t_ema: np.ndarray,
        lai: np.ndarray,
        params: dict[str, np.ndarray],
        rewrite: bool,
    ) -> np.ndarray:
        """The parcels' day (at each parcel's pixel), mapped onto the crop pixels: their LAI
        (into ``lai``) and light-use parameters (into ``params``: ``eps``, ``tmin``, ``topt``,
        ``tmax``, ``vpd_close``; those of the pixels whose crop changed, of all when
        ``rewrite``), all contiguous arrays of the pixels' shape written in place; returns the
        flooded pixels. ``tair``, ``gdd`` (base 5 °C, since
        1 January) and ``t_ema`` (10-day mean temperature) are per pixel."""
        at = self.parcel_pixel
        lai_p, crop_p, flooded_p = self.parcels.step(
            doy, tair.ravel()[at], gdd.ravel()[at], t_ema.ravel()[at]
        )
        pixels, of = self.index, self.crop_parcel
        lai.ravel()[pixels] = lai_p[of] * self.crop_vigour
        changed = crop_p != self._codes
        if rewrite:
            changed[:] = True
        if changed.any():
            self._codes = crop_p
            which = np.flatnonzero(changed[of])
            at, crop = pixels[which], crop_p[of[which]]
            site = {name: values[which] for name, values in self.site.items()}
            params["eps"].ravel()[at] = _C_GPP["eps"][crop] * site["eps"]
            params["tmin"].ravel()[at] = _C_GPP["tmin"][crop]
            params["topt"].ravel()[at] = _C_GPP["topt"][crop] + site["topt"]
            params["tmax"].ravel()[at] = _C_GPP["tmax"][crop]
            params["vpd_close"].ravel()[at] = _C_GPP["vpd_close"][crop] * site["vpd_close"]
        flooded = np.zeros(lai.shape, bool)
        flooded.ravel()[pixels] = flooded_p[of]
        return flooded
