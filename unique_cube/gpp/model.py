"""A trained GPP model: its :class:`ModelCard` and the model file, loaded once per process.

A card (``<name>.card.json``) says what the model is — its learner, the features in the order
it takes them and the range of each seen in training, its cross-validation, the data it was
trained on (hash) and how tower windows were accepted — so that a map is made as the towers
were, and a model can be checked against what a pipeline feeds it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unique_cube.errors import ModelError
from unique_cube.files import write_json
from unique_cube.gpp.learners import Fitted

__all__ = ["GPP_ATTRS", "GppModel", "ModelCard", "cached_model"]


GPP_ATTRS = {
    "units": "g m-2 day-1",
    "standard_name": "gross_primary_productivity_of_biomass_expressed_as_carbon",
    "long_name": "gross primary productivity",
}


@dataclass(frozen=True)
class ModelCard:
    """What a trained GPP model is (``<name>.card.json``, next to its model file)."""

    name: str
    """``gpp_modis`` or ``gpp_landsat`` (the file names' stem)."""
    learner: str
    """The learner the spatial CV picked: ``lightgbm``, ``lightgbm_rf`` or ``linear``."""
    model_file: str
    """The model file's name, in the card's folder."""
    features: tuple[str, ...]
    """The features the model takes, in order."""
    feature_ranges: Mapping[str, tuple[float, float]]
    """Each feature's (min, max) in the training table: inputs outside are flagged."""
    target: str
    n_rows: int
    n_sites: int
    folds: int
    fold_of_site: Mapping[str, int]
    cv: Mapping[str, Any]
    """Cross-validated metrics of the chosen learner: overall, per vegetation type, per fold."""
    learner_comparison: Mapping[str, Any]
    params: Mapping[str, Any]
    training_data_sha256: str
    versions: Mapping[str, str]
    source: str | None = None
    """The satellite source (catalog name) the features came from."""
    min_clear: int | None = None
    """Clear pixels of the 3×3 tower window a training day needed."""
    gap_fill_days: int = 0
    """Index gaps up to this many days were filled in time in training; maps do the same."""
    train_period: tuple[str, str] | None = None

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """The card at ``path``, or a :class:`~unique_cube.errors.ModelError` naming it."""
        try:
            data = json.loads(Path(path).read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in data.items() if k in known}
            values["features"] = tuple(values["features"])
            values["feature_ranges"] = {k: tuple(v) for k, v in values["feature_ranges"].items()}
            if values.get("train_period") is not None:
                values["train_period"] = tuple(values["train_period"])
            return cls(**values)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelError(f"{path}: not a unique-cube model card ({err!r})") from err

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["features"] = list(self.features)
        out["feature_ranges"] = {k: list(v) for k, v in self.feature_ranges.items()}
        return out

    def write(self, path: str | Path) -> None:
        write_json(Path(path), self.to_dict())


class GppModel:
    """A saved model and its card. ``predict`` takes rows of the card's features in order."""

    def __init__(self, card_path: str | Path):
        card_path = Path(card_path)
        self.card = ModelCard.read(card_path)
        self.features = list(self.card.features)
        model_file = card_path.parent / self.card.model_file
        learner = self.card.learner
        if learner == "linear":
            try:
                data = json.loads(model_file.read_text())
                coef, mean, scale = (np.array(data[k]) for k in ("coef", "mean", "scale"))
            except (OSError, ValueError, KeyError) as err:
                raise ModelError(f"{model_file}: not a linear model file ({err})") from err
            self._fitted = Fitted("linear", coef=coef, mean=mean, scale=scale)
        else:
            import lightgbm as lgb

            try:
                booster = lgb.Booster(model_file=str(model_file))
            except (lgb.basic.LightGBMError, OSError) as err:
                raise ModelError(f"{model_file}: not a LightGBM model ({err})") from err
            names = booster.feature_name()
            if len(names) != len(self.features):
                raise ModelError(
                    f"{model_file}: the model takes {len(names)} features, its card lists "
                    f"{len(self.features)}"
                )
            self._fitted = Fitted(learner, booster=booster)
        self.path = card_path

    def predict(self, x: np.ndarray, num_threads: int = 0) -> np.ndarray:
        """GPP for rows of features in the card's order (``num_threads`` 0: LightGBM's
        default; 1 inside Dask tasks, whose threads already run in parallel)."""
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ModelError(
                f"{self.path}: expected rows of {len(self.features)} features "
                f"({', '.join(self.features)}), got shape {x.shape}"
            )
        return np.asarray(self._fitted.predict(x, num_threads), dtype="float32")


_MODELS: dict[str, GppModel] = {}


def cached_model(card_path: str) -> GppModel:
    # One load per process: tasks carry the path, never the Booster.
    if card_path not in _MODELS:
        _MODELS[card_path] = GppModel(card_path)
    return _MODELS[card_path]
