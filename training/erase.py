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
    if not storage.exists(uri):
        raise UserError(f"checkpoint not found: {uri}")
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


def _read(uri: str, flags: int, what: str) -> np.ndarray:
    """An image file, local or s3://, decoded; a UserError naming `what` it is when it cannot be."""
    try:
        data = storage.read_bytes(uri)
    except (OSError, storage.StorageError) as exc:
        missing = isinstance(exc, FileNotFoundError) or storage.info(uri).type == pafs.FileType.NotFound
        raise UserError(f"cannot read the {what} {uri}" + (" (no such file)" if missing else f": {storage.first_line(exc)}")) from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise UserError(f"cannot read the {what} {uri} (not an image)")
    return image


def inference_device(device: str):
    """The torch device of --device (auto: CUDA when there is one); asking for CUDA without it is the user's error."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch sees no CUDA GPU (a CPU build, or no GPU); use --device cpu or auto")
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))


def _extension(uri: str) -> str:
    return os.path.splitext(storage.basename(uri))[1].lower()


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


def _images(folder: str) -> dict[str, str]:
    """{file stem: uri} of the image files directly in a folder (local or s3://)."""
    names = [storage.basename(e.path) for e in storage.list_dir(folder) if e.type == pafs.FileType.File]
    return {os.path.splitext(name)[0]: storage.join(folder, name) for name in names if _extension(name) in IMAGE_EXTENSIONS}


def pairs(image: str, mask: str, out: str) -> list[tuple[str, str, str]]:
    """(image, mask, output) paths, local or s3://: one file each, or folders matched by file stem (outputs: PNG)."""
    paths = {"--image": image, "--mask": mask}
    kinds = {flag: storage.info(uri).type for flag, uri in paths.items()}  # one lookup each: a file, a folder or nothing
    for flag, kind in kinds.items():
        if kind == pafs.FileType.NotFound:
            raise UserError(f"{flag} {paths[flag]} not found")
    if kinds["--image"] != pafs.FileType.Directory:
        if _extension(out) not in IMAGE_EXTENSIONS:
            raise UserError(f"--out {out}: the extension picks the format, one of {', '.join(IMAGE_EXTENSIONS)}")
        return [(image, mask, out)]
    if kinds["--mask"] != pafs.FileType.Directory:
        raise UserError(f"--image {image} is a folder: --mask must be a folder of masks with the same file stems")
    masks = _images(mask)
    found = [(uri, masks.get(stem, storage.join(mask, stem + ".png")), storage.join(out, stem + ".png")) for stem, uri in sorted(_images(image).items())]
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image}")
    return found


def erase_files(checkpoint: str, image: str, mask: str, out: str, device: str = "auto", resolution: int | None = None,
                seed: int = 0, overrides: dict | None = None) -> dict:
    """Erase every (image, mask) pair; a pair that fails is reported and skipped. Returns counts and failures."""
    import pairmine  # noqa: F401  (the torchvision shim, before diffusers imports torchvision)

    from . import models

    jobs = pairs(image, mask, out)  # argument errors before any model loads
    target = inference_device(device)
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
            storage.write_bytes(out_path, cv2.imencode(_extension(out_path), cv2.cvtColor(result, cv2.COLOR_RGB2BGR))[1].tobytes())
            done += 1
        except UserError as exc:
            failed[image_path] = str(exc)
            log.error("%s: %s", image_path, exc)
    return {"erased": done, "failed": failed, "eraser": meta["eraser"]["name"], "resolution": resolution, "checkpoint": checkpoint}
