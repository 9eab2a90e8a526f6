"""Step 1: daily GPP from vegetation indices and weather, learned at flux towers.

``features`` defines the model inputs (indices, the weather brought down to the terrain, the
day of year) and their gap filling once, for the towers (training) and the grid (prediction)
alike; ``tower_windows`` cuts tower windows, each tower on its own tile's grid, and
``towers`` joins them with the flux files; ``train`` cross-validates the learners of
``learners`` over spatial folds and writes a model with its ``ModelCard`` (``model``);
``predict`` applies it to lazy cubes chunk by chunk (GPP_M at 480 m, GPP_L at 30 m). A new
learner is an entry in ``learners``.
"""

from unique_cube.gpp.features import (
    FEATURE_INDICES,
    FEATURES,
    LOCAL_WEATHER,
    TERRAIN,
    WEATHER,
    feature_cube,
    fill_gaps,
)
from unique_cube.gpp.model import GppModel, ModelCard
from unique_cube.gpp.predict import gpp_landsat, gpp_modis, predict
from unique_cube.gpp.train import cross_validate, spatial_folds, train, train_gpp

__all__ = [
    "FEATURES",
    "FEATURE_INDICES",
    "LOCAL_WEATHER",
    "TERRAIN",
    "WEATHER",
    "GppModel",
    "ModelCard",
    "cross_validate",
    "feature_cube",
    "fill_gaps",
    "gpp_landsat",
    "gpp_modis",
    "predict",
    "spatial_folds",
    "train",
    "train_gpp",
]
