"""Catalog descriptions: which STAC collections feed unique_cube and how to read them.

A catalog file (``catalogs/*.yaml``) names a STAC API and, per *source*, the collection,
the asset key of each band *role* (``red``, ``nir``, ``elevation`` …), the scale/offset/nodata
to use where an item's ``raster:bands`` lacks them, the QA decoding rules and the native
resolution. It is loaded into the frozen dataclasses below and validated on load.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from unique_cube.config.yamlconf import build, read_yaml
from unique_cube.errors import ConfigError, UnknownSourceError

__all__ = [
    "CATALOG_DIR",
    "ENGINES",
    "REQUIRED_ROLES",
    "Band",
    "Catalog",
    "QAFlag",
    "QARules",
    "Source",
    "SourceType",
    "load_catalog",
]


def _catalog_dir() -> Path:
    # A checkout (editable install) has catalogs/ beside the package; a wheel installs them
    # as data files under <prefix>/share/unique-cube/catalogs.
    checkout = Path(__file__).resolve().parents[2] / "catalogs"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "unique-cube" / "catalogs"


#: Catalog files shipped with unique_cube (``catalogs/`` at the repository root).
CATALOG_DIR = _catalog_dir()


SourceType = Literal["optical", "terrain", "landcover", "weather"]

Engine = Literal["odc-stac", "stackstac"]

#: Loaders that ``cube.load`` can read a source's items with (``Source.engine``).
ENGINES: tuple[str, ...] = typing.get_args(Engine)


#: Band roles each source type must define; more roles are allowed.
REQUIRED_ROLES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "optical": ("blue", "green", "red", "nir", "swir16", "swir22"),
        "terrain": ("elevation",),
        "landcover": ("landcover",),
        "weather": ("tair", "tdew", "shortwave", "precipitation"),
    }
)


@dataclass(frozen=True)
class Band:
    """One band role of a source: which asset holds it and how to decode its numbers."""

    asset: str
    """Asset key in the STAC items (``B04``, ``red``, ``Nadir_Reflectance_Band1``)."""
    scale: float | None = None
    """Multiplier to physical units, used where the item's ``raster:bands`` has none."""
    offset: float | None = None
    """Added after scaling, used where ``raster:bands`` has none."""
    nodata: float | None = None
    """Raw value meaning "no data", used where ``raster:bands`` has none."""
    units: str = "1"
    """Units of the decoded value (CF/UDUNITS string; ``"1"`` for reflectance)."""
    long_name: str = ""
    """Human-readable name kept as the ``long_name`` attribute."""


@dataclass(frozen=True)
class QAFlag:
    """A condition read from a QA integer: ``(qa >> offset) & (2**length - 1)`` is in ``values``.

    Value-coded QA layers (such as MCD43A4's 0/1/255 quality) use ``offset: 0, length: 8``.
    """

    offset: int
    """Position of the lowest bit of the field."""
    length: int = 1
    """Number of bits of the field."""
    values: tuple[int, ...] = (1,)
    """Field values for which the condition holds."""
    description: str = ""
    """What the condition means, from the product's user guide."""

    def _check(self) -> str | None:
        if not 0 <= self.offset <= 31 or not 1 <= self.length <= 32 - self.offset:
            return f"offset {self.offset} / length {self.length} do not fit a 32-bit QA word"
        too_big = [v for v in self.values if not 0 <= v < 2**self.length]
        if too_big:
            return f"values {too_big} do not fit in {self.length} bit(s)"
        return None


@dataclass(frozen=True)
class QARules:
    """How to turn a source's QA asset(s) into a boolean ``clear`` mask."""

    assets: tuple[str, ...]
    """QA asset keys; a pixel is clear only if it is clear in every one of them."""
    flags: Mapping[str, QAFlag]
    """Named conditions (``fill``, ``cloud``, ``cloud_shadow``, ``adjacent_cloud``, ``snow_ice``,
    ``water`` …)."""
    not_clear: tuple[str, ...]
    """Flags that make a pixel not clear (usually all but ``water``)."""
    nodata: int | None = None
    """Raw QA value meaning "no data" (the pixel is then not clear), where ``raster:bands``
    lacks it."""

    def _check(self) -> str | None:
        if not self.assets:
            return "assets: at least one QA asset is needed"
        unknown = [n for n in self.not_clear if n not in self.flags]
        if unknown:
            return f"not_clear: {unknown} are not defined under flags ({', '.join(self.flags)})"
        return None


@dataclass(frozen=True)
class Source:
    """One input of unique_cube, backed by one STAC collection."""

    collection: str
    """STAC collection id (``hls2-l30``, ``landsat-c2-l2``, ``modis-43A4-061`` …)."""
    type: SourceType
    """What the source provides; fixes the band roles it must define."""
    resolution: float
    """Native pixel size, in ``resolution_units``."""
    bands: Mapping[str, Band]
    """Band role → asset and decoding."""
    description: str = ""
    """One line on the product."""
    resolution_units: Literal["m", "degree"] = "m"
    """Units of ``resolution``."""
    format: Literal["cog", "zarr"] = "cog"
    """``cog``: one raster asset per band (odc-stac); ``zarr``: one Zarr store per variable."""
    qa: QARules | None = None
    """QA decoding; ``None`` for sources without a QA layer (DEM, land cover)."""
    categorical: bool = False
    """Bands hold classes (land cover): resampled with ``nearest``, never interpolated."""
    classes: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    """Class value → name, for categorical sources."""
    cloud_cover_property: str | None = None
    """Item property with the scene cloud cover in percent (``eo:cloud_cover``)."""
    max_cloud_cover: float = 100.0
    """Default client-side cloud-cover limit in percent."""
    tile_properties: tuple[str, ...] = ()
    """Item properties that together identify a tile (for de-duplication)."""
    tile_id_pattern: str | None = None
    """Regular expression with a group ``tile`` that finds the tile in the item id."""
    processed_properties: tuple[str, ...] = ("updated", "created")
    """Item properties giving the processing time, first present wins; latest processing wins."""
    engine: Engine = "odc-stac"
    """Loader of the source's COGs: ``odc-stac`` (the default), or ``stackstac``, which needs
    ``proj:`` fields on the items (see :func:`unique_cube.inputs.cube.load`)."""

    def _check(self) -> str | None:
        missing = [r for r in REQUIRED_ROLES[self.type] if r not in self.bands]
        if missing:
            need = ", ".join(REQUIRED_ROLES[self.type])
            return f"bands: missing role(s) {', '.join(missing)}; a {self.type} source needs {need}"
        if self.type == "optical" and self.qa is None:
            return "qa: an optical source needs QA rules (its clear-sky mask)"
        if self.categorical and not self.classes:
            return "classes: a categorical source needs its class table"
        if self.tile_id_pattern is not None:
            try:
                pattern = re.compile(self.tile_id_pattern)
            except re.error as err:
                return f"tile_id_pattern: not a regular expression ({err})"
            if "tile" not in pattern.groupindex:
                return "tile_id_pattern: needs a named group (?P<tile>...)"
        if self.resolution <= 0:
            return f"resolution: must be positive, got {self.resolution}"
        if not 0 <= self.max_cloud_cover <= 100:
            return f"max_cloud_cover: a percentage in 0..100, got {self.max_cloud_cover}"
        if self.engine != "odc-stac" and self.format != "cog":
            return f"engine: {self.engine} reads COG assets; a {self.format} source has no engine"
        return None


@dataclass(frozen=True)
class Catalog:
    """A STAC API and the sources unique_cube reads from it."""

    name: str
    """Short name (``planetary-computer``, ``demo``)."""
    stac_url: str
    """Root URL of the STAC API."""
    sources: Mapping[str, Source]
    """Source name → description."""
    signing: str = "none"
    """How asset URLs are signed: ``none``; ``planetary-computer`` uses the Planetary Computer
    SAS tokens (subscription key from ``PC_SDK_SUBSCRIPTION_KEY``, never logged); or
    ``module:function``, a signer of one's own that takes an asset URL without query string
    and returns it signed. URLs are signed at search time and signed afresh before a retry."""
    description: str = ""
    """One line on the catalog."""
    path: str = ""
    """File the catalog was read from (set by :func:`load_catalog`)."""

    def _check(self) -> str | None:
        if self.signing in ("none", "planetary-computer"):
            return None
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.signing):
            return (f"signing: expected none, planetary-computer or module:function, "
                    f"got {self.signing!r}")  # fmt: skip
        return None

    def source(self, name: str) -> Source:
        """Return the source called ``name`` or raise :class:`UnknownSourceError`."""
        try:
            return self.sources[name]
        except KeyError:
            raise UnknownSourceError(
                f"{self.path or self.name}: unknown source {name!r}; "
                f"this catalog defines {', '.join(sorted(self.sources))}"
            ) from None

    def with_url(self, stac_url: str) -> Catalog:
        """The same catalog served from another URL (a local STAC API on a free port)."""
        return dataclasses.replace(self, stac_url=stac_url)

    @cached_property
    def by_collection(self) -> Mapping[str, Source]:
        """Collection id → source."""
        return MappingProxyType({s.collection: s for s in self.sources.values()})


def load_catalog(name_or_path: str | Path) -> Catalog:
    """Load and validate a catalog file.

    ``name_or_path`` is a path to a YAML file, or the name of a shipped catalog
    (``planetary-computer``, ``demo``) looked up in :data:`CATALOG_DIR`.
    """
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        shipped = CATALOG_DIR / f"{name_or_path}.yaml"
        if not shipped.exists():
            names = ", ".join(sorted(p.stem for p in CATALOG_DIR.glob("*.yaml")))
            raise ConfigError(
                f"no catalog file {str(name_or_path)!r}; shipped catalogs are: {names}"
            )
        path = shipped
    data = read_yaml(path, located=True)  # keeps each key's line for the messages
    base = _base_sources(data, path)
    catalog = build(Catalog, data, file=path)
    sources = {**base, **catalog.sources}
    return dataclasses.replace(catalog, path=str(path), sources=MappingProxyType(sources))


def _base_sources(data: dict, path: Path) -> dict[str, Source]:
    """Sources taken over from another catalog: ``base: NAME`` with ``base_sources: [...]``.

    This keeps a stand-in catalog (the demo world) on exactly the collections, asset keys and
    QA layouts of the catalog it imitates; its own ``sources`` override or add to them.
    """
    base_name = data.pop("base", None)
    names = data.pop("base_sources", None)
    if base_name is None:
        if names is not None:
            raise ConfigError(f"{path}: base_sources: needs 'base' (the catalog to take them from)")
        return {}
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: base: expected a catalog name or path, got {base_name!r}")
    base_path = Path(base_name)
    if not base_path.is_absolute() and base_path.suffix:
        base_path = path.parent / base_path
    base = load_catalog(base_path if base_path.suffix else base_name)
    if names is None:
        return dict(base.sources)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: base_sources: expected a list of source names, got {names!r}")
    unknown = [n for n in names if n not in base.sources]
    if unknown:
        raise ConfigError(
            f"{path}: base_sources: {', '.join(unknown)} not in {base.path}; "
            f"it defines {', '.join(sorted(base.sources))}"
        )
    return {n: base.sources[n] for n in names}
