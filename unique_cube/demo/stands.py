"""Stands of the demo world's natural vegetation (forests, grassland) and their years.

The vegetation is a mosaic of stands of about 4 ha (:data:`STAND_SIDE_M`), each with a vigour
(its peak LAI; a weak stand's ε too) that drifts from year to year (an AR(1) in years), its own
green-up threshold each year, and — in the forest, a few stands a year — a thinning or storm
damage that removes leaves and recovers over the following years. A year's changes come in over
January–March (:func:`ramp_day`). :class:`StandYears` keeps the stands' years,
:class:`Stands` maps them onto the pixels of :class:`.vegetation.Canopy`.
"""

from __future__ import annotations

import numpy as np

from .terrain import tessellate
from .world import Area

__all__ = ["RAMP_DAYS", "STAND_SIDE_M", "StandYears", "Stands", "ramp_day"]

# Stands of natural vegetation: side (m); vigour (relative sd and range of the peak LAI,
# year-to-year correlation; a weak stand's ε falls by half as much); the green-up threshold's
# relative sd from year to year; disturbances (share of forest stands a year, share of the
# leaves removed, share of the damage left after a year).
STAND_SIDE_M = 200.0
_VIGOUR_SD, _VIGOUR_RANGE, _VIGOUR_RHO = 0.12, (0.7, 1.3), 0.6
_GREEN_UP_SD = 0.08
_DISTURBED, _SEVERITY, _DAMAGE_KEPT = 0.03, (0.25, 0.65), 0.7
#: A year's new vigour and damage come in over the first days of the year (January-March)...
RAMP_DAYS = 91
_RAMP_STEP = 7  # ...a step a week.
# Topic of the stands' yearly random streams (with the canopy's seed and the year); 1, 2 and 4
# are the crops' (.crops).
_STAND_STREAM = 3


def _stream(seed: int, year: int) -> np.random.Generator:
    """The stands' random stream of a year: the same whatever was drawn before."""
    return np.random.default_rng([seed, year, _STAND_STREAM])


def ramp_day(doy: int) -> bool:
    """Whether natural vegetation takes a step towards the year's stand factors on day of year
    ``doy`` (then ``doy`` / :data:`RAMP_DAYS` of the way)."""
    return doy <= RAMP_DAYS and doy % _RAMP_STEP == 0


class Stands:
    """The stands of areas stacked top to bottom (cells of a few hectares in each area, cut
    with ``rng``): each pixel's factors on the LAI range, ε and green-up threshold of its type
    from its stand's year (damage only where ``forest``)."""

    def __init__(
        self,
        areas: list[Area],
        forest: np.ndarray,
        rng: np.random.Generator,
        seed: int,
        first_year: int,
    ):
        stands, offset = [], 0
        for area in areas:
            cells = tessellate(area.shape, STAND_SIDE_M / 30.0, rng)
            stands.append(cells + offset)
            offset += int(cells.max())
        self.stand = np.concatenate(stands)
        """Each pixel's stand id."""
        self.forest = forest
        self.years = StandYears(offset + 1, seed, first_year)
        # The factors on LAI and ε: last year's, this year's (ramped between).
        self._factors: tuple[np.ndarray, ...] | None = None

    def new_year(self, year: int, first: bool) -> np.ndarray:
        """1 January of ``year`` (``first``: the first simulated): the stands' vigour and damage
        become the factors :meth:`factors` ramps to; returns each pixel's green-up threshold
        factor."""
        vigour, damage, green_up = self.years.year(year)
        damage = damage[self.stand] * self.forest
        lai_factor = vigour[self.stand] * (1.0 - damage)
        # A weak stand photosynthesises less; a vigorous one has more leaves, not a better ε.
        eps_factor = 1.0 + 0.5 * np.minimum(vigour[self.stand] - 1.0, 0.0)
        target = (lai_factor.astype("float32"), eps_factor.astype("float32"))
        previous = target if first or self._factors is None else self._factors[2:]
        self._factors = (*previous, *target)
        return green_up[self.stand]

    def factors(self, weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Each pixel's factors on its type's LAI range and ε, ``weight`` of the way from last
        year's to this year's."""
        lai_from, eps_from, lai_to, eps_to = self._factors
        return lai_from + (lai_to - lai_from) * weight, eps_from + (eps_to - eps_from) * weight


class StandYears:
    """The stands' year-to-year state: vectors over ``n`` stand ids. Vigour is an AR(1) in
    years; a few forest stands a year are thinned or damaged and recover over the next years.
    Each year is drawn from a stream of (``seed``, the year)."""

    def __init__(self, n: int, seed: int, first_year: int):
        self.n, self.seed, self.first_year = n, seed, first_year
        self._year: int | None = None

    def year(self, year: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vigour factor, share of leaves lost, green-up threshold factor) of ``year``."""
        if self._year is None or year != self._year + 1:
            # From the same start every time: six years before the first, spun up.
            start = min(year, self.first_year) - 6
            rng = _stream(self.seed, start)
            self.anomaly = _VIGOUR_SD * rng.standard_normal(self.n)
            self.damage = np.zeros(self.n)
            self._year = start
            for spin_up in range(start + 1, year):
                self._advance(spin_up)
        self._advance(year)
        vigour = np.clip(1.0 + self.anomaly, *_VIGOUR_RANGE)
        return vigour, self.damage, self.green_up

    def _advance(self, year: int) -> None:
        rng = _stream(self.seed, year)
        shock = rng.standard_normal(self.n)
        hit = rng.random(self.n) < _DISTURBED
        severity = rng.uniform(*_SEVERITY, self.n)
        self.green_up = 1.0 + _GREEN_UP_SD * rng.standard_normal(self.n)
        rho = _VIGOUR_RHO
        self.anomaly = rho * self.anomaly + np.sqrt(1 - rho**2) * _VIGOUR_SD * shock
        kept = self.damage * _DAMAGE_KEPT
        self.damage = np.where(hit, np.maximum(kept, severity), kept)
        self._year = year
