"""Where a model stage runs: the ``device`` config value of every model-backed operator, resolved per process.

Importing this module does not import torch: configs name a ``Device`` without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "fp16", "bf16"]  # of a model on CUDA; the CPU always runs fp32


def resolve_device(device: Device) -> "torch.device":
    """auto: CUDA when this process sees a GPU (a Ray actor with num_gpus > 0), else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but this process sees no GPU (give the stage num_gpus > 0)")
    return torch.device(device)
