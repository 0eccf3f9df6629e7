"""The training data path: committed shards of one or more outputs → one ordered stream of training rows.

**The plan** (``plan_stream``, on the driver, from the manifests alone). A held-out split is chosen by
a hash of each sample key (stable across runs and seeds). Each epoch draws from every source its
share of the samples by weight: a source of N samples whose weight asks for T draws is passed
⌊T/N⌋ times, plus once more keeping a hashed fraction T/N - ⌊T/N⌋ of its keys; the epoch's shard
passes are shuffled by the seed. Epochs follow each other until the run's samples are covered, and
every sample of the stream has a position, so a resumed run starts the stream at the position its
checkpoint reached, mid-epoch included (Ray Data has no resumable iterator: ray#48224).

**The rows.** ``ShardStream`` (a Ray datasource) reads each planned pass of a shard once, verified
against its manifest row (``dataset.iter_shard``); ``decode_rows`` (``map_batches``, CPU) decodes,
crops and resizes source, target, mask and alpha together to the training resolution, applies mask
enhancement, and cuts the object's CLIP crop from the enhanced mask. A corrupt sample or shard never
stops training: it stays in the stream as an invalid row (zero images, ``valid`` 0, its ``reason``),
so every worker keeps the planned number of rows and steps in lockstep, and the loop counts it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, replace
from typing import Iterator

import cv2
import numpy as np
import pyarrow as pa

from .. import dataset
from ..operators.codecs import BadInput, decode_image, reduction
from ..operators.mask_enhance import MaskEnhanceParams, random_enhance
from ..operators.quality import bounding_window

log = logging.getLogger("pairmine")

# why a row is invalid; its code is the index (0: a valid row)
REASONS = ("", "corrupt_sample", "missing_file", "size_mismatch", "empty_mask", "unreadable_shard", "checksum_mismatch")
_CODE = {reason: code for code, reason in enumerate(REASONS)}
MAX_IMAGE_PIXELS = 100_000_000
_RAW = pa.schema([("key", pa.string()), ("pipeline", pa.string()), ("position", pa.int64()), ("reason", pa.string()),
                  *((name, pa.large_binary()) for name in ("source.jpg", "target.jpg", "mask.png", "alpha.png"))])


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) that depends only on the parts."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def is_validation(key: str, fraction: float) -> bool:
    """Whether a sample belongs to the held-out split (by its key alone: the same in every run)."""
    return fraction > 0 and unit_hash("validation", key) < fraction


@dataclass(frozen=True)
class Pass:
    """One planned read of one shard: which of its training samples it yields, from which stream position."""

    shard: dataset.Shard  # keys dropped: the reader selects by hash as the tar streams
    epoch: int
    draw: int  # the pass's number among the source's passes of this epoch
    keep: float  # keys kept: draw hash < keep (1.0: all training keys)
    start: int  # stream position of its first sample
    count: int  # samples it yields
    skip: int = 0  # samples at its head already consumed (a resumed run)

    def selects(self, key: str, seed: int, val_fraction: float) -> bool:
        if is_validation(key, val_fraction):
            return False
        return self.keep >= 1.0 or unit_hash("draw", seed, self.epoch, self.draw, key) < self.keep


@dataclass(frozen=True)
class Stream:
    passes: list[Pass]
    start: int  # the first position the stream yields (a resumed run's)
    stop: int  # one past its last position
    epoch_samples: int  # positions per epoch

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_stream(sources: list[tuple[float, list[dataset.Shard]]], seed: int, val_fraction: float, needed: int, start: int = 0) -> Stream:
    """The passes covering stream positions [start, start + needed), epoch after epoch."""
    train = [[sum(not is_validation(k, val_fraction) for k in shard.keys) for shard in shards] for _, shards in sources]
    sizes = [sum(counts) for counts in train]
    if not sum(sizes):
        raise ValueError("the sources hold no training samples (all empty, or all held out for validation)")
    weights = [w if size else 0.0 for (w, _), size in zip(sources, sizes)]
    epoch_samples = sum(sizes)
    passes: list[Pass] = []
    position, epoch = 0, 0
    while position < start + needed:
        planned = []
        for (weight, shards), counts, size in zip(sources, train, sizes):
            if not size:
                continue
            share = weight / sum(weights) * epoch_samples / size  # passes over this source in this epoch
            for draw in range(math.ceil(share)):
                keep = min(1.0, share - draw)
                for shard, count in zip(shards, counts):
                    if keep < 1.0:
                        count = sum(
                            not is_validation(k, val_fraction) and unit_hash("draw", seed, epoch, draw, k) < keep for k in shard.keys
                        )
                    if count:
                        planned.append(Pass(replace(shard, keys=()), epoch, draw, keep, 0, count))
        order = np.random.default_rng([seed, epoch]).permutation(len(planned))
        for index in order:
            p = planned[index]
            if position + p.count > start:  # passes wholly before a resumed run's start are left out
                passes.append(replace(p, start=position, skip=max(0, start - position)))
            position += p.count
        epoch += 1
    return Stream(passes, start, position, epoch_samples)


def _raw_rows(p: Pass, seed: int, val_fraction: float) -> Iterator[dict]:
    """The pass's samples as raw rows, in stream order; a shard that cannot be read fills its positions
    with invalid rows (its reason), so the stream keeps its planned length."""
    delivered = 0
    reason = ""
    try:
        for sample in dataset.iter_shard(p.shard):
            if delivered == p.count:
                break
            key = sample["__key__"]
            if not p.selects(key, seed, val_fraction):
                continue
            position = p.start + delivered
            delivered += 1
            if delivered > p.skip:
                yield {"key": key, "pipeline": p.shard.pipeline, "position": position, "reason": ""} | {
                    name: sample.get(name) for name in ("source.jpg", "target.jpg", "mask.png", "alpha.png")
                }
    except (dataset.ShardError, OSError) as exc:
        reason = "checksum_mismatch" if "sha256" in str(exc) else "unreadable_shard"
        log.warning("training skips the rest of %s: %s", p.shard.uri, exc)
    for position in range(p.start + max(delivered, p.skip), p.start + p.count):
        yield {"key": "", "pipeline": p.shard.pipeline, "position": position, "reason": reason or "unreadable_shard"}


def read_passes(passes: list[Pass], seed: int, val_fraction: float, rows_per_block: int = 16) -> Iterator[pa.Table]:
    block: list[dict] = []
    for p in passes:
        for row in _raw_rows(p, seed, val_fraction):
            block.append(row)
            if len(block) == rows_per_block:
                yield pa.Table.from_pylist(block, schema=_RAW)
                block = []
    if block:
        yield pa.Table.from_pylist(block, schema=_RAW)


def shard_stream(stream: Stream, seed: int, val_fraction: float, concurrency: int, max_tasks: int = 4096):
    """The stream as a Ray Dataset of raw rows: one read task per pass (consecutive passes share a task
    beyond `max_tasks`), in plan order. Reads reserve no CPU (they wait on storage), so at most
    `concurrency` of them run at once: unbounded, Ray would start a worker process per pass."""
    from ray.data import read_datasource
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ShardStream(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            per_task = max(1, math.ceil(len(stream.passes) / max_tasks))
            chunks = [stream.passes[i : i + per_task] for i in range(0, len(stream.passes), per_task)]
            return [
                ReadTask(
                    lambda chunk=chunk: read_passes(chunk, seed, val_fraction),
                    BlockMetadata(num_rows=sum(p.count - p.skip for p in chunk), size_bytes=None, exec_stats=None, input_files=None),
                    schema=_RAW,
                    per_task_row_limit=per_task_row_limit,
                )
                for chunk in chunks
            ]

    return read_datasource(ShardStream(), override_num_blocks=len(stream.passes), num_cpus=0, concurrency=concurrency)


# --- decoding and augmentation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Preparation:
    """How rows become training arrays (pickled into the decode tasks)."""

    resolution: int
    clip_size: int  # 0: no object crop (no visual guidance)
    max_zoom: float
    enhance: MaskEnhanceParams
    seed: int
    train: bool = True  # False: validation (no zoom, crop centred on the object, exact mask)


def _decode_rgb(data: bytes | None, name: str, shape: tuple[int, int], min_short_side: int) -> tuple[np.ndarray, int]:
    """An RGB image that must be `shape` (the mask's), a JPEG decoded at the largest DCT scale-down that keeps
    `min_short_side` (the crop's resize needs no more), and that scale-down (1, 2, 4 or 8)."""
    if data is None:
        raise BadInput("missing_file", f"no {name}")
    image, header = decode_image(data, MAX_IMAGE_PIXELS, min_short_side)
    if (header.height, header.width) != shape:
        raise BadInput("size_mismatch", f"{name} is {header.width}x{header.height}, the mask {shape[1]}x{shape[0]}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), reduction(header, min_short_side)


def _resized(image: np.ndarray, reduced: int, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """An image of full-resolution `shape` resized to `size` on the mask's grid (by size / shape on each axis),
    from its decode reduced `reduced` times. That decode's last pixels cover a partial block (ceil(width /
    reduced)) and a resize to a rounded size would stretch it by up to half a pixel, so the exact scale is
    applied: an area shrink by a whole factor where over 2x is left, then a bilinear warp (within 2x)."""
    if reduced == 1:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA if size[0] < shape[1] else cv2.INTER_LINEAR)
    fx, fy = reduced * size[0] / shape[1], reduced * size[1] / shape[0]
    whole = max(1, int(1 / max(fx, fy)))
    if whole > 1:  # pad to whole blocks (the edge repeated: the grid stays), then average each block
        height, width = image.shape[:2]
        image = cv2.copyMakeBorder(image, 0, -height % whole, 0, -width % whole, cv2.BORDER_REPLICATE)
        image = cv2.resize(image, (image.shape[1] // whole, image.shape[0] // whole), interpolation=cv2.INTER_AREA)
        fx, fy = fx * whole, fy * whole
    to_size = np.float32([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]])  # pixel centres onto pixel centres
    return cv2.warpAffine(image, to_size, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _decode_gray(data: bytes | None, name: str) -> np.ndarray:
    if data is None:
        raise BadInput("missing_file", f"no {name}")
    image, _ = decode_image(data, MAX_IMAGE_PIXELS)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _crop_box(mask: np.ndarray, side: int, rng: np.random.Generator | None) -> tuple[int, int]:
    """Top-left corner of a side x side crop that holds as much of the mask's box as fits (random where free)."""
    height, width = mask.shape
    rows, cols = bounding_window(mask)
    corner = []
    for low, high, extent in ((cols.start, cols.stop, width), (rows.start, rows.stop, height)):
        first, last = max(0, high - side), min(low, extent - side)  # the range that holds [low, high)
        if first > last:  # the box is wider than the crop: centre on it
            first = last = int(np.clip((low + high) // 2 - side // 2, 0, extent - side))
        corner.append(int(rng.integers(first, last + 1)) if rng is not None else (first + last) // 2)
    return corner[0], corner[1]


def object_crop(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The object on white, cropped to the mask's box, short side resized to `size`, centre-cropped square
    (as SmartEraser's CLIP image processor prepares it)."""
    box = bounding_window(mask)
    crop = np.where(mask[box][..., None] > 0, image[box], np.uint8(255))
    scale = size / min(crop.shape[:2])
    resized = cv2.resize(crop, (max(size, round(crop.shape[1] * scale)), max(size, round(crop.shape[0] * scale))), interpolation=cv2.INTER_CUBIC)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return resized[top : top + size, left : left + size]


def prepare_sample(row: dict, prep: Preparation) -> dict[str, np.ndarray]:
    """One raw row as training arrays: RGB uint8 source/target (R, R, 3), mask/alpha (R, R) uint8 (0/1, 0-255),
    the object crop (C, C, 3); raises BadInput when the sample is unusable."""
    mask = _decode_gray(row.get("mask.png"), "mask.png") > 127
    # Video4Removal pairs carry no alpha: their object layer is the binary mask (set after the crop, below)
    has_alpha = row.get("alpha.png") is not None
    alpha = _decode_gray(row["alpha.png"], "alpha.png") if has_alpha else mask.astype(np.uint8)
    if mask.shape != alpha.shape:
        raise BadInput("size_mismatch", f"mask {mask.shape}, alpha {alpha.shape}")
    if not mask.any():
        raise BadInput("empty_mask", "the mask is empty")
    rng = np.random.default_rng([prep.seed, row["position"]]) if prep.train else None
    side = prep.resolution
    scale = side / min(mask.shape) * (rng.uniform(1.0, prep.max_zoom) if rng is not None else 1.0)
    size = (max(side, round(mask.shape[1] * scale)), max(side, round(mask.shape[0] * scale)))
    # the photos decoded only as large as the resize needs (a 2250x1500 JPEG at 1/8 for a 256-px crop)
    source, target = (_resized(*_decode_rgb(row.get(name), name, mask.shape, min(size)), mask.shape, size) for name in ("source.jpg", "target.jpg"))
    alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT)  # pixel centres, as the photos
    if not mask.any():
        raise BadInput("empty_mask", "the mask vanished when resized")
    x, y = _crop_box(mask, side, rng)
    window = (slice(y, y + side), slice(x, x + side))
    source, target, mask, alpha = source[window], target[window], mask[window], alpha[window]
    if not mask.any():
        raise BadInput("empty_mask", "the crop holds none of the mask")
    if not has_alpha:
        alpha = mask * np.uint8(255)
    if rng is not None:
        mask, _ = random_enhance(mask, prep.enhance, rng)
    out = {"source": source, "target": target, "mask": mask, "alpha": alpha}
    if prep.clip_size:
        out["clip"] = object_crop(source, mask, prep.clip_size)
    return out


def empty_arrays(prep: Preparation, rows: int) -> dict[str, np.ndarray]:
    side = prep.resolution
    arrays = {"source": np.zeros((rows, side, side, 3), np.uint8), "target": np.zeros((rows, side, side, 3), np.uint8),
              "mask": np.zeros((rows, side, side), np.uint8), "alpha": np.zeros((rows, side, side), np.uint8)}
    if prep.clip_size:
        arrays["clip"] = np.zeros((rows, prep.clip_size, prep.clip_size, 3), np.uint8)
    return arrays


def decode_rows(batch: dict[str, np.ndarray], prep: Preparation) -> dict[str, np.ndarray]:
    """``map_batches`` step: raw rows → fixed-shape arrays, plus ``valid``, ``reason`` (a REASONS code) and ``position``."""
    rows = len(batch["position"])
    out = empty_arrays(prep, rows)
    valid, reasons = np.zeros(rows, np.uint8), np.zeros(rows, np.uint8)
    for i in range(rows):
        if batch["reason"][i]:
            reasons[i] = _CODE.get(batch["reason"][i], _CODE["unreadable_shard"])
            continue
        row = {k: batch[k][i] for k in ("source.jpg", "target.jpg", "mask.png", "alpha.png", "position")}
        try:
            arrays = prepare_sample(row, prep)
        except BadInput as bad:
            reasons[i] = _CODE.get(bad.reason, _CODE["corrupt_sample"])
            continue
        for name, array in arrays.items():
            out[name][i] = array
        valid[i] = 1
    return out | {"valid": valid, "reason": reasons, "position": np.asarray(batch["position"], np.int64)}


def validation_samples(sources: list[dataset.Shard], val_fraction: float, count: int, prep: Preparation) -> list[dict]:
    """Up to `count` held-out samples prepared for scoring (deterministic), taken round-robin across the shards.
    Each shard is streamed only up to the samples taken from it, unverified (verifying would stage every shard
    whole: its sha256 is known only at its end); a sample that does not decode is passed over."""
    if not count or val_fraction <= 0:
        return []
    wanted = [s for s in sources if any(is_validation(k, val_fraction) for k in s.keys)]
    picked: list[dict] = []
    iterators = [(s, dataset.iter_shard(s, verify=False)) for s in wanted]
    while iterators and len(picked) < count:
        shard, samples = iterators.pop(0)
        try:
            sample = next(s for s in samples if is_validation(s["__key__"], val_fraction))
        except (StopIteration, dataset.ShardError, OSError):
            continue
        try:
            arrays = prepare_sample({**sample, "position": -1}, replace(prep, train=False))
        except BadInput:
            iterators.append((shard, samples))
            continue
        picked.append(arrays | {"key": sample["__key__"], "pipeline": shard.pipeline})
        iterators.append((shard, samples))
    for _, samples in iterators:
        samples.close()  # the shards' open reads
    return picked
