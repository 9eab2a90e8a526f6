"""The pure-pixel baseline of Yu et al. (2022): a small DNN trained on homogeneous coarse pixels.

On the pure blocks of :mod:`unique_cube.downscale.purity` the 30 m inputs are averaged to the
coarse grid and a multilayer perceptron learns (aggregated features, one-hot vegetation type)
→ GPP_M; it is then applied to each 30 m pixel's own features and type. GPP in gC m-2 d-1
throughout. It reads the day's own Landsat, so it is an evaluation baseline (an oracle), not a
daily path.

The model is plain tensors, numbers and strings on disk: it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unique_cube.downscale.checkpoint import load_weights_only
from unique_cube.downscale.purity import (
    YU_2022,
    Purity,
    Samples,
    check_stack,
    coarse_samples,
    integer_types,
    why_no_rows,
)
from unique_cube.errors import PurePixelError

__all__ = ["FORMAT", "PurePixelModel", "fit_pure_pixel"]


log = logging.getLogger(__name__)


FORMAT = "unique-cube-purepixel-1"


def _network(inputs: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, 1))


class PurePixelModel:
    """A multilayer perceptron: standardised features + one-hot type → GPP (gC m-2 d-1).

    ``names`` are the features in the order the network takes them; ``type_codes`` the vegetation
    types it knows (pixels of other types get NaN)."""

    def __init__(
        self, names: Sequence[str], type_codes: Iterable[int], hidden: Sequence[int] = (64, 64)
    ) -> None:
        self.names = list(names)
        self.type_codes = sorted({int(c) for c in type_codes})
        if not self.names or not self.type_codes:
            raise PurePixelError("a pure-pixel model needs at least one feature and one type")
        self.hidden = [int(h) for h in hidden]
        self.network = _network(len(self.names) + len(self.type_codes), self.hidden)
        self.feature_mean = np.zeros(len(self.names), dtype="float32")
        self.feature_std = np.ones(len(self.names), dtype="float32")
        self.target_mean, self.target_std = 0.0, 1.0
        self.meta: dict = {}

    def _inputs(self, x: np.ndarray, types: np.ndarray) -> torch.Tensor:
        z = (x - self.feature_mean) / self.feature_std
        onehot = types[:, None] == np.asarray(self.type_codes)[None, :]
        return torch.from_numpy(np.concatenate([z, onehot], axis=1).astype("float32"))

    def fit(
        self,
        samples: Samples,
        *,
        epochs: int = 400,
        patience: int = 40,
        batch: int = 256,
        lr: float = 3e-3,
        val_fraction: float = 0.3,
        seed: int = 0,
    ) -> PurePixelModel:
        """Adam on the mean squared error of the standardised GPP; deterministic for a seed.

        ``val_fraction`` of each type's rows are held out (as Yu et al. do, 70/30) and the
        weights of the epoch with the lowest validation loss are kept, stopping after
        ``patience`` epochs without improvement; with no rows held out all ``epochs`` run."""
        if not 0 <= val_fraction < 1:
            raise PurePixelError(f"val_fraction must be in [0, 1), not {val_fraction}")
        known = np.isin(samples.types, self.type_codes)
        x, types = samples.features[known].astype("float64"), samples.types[known]
        y = samples.gpp[known].astype("float64")
        if y.size == 0:
            raise PurePixelError(f"no training row of the model's types {self.type_codes}")
        rng = np.random.default_rng(seed)
        held = np.zeros(y.size, dtype=bool)
        for code in np.unique(types):
            rows = rng.permutation(np.flatnonzero(types == code))
            held[rows[: round(val_fraction * rows.size) if rows.size > 1 else 0]] = True
        self.feature_mean = x[~held].mean(axis=0).astype("float32")
        std = x[~held].std(axis=0)
        self.feature_std = np.where(std > 0, std, 1.0).astype("float32")
        self.target_mean = float(y[~held].mean())
        self.target_std = float(y[~held].std()) or 1.0
        inputs = self._inputs(x, types)
        target = torch.from_numpy(((y - self.target_mean) / self.target_std).astype("float32"))
        train_rows, val_rows = np.flatnonzero(~held), np.flatnonzero(held)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = _network(inputs.shape[1], self.hidden)
        optimiser = torch.optim.Adam(self.network.parameters(), lr=lr)
        best, best_state, since, history = math.inf, None, 0, []
        for _ in range(epochs):
            self.network.train()
            order = rng.permutation(train_rows)
            for start in range(0, order.size, batch):
                rows = torch.from_numpy(order[start : start + batch])
                loss = ((self.network(inputs[rows])[:, 0] - target[rows]) ** 2).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            if val_rows.size == 0:
                continue
            self.network.eval()
            with torch.no_grad():
                val = float(((self.network(inputs[val_rows])[:, 0] - target[val_rows]) ** 2).mean())
            history.append(val)
            if val < best:
                best, since = val, 0
                best_state = {k: v.clone() for k, v in self.network.state_dict().items()}
            elif (since := since + 1) >= patience:
                break
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self.network.eval()
        self.meta.update(
            rows_train=int(train_rows.size),
            rows_validation=int(val_rows.size),
            epochs=len(history) or epochs,
            seed=seed,
            validation_rmse=math.sqrt(best) * self.target_std if history else None,
        )
        return self

    def predict_rows(self, x: np.ndarray, types: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """GPP ≥ 0 (N,) float32 for rows (N, F) in the model's feature order; NaN where a
        feature is NaN or the type is not one the model knows."""
        x, types = np.asarray(x, dtype="float64"), integer_types(types)
        out = np.full(types.shape, np.nan, dtype="float32")
        ok = np.flatnonzero(np.isfinite(x).all(axis=1) & np.isin(types, self.type_codes))
        self.network.eval()
        with torch.no_grad():
            for start in range(0, ok.size, chunk):
                rows = ok[start : start + chunk]
                z = self.network(self._inputs(x[rows], types[rows]))[:, 0].numpy()
                out[rows] = np.maximum(z * self.target_std + self.target_mean, 0.0)
        return out

    def predict(self, features: np.ndarray, names: Sequence[str], types: np.ndarray) -> np.ndarray:
        """30 m GPP (H, W) float32 from ``features`` (F, H, W) named ``names`` (any order; extra
        features are ignored) and ``types`` (H, W)."""
        features = np.asarray(features)
        check_stack(features, names, "features")
        missing = [n for n in self.names if n not in names]
        if missing:
            raise PurePixelError(f"the features lack {missing}, which the model takes "
                                 f"(it takes {self.names}; given {list(names)})")  # fmt: skip
        if np.shape(types) != features.shape[1:]:
            raise PurePixelError(f"types {np.shape(types)} do not match the features' grid "
                                 f"{features.shape[1:]}")  # fmt: skip
        order = [list(names).index(n) for n in self.names]
        x = features[order].reshape(len(order), -1).T
        return self.predict_rows(x, np.asarray(types).ravel()).reshape(features.shape[1:])

    def save(self, path: str | Path) -> None:
        """Tensors, numbers, strings, lists and dicts only: loadable with ``weights_only=True``."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": FORMAT,
                "state_dict": self.network.state_dict(),
                "names": self.names,
                "type_codes": self.type_codes,
                "hidden": self.hidden,
                "feature_mean": torch.from_numpy(self.feature_mean),
                "feature_std": torch.from_numpy(self.feature_std),
                "target_mean": self.target_mean,
                "target_std": self.target_std,
                "meta": self.meta,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> PurePixelModel:
        """Load a saved model without executing any code from the file."""

        path = Path(path)
        data = load_weights_only(path, FORMAT, "pure-pixel", "model", PurePixelError)
        try:
            model = cls(data["names"], data["type_codes"], data["hidden"])
            model.network.load_state_dict(data["state_dict"])
            model.feature_mean = data["feature_mean"].numpy().astype("float32")
            model.feature_std = data["feature_std"].numpy().astype("float32")
            model.target_mean = float(data["target_mean"])
            model.target_std = float(data["target_std"])
            model.meta = dict(data["meta"])
        except (KeyError, RuntimeError, TypeError, AttributeError) as err:
            raise PurePixelError(f"{path}: a damaged pure-pixel model ({err!r})") from err
        model.network.eval()
        return model


def fit_pure_pixel(
    features: Sequence[np.ndarray],
    names: Sequence[str],
    types: np.ndarray,
    gpp_m: Sequence[np.ndarray],
    factor: int,
    vegetated: Iterable[int],
    *,
    purity: Purity = YU_2022,
    # network and training
    hidden: Sequence[int] = (64, 64),
    epochs: int = 400,
    patience: int = 40,
    batch: int = 256,
    lr: float = 3e-3,
    val_fraction: float = 0.3,
    seed: int = 0,
    say: Callable[[str], None] = log.info,
) -> PurePixelModel:
    """Select the pure blocks of every date and fit a :class:`PurePixelModel` on them.

    ``features`` per date (F, H, W) in the order of ``names``; ``types`` (H, W) vegetation type
    codes, ``vegetated`` the codes the model learns; ``gpp_m`` per date on the block grid. The
    number of pure blocks used per type is said and kept in ``model.meta["pure_blocks"]``."""
    if len(features) != len(gpp_m):
        raise PurePixelError(f"{len(features)} feature dates but {len(gpp_m)} GPP_M dates")
    if len(features) == 0:
        raise PurePixelError("no date to train on")
    vegetated = sorted({int(c) for c in vegetated})
    if not vegetated:
        raise PurePixelError("no vegetated type code given")
    types = integer_types(types)
    parts = [
        coarse_samples(f, names, types, g, factor, vegetated, purity)
        for f, g in zip(features, gpp_m, strict=True)
    ]  # fmt: skip
    samples = Samples.concat(parts)
    if samples.gpp.size == 0:
        raise PurePixelError(why_no_rows(features, names, types, gpp_m, factor, vegetated,
                                         purity.min_valid, purity.ndvi))  # fmt: skip
    counts = samples.counts()
    say(f"pure-pixel model: {samples.gpp.size} pure blocks over {len(features)} dates; per type "
        + ", ".join(f"{c}: {counts.get(c, 0)}" for c in vegetated))  # fmt: skip
    model = PurePixelModel(names, vegetated, hidden)
    model.fit(samples, epochs=epochs, patience=patience, batch=batch, lr=lr,
              val_fraction=val_fraction, seed=seed)  # fmt: skip
    model.meta.update(pure_blocks={c: counts.get(c, 0) for c in vegetated}, factor=factor,
                      fraction=purity.fraction, dates=len(features))  # fmt: skip
    return model
