"""A trained GPP model: its :class:`ModelCard` and the model file, loaded once per process.

A card (``<name>.card.json``) says what the model is — its learner, the features in the order
it takes them and the range of each seen in training, its cross-validation, the data it was
trained on (hash) and how tower windows were accepted — so that a map is made as the towers
were, and a model can be checked against what a pipeline feeds it.

The card also holds the model file's SHA-256, and :func:`check_model` holds the two against each
other before any learner reads the file: the hash (a file cut short or edited since training is
refused), the file's structure (:mod:`unique_cube.gpp.modelfile`: LightGBM would crash on a
damaged text model) and the feature names and order the file stores against the card's. Any
difference is a :class:`~unique_cube.errors.ModelError` naming both files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unique_cube.errors import ModelError
from unique_cube.files import write_json
from unique_cube.gpp.learners import Fitted
from unique_cube.gpp.modelfile import lightgbm_features, linear_model

__all__ = [
    "GPP_ATTRS",
    "CheckedModel",
    "GppModel",
    "ModelCard",
    "cached_model",
    "check_model",
    "load_in_child",
]


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
    model_sha256: str | None
    """SHA-256 of the model file as training wrote it. ``None`` in a card written before cards
    carried it: such a card cannot be checked against its model, and :func:`check_model`
    refuses it (retrain)."""
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
            content = Path(path).read_bytes()
        except OSError as err:
            raise ModelError(f"{path}: not a unique-cube model card ({err!r})") from err
        return cls.parse(content, path)

    @classmethod
    def parse(cls, content: bytes, path: str | Path) -> ModelCard:
        """The card in ``content`` (the bytes of the file at ``path``)."""
        try:
            data = json.loads(content)
            values = {"model_sha256": None}
            known = {f.name for f in dataclasses.fields(cls)}
            values.update((k, v) for k, v in data.items() if k in known)
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


@dataclass(frozen=True)
class CheckedModel:
    """A card and its model file, checked against each other (:func:`check_model`)."""

    card: ModelCard
    card_path: Path
    card_sha256: str
    """SHA-256 of the card file (the days' provenance, beside the model's)."""
    model_path: Path
    model_sha256: str
    text: str = dataclasses.field(repr=False)
    """The model file's text, as checked: learners read this, not the file again."""


def check_model(card_path: str | Path) -> CheckedModel:
    """The card at ``card_path`` and its model file, or a :class:`ModelError` naming both and
    what differs: a card without the model's hash (older than this check), a model file whose
    hash is not the card's, or whose structure is damaged, or whose feature names or order
    are not the card's. Nothing here hands the file to LightGBM."""
    card_path = Path(card_path)
    try:
        card_bytes = card_path.read_bytes()
    except OSError as err:
        raise ModelError(f"{card_path}: not a unique-cube model card ({err!r})") from err
    card = ModelCard.parse(card_bytes, card_path)
    model_path = card_path.parent / card.model_file
    retrain = "retrain with `unique-cube train-gpp`"
    if card.model_sha256 is None:
        raise ModelError(
            f"{card_path}: the card has no model_sha256 (it was written by an older unique-cube), "
            f"so {model_path} cannot be checked against it; {retrain}"
        )
    if not (
        isinstance(card.model_sha256, str) and re.fullmatch(r"[0-9a-f]{64}", card.model_sha256)
    ):
        raise ModelError(f"{card_path}: model_sha256 {card.model_sha256!r} is not a SHA-256 in hex")
    try:
        content = model_path.read_bytes()
    except OSError as err:
        raise ModelError(
            f"{model_path}: cannot read the model file of {card_path} ({err})"
        ) from err
    digest = hashlib.sha256(content).hexdigest()
    changed = (
        f"its SHA-256 {digest[:16]}… is not the model_sha256 {card.model_sha256[:16]}… of "
        f"{card_path}: the file was changed or damaged after training"
        if digest != card.model_sha256
        else ""
    )
    kind = "linear model file" if card.learner == "linear" else "LightGBM model (not handed to it)"
    try:
        text = content.decode()
        names = linear_model(text)[0] if card.learner == "linear" else lightgbm_features(text)
    except ValueError as err:  # UnicodeDecodeError included
        raise ModelError(
            f"{model_path}: not a {kind}: {err}{'; ' + changed if changed else ''}; {retrain}"
        ) from None
    if changed:
        raise ModelError(f"{model_path}: {changed}; {retrain}, or restore the file")
    difference = _feature_difference(card.features, names)
    if difference:
        raise ModelError(
            f"{card_path} and its model {model_path} disagree: {difference}; the card was "
            f"edited or belongs to another model; {retrain}"
        )
    card_sha256 = hashlib.sha256(card_bytes).hexdigest()
    return CheckedModel(card, card_path, card_sha256, model_path, digest, text)


def _feature_difference(card: Sequence[str], model: Sequence[str]) -> str:
    if len(card) != len(model):
        return (f"the card lists {len(card)} features ({', '.join(card)}), the model takes "
                f"{len(model)} ({', '.join(model)})")  # fmt: skip
    diffs = [
        f"feature {i} is {a} in the card, {b} in the model"
        for i, (a, b) in enumerate(zip(card, model, strict=True), 1)
        if a != b
    ]
    return "; ".join(diffs[:4]) + (f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else "")


class GppModel:
    """A saved model and its card (checked by :func:`check_model` before the learner reads the
    file). ``predict`` takes rows of the card's features in order."""

    def __init__(self, card_path: str | Path):
        checked = check_model(card_path)
        self.checked = checked
        self.card = checked.card
        self.features = list(self.card.features)
        if self.card.learner == "linear":
            _, coef, mean, scale = linear_model(checked.text)
            self._fitted = Fitted("linear", coef=coef, mean=mean, scale=scale)
        else:
            import lightgbm as lgb

            try:
                booster = lgb.Booster(model_str=checked.text)
            except (lgb.basic.LightGBMError, ValueError) as err:
                # ValueError: LightGBM hands its parameters back as JSON, which an edited
                # parameter line can break (json.JSONDecodeError).
                raise ModelError(f"{checked.model_path}: not a LightGBM model ({err})") from err
            self._fitted = Fitted(self.card.learner, booster=booster)
        self.path = checked.card_path

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


#: The child of :func:`load_in_child`: LightGBM reads the checked text from stdin and predicts
#: the rows in argv (numpy and LightGBM only, so that it starts in about a second).
_CHILD = """
import json, sys
import lightgbm, numpy
rows = numpy.array(json.loads(sys.argv[1]), dtype=float)
lightgbm.Booster(model_str=sys.stdin.read()).predict(rows, num_threads=1)
"""


def load_in_child(checked: CheckedModel, timeout: float = 300.0) -> None:
    """LightGBM loads a checked model and predicts with it in a child process first: a guard
    beside :func:`check_model`, whose structural check is of the text LightGBM reads, not of
    LightGBM. Were LightGBM to crash on a model that passed, the child dies, and this process
    raises a :class:`ModelError` naming the files. A product run does this once, before any
    day (about a second). A linear model needs no guard (NumPy reads it)."""
    if checked.card.learner == "linear":
        return
    card = checked.card
    ranges = np.array([card.feature_ranges.get(f, (np.nan, np.nan)) for f in card.features])
    rows = [ranges[:, 0], ranges[:, 1], ranges.mean(axis=1), np.full(len(ranges), np.nan)]
    rows_json = json.dumps([[None if np.isnan(v) else float(v) for v in r] for r in rows])
    _guarded([sys.executable, "-c", _CHILD, rows_json], checked, timeout)


def _guarded(argv: list[str], checked: CheckedModel, timeout: float) -> None:
    where = f"{checked.model_path} (of {checked.card_path})"
    try:
        done = subprocess.run(
            argv,
            input=checked.text,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ModelError(
            f"{where}: LightGBM did not load and apply it within {timeout:.0f} s in a child "
            "process; retrain with `unique-cube train-gpp`"
        ) from None
    if done.returncode == 0:
        return
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise ModelError(
            f"{where}: LightGBM crashed ({name}) loading or applying it in a child process; the "
            "model file is damaged or not one this LightGBM reads; retrain with "
            "`unique-cube train-gpp`"
        )
    said = done.stderr.strip().splitlines()
    raise ModelError(
        f"{where}: LightGBM could not load or apply it in a child process (exit "
        f"{done.returncode}: {said[-1] if said else 'no message'})"
    )
