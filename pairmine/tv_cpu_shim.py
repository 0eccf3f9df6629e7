"""torchvision on CPU-only torch: a pure-PyTorch ``torchvision::nms`` when the compiled ops cannot load.

The only torchvision for torch 2.13 is a CUDA build (docs/ARCHITECTURE.md, "Installs"): with the CPU torch its
``_C.so`` fails to load and ``import torchvision`` dies with "operator torchvision::nms does not exist",
taking open_clip, timm and transformers' vision models with it. The shim defines that op (and qnms's
schema) before torchvision's own ``__init__`` runs. Where the real ops load (a CUDA cluster with a
matching torchvision) it does nothing. ``import pairmine`` arms it lazily, without importing torch;
Ray workers run ``install_lazy`` as their ``worker_process_setup_hook``.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_STATE: dict = {}  # "active": whether the shim's ops are in use; "lib": the torch.library holding them


def _nms(dets, scores, iou_threshold: float):
    """Greedy NMS: each kept box, best score first, suppresses the boxes overlapping it by more than the IoU."""
    import torch

    x1, y1, x2, y2 = dets.float().unbind(1)
    area = (x2 - x1) * (y2 - y1)
    keep = []
    dead = torch.zeros(len(dets), dtype=torch.bool, device=dets.device)
    for i in scores.argsort(descending=True).tolist():
        if dead[i]:
            continue
        keep.append(i)
        inter = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0) * (
            torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)
        ).clamp(min=0)
        dead |= inter / (area[i] + area - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _define_ops(torchvision_dir: str) -> bool:
    """Load torchvision's compiled ops, or define the shim's in their place (once); True if the shim's are used."""
    if "active" not in _STATE:
        import torch

        try:
            torch.ops.load_library(os.path.join(torchvision_dir, "_C.so"))
            _STATE["active"] = False
        except OSError:
            lib = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.impl("nms", _nms, "CPU")
            _STATE.update(active=True, lib=lib)  # the ops live as long as this Library object
    return _STATE["active"]


def _allow_ops() -> None:
    """torchvision.ops.boxes refuses to run without its compiled library; nms exists now, so let it."""
    sys.modules["torchvision.ops.boxes"]._assert_has_ops = lambda: None


def install() -> bool:
    """Make torchvision importable now (imports torch and torchvision); True if the shim is in use,
    False where torchvision's own ops load."""
    if "torchvision" not in sys.modules:
        if not _define_ops(os.path.dirname(importlib.util.find_spec("torchvision").origin)):
            return False
        import torchvision.ops.boxes  # noqa: F401

        _allow_ops()
    return _STATE.get("active", False)


class _ShimOnImport(importlib.abc.MetaPathFinder):
    """Finds torchvision through the other finders and wraps its loader: ops first, then torchvision."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or spec.origin is None:
            return spec
        run_init, directory = spec.loader.exec_module, os.path.dirname(spec.origin)

        def exec_module(module):
            active = _define_ops(directory)
            run_init(module)
            if active:
                _allow_ops()

        spec.loader.exec_module = exec_module  # this spec's own loader instance: nothing else is touched
        return spec


def install_lazy() -> None:
    """Arm the shim for the first ``import torchvision`` without importing torch; calling it again is harmless."""
    if "torchvision" in sys.modules or any(isinstance(f, _ShimOnImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _ShimOnImport())
