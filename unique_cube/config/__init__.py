"""Configuration: catalog files (``catalogs/*.yaml``: where each source is and how its bands
and QA are decoded) and pipeline files (``pipelines/*.yaml``: what a run reads, trains and
writes), read into frozen dataclasses. A bad file fails with the file, the key, the line and
what was expected."""

from unique_cube.config.catalog import (
    CATALOG_DIR,
    Band,
    Catalog,
    QAFlag,
    QARules,
    Source,
    load_catalog,
)
from unique_cube.config.pipeline import (
    DownscaleSpec,
    FluxSpec,
    GppSpec,
    GridSpec,
    ModelSpec,
    Period,
    Pipeline,
    ProductSpec,
    load_pipeline,
    validate_pipeline,
)
from unique_cube.config.yamlconf import build, read_yaml

__all__ = [
    "CATALOG_DIR",
    "Band",
    "Catalog",
    "DownscaleSpec",
    "FluxSpec",
    "GppSpec",
    "GridSpec",
    "ModelSpec",
    "Period",
    "Pipeline",
    "ProductSpec",
    "QAFlag",
    "QARules",
    "Source",
    "build",
    "load_catalog",
    "load_pipeline",
    "read_yaml",
    "validate_pipeline",
]
