"""Where a model stage runs: the ``device`` config value of every model-backed operator, resolved per process.

Importing this module does not import torch: configs name a ``Device`` without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "fp16", "bf16"]  # of a model on CUDA; the CPU always runs fp32


def actor_device(device: Device, gpu_ids: list, cuda_available: bool) -> Device:
    """The concrete device of a model stage's actor, from the GPUs Ray assigned it (``ray.get_gpu_ids()``).

    Ray no longer hides the GPUs from an actor that reserved none, so ``torch.cuda.is_available()`` alone
    would put a num_gpus: 0 actor on cuda:0 unreserved; and an actor holding a GPU with a CPU build of
    torch would run on the CPU while the GPU idles. Both mismatches fail here, loudly, before any work.
    """
    if gpu_ids:
        if not cuda_available:
            raise RuntimeError(f"the stage's actor holds GPU {gpu_ids} (num_gpus > 0) but torch sees no CUDA device here "
                               "(a CPU build of torch?): install a CUDA build or set num_gpus: 0")
        if device == "cpu":
            raise ValueError("device 'cpu' with num_gpus > 0 reserves a GPU the stage never uses: set num_gpus: 0 or device: auto")
        return "cuda"
    if device == "cuda":
        raise ValueError("device 'cuda' was asked for, but the stage's actor holds no GPU: give the stage num_gpus > 0")
    return "cpu"


def resolve_device(device: Device) -> "torch.device":
    """auto: CUDA when this process sees a GPU, else the CPU (a stage's actor gets a concrete device from
    ``actor_device`` first)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but this process sees no GPU (give the stage num_gpus > 0)")
    return torch.device(device)


def resolve_precision(precision: Precision, device: "torch.device") -> Precision:
    """What a model runs in on this device: the CPU always fp32; bf16 needs an Ampere GPU or later (compute
    capability 8.0), before which torch emulates it at a fraction of fp16's speed, so it is refused, loudly."""
    if device.type != "cuda":
        return "fp32"
    if precision == "bf16" and not ampere_or_later(device):
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(f"precision bf16 needs a GPU of compute capability 8.0 or later (Ampere); {torch.cuda.get_device_name(device)} "
                         f"is {major}.{minor}: set the stage's precision to fp16")
    return precision


def ampere_or_later(device: "torch.device") -> bool:
    """Whether a CUDA device has bf16 and TF32 units (compute capability 8.0 or later)."""
    import torch

    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8

