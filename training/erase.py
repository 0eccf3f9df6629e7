"""Run a trained eraser on images of any size: resize to its working size, erase, paste back.

The prediction replaces the image only inside the mask; every pixel outside it is the input's own.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pyarrow.fs as pafs

from .. import storage
from ..errors import UserError
from ..operators.codecs import mask_foreground
from .data import object_crop
from .metrics import checkpoint_step, paste_back, predict, read_progress

log = logging.getLogger("pairmine")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def latest_checkpoint(uri: str) -> str:
    """A saved eraser, a training checkpoint, or a run folder (the checkpoint its progress.json committed)."""
    found = {storage.basename(e.path): e.type for e in storage.list_dir(uri)}
    if "eraser.json" in found or "eraser" in found:
        return uri
    committed = read_progress(uri).get("checkpoint")
    if committed in found:
        return storage.join(uri, committed)
    # a run from before progress.json named its checkpoint, or one whose committed checkpoint Ray has already
    # deleted (keep_checkpoints: 1, stopped between a newer upload and its commit): the latest of its folders
    folders = [name for name, kind in found.items() if kind == pafs.FileType.Directory and name.startswith("checkpoint_")]
    if not folders:
        raise UserError(f"{uri} is neither a saved eraser, a checkpoint nor a training run with checkpoints")
    return storage.join(uri, max(folders, key=lambda name: (checkpoint_step(name), name)))


def _read(path: str, flags: int, what: str) -> np.ndarray:
    image = cv2.imread(path, flags) if os.path.isfile(path) else None
    if image is None:
        raise UserError(f"cannot read the {what} {path}" + ("" if os.path.isfile(path) else " (no such file)"))
    return image


def erase_image(eraser, image: np.ndarray, mask: np.ndarray, resolution: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 `image` with the object under `mask` (bool, same size) erased; outside the mask, `image` itself."""
    height, width = mask.shape
    multiple = eraser.params.latent_multiple
    scale = resolution / min(height, width)
    size = (max(multiple, round(width * scale / multiple) * multiple), max(multiple, round(height * scale / multiple) * multiple))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST) > 0
    if not small_mask.any():
        raise UserError("the mask vanishes at the eraser's working size; use a larger mask or --resolution")
    sample = {"source": small, "target": small, "mask": small_mask.astype(np.uint8), "alpha": small_mask.astype(np.uint8) * np.uint8(255)}
    crop = eraser.clip_size if hasattr(eraser, "clip_size") else 0
    if crop:
        sample["clip"] = object_crop(small, small_mask, crop)
    prediction = predict(eraser, [sample], seed)[0]
    full = cv2.resize(prediction.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return (paste_back(full, image / 255.0, mask) * 255).round().clip(0, 255).astype(np.uint8)


def pairs(image: str, mask: str, out: str) -> list[tuple[str, str, str]]:
    """(image, mask, output) paths: one file each, or folders matched by file stem."""
    if not os.path.isdir(image):
        return [(image, mask, out)]
    if not os.path.isdir(mask):
        raise UserError(f"--image {image} is a folder: --mask must be a folder of masks with the same file stems")
    masks = {os.path.splitext(f)[0]: os.path.join(mask, f) for f in os.listdir(mask) if f.lower().endswith(IMAGE_EXTENSIONS)}
    found = []
    for name in sorted(os.listdir(image)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            found.append((os.path.join(image, name), masks.get(stem, os.path.join(mask, stem + ".png")), os.path.join(out, stem + ".png")))
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image}")
    return found


def erase_files(checkpoint: str, image: str, mask: str, out: str, device: str = "auto", resolution: int | None = None,
                seed: int = 0, overrides: dict | None = None) -> dict:
    """Erase every (image, mask) pair; a pair that fails is reported and skipped. Returns counts and failures."""
    import torch

    import pairmine  # noqa: F401  (the torchvision shim, before diffusers imports torchvision)

    from . import models

    jobs = pairs(image, mask, out)  # argument errors before any model loads
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    checkpoint = latest_checkpoint(checkpoint)
    eraser, meta = models.load(checkpoint, target, **(overrides or {}))
    resolution = resolution or int(meta.get("resolution", 512))
    done, failed = 0, {}
    for image_path, mask_path, out_path in jobs:
        try:
            rgb = cv2.cvtColor(_read(image_path, cv2.IMREAD_COLOR, "image"), cv2.COLOR_BGR2RGB)
            binary = mask_foreground(_read(mask_path, cv2.IMREAD_GRAYSCALE, "mask"))
            if binary.shape != rgb.shape[:2]:
                raise UserError(f"mask {mask_path} is {binary.shape[1]}x{binary.shape[0]}, the image {rgb.shape[1]}x{rgb.shape[0]}")
            if not binary.any():
                raise UserError(f"mask {mask_path} is empty")
            result = erase_image(eraser, rgb, binary, resolution, seed)
            os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
            if not cv2.imwrite(out_path, cv2.cvtColor(result, cv2.COLOR_RGB2BGR)):
                raise UserError(f"cannot write {out_path} (unknown image extension?)")
            done += 1
        except UserError as exc:
            failed[image_path] = str(exc)
            log.error("%s: %s", image_path, exc)
    return {"erased": done, "failed": failed, "eraser": meta["eraser"]["name"], "resolution": resolution, "checkpoint": checkpoint}
