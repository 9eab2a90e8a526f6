"""Downscaler checkpoints: plain tensors, numbers and strings, loaded without running any code.

A checkpoint holds the network's weights and shape, the noise schedule, the scheme and the
static layers' normalisation; it loads with ``torch.load(weights_only=True)``, and a file that
would import code (a pickle of a class, ``os.system``) is refused before anything in it runs
(:func:`load_weights_only`, shared with the pure-pixel baseline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unique_cube.downscale.conditions import GPP_SCALE
from unique_cube.downscale.network import ConditionalUNet
from unique_cube.downscale.schedule import NoiseSchedule
from unique_cube.errors import DownscaleError, UnsafeCheckpointError

__all__ = [
    "GPP_NORMALISATION",
    "Checkpoint",
    "load_checkpoint",
    "load_weights_only",
    "save_checkpoint",
]


@dataclass
class Checkpoint:
    model: ConditionalUNet
    schedule: NoiseSchedule
    scheme: str
    static: dict
    """Names, means and standard deviations of the static layers (S2)."""
    meta: dict
    prediction: str = "x0"
    """What the network predicts: the clean residual ("x0") or the noise ("epsilon")."""
    normalisation: dict = field(default_factory=lambda: dict(GPP_NORMALISATION))
    """The variable and its network units: ``variable``, ``units``, ``scale`` (units per
    network unit), ``non_negative`` (clamped at 0)."""
    fusion: dict | None = None
    """The fusion downscaler's mean model, feature names and statistics, training ranges
    and spread calibration (:mod:`unique_cube.downscale.fusion_train`); ``None`` for S1/S2."""

    @property
    def blend_options(self) -> dict:
        """How :func:`~unique_cube.downscale.tiling.blend_tiles` turns residuals into maps."""
        return {"scale": float(self.normalisation["scale"]),
                "non_negative": bool(self.normalisation["non_negative"])}  # fmt: skip


#: S1/S2 checkpoints: GPP in units of :data:`GPP_SCALE`, never negative.
GPP_NORMALISATION = {"variable": "gpp", "units": "g m-2 day-1", "scale": GPP_SCALE,
                     "non_negative": True}  # fmt: skip


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Tensors, numbers, strings and lists only: loadable with ``weights_only=True``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": "unique-cube-downscaler-1",
            "state_dict": ckpt.model.state_dict(),
            "unet": ckpt.model.config,
            "betas": ckpt.schedule.betas,
            "scheme": ckpt.scheme,
            "prediction": ckpt.prediction,
            "gpp_scale": GPP_SCALE,
            "normalisation": ckpt.normalisation,
            "fusion": ckpt.fusion or {},
            "static": ckpt.static,
            "meta": ckpt.meta,
        },
        path,
    )


def load_weights_only(
    path: Path, format_tag: str, owner: str, noun: str, error: type[Exception]
) -> dict:
    """A saved dict of tensors, numbers and strings, read with ``torch.load(weights_only=True)``
    so that no code in the file runs.

    A file that would import anything a file of weights never needs (``os.system``, a class
    of some module) is refused with :class:`~unique_cube.errors.UnsafeCheckpointError`, naming
    what it imports. ``error`` names the path when the file is missing, damaged, or not a
    ``format_tag`` file (an ``owner`` ``noun``)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise error(f"{path}: no such {noun}") from err
    except Exception as err:
        imports = _code_imported(path, err)
        if imports:
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle this {noun}: it would import "
                f"{', '.join(imports)}, which is code, not weights (not a weights-only {noun}); "
                f"nothing in it was run. A unique-cube {owner} {noun} holds only tensors, "
                "numbers and strings: find out where this file came from, and retrain "
                "(`unique-cube train-downscaler`) or restore it from a trusted copy"
            ) from err
        raise error(
            f"{path}: not a weights-only {noun}: the file is damaged or not a PyTorch file "
            f"(refused to unpickle it: {_load_problem(err)})"
        ) from err
    if not isinstance(data, dict) or data.get("format") != format_tag:
        raise error(f"{path}: not a unique-cube {owner} {noun} ({format_tag})")
    return data


# Modules whose names a file written by torch.save of plain tensors and dicts imports.
_WEIGHTS_MODULES = ("torch.", "collections.OrderedDict")


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
               "BINSTRING", "SHORT_BINSTRING"}  # fmt: skip


def _code_imported(path: Path, err: Exception) -> list[str]:
    """What a refused file would import that weights never need: the global PyTorch's
    weights-only unpickler stopped at, and the imports found by reading the pickle's opcodes
    (never executing them; PyTorch stops at the first opcode it does not know)."""
    import pickletools
    import zipfile

    blocked = re.findall(r"GLOBAL ([\w.]+)", str(err))
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the pickle is <name>/data.pkl
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                payload = archive.read(pickles[0]) if pickles else b""
        else:
            payload = Path(path).read_bytes()
    except (OSError, zipfile.BadZipFile):
        payload = b""
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(payload):
            if opcode.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":  # module and name are the last two strings
                found.append(".".join(strings[-2:]))
            elif opcode.name in _STRING_OPS:
                strings.append(str(arg))
    except Exception:  # pickletools raises ValueError on bytes that are no pickle (any more)
        pass
    foreign = [name for name in found if not name.startswith(_WEIGHTS_MODULES)]
    return list(dict.fromkeys(blocked + foreign))


def _load_problem(err: Exception) -> str:
    """The useful part of torch.load's error (not its advice to retry with weights_only=False)."""
    text = str(err)
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", text, re.S)
    text = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
    text = " ".join(text.split()).split(". ")[0]  # the first sentence
    return f"{type(err).__name__}: {text}" if text else f"{type(err).__name__} (empty or cut short)"


def load_checkpoint(path: str | Path, scheme: str | None = None) -> Checkpoint:
    """Load a checkpoint without executing any code from it (``weights_only=True``)."""
    path = Path(path)
    data = load_weights_only(path, "unique-cube-downscaler-1", "downscaler", "checkpoint",
                             DownscaleError)  # fmt: skip
    try:
        if scheme is not None and data["scheme"] != scheme:
            raise DownscaleError(f"{path}: a checkpoint of scheme {data['scheme']}, not {scheme}")
        config = dict(data["unet"])
        model = ConditionalUNet(
            config["cond_channels"], base=config["base"], mults=tuple(config["mults"]),
            time_dim=config["time_dim"],
        )  # fmt: skip
        model.load_state_dict(data["state_dict"])
        normalisation = dict(data.get("normalisation") or GPP_NORMALISATION)
        if not float(normalisation["scale"]) > 0:  # NaN too
            raise ValueError(f"normalisation scale {normalisation['scale']}")
        ckpt = Checkpoint(model, NoiseSchedule(data["betas"]), data["scheme"], data["static"],
                          data["meta"], data.get("prediction", "x0"), normalisation,
                          data.get("fusion") or None)  # fmt: skip
    except RuntimeError as err:
        raise DownscaleError(
            f"{path}: weights do not fit the network it describes ({err})"
        ) from err
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DownscaleError(f"{path}: a damaged downscaler checkpoint ({err!r})") from err
    model.eval()
    return ckpt
