"""How repeatable the demo world's truth is from one year to the next.

A downscaler that learns only "this pixel looks like it did on the same day last year" would
score well on a world whose within-block patterns repeat exactly each year. The real world does
not: crops rotate, sowing dates move with the spring and the farmer, stands are thinned. The
*last-year analog* measures this on the truth itself: the share of its within-block variance in
May–June (the season of the largest field-to-field contrasts) that the same day of the previous
year explains. The simulation reports it in ``world.json`` as ``last_year_analog_r2``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

__all__ = ["SEASON_MONTHS", "LastYearAnalog", "within_block"]

#: Months whose days are compared with last year's (May and June).
SEASON_MONTHS = (5, 6)


def within_block(values: np.ndarray, block: int) -> np.ndarray:
    """``values`` (H, W) less the mean of its ``block`` x ``block`` block (float32).

    NaN pixels stay NaN and are left out of their block's mean; edge blocks may be partial.
    """
    values = np.asarray(values, dtype="float32")
    ny, nx = values.shape
    by, bx = -(-ny // block), -(-nx // block)
    padded = np.full((by * block, bx * block), np.nan, dtype="float32")
    padded[:ny, :nx] = values
    tiles = padded.reshape(by, block, bx, block)
    finite = np.isfinite(tiles)
    count = finite.sum(axis=(1, 3))
    total = np.where(finite, tiles, 0.0).sum(axis=(1, 3), dtype="float64")
    mean = (total / np.maximum(count, 1)).astype("float32")
    return (tiles - mean[:, None, :, None]).reshape(padded.shape)[:ny, :nx]


class LastYearAnalog:
    """Share of within-block truth variance in May–June explained by the same day of year last
    year.

    Feed it the region's truth of every day in order (:meth:`record`); :meth:`r2` is the squared
    correlation of the pooled within-block anomalies of each May–June day and of its twin a year
    earlier (same month and day), over the pixels finite on both days. Only the current and the
    previous May–June are kept (float32 anomalies), each twin dropped once it has been used.
    """

    def __init__(self, block: int = 16):
        if block < 2:
            raise ValueError(f"blocks must be at least 2 pixels wide, got {block}")
        self.block = block
        self._year: int | None = None
        self._this_year: dict[tuple[int, int], np.ndarray] = {}
        self._last_year: dict[tuple[int, int], np.ndarray] = {}
        # Pooled sums over the pairs: n, Σx, Σy, Σx², Σy², Σxy (x: last year, y: this year).
        self._sums = np.zeros(6, dtype="float64")

    def record(self, day: dt.date, gpp: np.ndarray) -> None:
        """Take the region's truth (H, W) of ``day``; days must come in order."""
        if self._year is None or day.year != self._year:
            if self._year is not None and day.year < self._year:
                raise ValueError(f"{day} comes before the days already recorded")
            self._last_year = self._this_year if self._year == day.year - 1 else {}
            self._this_year = {}
            self._year = day.year
        if day.month not in SEASON_MONTHS:
            return
        key = (day.month, day.day)
        anomaly = within_block(gpp, self.block)
        self._this_year[key] = anomaly
        twin = self._last_year.pop(key, None)
        if twin is None:
            return
        both = np.isfinite(anomaly) & np.isfinite(twin)
        x = twin[both].astype("float64")
        y = anomaly[both].astype("float64")
        self._sums += (x.size, x.sum(), y.sum(), x @ x, y @ y, x @ y)

    def r2(self) -> float | None:
        """The squared correlation so far; None if no May–June day has had a twin."""
        n, sx, sy, sxx, syy, sxy = self._sums
        if n < 2:
            return None
        cov = sxy - sx * sy / n
        var_x = sxx - sx * sx / n
        var_y = syy - sy * sy / n
        if var_x <= 0 or var_y <= 0:
            return None
        return float(cov * cov / (var_x * var_y))
