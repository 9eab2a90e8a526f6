"""The trained models a product day needs, checked before any day is made: the GPP_M model and
its card (against each other, and loaded once in a child process so that a damaged model file
cannot crash the run), for the fusion scheme the GPP_L model too (its reference state), the
downscaler checkpoint(s) of the pipeline's scheme (S2, S1 as fusion's fallbacks; S1 as S2's),
and the hash of each file for the days' provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.checkpoint import Checkpoint, load_checkpoint
from unique_cube.downscale.fusion import FusionMean
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
    fusion_mean: FusionMean | None = None
    """The fusion checkpoint's regression mean (loaded once for the run)."""


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
    if spec.scheme == "fusion":  # the reference state is GPP_L of the Landsat model
        landsat = models / "gpp_landsat.card.json"
        if not landsat.exists() or not (models / "gpp_landsat.model").exists():
            raise MissingModelError(
                f"{pipeline.path}: product.scheme is fusion, whose reference state is GPP_L of "
                f"the Landsat model, but {models} has no gpp_landsat model and card; run "
                f"`unique-cube train-gpp {pipeline.path}` first"
            )
        checked_landsat = check_model(landsat)
        load_in_child(checked_landsat)
        hashes["gpp_landsat"] = checked_landsat.model_sha256
        hashes["gpp_landsat_card"] = checked_landsat.card_sha256
    checkpoints, paths, fusion_mean = {}, {}, None
    if spec.scheme != "bilinear":
        folder = Path(pipeline.downscale.output)
        wanted = {"fusion": ["fusion", "s2", "s1"], "s2": ["s2", "s1"]}.get(spec.scheme, ["s1"])
        for scheme in wanted:
            path = folder / f"downscaler_{scheme}.pt"
            if not path.exists():
                if scheme == spec.scheme:
                    raise MissingModelError(
                        f"{pipeline.path}: product.scheme is {scheme} but {path} does not "
                        f"exist; run `unique-cube train-downscaler {pipeline.path} "
                        f"--scheme {scheme}` first"
                    )
                continue  # the fallbacks are optional
            try:
                checkpoints[scheme] = load_checkpoint(path, scheme)
                if scheme == "fusion":
                    fusion_mean = _check_fusion(pipeline, path, checkpoints[scheme])
            except DownscaleError as err:
                raise MissingModelError(str(err)) from err
            hashes[f"downscaler_{scheme}"] = sha256_file(path)
            paths[scheme] = path
    return ProductModels(card, card_path, hashes, checkpoints, paths, fusion_mean)


def _check_fusion(pipeline: Pipeline, path: Path, ckpt: Checkpoint) -> FusionMean:
    """A fusion checkpoint made for this pipeline's reference state, with a mean model that
    loads: else a :class:`DownscaleError` naming what differs."""
    info = ckpt.fusion
    if not info or "mean_model" not in info:
        raise DownscaleError(f"{path}: a fusion checkpoint without its mean model (damaged, or "
                             "not made by train-downscaler --scheme fusion)")  # fmt: skip
    wanted = pipeline.downscale.reference_days
    if int(info["reference_days"]) != wanted:
        raise DownscaleError(
            f"{path}: trained with references of up to {info['reference_days']} days, but "
            f"{pipeline.path}: downscale.reference_days is {wanted}; retrain (unique-cube "
            "train-downscaler --scheme fusion) or set it back"
        )
    mean = FusionMean(info["mean_model"], list(info["features"]))
    try:
        mean.booster()
    except Exception as err:  # LightGBM's own error type
        raise DownscaleError(f"{path}: its fusion mean model does not load ({err})") from err
    return mean
