"""The 30 m the product has already seen: the last clear GPP_L per pixel before a day.

A :class:`Reference` is, per 30 m pixel, the GPP_L of its last clear HLS date, that date, and
the bilinear GPP_M of that date (what the coarse field said when the pixel was last seen), so
that the fusion downscaler (:mod:`unique_cube.downscale.fusion`) can add the coarse change
since then; and the mean over the dates seen of GPP_L − GPP_M (the pixel's lasting departure
from the coarse field). :meth:`Reference.update` folds one HLS date in;
:func:`references_before` gives each date of a series the state folded from the dates of the
``max_days`` before it only, as the daily product folds it
(:meth:`unique_cube.product.reference.ReferenceStore.state`): a pixel last seen in another
season says little of today.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from unique_cube.errors import DownscaleError

__all__ = ["NEVER", "Reference", "references_before"]


NEVER = 0
"""The ``day`` of a pixel never seen clear (ordinals start at 1 on 0001-01-01)."""


@dataclass
class Reference:
    """Per pixel: the last clear GPP_L, its date (a proleptic ordinal) and GPP_M then."""

    gpp: np.ndarray
    """GPP_L of the last clear date (H, W), gC m-2 d-1; NaN where never seen."""
    day: np.ndarray
    """That date as ``date.toordinal()`` (H, W) int32; :data:`NEVER` where never seen."""
    gpp_m: np.ndarray
    """Bilinear GPP_M on that date (H, W); NaN where never seen."""
    offset_sum: np.ndarray
    """Sum over every clear date folded in of GPP_L − bilinear GPP_M (H, W)."""
    count: np.ndarray
    """How many clear dates were folded in (H, W)."""
    two_sided: bool = False
    """Folded from dates on both sides of the day made (a final day, :meth:`update` with
    ``towards``): each pixel's reference is its nearest clear date, before or after."""

    @classmethod
    def empty(cls, shape: tuple[int, int], two_sided: bool = False) -> Reference:
        return cls(np.full(shape, np.nan, "float32"), np.full(shape, NEVER, "int32"),
                   np.full(shape, np.nan, "float32"), np.zeros(shape, "float32"),
                   np.zeros(shape, "float32"), two_sided)  # fmt: skip

    @property
    def shape(self) -> tuple[int, int]:
        return self.gpp.shape

    def update(self, gpp_l: np.ndarray, gpp_m_30m: np.ndarray, day: dt.date,
               towards: dt.date | None = None) -> np.ndarray:  # fmt: skip
        """Take ``day``'s clear pixels (finite ``gpp_l``); returns the mask of those taken.
        An older date never overwrites a newer one; with ``towards`` (a two-sided state, the
        day being made) a date overwrites a pixel's reference when nearer to ``towards`` (on
        a tie the earlier date stays). Every clear date counts in the offset either way."""
        if gpp_l.shape != self.shape or gpp_m_30m.shape != self.shape:
            raise DownscaleError(f"a {gpp_l.shape} GPP_L map cannot update a reference state "
                                 f"of shape {self.shape} (another grid)")  # fmt: skip
        clear = np.isfinite(gpp_l) & np.isfinite(gpp_m_30m)
        if towards is not None:
            target = towards.toordinal()
            nearer = abs(day.toordinal() - target) < np.abs(self.day.astype("int64") - target)
            seen = clear & ((self.day == NEVER) | nearer)
            self.offset_sum[clear] += gpp_l[clear] - gpp_m_30m[clear]
            self.count[clear] += 1
            self.gpp[seen], self.gpp_m[seen] = gpp_l[seen], gpp_m_30m[seen]
            self.day[seen] = day.toordinal()
            return seen
        seen = clear & (self.day <= day.toordinal())
        self.gpp[seen] = gpp_l[seen]
        self.gpp_m[seen] = gpp_m_30m[seen]
        self.day[seen] = day.toordinal()
        self.offset_sum[seen] += gpp_l[seen] - gpp_m_30m[seen]
        self.count[seen] += 1
        return seen

    @property
    def offset(self) -> np.ndarray:
        """The mean over the folded clear dates of GPP_L − GPP_M: the pixel's lasting
        departure from the coarse field (NaN where never seen)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.offset_sum / self.count, np.nan).astype("float32")

    def check_before(self, day: dt.date) -> None:
        """Refuse a state holding GPP_L of ``day`` or later (the future of the day made),
        unless it is :attr:`two_sided` (a final day's, folded from both sides on purpose)."""
        if self.two_sided:
            return
        seen = self.day != NEVER
        if (self.day[seen] >= day.toordinal()).any():
            last = dt.date.fromordinal(int(self.day[seen].max()))
            raise DownscaleError(
                f"the reference state holds GPP_L of {last}, not before {day}: "
                "a state from the future of the day being made"
            )

    def age(self, day: dt.date) -> np.ndarray:
        """Days between each pixel's reference and ``day``, whichever side it lies on
        (float32; NaN where none): how stale the 30 m it brings is."""
        days = np.abs(day.toordinal() - self.day.astype("int64"))
        return np.where(self.day != NEVER, days, np.nan).astype("float32")

    def after(self, day: dt.date) -> np.ndarray:
        """Pixels whose reference is a date after ``day`` (only in a two-sided state)."""
        return (self.day != NEVER) & (self.day > day.toordinal())

    def window(self, rows: slice, cols: slice) -> Reference:
        return Reference(self.gpp[rows, cols], self.day[rows, cols], self.gpp_m[rows, cols],
                         self.offset_sum[rows, cols], self.count[rows, cols],
                         self.two_sided)  # fmt: skip


def references_before(
    dates: Sequence[dt.date],
    gpp_l: np.ndarray,
    gpp_m_30m: np.ndarray,
    wanted: Sequence[dt.date],
    max_days: int,
) -> Iterator[tuple[dt.date, Reference]]:
    """For each of ``wanted`` (in order), the reference state folded from the ``dates``
    (HLS dates with their GPP_L (N, H, W), NaN where not clear, and bilinear GPP_M) in the
    ``max_days`` before it — never the day itself: what a daily product had that day."""
    order = sorted(range(len(dates)), key=lambda i: dates[i])
    for day in sorted(wanted):
        state = Reference.empty(gpp_l.shape[1:])
        for i in order:
            if 0 < (day - dates[i]).days <= max_days:
                state.update(gpp_l[i], gpp_m_30m[i], dates[i])
        yield day, state
