"""The strata the daily product is scored by: season, land cover, slope, whether GPP_M was
observed that day, and the days since the pixel's last clear 30 m observation.

Each stratum maps a day's pixels to class labels (:class:`Strata`); :class:`Scoreboard`
keeps running scores per (stratum, class, method), so a year of 30 m days is scored one day
at a time.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from unique_cube.scores import SEASONS, Moments

__all__ = [
    "AGE_BINS",
    "SEASONS",
    "SLOPE_CLASSES",
    "ClearHistory",
    "Scoreboard",
    "Strata",
    "age_classes",
    "season",
    "slope_classes",
]

#: Slope classes (degrees): upper bounds and labels.
SLOPE_CLASSES = ((5.0, "lt5"), (15.0, "5to15"), (np.inf, "gt15"))
#: Days since the pixel's last clear 30 m observation: upper bounds (inclusive) and labels;
#: "never" where no clear observation was seen in the history read.
AGE_BINS = ((0, "0"), (8, "1-8"), (16, "9-16"), (32, "17-32"), (np.inf, "gt32"))


def season(day: dt.date) -> str:
    return SEASONS[day.month]


def slope_classes(slope_deg: np.ndarray) -> np.ndarray:
    """Label of each pixel's slope class (object array; "" where the slope is unknown)."""
    out = np.full(slope_deg.shape, "", dtype=object)
    low = -np.inf
    for high, label in SLOPE_CLASSES:
        out[(slope_deg >= low) & (slope_deg < high)] = label
        low = high
    return out


def age_classes(age_days: np.ndarray) -> np.ndarray:
    """Label of each pixel's days since its last clear observation (NaN: "never")."""
    out = np.full(age_days.shape, "never", dtype=object)
    low = -np.inf
    for high, label in AGE_BINS:
        out[(age_days > low) & (age_days <= high)] = label
        low = high
    return out


class ClearHistory:
    """When each pixel was last seen clear at 30 m, stepped forward day by day.

    ``dates`` are the HLS dates (sorted) and ``clear`` their (N, H, W) boolean masks."""

    def __init__(self, dates: Sequence[dt.date], clear: np.ndarray):
        order = np.argsort(np.array([d.toordinal() for d in dates]))
        self.dates = [dates[i] for i in order]
        self.clear = clear[order]
        self.last = np.full(clear.shape[1:], np.nan)
        self.applied = 0

    def age(self, day: dt.date) -> np.ndarray:
        """Days since each pixel's last clear observation up to and including ``day`` (NaN
        where none); days must be asked in order."""
        while self.applied < len(self.dates) and self.dates[self.applied] <= day:
            self.last[self.clear[self.applied]] = self.dates[self.applied].toordinal()
            self.applied += 1
        return day.toordinal() - self.last


@dataclass(frozen=True)
class Strata:
    """The static classes of the grid's pixels: land cover and slope (object arrays)."""

    land_cover: np.ndarray
    slope: np.ndarray

    @classmethod
    def of(cls, types: np.ndarray, classes: Mapping[int, str], slope_deg: np.ndarray) -> Strata:
        """From the dominant WorldCover code per pixel (0: none) and the slope in degrees."""
        names = np.full(types.shape, "", dtype=object)
        for code, name in classes.items():
            names[types == int(code)] = str(name)
        return cls(names, slope_classes(slope_deg))

    def of_day(self, day: dt.date, gap_filled: np.ndarray, age: np.ndarray) -> dict:
        """Every stratum's labels for one day: ``gap_filled`` (bool, GPP_M not observed that
        day) and ``age`` (days since the last clear observation) per pixel."""
        shape = self.slope.shape
        return {
            "season": np.full(shape, season(day), dtype=object),
            "land_cover": self.land_cover,
            "slope": self.slope,
            "gpp_m": np.where(gap_filled, "gap_filled", "observed").astype(object),
            "age": age_classes(age),
        }


class Scoreboard:
    """Running scores per (stratum, class, method) (:class:`~unique_cube.scores.Moments`)."""

    def __init__(self) -> None:
        self.moments: dict[tuple[str, str, str], Moments] = defaultdict(Moments)

    def add(self, labels: Mapping[str, np.ndarray], observed: np.ndarray,
            predictions: Mapping[str, np.ndarray]) -> None:  # fmt: skip
        """Add one day: the strata's labels, the observed map and each method's map (the
        same pixels for every method: those where all are finite)."""
        ok = np.isfinite(observed)
        for values in predictions.values():
            ok &= np.isfinite(values)
        for stratum, label in labels.items():
            for name in pd.unique(label[ok]):  # hashed: sorting object arrays is slow
                if name == "":
                    continue
                where = ok & (label == name)
                for method, values in predictions.items():
                    self.moments[(stratum, str(name), method)].add(observed[where], values[where])

    def table(self, min_n: int = 100) -> dict:
        """``{stratum: {class: {method: scores}}}`` for classes with at least ``min_n`` pixels."""
        out: dict = {}
        for (stratum, name, method), moments in sorted(self.moments.items()):
            if moments.n >= min_n:
                out.setdefault(stratum, {}).setdefault(name, {})[method] = moments.scores()
        return out
