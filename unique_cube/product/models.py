"""The trained models a product day needs, checked before any day is made: the GPP_M model and
its card (against each other, and loaded once in a child process so that a damaged model file
cannot crash the run), the downscaler checkpoint(s) of the pipeline's scheme (and S1 as S2's
fallback), and the hash of each file for the days' provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.checkpoint import Checkpoint, load_checkpoint
from unique_cube.errors import DownscaleError, MissingModelError
from unique_cube.files import sha256_file
from unique_cube.gpp.model import ModelCard, check_model, load_in_child

__all__ = ["ProductModels", "check_models"]


@dataclass(frozen=True)
class ProductModels:
    """The checked models of a product run."""

    card: ModelCard
    """The GPP_M model's card."""
    card_path: Path
    hashes: dict[str, str]
    """SHA-256 of each model file by model name, and of the GPP_M card (``gpp_modis_card``):
    the days' provenance."""
    checkpoints: dict[str, Checkpoint]
    """The downscaler checkpoints by scheme (S2 and its S1 fallback, or S1)."""
    paths: dict[str, Path] = field(default_factory=dict)
    """The checkpoint files by scheme (the actors load them)."""


def check_models(pipeline: Pipeline) -> ProductModels:
    """The GPP_M model and the downscaler(s) of a pipeline's product (its sections checked by
    :meth:`~unique_cube.config.pipeline.Pipeline.require`), or a clear error."""
    spec = pipeline.product
    models = Path(pipeline.gpp.output)
    card_path, model_path = models / "gpp_modis.card.json", models / "gpp_modis.model"
    for path in (card_path, model_path):
        if not path.exists():
            raise MissingModelError(
                f"{pipeline.path}: gpp.output names {models}, which has no {path.name}; "
                f"run `unique-cube train-gpp {pipeline.path}` first"
            )
    checked = check_model(card_path)  # before LightGBM reads the file: hash, structure, names
    load_in_child(checked)  # then LightGBM, where a crash cannot take the run with it
    card = checked.card
    hashes = {"gpp_modis": checked.model_sha256, "gpp_modis_card": checked.card_sha256}
    checkpoints, paths = {}, {}
    if spec.scheme != "bilinear":
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
    return ProductModels(card, card_path, hashes, checkpoints, paths)
