"""The demo world's layout: its grids, the application region and the flux-tower sites.

Everything sits in the HLS/MGRS tile T52SCG (UTM 52N, EPSG:32652), on that tile's 30 m grid:

* the **domain** — a square window of the tile that every published item covers;
* the **application region** — the Korea-like mountain block the daily product maps;
* the **sites** — small patches around flux towers on a jittered grid over the domain (a few
  km apart, mostly in different reanalysis cells), each with its own elevation and vegetation
  type, hence its own weather. A tower's fetch is not pure: its type covers 60-90 % of the
  flux footprint (:func:`tower_footprint`), other types the rest, as around real towers;
* the **region's towers** (:attr:`World.region_sites`) — a few towers inside the region itself,
  measuring the region's own pixels: the towers a product is validated at. They are placed
  from their own random stream, so a world of the same seed is otherwise the same with or
  without them.

The world exists only in the region and the site patches: elsewhere the published rasters hold
their nodata value, as a real archive does outside a scene's footprint.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import ndimage

from .terrain import Terrain, fractal_field, make_terrain

__all__ = [
    "CRS",
    "IGBP",
    "REGION_SITE_MARGIN",
    "REGION_SITE_SPACING",
    "SIZES",
    "Area",
    "Site",
    "World",
    "WorldSize",
    "make_world",
    "tower_footprint",
]

CRS = "EPSG:32652"
PIXEL = 30.0
#: Upper-left corner of MGRS tile T52SCG (its HLS grid: 3660 pixels of 30 m).
TILE = "T52SCG"
TILE_ORIGIN = (300_000.0, 4_200_000.0)
TILE_PIXELS = 3660

#: IGBP class of each vegetation type, as a FLUXNET site table gives it.
IGBP: Mapping[int, str] = MappingProxyType(
    {1: "DBF", 2: "ENF", 3: "MF", 4: "CRO", 5: "CRO", 6: "GRA", 7: "URB", 8: "WAT"}
)


@dataclass(frozen=True)
class WorldSize:
    """How big a world to generate."""

    name: str
    region_pixels: int
    """Side of the application region in 30 m pixels."""
    domain_pixels: int
    """Side of the domain (what the items cover) in 30 m pixels."""
    n_sites: int
    """Towers on their own patches, off the region."""
    site_pixels: int
    """Side of each tower patch in 30 m pixels."""
    start: dt.date
    end: dt.date
    """First and last day simulated (inclusive)."""
    n_region_sites: int = 0
    """Towers inside the application region (held out of training to validate the product)."""

    @property
    def days(self) -> list[dt.date]:
        n = (self.end - self.start).days + 1
        return [self.start + dt.timedelta(days=i) for i in range(n)]


SIZES: Mapping[str, WorldSize] = MappingProxyType(
    {
        # What `make demo` builds: a 12 km region, 24 towers over 54 km and 4 inside the region,
        # two years: train 2022, test 2023 (about 38 % of the full world's simulated pixels a
        # day, half its days).
        "compact": WorldSize(
            "compact", 400, 1800, 24, 100, dt.date(2022, 1, 1), dt.date(2023, 12, 31), 4
        ),
        # The full configuration: a 24 km region, 42 towers over 72 km and 6 inside the region,
        # four years: train 2020-2022, test 2023 (pipelines/demo-full.yaml).
        "full": WorldSize(
            "full", 800, 2400, 42, 100, dt.date(2020, 1, 1), dt.date(2023, 12, 31), 6
        ),
        # For tests: a 4.8 km region, 8 towers and 2 inside the region, one year.
        "small": WorldSize("small", 160, 960, 8, 60, dt.date(2023, 1, 1), dt.date(2023, 12, 31), 2),
    }
)


@dataclass(frozen=True)
class Area:
    """A window of the domain where the world is simulated (the region or a tower patch)."""

    name: str
    row: int
    col: int
    """Offset of the window in domain pixels."""
    terrain: Terrain

    @property
    def shape(self) -> tuple[int, int]:
        return self.terrain.elevation.shape

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.shape[0]), slice(self.col, self.col + self.shape[1])


@dataclass(frozen=True)
class Site:
    """A flux tower: at the centre of its area."""

    id: str
    pft: int
    x: float
    y: float
    """Tower position in EPSG:32652 metres."""
    lat: float
    lon: float
    elevation: float
    area: int
    """Index of the tower's patch in :attr:`World.areas` (0: a tower inside the region)."""

    @property
    def igbp(self) -> str:
        return IGBP[self.pft]


@dataclass(frozen=True)
class World:
    """The layout and static layers of a generated world."""

    size: WorldSize
    seed: int
    areas: tuple[Area, ...]
    """The region first, then one patch per site."""
    sites: tuple[Site, ...]
    """The towers on their own patches (off the region), one per patch."""
    domain_origin: tuple[float, float]
    """Upper-left corner of the domain (x, y) in EPSG:32652."""
    region_sites: tuple[Site, ...] = ()
    """The towers inside the region (``area`` 0), at pixel centres."""

    @property
    def region(self) -> Area:
        return self.areas[0]

    @property
    def towers(self) -> tuple[Site, ...]:
        """Every tower: those on their own patches, then those inside the region."""
        return (*self.sites, *self.region_sites)

    @property
    def domain_shape(self) -> tuple[int, int]:
        return (self.size.domain_pixels, self.size.domain_pixels)

    @property
    def domain_transform(self):
        from affine import Affine

        x0, y0 = self.domain_origin
        return Affine(PIXEL, 0.0, x0, 0.0, -PIXEL, y0)

    def area_transform(self, area: Area):
        from affine import Affine

        x0, y0 = self.domain_origin
        return Affine(PIXEL, 0.0, x0 + area.col * PIXEL, 0.0, -PIXEL, y0 - area.row * PIXEL)

    def area_geobox(self, area: Area):
        """The area's 30 m grid (odc-geo GeoBox)."""
        from odc.geo.geobox import GeoBox

        return GeoBox(area.shape, self.area_transform(area), CRS)

    def area_xy(self, area: Area, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (x, y) of an area, every ``step`` pixels (2-D arrays)."""
        x0, y0 = self.domain_origin
        ny, nx = area.shape
        cols = np.arange(0, nx, step) + (step / 2.0)
        rows = np.arange(0, ny, step) + (step / 2.0)
        xs = x0 + (area.col + cols) * PIXEL
        ys = y0 - (area.row + rows) * PIXEL
        return np.meshgrid(xs, ys)

    def domain_bounds(self) -> tuple[float, float, float, float]:
        x0, y0 = self.domain_origin
        n = self.size.domain_pixels * PIXEL
        return (x0, y0 - n, x0 + n, y0)

    def mosaic(self, layer: str, fill: float, dtype: str = "float32", factor: int = 1):
        """A domain-sized array of one static layer (``elevation`` or ``pft_10m``), ``fill``
        outside the areas; ``factor`` is the layer's pixels per 30 m pixel."""
        n = self.size.domain_pixels * factor
        out = np.full((n, n), fill, dtype=dtype)
        for area in self.areas:
            rows, cols = area.slices
            fine = (
                slice(rows.start * factor, rows.stop * factor),
                slice(cols.start * factor, cols.stop * factor),
            )
            out[fine] = getattr(area.terrain, layer)
        return out


# Vegetation types of the towers and the elevation band (m) each is found in.
_SITE_MIX = (
    (1, 9, (150, 950)),
    (2, 7, (550, 1350)),
    (3, 8, (300, 1100)),
    (4, 7, (15, 250)),
    (5, 7, (5, 120)),
    (6, 4, (40, 900)),
)
# Another type that shares a patch with the tower's, away from the tower.
_NEIGHBOUR = {1: 3, 2: 3, 3: 1, 4: 7, 5: 4, 6: 4}
# The other types in a tower's fetch, and their shares of what its own type leaves.
_FETCH_MIX = {
    1: ((3, 0.6), (2, 0.2), (6, 0.2)),
    2: ((3, 0.6), (1, 0.4)),
    3: ((1, 0.5), (2, 0.5)),
    4: ((5, 0.4), (6, 0.3), (7, 0.3)),  # paddies, field margins, farmsteads
    5: ((4, 0.6), (7, 0.2), (8, 0.2)),  # upland fields, farmsteads, ditches and ponds
    6: ((4, 0.4), (1, 0.4), (7, 0.2)),
}
#: A tower's own type covers this share of its flux footprint (uniform between the two).
FETCH_PURITY = (0.6, 0.9)
_FOOTPRINT_SIGMA = 90.0  # m: most of the flux comes from within ~200 m
FETCH_RADIUS = 300.0  # m: nothing further counts


def tower_footprint(n: int, step: float) -> np.ndarray:
    """Weights (sum 1) of a tower's flux footprint on an n x n grid of ``step`` metres centred
    on the tower: a Gaussian of 90 m, cut at :data:`FETCH_RADIUS`."""
    offsets = (np.arange(n) - (n - 1) / 2.0) * step
    distance = np.hypot(offsets[:, None], offsets[None, :])
    weights = np.where(
        distance <= FETCH_RADIUS, np.exp(-0.5 * (distance / _FOOTPRINT_SIGMA) ** 2), 0
    )
    return weights / weights.sum()


def make_world(size: WorldSize | str = "compact", seed: int = 0) -> World:
    """Lay out the domain, the region and the tower patches, with their static layers."""
    from pyproj import Transformer

    if isinstance(size, str):
        size = SIZES[size]
    rng = np.random.default_rng(seed)
    n = size.domain_pixels
    # The domain is centred on the region; both on the tile's 30 m grid.
    centre_col, centre_row = 1614, 857  # around 37.70 N 127.28 E in T52SCG
    col0 = centre_col - n // 2
    row0 = max(centre_row - n // 2, 0)
    if col0 < 0 or col0 + n > TILE_PIXELS or row0 + n > TILE_PIXELS:
        raise ValueError(f"a domain of {n} pixels does not fit in tile {TILE}")
    domain_origin = (TILE_ORIGIN[0] + col0 * PIXEL, TILE_ORIGIN[1] - row0 * PIXEL)

    r = size.region_pixels
    region_row = centre_row - row0 - r // 2
    region_col = n // 2 - r // 2
    region = Area("region", region_row, region_col, make_terrain((r, r), rng))

    to_lonlat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    placements = _place_sites(size, (region_row, region_col), rng)
    pfts = _site_types(size.n_sites, rng)
    areas: list[Area] = [region]
    sites: list[Site] = []
    for i, ((row, col), (pft, z_range)) in enumerate(zip(placements, pfts, strict=True)):
        base = rng.uniform(*z_range)
        terrain = _site_terrain(size.site_pixels, pft, base, rng)
        area = Area(f"site-{i + 1:02d}", row, col, terrain)
        areas.append(area)
        half = size.site_pixels / 2.0
        x = domain_origin[0] + (col + half) * PIXEL
        y = domain_origin[1] - (row + half) * PIXEL
        centre = terrain.elevation.shape[0] // 2
        sites.append(_site(f"DW-{pft}{i + 1:02d}", pft, x, y,
                           terrain.elevation[centre, centre], i + 1, to_lonlat))  # fmt: skip
    # The region's towers come from a stream of their own: the rest of the world is the same
    # as without them (and as before they existed).
    inside = []
    placed = _place_region_sites(region, size.n_region_sites, np.random.default_rng([seed, 21]))
    for j, (row, col, pft) in enumerate(placed):
        x = domain_origin[0] + (region.col + col + 0.5) * PIXEL
        y = domain_origin[1] - (region.row + row + 0.5) * PIXEL
        inside.append(_site(f"DR-{pft}{j + 1:02d}", pft, x, y,
                            region.terrain.elevation[row, col], 0, to_lonlat))  # fmt: skip
    return World(size, seed, tuple(areas), tuple(sites), domain_origin, tuple(inside))


def _site(site_id: str, pft: int, x: float, y: float, elevation: float, area: int,
          to_lonlat) -> Site:  # fmt: skip
    """A tower at (x, y) in the world's CRS, its coordinates and elevation rounded as the site
    table writes them."""
    lon, lat = to_lonlat.transform(x, y)
    return Site(id=site_id, pft=pft, x=x, y=y, lat=round(float(lat), 5),
                lon=round(float(lon), 5), elevation=round(float(elevation), 1),
                area=area)  # fmt: skip


#: The region's towers stand this many pixels from its edge, or more: their whole flux
#: footprint (:data:`FETCH_RADIUS`) inside the region.
REGION_SITE_MARGIN = int(FETCH_RADIUS // PIXEL) + 1
#: ... and this many pixels apart, or more (two 480 m pixels: never the same GPP_M pixel).
REGION_SITE_SPACING = 32


def _place_region_sites(
    region: Area, count: int, rng: np.random.Generator, tries: int = 5_000
) -> list[tuple[int, int, int]]:
    """Pixels (row, col in the region) and vegetation types of ``count`` towers inside the
    region: away from its edge (:data:`REGION_SITE_MARGIN`) and from each other
    (:data:`REGION_SITE_SPACING`), each standing in a vegetated type that covers at least half
    of its flux footprint (no tower on a lake or a village)."""
    pft_10m = region.terrain.pft_10m
    ny, nx = region.shape
    half = int(FETCH_RADIUS // 10.0) + 1  # 10 m cells either side of the tower's cell
    weights = tower_footprint(2 * half + 1, 10.0)
    placed: list[tuple[int, int, int]] = []
    low = REGION_SITE_MARGIN
    for _ in range(tries):
        if len(placed) == count:
            break
        row, col = int(rng.integers(low, ny - low)), int(rng.integers(low, nx - low))
        if any(np.hypot(row - r, col - c) < REGION_SITE_SPACING for r, c, _ in placed):
            continue
        cy, cx = 3 * row + 1, 3 * col + 1  # the 10 m cell at the pixel's centre
        fetch = pft_10m[cy - half : cy + half + 1, cx - half : cx + half + 1]
        shares = np.bincount(fetch.ravel(), weights=weights.ravel(), minlength=9)
        pft = int(np.argmax(shares))
        own = pft_10m[cy - 1 : cy + 2, cx - 1 : cx + 2]
        if pft in IGBP and pft not in (7, 8) and shares[pft] >= 0.5 and (own == pft).all():
            placed.append((row, col, pft))
    if len(placed) < count:
        raise ValueError(f"only {len(placed)} of {count} tower positions inside the region")
    return placed


def _site_types(n_sites: int, rng: np.random.Generator) -> list[tuple[int, tuple[int, int]]]:
    total = sum(count for _, count, _ in _SITE_MIX)
    types = []
    for pft, count, z_range in _SITE_MIX:
        types += [(pft, z_range)] * max(1, round(count * n_sites / total))
    order = rng.permutation(len(types))
    chosen = [types[i] for i in order][:n_sites]
    while len(chosen) < n_sites:
        chosen.append(types[len(chosen) % len(types)])
    return chosen


def _place_sites(
    size: WorldSize, region_at: tuple[int, int], rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Jittered-grid positions (upper-left pixel) of the tower patches, off the region."""
    n, s, r = size.domain_pixels, size.site_pixels, size.region_pixels
    per_side = int(np.ceil(np.sqrt(size.n_sites * 1.6))) + 1
    cell = n // per_side
    if cell < s + 4:
        raise ValueError(f"{size.n_sites} sites of {s} pixels do not fit in {n} pixels")
    margin = s // 2 + 2
    candidates = []
    for i in range(per_side):
        for j in range(per_side):
            row = i * cell + int(rng.integers(2, cell - s - 1))
            col = j * cell + int(rng.integers(2, cell - s - 1))
            off_region = (
                row + s + margin < region_at[0]
                or row > region_at[0] + r + margin
                or col + s + margin < region_at[1]
                or col > region_at[1] + r + margin
            )
            if off_region and row + s <= n and col + s <= n:
                candidates.append((row, col))
    if len(candidates) < size.n_sites:
        raise ValueError(f"only {len(candidates)} site positions for {size.n_sites} sites")
    picked = rng.choice(len(candidates), size=size.n_sites, replace=False)
    return [candidates[i] for i in sorted(picked)]


def _site_terrain(pixels: int, pft: int, base: float, rng: np.random.Generator) -> Terrain:
    """A tower patch: gentle relief around ``base`` m; the tower's type covering a share of its
    flux footprint drawn from :data:`FETCH_PURITY`, other types (:data:`_FETCH_MIX`) in patches
    of the rest; further out, the tower's type with patches of a neighbouring one."""
    steep = pft in (1, 2, 3, 6)
    relief = fractal_field((pixels, pixels), PIXEL, rng, beta=4.0, scale_max=3_000)
    elevation = (base + (60.0 if steep else 4.0) * relief).astype("float32")
    elevation = np.maximum(elevation, 1.0)
    fine = pixels * 3
    patches = fractal_field((fine, fine), 10.0, rng, beta=2.4, scale_max=600)
    kinds = fractal_field((fine, fine), 10.0, rng, beta=2.4, scale_max=400)
    yy, xx = np.mgrid[0:fine, 0:fine] - (fine - 1) / 2.0
    distance = np.hypot(yy, xx) * 10.0
    pft_10m = np.full((fine, fine), pft, dtype="uint8")

    # In the fetch: other types where the patch field is highest, until they hold 1 - purity
    # of the footprint's weight (the tower itself stands in its own type).
    weights = tower_footprint(fine, 10.0)
    purity = rng.uniform(*FETCH_PURITY)
    order = np.argsort(patches, axis=None)[::-1]
    held = np.cumsum(weights.ravel()[order])
    level = patches.ravel()[order][min(np.searchsorted(held, 1.0 - purity), order.size - 1)]
    other = (patches > level) & (distance <= FETCH_RADIUS) & (distance > 30.0)
    if other.any():
        shares = np.cumsum([share for _, share in _FETCH_MIX[pft]])[:-1]
        cuts = np.quantile(kinds[other], shares)
        which = np.searchsorted(cuts, kinds[other])
        pft_10m[other] = np.array([code for code, _ in _FETCH_MIX[pft]], dtype="uint8")[which]

    away = distance > FETCH_RADIUS
    pft_10m[away & (patches > 0.9)] = _NEIGHBOUR[pft]
    if pft in (4, 5):
        pft_10m[away & (patches < -1.6)] = 7  # farmsteads and villages
        pft_10m[ndimage.binary_erosion(away & (patches < -2.2))] = 8  # ponds
    return Terrain(elevation=elevation, pft_10m=pft_10m)
