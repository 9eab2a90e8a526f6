"""HLS L30 scenes of the demo world, and an Fmask that errs as Fmask does.

Landsat 8 (and Landsat 9 from 2022) pass every 16 days each (:func:`hls_overpasses`); a scene
is surface reflectance with a per-scene calibration error and pixel noise, seen through the
sky (:mod:`.sky`): thin clouds are semi-transparent, thick ones bright; shadows as dark as
their cloud is thick. **Fmask** is laid out as HLS v2.0 lays out its bits, with Fmask's errors
(:class:`FmaskSkill`): it misses cloud thinner than a per-scene threshold and the faint shadows
of such cloud, projects shadows with a misjudged cloud height, flags bright ground (towns,
bright dry soil, snow edges) as cloud in some scenes, and buffers what it flags by a few
pixels (the adjacency bit). :func:`fmask_clear` is the rule the product applies.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .sky import CLOUD_TOP, OPAQUE_THICKNESS, SHADOW_FACTOR, SkyMasks
from .vegetation import BANDS
from .world import World

__all__ = [
    "FMASK_NOT_CLEAR",
    "LANDSAT9_FROM",
    "FmaskSkill",
    "HlsScene",
    "fmask_clear",
    "hls_overpasses",
    "simulate_hls_scene",
]

LANDSAT9_FROM = dt.date(2022, 1, 1)  #: the first day with Landsat 9 scenes in HLS

#: Fmask bits (HLS v2.0 user guide, Table 9) that make a pixel not clear, as the product's
#: QA rules for ``hls-l30`` say (catalogs/planetary-computer.yaml: cloud, adjacent_cloud,
#: cloud_shadow, snow_ice); 255 is fill.
FMASK_NOT_CLEAR = 0b0001_1110
_FMASK_BUFFER = 3  # pixels of the adjacency buffer around what Fmask flags


def hls_overpasses(days: list[dt.date]) -> list[tuple[dt.datetime, str]]:
    """The Landsat 8/9 acquisitions of tile T52SCG in ``days``: (UTC time, platform)."""
    first_l8 = dt.date(2019, 12, 31)  # a Landsat 8 date of WRS-2 path 116 (16-day repeat)
    out = []
    for day in days:
        offset = (day - first_l8).days % 16
        moment = dt.datetime.combine(day, dt.time(2, 12, 30)) + dt.timedelta(
            seconds=int(day.toordinal() % 37)
        )
        if offset == 0:
            out.append((moment, "landsat-8"))
        elif offset == 8 and day >= LANDSAT9_FROM:
            out.append((moment, "landsat-9"))
    return out


def fmask_clear(fmask: np.ndarray) -> np.ndarray:
    """Where the product counts an HLS pixel clear: Fmask has data and none of
    :data:`FMASK_NOT_CLEAR` is set (as :func:`unique_cube.inputs.cube.decode_qa` decides)."""
    return (fmask != 255) & (fmask & FMASK_NOT_CLEAR == 0)


@dataclass(frozen=True)
class FmaskSkill:
    """How well Fmask does in one scene."""

    thin: float
    """Cloud thinner than this (thickness units) is missed, and so are its shadows."""
    height_error: float
    """Fmask's cloud height over the true one (shadows projected that much too far)."""
    bright: float
    """Visible reflectance (3 x 3 pixel mean) above which bright ground is taken for cloud."""

    @classmethod
    def draw(cls, rng: np.random.Generator) -> FmaskSkill:
        return cls(
            thin=float(rng.uniform(0.01, 0.04)),
            # Now and then the shadow match fails and the height is far off.
            height_error=float(
                np.clip(rng.lognormal(0.0, 0.6 if rng.random() < 0.15 else 0.15), 0.4, 2.5)
            ),
            bright=float(rng.uniform(0.12, 0.30)),
        )


@dataclass(frozen=True)
class HlsScene:
    """One simulated HLS L30 scene of the domain: scaled reflectance and Fmask."""

    when: dt.datetime
    platform: str
    bands: dict[str, np.ndarray]
    """Digital numbers (int16, scale 0.0001, nodata -9999) by :data:`BANDS` name."""
    fmask: np.ndarray
    """Fmask byte (uint8, 255 outside the world)."""
    cloud_cover: float
    """Percent of the observed pixels flagged cloud."""
    cloudy_pixels: int
    """Observed pixels truly under cloud or in cloud shadow."""
    omitted_pixels: int
    """Of those, the ones Fmask leaves clear (:func:`fmask_clear`)."""


def simulate_hls_scene(
    world: World,
    stacks: list[tuple[list[tuple[int, slice]], np.ndarray, np.ndarray, np.ndarray, SkyMasks]],
    when: dt.datetime,
    platform: str,
    rng: np.random.Generator,
    skill: FmaskSkill | None = None,
) -> HlsScene:
    """Compose a scene over the domain from stacked areas: for each stack its parts (area
    index, rows), 30 m reflectance (band, y, x), visible snow, water pixels and sky (with
    ``fmask_caster``: Fmask's shadows). ``skill``: Fmask's errors (drawn from ``rng`` when not
    given)."""
    skill = skill or FmaskSkill.draw(rng)
    n = world.size.domain_pixels
    dn = np.full((len(BANDS), n, n), -9999, dtype="int16")
    fmask = np.full((n, n), 255, dtype="uint8")
    gain = 1.0 + rng.normal(0.0, 0.015, size=len(BANDS)).astype("float32")
    visible = [BANDS.index(b) for b in ("blue", "green", "red")]
    flagged = observed = cloudy = omitted = 0
    for parts, rho, snow, water, sky in stacks:
        noise = rng.standard_normal(rho.shape, dtype="float32")
        surface = rho * gain[:, None, None] + 0.004 * noise
        shade = 1.0 - (1.0 - SHADOW_FACTOR) * np.clip(
            sky.shadow_depth / OPAQUE_THICKNESS, 0.25, 1.0
        )
        seen = np.where(sky.shadow[None], surface * shade[None], surface)
        opacity = sky.opacity[None]
        top = CLOUD_TOP[:, None, None] * (0.7 + 0.6 * sky.thickness[None]) + 0.01 * noise
        seen = np.where(sky.cloud[None], seen + opacity * (top - seen), seen)
        seen = np.where(sky.adjacent[None], seen + 0.015, seen)
        digital = np.clip(np.round(seen * 10_000), -100, 16_000).astype("int16")

        # Fmask: what it can see of the clouds, their shadows where it projects them, bright
        # ground taken for cloud (snow-covered ground is snow to it), then its buffer.
        bright = ndimage.uniform_filter(surface[visible].mean(axis=0), size=3)
        cloud = (sky.cloud & (sky.thickness >= skill.thin)) | (
            (bright > skill.bright) & (snow <= 0.5) & ~water
        )
        caster = sky.fmask_caster if sky.fmask_caster is not None else sky.shadow_depth
        shadow = (caster >= skill.thin) & (caster > 0) & ~cloud
        adjacent = _buffer(cloud | shadow, parts) & ~cloud & ~shadow
        bits = (
            (cloud.astype("uint8") << 1)
            | (adjacent.astype("uint8") << 2)
            | (shadow.astype("uint8") << 3)
            | (((snow > 0.5) & ~cloud).astype("uint8") << 4)
            | (water.astype("uint8") << 5)
            | np.uint8(1 << 6)  # aerosol level: low
        )
        truly = sky.cloud | sky.shadow
        cloudy += int(truly.sum())
        omitted += int((truly & fmask_clear(bits)).sum())
        for index, rows in parts:
            target = world.areas[index].slices
            dn[:, target[0], target[1]] = digital[:, rows]
            fmask[target] = bits[rows]
        flagged += int(cloud.sum())
        observed += cloud.size
    bands = {name: dn[i] for i, name in enumerate(BANDS)}
    cover = round(100.0 * flagged / observed, 2)
    return HlsScene(when, platform, bands, fmask, cover, cloudy, omitted)


def _buffer(mask: np.ndarray, parts: list[tuple[int, slice]]) -> np.ndarray:
    """``mask`` grown by :data:`_FMASK_BUFFER` pixels, within each stacked area."""
    out = np.zeros_like(mask)
    size = 2 * _FMASK_BUFFER + 1
    for _, rows in parts:
        out[rows] = ndimage.maximum_filter(mask[rows], size=size, mode="constant")
    return out
