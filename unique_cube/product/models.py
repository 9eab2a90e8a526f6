"""The trained models a product day needs, checked before any day is made: the GPP_M model and
its card, the downscaler checkpoint(s) of the pipeline's scheme (and S1 as S2's fallback), and
the hash of each file for the days' provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.checkpoint import load_checkpoint
from unique_cube.errors import (
    ConfigError,
    DownscaleError,
    MissingModelError,
)
from unique_cube.files import sha256_file
from unique_cube.gpp.model import ModelCard

__all__ = ["ProductModels", "check_models"]


@dataclass
class ProductModels:
    card: ModelCard
    card_path: Path
    hashes: dict[str, str]
    checkpoints: dict  # scheme -> Checkpoint
    paths: dict = field(default_factory=dict)  # scheme -> checkpoint file


def check_models(pipeline: Pipeline) -> ProductModels:
    """The GPP_M model and the downscaler(s) the product needs, or a clear error."""
    spec = pipeline.product
    models = Path(pipeline.gpp.output)
    card_path, model_path = models / "gpp_modis.card.json", models / "gpp_modis.model"
    for path in (card_path, model_path):
        if not path.exists():
            raise MissingModelError(
                f"{pipeline.path}: gpp.output names {models}, which has no {path.name}; "
                f"run `unique-cube train-gpp {pipeline.path}` first"
            )
    hashes = {"gpp_modis": sha256_file(model_path)}
    checkpoints, paths = {}, {}
    if spec.scheme != "bilinear":
        if pipeline.downscale is None or pipeline.grid is None:
            raise ConfigError(f"{pipeline.path}: product.scheme {spec.scheme} needs the grid "
                              "and downscale sections")  # fmt: skip
        folder = Path(pipeline.downscale.output)
        wanted = ["s2", "s1"] if spec.scheme == "s2" else ["s1"]
        for scheme in wanted:
            path = folder / f"downscaler_{scheme}.pt"
            if not path.exists():
                if scheme == spec.scheme:
                    raise MissingModelError(
                        f"{pipeline.path}: product.scheme is {scheme} but {path} does not "
                        f"exist; run `unique-cube train-downscaler {pipeline.path} "
                        f"--scheme {scheme}` first"
                    )
                continue  # the S1 fallback is optional
            try:
                checkpoints[scheme] = load_checkpoint(path, scheme)
            except DownscaleError as err:
                raise MissingModelError(str(err)) from err
            hashes[f"downscaler_{scheme}"] = sha256_file(path)
            paths[scheme] = path
    return ProductModels(ModelCard.read(card_path), card_path, hashes, checkpoints, paths)
