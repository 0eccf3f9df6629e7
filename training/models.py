"""Each eraser's model by its config's name: checked before Ray starts, built in a worker, loaded from a checkpoint.

The one place that knows every eraser's model module; configs (``erasers.py``) never import them.
"""

from __future__ import annotations

import torch

from . import eradiff, omnieraser, smarteraser
from .eraser import Eraser, read_eraser_file
from .erasers import EraserParams, eraser_params

MODELS = {
    "smarteraser": (smarteraser.SmartEraser, smarteraser.check_parts),
    "eradiff": (eradiff.EraDiff, eradiff.check_parts),
    "omnieraser": (omnieraser.OmniEraser, omnieraser.check_parts),
}


def check(params: EraserParams) -> None:
    """Before Ray starts: every pretrained part exists, fits its architecture, and the parts fit each other."""
    MODELS[params.name][1](params)


def build(params: EraserParams, device: torch.device) -> Eraser:
    """The eraser's model with its pretrained parts loaded, on `device`."""
    return MODELS[params.name][0](params, device)


def load(uri: str, device: torch.device, **overrides) -> tuple[Eraser, dict]:
    """A trained eraser from its checkpoint (its frozen parts from the paths its config names), in eval mode."""
    folder, meta = read_eraser_file(uri)
    eraser = build(eraser_params({**meta["eraser"], **overrides}), device)
    eraser.load_trainable(folder)
    return eraser.eval(), meta
