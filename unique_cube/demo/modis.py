"""MODIS (Terra, MOD09GA) daily pixels of the demo world on the sinusoidal grid (tile h28v05).

Each observation is a Gaussian approximation of the MODIS point-spread function whose
along-scan and along-track widths grow as 1/cos²θ and 1/cosθ with the day's view zenith
(:mod:`.terra`); observations are gridded as MOD09GA grids them (:class:`ModisGrid`) — off the
cell centres by a per-day sub-pixel offset, and at large scan angles several cells take the
same, neighbouring, observation. Reflectance is seen through MODIS's own spectral responses (a
little different from OLI's), with band-specific noise; cloud contaminates partly cloudy
pixels, and the 1 km state QA flags them (the thin layer as cirrus, where it is not too thin
for the cirrus test) (:func:`simulate_modis_day`).
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse

from .sky import CLOUD_TOP, SHADOW_FACTOR
from .terra import ModisView, terra_cycle_day, terra_view
from .world import CRS, PIXEL, World

__all__ = [
    "GRID_OFFSETS",
    "MODIS_ORIGIN",
    "MODIS_PIXEL",
    "MODIS_TILE",
    "SINUSOIDAL_WKT",
    "ModisFootprint",
    "ModisGrid",
    "simulate_modis_day",
]

#: The MODIS sinusoidal projection (sphere of radius 6371007.181 m), as WKT2.
SINUSOIDAL_WKT = (
    'PROJCRS["unnamed",BASEGEOGCRS["Unknown datum based upon the custom spheroid",'
    'DATUM["Not specified (based on custom spheroid)",ELLIPSOID["Custom spheroid",6371007.181,0,'
    'LENGTHUNIT["metre",1,ID["EPSG",9001]]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",'
    '0.0174532925199433,ID["EPSG",9122]]]],CONVERSION["unnamed",METHOD["Sinusoidal"],'
    'PARAMETER["Longitude of natural origin",0,ANGLEUNIT["degree",0.0174532925199433],'
    'ID["EPSG",8802]],PARAMETER["False easting",0,LENGTHUNIT["metre",1],ID["EPSG",8806]],'
    'PARAMETER["False northing",0,LENGTHUNIT["metre",1],ID["EPSG",8807]]],CS[Cartesian,2],'
    'AXIS["easting",east,ORDER[1],LENGTHUNIT["metre",1,ID["EPSG",9001]]],'
    'AXIS["northing",north,ORDER[2],LENGTHUNIT["metre",1,ID["EPSG",9001]]]]'
)
MODIS_TILE = 1111950.5197665  #: m, a tile's side
MODIS_PIXEL = MODIS_TILE / 2400  #: m, a 500 m cell's side
MODIS_ORIGIN = (-20015109.354, 10007554.677)  #: m, the grid's upper-left corner (x, y)

# MODIS bands from the OLI-like bands (BANDS order): narrower or shifted responses, so a
# little of the neighbouring band (band 5, 1240 nm, OLI lacks: between NIR and SWIR 1).
_MODIS_RESPONSE = {
    "sur_refl_b01_1": (0.00, 0.00, 0.06, 0.94, 0.00, 0.00, 0.00),
    "sur_refl_b02_1": (0.00, 0.00, 0.00, 0.01, 0.99, 0.00, 0.00),
    "sur_refl_b03_1": (0.15, 0.85, 0.00, 0.00, 0.00, 0.00, 0.00),
    "sur_refl_b04_1": (0.00, -0.02, 1.04, -0.02, 0.00, 0.00, 0.00),
    "sur_refl_b05_1": (0.00, 0.00, 0.00, 0.00, 0.55, 0.45, 0.00),
    "sur_refl_b06_1": (0.00, 0.00, 0.00, 0.00, 0.00, 0.97, 0.03),
    "sur_refl_b07_1": (0.00, 0.00, 0.00, 0.00, 0.00, 0.08, 0.92),
}
# Per-band noise: absolute, plus 2 % of the reflectance (bands 1-2 come from 250 m detectors).
_MODIS_NOISE = np.array([0.003, 0.004, 0.006, 0.005, 0.007, 0.008, 0.009])
_MODIS_NOISE_RELATIVE = 0.02
_PSF_SIGMA = 0.5  # MODIS pixels, at nadir (the triangular along-scan response's Gaussian)
_PSF_TRUNCATE = 3.0  # sigmas
#: Gridding offsets of the observation lattice (fractions of its spacing) a day can have.
GRID_OFFSETS = ((0.12, 0.31), (0.74, 0.05), (0.37, 0.66))


@dataclass(frozen=True)
class ModisFootprint:
    """One day's observations over the MODIS window and how they are gridded."""

    view: ModisView
    psf: sparse.csr_matrix
    """Observations (rows) from the areas' 120 m blocks (columns), rows summing to 1."""
    cell_obs: np.ndarray
    """Which observation (row of :attr:`psf`) each window cell holds; -1: none (fill)."""
    shape: tuple[int, int]

    @property
    def n_obs(self) -> int:
        return self.psf.shape[0]

    @property
    def valid(self) -> np.ndarray:
        """Window cells with an observation (bool)."""
        return (self.cell_obs >= 0).reshape(self.shape)

    def to_cells(self, per_obs: np.ndarray) -> np.ndarray:
        """Observation values (..., obs) on the window's cells (..., rows, cols), 0 at fill."""
        out = np.where(self.cell_obs >= 0, per_obs[..., np.maximum(self.cell_obs, 0)], 0.0)
        return out.reshape(*per_obs.shape[:-1], *self.shape).astype("float32")


class ModisGrid:
    """The MODIS sinusoidal window over the domain, and the day's footprints that map the
    areas' 120 m blocks to its 500 m cells (:meth:`footprint`, one per view and gridding
    offset, each built once)."""

    BLOCK = 4  # 30 m pixels per PSF input cell (120 m)

    def __init__(self, world: World):
        from pyproj import Transformer

        to_sin = Transformer.from_crs(CRS, SINUSOIDAL_WKT, always_xy=True)
        x0, y0, x1, y1 = world.domain_bounds()
        cx, cy = to_sin.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
        self.h = int((np.mean(cx) - MODIS_ORIGIN[0]) // MODIS_TILE)
        self.v = int((MODIS_ORIGIN[1] - np.mean(cy)) // MODIS_TILE)
        tile_x0 = MODIS_ORIGIN[0] + self.h * MODIS_TILE
        tile_y0 = MODIS_ORIGIN[1] - self.v * MODIS_TILE
        c0 = int(np.floor((min(cx) - tile_x0) / MODIS_PIXEL)) - 2
        c1 = int(np.ceil((max(cx) - tile_x0) / MODIS_PIXEL)) + 2
        r0 = int(np.floor((tile_y0 - max(cy)) / MODIS_PIXEL)) - 2
        r1 = int(np.ceil((tile_y0 - min(cy)) / MODIS_PIXEL)) + 2
        c0, r0 = c0 - c0 % 2, r0 - r0 % 2  # the 1 km state grid shares the window's corner
        c1, r1 = c1 + (c1 - c0) % 2, r1 + (r1 - r0) % 2
        if c0 < 0 or r0 < 0 or c1 > 2400 or r1 > 2400:
            raise ValueError("the domain crosses a MODIS tile edge; move or shrink it")
        self.window = (r0, c0)
        self.shape = (r1 - r0, c1 - c0)
        self.origin = (tile_x0 + c0 * MODIS_PIXEL, tile_y0 - r0 * MODIS_PIXEL)

        # Cell centres on the ground (UTM metres), and each area's block grid there.
        to_utm = Transformer.from_crs(SINUSOIDAL_WKT, CRS, always_xy=True)
        cols, rows = np.meshgrid(np.arange(self.shape[1]) + 0.5, np.arange(self.shape[0]) + 0.5)
        ux, uy = to_utm.transform(
            (self.origin[0] + cols * MODIS_PIXEL).ravel(),
            (self.origin[1] - rows * MODIS_PIXEL).ravel(),
        )
        self._cells = np.stack([np.asarray(ux), np.asarray(uy)])
        self._blocks = []  # (first column, x of the first block centre, y, rows, cols)
        offset = 0
        for area in world.areas:
            xs, ys = world.area_xy(area, self.BLOCK)
            self._blocks.append((offset, float(xs[0, 0]), float(ys[0, 0]), *xs.shape))
            offset += xs.size
        self.n_blocks = offset
        self.blocks_per_area = [b[3:] for b in self._blocks]
        self._centre = (0.5 * (x0 + x1), 0.5 * (y0 + y1))
        lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(*self._centre)
        self.lat, self.lon = float(lat), float(lon)
        self._footprints: dict[tuple[int, int], ModisFootprint] = {}

    @property
    def transform(self):
        from affine import Affine

        return Affine(MODIS_PIXEL, 0.0, self.origin[0], 0.0, -MODIS_PIXEL, self.origin[1])

    @property
    def state_transform(self):
        from affine import Affine

        return Affine(2 * MODIS_PIXEL, 0.0, self.origin[0], 0.0, -2 * MODIS_PIXEL, self.origin[1])

    def view(self, day: dt.date) -> ModisView:
        """Terra's view of the domain's centre on ``day``."""
        return terra_view(terra_cycle_day(day), self.lat, self.lon)

    def footprint(self, cycle_day: int, offset: int = 0) -> ModisFootprint:
        """The footprint of day ``cycle_day`` of the repeat cycle with gridding offset
        ``offset`` (an index of :data:`GRID_OFFSETS`); built on first use."""
        key = (cycle_day, offset)
        if key not in self._footprints:
            self._footprints[key] = self._build(terra_view(cycle_day, self.lat, self.lon), offset)
        return self._footprints[key]

    def _build(self, view: ModisView, offset: int) -> ModisFootprint:
        """Observation centres on a lattice along scan and track, each cell taking the nearest
        (MOD09GA keeps the observation that covers the cell most), and a Gaussian PSF."""
        cos_v = np.cos(np.radians(view.view_zenith))
        heading = np.radians(view.heading)
        track = np.array([np.sin(heading), np.cos(heading)])
        scan = np.array([np.cos(heading), -np.sin(heading)])
        # Along scan, samples spread and grow as 1/cos²θ; along track, the footprint grows as
        # 1/cosθ while successive scans overlap (the bow-tie), keeping the sample spacing.
        spacing = np.array([MODIS_PIXEL / cos_v**2, MODIS_PIXEL])
        sigma = _PSF_SIGMA * MODIS_PIXEL * np.array([1 / cos_v**2, 1 / cos_v])
        axes = np.stack([scan, track])  # (2 axes, x/y)
        origin = np.asarray(self._centre) + (np.asarray(GRID_OFFSETS[offset]) * spacing) @ axes
        lattice = np.round((axes @ (self._cells - origin[:, None])) / spacing[:, None])
        lattice = lattice.astype("int64") + 2**20  # non-negative: one int64 key per site
        keys, cell_obs = np.unique(lattice[0] * 2**21 + lattice[1], return_inverse=True)
        index = np.stack(np.divmod(keys, 2**21)) - 2**20
        centres = origin[:, None] + axes.T @ (index * spacing[:, None])

        # Half extents of the truncated ellipse along x and y.
        reach = _PSF_TRUNCATE * np.sqrt((sigma[:, None] ** 2 * axes**2).sum(axis=0))
        step = self.BLOCK * PIXEL
        rows_out, cols_out, weights = [], [], []
        for first, bx0, by0, ny, nx in self._blocks:
            near = (
                (centres[0] > bx0 - step - reach[0])
                & (centres[0] < bx0 + nx * step + reach[0])
                & (centres[1] < by0 + step + reach[1])
                & (centres[1] > by0 - ny * step - reach[1])
            )
            obs = np.flatnonzero(near)
            if obs.size == 0:
                continue
            kc, kr = (int(np.ceil(r / step)) for r in reach)
            dc, dr = np.meshgrid(np.arange(-kc, kc + 1), np.arange(-kr, kr + 1))
            c = np.round((centres[0, obs] - bx0) / step).astype(int)[:, None] + dc.ravel()
            r = np.round((by0 - centres[1, obs]) / step).astype(int)[:, None] + dr.ravel()
            dx = bx0 + c * step - centres[0, obs, None]
            dy = by0 - r * step - centres[1, obs, None]
            q = ((dx * scan[0] + dy * scan[1]) / sigma[0]) ** 2 + (
                (dx * track[0] + dy * track[1]) / sigma[1]
            ) ** 2
            keep = (q <= _PSF_TRUNCATE**2) & (c >= 0) & (c < nx) & (r >= 0) & (r < ny)
            rows_out.append(np.broadcast_to(obs[:, None], q.shape)[keep])
            cols_out.append(first + (r * nx + c)[keep])
            weights.append(np.exp(-0.5 * q[keep]))
        n_obs = index.shape[1]
        matrix = sparse.csr_matrix(
            (np.concatenate(weights), (np.concatenate(rows_out), np.concatenate(cols_out))),
            shape=(n_obs, self.n_blocks),
        )
        # An observation is kept when ≥ 90 % of its footprint lies in the world.
        full = 2 * np.pi * sigma[0] * sigma[1] / step**2 * (1 - np.exp(-(_PSF_TRUNCATE**2) / 2))
        total = np.asarray(matrix.sum(axis=1)).ravel()
        kept = np.flatnonzero(total / full >= 0.9)
        renumber = np.full(n_obs, -1)
        renumber[kept] = np.arange(kept.size)
        psf = (sparse.diags(1.0 / total[kept]) @ matrix[kept]).tocsr().astype("float32")
        return ModisFootprint(view, psf, renumber[cell_obs.ravel()], self.shape)

    def aggregate(self, per_area: list[np.ndarray], footprint: ModisFootprint) -> np.ndarray:
        """The day's observations of per-area block arrays (..., by, bx): (..., obs)."""
        lead = per_area[0].shape[:-2]
        stacked = np.concatenate(
            [a.reshape(int(np.prod(lead)) if lead else 1, -1) for a in per_area], axis=1
        )
        out = (footprint.psf @ stacked.T).T
        return out.reshape(*lead, footprint.n_obs)


def simulate_modis_day(
    footprint: ModisFootprint,
    reflectance: np.ndarray,
    opacity: np.ndarray,
    cloud: np.ndarray,
    thin: np.ndarray,
    shadow: np.ndarray,
    snow: np.ndarray,
    water: np.ndarray,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """MOD09GA-like 500 m bands (int16, scale 0.0001, nodata -28672) and 1 km state (uint16).

    Inputs are the day's observations (:meth:`ModisGrid.aggregate`): ``reflectance`` (band,
    obs) in :data:`BANDS` order, already anisotropic; how much light cloud takes from each
    observation (:attr:`SkyMasks.opacity`), and its fractions under cloud (the thin layer
    left out), under the thin layer, in shadow, snow-covered and water.
    """
    valid = footprint.valid
    rho = (1 - opacity)[None] * reflectance + opacity[None] * CLOUD_TOP[:, None]
    rho = np.where(shadow[None] > 0, rho * (1 - (1 - SHADOW_FACTOR) * shadow[None]), rho)
    response = np.array(list(_MODIS_RESPONSE.values()))
    rho = response @ rho
    sigma = _MODIS_NOISE[:, None] + _MODIS_NOISE_RELATIVE * np.abs(rho)
    rho = rho + sigma * rng.standard_normal(rho.shape)
    cells = footprint.to_cells(rho)
    bands = {
        key: np.where(valid, np.clip(np.round(v * 10_000), -100, 16_000), -28672).astype("int16")
        for key, v in zip(_MODIS_RESPONSE, cells, strict=True)
    }
    opacity, cloud, thin, shadow, snow, water = footprint.to_cells(
        np.stack([opacity, cloud, thin, shadow, snow, water])
    )

    # 1 km state: fractions over 2 x 2 pixels (fill pixels do not count).
    def coarse(a):
        a = np.where(valid, a, np.nan)
        return np.nanmean(a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2), axis=(1, 3))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-fill blocks
        cf, of, tf, sf, snf, wf = (coarse(a) for a in (cloud, opacity, thin, shadow, snow, water))
    observed = np.isfinite(cf)
    cf, of, tf, sf, snf, wf = (np.nan_to_num(a) for a in (cf, of, tf, sf, snf, wf))
    cloud_state = np.where(cf < 0.05, 0, np.where(cf > 0.6, 1, 2)).astype("uint16")
    cloud_state[~observed] = 3  # not set
    cloudy = cloud_state != 0
    near_cloud = ndimage.binary_dilation(cloudy & observed, iterations=1) & ~cloudy
    # The cirrus test (band 26) sees the thin layer, where not too thin for it that day.
    cirrus = ((tf > 0.5) & (of > rng.uniform(0.01, 0.04) * tf)).astype("uint16") * 2
    snowy = snf > 0.5
    state = (
        cloud_state
        | ((sf > 0.25).astype("uint16") << 2)
        | (np.where(wf > 0.5, 3, 1).astype("uint16") << 3)
        | (np.uint16(1) << 6)  # aerosol: low
        | (cirrus << 8)
        | ((cf > 0.6).astype("uint16") << 10)
        | (snowy.astype("uint16") << 12)
        | (near_cloud.astype("uint16") << 13)
        | (snowy.astype("uint16") << 15)
    )
    return bands, state.astype("uint16")
