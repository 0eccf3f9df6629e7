"""Run a trained eraser on images of any size: resize to its working size, erase, paste back.

The prediction replaces the image only inside the mask; every pixel outside it is the input's own.
"""

from __future__ import annotations

import io
import logging
import os

import cv2
import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from .. import storage
from ..errors import UserError
from ..operators.codecs import BadInput, ImageHeader, mask_foreground, read_header, upright
from .data import object_crop
from .metrics import checkpoint_step, paste_back, predict, read_progress

log = logging.getLogger("pairmine")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ALPHA_EXTENSIONS = (".png", ".webp", ".tif", ".tiff")  # output formats that keep an input's alpha channel
MAX_PIXELS = 1 << 30  # OpenCV's own decode limit


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


def _fetch(uri: str, what: str) -> bytes:
    """An image file's bytes, local or s3://; a UserError naming `what` it is when they cannot be read."""
    try:
        return storage.read_bytes(uri)
    except (OSError, storage.StorageError) as exc:
        missing = isinstance(exc, FileNotFoundError) or storage.info(uri).type == pafs.FileType.NotFound
        raise UserError(f"cannot read the {what} {uri}" + (" (no such file)" if missing else f": {storage.first_line(exc)}")) from None


def _opened(uri: str, what: str) -> tuple[bytes, ImageHeader]:
    """An image file's bytes, local or s3://, and its header; a UserError naming `what` it is when it is none."""
    data = _fetch(uri, what)
    try:
        return data, read_header(data, MAX_PIXELS)
    except BadInput as exc:
        raise UserError(f"cannot read the {what} {uri} ({exc.reason}: {exc.detail})") from None


def _decode(uri: str, what: str, data: bytes, flags: int) -> np.ndarray:
    """An image file's bytes decoded with OpenCV `flags` (its EXIF orientation not applied); a UserError naming
    `what` it is when they cannot be."""
    quiet, level = cv2.utils.logging, cv2.utils.logging.getLogLevel()
    quiet.setLogLevel(quiet.LOG_LEVEL_SILENT)  # OpenCV's own lines for a broken file: the UserError below says it once
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        raise UserError(f"cannot read the {what} {uri} ({storage.first_line(exc)})") from None
    finally:
        quiet.setLogLevel(level)
    if image is None:
        raise UserError(f"cannot read the {what} {uri} (not an image)")
    return image


def _alpha(uri: str, data: bytes, header: ImageHeader) -> np.ndarray | None:
    """The 8-bit alpha channel of an image with one (None otherwise), turned as displayed, to write back
    unchanged: a transparent product photo stays transparent, its hidden colours hidden."""
    raw = _decode(uri, "image", data, cv2.IMREAD_UNCHANGED)
    if raw.ndim != 3 or raw.shape[2] != 4 or raw.shape[:2] != (header.height, header.width):
        return None
    alpha = raw[..., 3]
    return upright((alpha >> 8).astype(np.uint8) if alpha.dtype == np.uint16 else alpha, header.orientation)


def _chroma_sampling(data: bytes) -> int:
    """Pillow's JPEG subsampling code for an output of this input: a JPEG's own (2: 4:2:0, 1: 4:2:2, 0: 4:4:4),
    else 0, so that an input with full-resolution colour (a PNG, a 4:4:4 JPEG) keeps it."""
    from PIL import JpegImagePlugin

    with Image.open(io.BytesIO(data)) as im:
        return max(0, JpegImagePlugin.get_sampling(im)) if im.format in ("JPEG", "MPO") else 0


def _encode(rgb: np.ndarray, alpha: np.ndarray | None, extension: str, profile: bytes | None, sampling: int = 0) -> bytes:
    """An output file's bytes in the format its extension names, with the input's alpha and colour profile where
    the format holds them (JPEG at quality 95 with the chroma `sampling` of `_chroma_sampling`, WebP lossless)."""
    picture = Image.fromarray(rgb if alpha is None else np.dstack([rgb, alpha]))
    options = {"icc_profile": profile} if profile and extension != ".bmp" else {}
    if extension in (".jpg", ".jpeg"):
        options |= {"quality": 95, "subsampling": sampling}
    elif extension == ".webp":
        options |= {"lossless": True, "exact": True}  # exact: the colours under transparent pixels are kept too
    out = io.BytesIO()
    picture.save(out, format=Image.registered_extensions()[extension], **options)
    return out.getvalue()


def inference_device(device: str):
    """The torch device of --device (auto: CUDA when there is one); asking for CUDA without it is the user's error."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch sees no CUDA GPU (a CPU build, or no GPU); use --device cpu or auto")
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))


def _extension(uri: str) -> str:
    return os.path.splitext(storage.basename(uri))[1].lower()


MAX_ASPECT = 4  # the working size's long side is at most this many times --resolution (a 17x5000 strip: not 512x150,000)


def erase_image(eraser, image: np.ndarray, mask: np.ndarray, resolution: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 `image` with the object under `mask` (bool, same size) erased; outside the mask, `image` itself.
    The eraser works with the short side at `resolution`, the long side at most MAX_ASPECT times that."""
    height, width = mask.shape
    multiple = eraser.params.latent_multiple
    scale = min(resolution / min(height, width), MAX_ASPECT * resolution / max(height, width))
    size = (max(multiple, round(width * scale / multiple) * multiple), max(multiple, round(height * scale / multiple) * multiple))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # any covered share counts: a 1-px wire or an outline's rim shrunk by area to under half a working pixel would be
    # left to the model as context, then replaced by its prediction of itself in the paste-back
    small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST) > 0
    if not small_mask.any():
        raise UserError("the mask vanishes at the eraser's working size; use a larger mask or --resolution")
    sample = {"source": small, "target": small, "mask": small_mask.astype(np.uint8), "alpha": small_mask.astype(np.uint8) * np.uint8(255)}
    crop = eraser.clip_size if hasattr(eraser, "clip_size") else 0
    if crop:
        sample["clip"] = object_crop(small, small_mask, crop)
    prediction = predict(eraser, [sample], seed)[0]
    full = cv2.resize(prediction.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return (paste_back(full, image / 255.0, mask) * 255).round().clip(0, 255).astype(np.uint8)


def _images(folder: str) -> dict[str, list[str]]:
    """{file stem: [uri, ...] by name} of the image files directly in a folder (local or s3://)."""
    names = sorted(storage.basename(e.path) for e in storage.list_dir(folder) if e.type == pafs.FileType.File)
    found: dict[str, list[str]] = {}
    for name in names:
        if _extension(name) in IMAGE_EXTENSIONS:
            found.setdefault(os.path.splitext(name)[0], []).append(storage.join(folder, name))
    return found


def pairs(image: str, mask: str, out: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(image, mask, output) paths, local or s3://: one file each, or folders matched by file stem (outputs: PNG);
    and the images left out, with why (a second image of one stem: its output would overwrite the first's)."""
    paths = {"--image": image, "--mask": mask}
    kinds = {flag: storage.info(uri).type for flag, uri in paths.items()}  # one lookup each: a file, a folder or nothing
    for flag, kind in kinds.items():
        if kind == pafs.FileType.NotFound:
            raise UserError(f"{flag} {paths[flag]} not found")
    for flag, uri in paths.items():
        if storage.normalize(out) == storage.normalize(uri):
            raise UserError(f"--out {out} is the {flag} itself: erasing would overwrite the inputs")
    if kinds["--image"] != pafs.FileType.Directory:
        if kinds["--mask"] == pafs.FileType.Directory:
            raise UserError(f"--image {image} is a file: --mask must be its mask file, not a folder")
        if _extension(out) not in IMAGE_EXTENSIONS:
            raise UserError(f"--out {out}: the extension picks the format, one of {', '.join(IMAGE_EXTENSIONS)}")
        return [(image, mask, out)], {}
    if kinds["--mask"] != pafs.FileType.Directory:
        raise UserError(f"--image {image} is a folder: --mask must be a folder of masks with the same file stems")
    masks = {stem: uris[0] for stem, uris in _images(mask).items()}
    images = _images(image)
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image}")
    if not set(masks) & set(images):
        raise UserError(f"no mask in {mask} has the file stem of an image in {image} (photo.jpg takes photo.png); "
                        f"masks there: {', '.join(sorted(masks)[:3]) or 'none'}{' ...' if len(masks) > 3 else ''}")
    if unmatched := sorted(set(masks) - set(images)):
        log.warning("%d mask(s) in %s match no image by file stem, and are not used: %s", len(unmatched), mask, ", ".join(unmatched[:5]))
    found = [(uris[0], masks[stem], storage.join(out, stem + ".png")) for stem, uris in sorted(images.items()) if stem in masks]
    left_out = {}
    for stem, uris in images.items():
        if stem not in masks:
            left_out |= {uri: f"no mask {stem}.* in {mask} (masks are matched by file stem)" for uri in uris}
        else:
            left_out |= {uri: f"{storage.basename(uris[0])} has the same stem and is erased to {stem}.png; rename one" for uri in uris[1:]}
    return found, left_out


def erase_files(checkpoint: str, image: str, mask: str, out: str, device: str = "auto", resolution: int | None = None,
                seed: int = 0, overrides: dict | None = None) -> dict:
    """Erase every (image, mask) pair; a pair that fails is reported and skipped. Returns counts and failures."""
    import pairmine  # noqa: F401  (the torchvision shim, before diffusers imports torchvision)

    from . import models

    jobs, failed = pairs(image, mask, out)  # argument errors before any model loads
    for image_path, why in failed.items():
        log.error("%s: %s", image_path, why)
    target = inference_device(device)
    checkpoint = latest_checkpoint(checkpoint)
    eraser, meta = models.load(checkpoint, target, **(overrides or {}))
    resolution = resolution or int(meta.get("resolution", 512))
    done = 0
    for image_path, mask_path, out_path in jobs:
        try:
            # the image as displayed (CMYK, grey and 16-bit turned to 8-bit RGB by OpenCV's colour read)
            data, header = _opened(image_path, "image")
            rgb = cv2.cvtColor(upright(_decode(image_path, "image", data, cv2.IMREAD_COLOR), header.orientation), cv2.COLOR_BGR2RGB)
            if header.frames > 1:
                log.warning("%s: an animation of %d frames; its first is erased and written", image_path, header.frames)
            keeps_alpha = _extension(out_path) in ALPHA_EXTENSIONS
            alpha = _alpha(image_path, data, header) if keeps_alpha else None
            if not keeps_alpha and ("A" in header.mode or header.format == "PNG" and b"tRNS" in data):  # RGBA, LA, PA; P, L with tRNS
                log.warning("%s: its transparency is not kept in %s (written opaque); name the output .png, .webp or .tif "
                            "to keep it", image_path, _extension(out_path))
            # colour and 16-bit masks as they are (a red object, a 16-bit 0/1 label map), turned by their own EXIF tag
            mask_data, mask_header = _opened(mask_path, "mask")
            binary = upright(mask_foreground(_decode(mask_path, "mask", mask_data, cv2.IMREAD_UNCHANGED)), mask_header.orientation)
            if binary.shape != rgb.shape[:2]:
                raise UserError(f"mask {mask_path} is {binary.shape[1]}x{binary.shape[0]}, the image {rgb.shape[1]}x{rgb.shape[0]}"
                                " (as displayed: EXIF orientation applied to both)")
            if not binary.any():
                raise UserError(f"mask {mask_path} marks nothing (no value in the upper half of its range, nor a 0/1 mask's 1s)")
            result = erase_image(eraser, rgb, binary, resolution, seed)
            try:
                encoded = _encode(result, alpha, _extension(out_path), header.rgb_profile, _chroma_sampling(data))
            except (OSError, ValueError) as exc:  # a format's own limits (WebP: 16,383 px a side)
                raise UserError(f"cannot write {out_path} as {_extension(out_path)}: {storage.first_line(exc)}") from None
            try:
                storage.write_bytes(out_path, encoded)
            except (OSError, storage.StorageError) as exc:
                raise UserError(f"cannot write --out {out_path}: {storage.first_line(exc)}") from None
            done += 1
        except UserError as exc:
            failed[image_path] = str(exc)
            log.error("%s: %s", image_path, exc)
    return {"erased": done, "failed": failed, "eraser": meta["eraser"]["name"], "resolution": resolution, "checkpoint": checkpoint}
