"""The pure-pixel baseline of Yu et al. (2022): a small DNN trained on homogeneous coarse pixels.

A coarse pixel (GPP_M, 480 m) is a ``factor`` × ``factor`` block of the 30 m grid, aligned at the
grid's origin; a block cut by the grid's far edges holds only its in-grid part. A block is
*pure* when the coefficient of variation (std/|mean|) of its valid 30 m NDVI is among the lowest
``fraction`` (30 %) of the blocks of its dominant vegetation type, per date. On pure blocks the
30 m inputs are averaged to the coarse grid and a multilayer perceptron learns
(aggregated features, one-hot vegetation type) → GPP_M; it is then applied to each 30 m pixel's
own features and type. GPP in gC m-2 d-1 throughout.

The model is plain tensors, numbers and strings on disk: it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UniqueCubeError

__all__ = [
    "PurePixelError",
    "PurePixelModel",
    "Samples",
    "block_aggregate",
    "coarse_samples",
    "dominant_type",
    "fit_pure_pixel",
    "ndvi_cov",
    "pure_pixels",
]

log = logging.getLogger(__name__)

FORMAT = "unique-cube-purepixel-1"


class PurePixelError(UniqueCubeError, ValueError):
    """An input or saved model the pure-pixel baseline cannot use."""

    exit_code = 3


def coarse_shape(shape: tuple[int, ...], factor: int) -> tuple[int, int]:
    """The block grid (cy, cx) over a 30 m grid (…, H, W): ceil(H/factor), ceil(W/factor)."""
    if factor < 1:
        raise PurePixelError(f"factor must be a positive integer, not {factor}")
    return -(-shape[-2] // factor), -(-shape[-1] // factor)


def _blocks(array: np.ndarray, factor: int, fill) -> np.ndarray:
    """(…, H, W) → (…, cy, factor, cx, factor), the ragged edge padded with ``fill``."""
    cy, cx = coarse_shape(array.shape, factor)
    pad = [(0, 0)] * (array.ndim - 2)
    pad += [(0, cy * factor - array.shape[-2]), (0, cx * factor - array.shape[-1])]
    padded = np.pad(array, pad, constant_values=fill)
    return padded.reshape(*array.shape[:-2], cy, factor, cx, factor)


def _block_moments(array: np.ndarray, factor: int, min_valid: float):
    """Mean and population std over each block's finite pixels; NaN below ``min_valid``."""
    blocks = _blocks(np.asarray(array, dtype="float64"), factor, np.nan)
    valid = np.isfinite(blocks)
    count = valid.sum(axis=(-3, -1))
    values = np.where(valid, blocks, 0.0)
    enough = count >= max(min_valid * factor * factor, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = values.sum(axis=(-3, -1)) / count
        centred = np.where(valid, blocks - np.expand_dims(mean, (-3, -1)), 0.0)
        std = np.sqrt((centred**2).sum(axis=(-3, -1)) / count)
    return np.where(enough, mean, np.nan), np.where(enough, std, np.nan)


def block_aggregate(features: np.ndarray, factor: int, min_valid: float = 0.5) -> np.ndarray:
    """Mean of each block's finite 30 m pixels, (F, H, W) → (F, cy, cx) float32.

    NaN where fewer than ``min_valid`` of the block's factor² pixels are finite (the part of a
    block beyond the grid's edge counts as missing)."""
    features = np.asarray(features)
    out = np.empty((features.shape[0], *coarse_shape(features.shape, factor)), dtype="float32")
    for i, layer in enumerate(features):  # one layer at a time bounds the float64 copies
        out[i] = _block_moments(layer, factor, min_valid)[0]
    return out


def ndvi_cov(ndvi: np.ndarray, factor: int, min_valid: float = 0.5) -> np.ndarray:
    """Coefficient of variation std/|mean| of each block's finite 30 m NDVI, (H, W) → (cy, cx).

    NaN where fewer than ``min_valid`` of the block is finite or the mean is zero."""
    mean, std = _block_moments(ndvi, factor, min_valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = std / np.abs(mean)
    return np.where(np.isfinite(cov), cov, np.nan)


def dominant_type(types: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The most frequent type code of each block and its share of the block's in-grid pixels.

    (H, W) integer codes → (cy, cx) codes, (cy, cx) shares in (0, 1]; ties go to the lower code.
    """
    types = _integer_types(types)
    blocks = _blocks(types, factor, 0)
    inside = _blocks(np.ones(types.shape, dtype=bool), factor, False)
    codes = np.unique(types)
    counts = np.stack([((blocks == code) & inside).sum(axis=(-3, -1)) for code in codes])
    best = counts.argmax(axis=0)
    share = np.take_along_axis(counts, best[None], axis=0)[0] / inside.sum(axis=(-3, -1))
    return codes[best], share


def pure_pixels(
    cov: np.ndarray, dominant: np.ndarray, vegetated: Iterable[int], fraction: float = 0.3
) -> np.ndarray:
    """Pure blocks: per vegetated type, the ``fraction`` lowest-CoV blocks of that dominant type.

    Of the n blocks of a type with a finite CoV, ceil(fraction · n) are kept (ties in row-major
    order); blocks of other types are never pure. Returns a boolean (cy, cx) mask."""
    if cov.shape != dominant.shape:
        raise PurePixelError(f"CoV {cov.shape} and dominant types {dominant.shape} differ in shape")
    if not 0 < fraction <= 1:
        raise PurePixelError(f"fraction must be in (0, 1], not {fraction}")
    pure = np.zeros(cov.shape, dtype=bool)
    flat_cov, flat_type, flat_pure = cov.ravel(), dominant.ravel(), pure.ravel()
    for code in set(vegetated):
        candidates = np.flatnonzero((flat_type == code) & np.isfinite(flat_cov))
        keep = math.ceil(round(fraction * candidates.size, 9))
        order = np.argsort(flat_cov[candidates], kind="stable")
        flat_pure[candidates[order[:keep]]] = True
    return pure


@dataclass(frozen=True)
class Samples:
    """Training rows: pure blocks with their aggregated features and GPP_M."""

    features: np.ndarray
    """Block means of the 30 m features (N, F)."""
    types: np.ndarray
    """Dominant vegetation type code of each block (N,)."""
    gpp: np.ndarray
    """GPP_M of each block (N,), gC m-2 d-1."""

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        return Samples(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                         ("features", "types", "gpp")))  # fmt: skip

    def counts(self) -> dict[int, int]:
        """Rows per vegetation type code."""
        codes, n = np.unique(self.types, return_counts=True)
        return {int(c): int(k) for c, k in zip(codes, n, strict=True)}


def coarse_samples(
    features: np.ndarray,
    names: Sequence[str],
    types: np.ndarray,
    gpp_m: np.ndarray,
    factor: int,
    vegetated: Iterable[int],
    *,
    fraction: float = 0.3,
    min_valid: float = 0.5,
    min_purity: float = 0.0,
    ndvi: str = "ndvi",
) -> Samples:
    """The training rows of one date: the pure blocks with finite features and GPP_M.

    ``features`` (F, H, W) in the order of ``names``, NaN where a 30 m pixel is not clear;
    ``types`` (H, W) vegetation type codes; ``gpp_m`` on the block grid, (ceil(H/factor),
    ceil(W/factor)), or (H//factor, W//factor) when the ragged edge was dropped. Blocks whose
    dominant type covers less than ``min_purity`` of them are not candidates."""
    features = np.asarray(features)
    _check_stack(features, names, "features")
    if ndvi not in names:
        raise PurePixelError(f"the features {list(names)} lack {ndvi!r}, needed for the CoV")
    if np.shape(types) != features.shape[1:]:
        raise PurePixelError(f"types {np.shape(types)} do not match the features' 30 m grid "
                             f"{features.shape[1:]}")  # fmt: skip
    full = coarse_shape(features.shape, factor)
    cropped = (features.shape[1] // factor, features.shape[2] // factor)
    if np.shape(gpp_m) not in (full, cropped):
        raise PurePixelError(f"GPP_M {np.shape(gpp_m)} is not the block grid of the 30 m grid "
                             f"{features.shape[1:]} at factor {factor}: expected {full}"
                             + (f" or {cropped}" if cropped != full else ""))  # fmt: skip
    cy, cx = np.shape(gpp_m)  # blocks beyond GPP_M's grid take no part in the ranking
    cov = ndvi_cov(features[list(names).index(ndvi)], factor, min_valid)[:cy, :cx]
    dominant, purity = (a[:cy, :cx] for a in dominant_type(types, factor))
    cov = np.where(purity >= min_purity, cov, np.nan)
    pure = pure_pixels(cov, dominant, vegetated, fraction)
    x = block_aggregate(features, factor, min_valid)[:, :cy, :cx].reshape(len(names), -1).T
    y = np.asarray(gpp_m, dtype="float32").ravel()
    keep = pure.ravel() & np.isfinite(y) & np.isfinite(x).all(axis=1)
    return Samples(x[keep], dominant.ravel()[keep], y[keep])


def _check_stack(features: np.ndarray, names: Sequence[str], what: str) -> None:
    if features.ndim != 3 or features.shape[0] != len(names):
        raise PurePixelError(f"{what} must be (F, H, W) with F = {len(names)} features "
                             f"{list(names)}, not {features.shape}")  # fmt: skip
    if len(set(names)) != len(names):
        raise PurePixelError(f"feature names repeat: {list(names)}")


def _integer_types(types: np.ndarray) -> np.ndarray:
    types = np.asarray(types)
    if not np.issubdtype(types.dtype, np.integer):
        raise PurePixelError(f"vegetation types must be integer codes, not {types.dtype}")
    return types.astype("int64")


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
        x, types = np.asarray(x, dtype="float64"), _integer_types(types)
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
        _check_stack(features, names, "features")
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
        from .downscale import load_weights_only

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
    # pure-pixel selection
    fraction: float = 0.3,
    min_valid: float = 0.5,
    min_purity: float = 0.0,
    ndvi: str = "ndvi",
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
    types = _integer_types(types)
    parts = [
        coarse_samples(f, names, types, g, factor, vegetated, fraction=fraction,
                       min_valid=min_valid, min_purity=min_purity, ndvi=ndvi)
        for f, g in zip(features, gpp_m, strict=True)
    ]  # fmt: skip
    samples = Samples.concat(parts)
    if samples.gpp.size == 0:
        raise PurePixelError(_why_no_rows(features, names, types, gpp_m, factor, vegetated,
                                          min_valid, ndvi))  # fmt: skip
    counts = samples.counts()
    say(f"pure-pixel model: {samples.gpp.size} pure blocks over {len(features)} dates; per type "
        + ", ".join(f"{c}: {counts.get(c, 0)}" for c in vegetated))  # fmt: skip
    model = PurePixelModel(names, vegetated, hidden)
    model.fit(samples, epochs=epochs, patience=patience, batch=batch, lr=lr,
              val_fraction=val_fraction, seed=seed)  # fmt: skip
    model.meta.update(pure_blocks={c: counts.get(c, 0) for c in vegetated}, factor=factor,
                      fraction=fraction, dates=len(features))  # fmt: skip
    return model


def _why_no_rows(features, names, types, gpp_m, factor, vegetated, min_valid, ndvi) -> str:
    """Say which of the conditions for a training row no block met."""
    head = "no pure coarse pixel to train on: "
    if not any(np.isfinite(g).any() for g in gpp_m):
        return head + "GPP_M is NaN on every date"
    index = list(names).index(ndvi)
    if not any(np.isfinite(ndvi_cov(f[index], factor, min_valid)).any() for f in features):
        return head + (f"no block has {min_valid:.0%} of its 30 m {ndvi} finite (with a non-zero "
                       "mean) on any date")  # fmt: skip
    dominant, _ = dominant_type(types, factor)
    if not np.isin(dominant, vegetated).any():
        present = sorted(int(c) for c in np.unique(dominant))
        return head + f"no block is dominated by a vegetated type {vegetated} (found {present})"
    return head + "the pure blocks have no finite GPP_M or aggregated features on any date"
