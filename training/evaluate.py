"""``pairmine evaluate``: trained erasers side by side on the same held-out samples of one or more outputs.

Every checkpoint erases the same prepared samples (the held-out split of the outputs, by key hash, at
one resolution, with the exact masks), and is scored like the validation of a training run: PSNR and
SSIM inside the mask against the target, the mean change outside the mask, and seconds per image.
The sheet shows source | mask | target, then each checkpoint's prediction (pasted back).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import pyarrow.fs as pafs

from .. import dataset, storage
from ..errors import UserError
from ..operators.mask_enhance import MaskEnhanceParams
from .data import Preparation, object_crop, validation_samples
from .erase import inference_device, latest_checkpoint
from .metrics import paste_back, predict, scores, sheet, write_png

log = logging.getLogger("pairmine")


def evaluate(checkpoints: list[str], outputs: list[str], samples: int, device: str = "auto", resolution: int | None = None,
             val_fraction: float | None = None, seed: int = 0, sheet_path: str | None = None) -> dict:
    import pairmine  # noqa: F401  (the torchvision shim, before diffusers imports torchvision)

    from . import models

    shards = []
    for output in outputs:  # each output asked for is scored on: a mistyped one is an error, not left out
        found = dataset.committed_shards(output) if dataset.is_output(output) else None
        if not found:
            raise UserError(f"--data {output}: " + ("not a pipeline output (not found?)" if found is None else "holds no committed shards"))
        shards += found
    if sheet_path and storage.info(sheet_path).type == pafs.FileType.Directory:
        raise UserError(f"--sheet {sheet_path} is a folder: give the sheet's file name (e.g. {storage.join(sheet_path, 'sheet.png')})")
    if sheet_path and not sheet_path.lower().endswith(".png"):
        raise UserError(f"--sheet {sheet_path}: the sheet is a PNG; name it .png")
    target = inference_device(device)
    erasers = []
    for uri in checkpoints:
        found = latest_checkpoint(uri)
        eraser, meta = models.load(found, target)
        erasers.append((uri, found, eraser, meta))
    resolution = resolution or int(erasers[0][3].get("resolution", 512))
    fraction = val_fraction if val_fraction is not None else float(erasers[0][3].get("val_fraction", 0.01))
    for uri, _, _, meta in erasers:  # a split is nested in every larger one (by key hash): held out only up to the trained one
        trained = float(meta.get("val_fraction", fraction))
        if trained < fraction:
            log.warning("%s held out val_fraction %s in training, less than the %s evaluated: some of the samples it is scored on "
                        "are samples it trained on", uri, trained, fraction)
    multiple = max(e.params.latent_multiple for _, _, e, _ in erasers)
    if resolution % multiple:
        raise UserError(f"--resolution {resolution} is not a multiple of {multiple}, which these erasers need")
    prep = Preparation(resolution, 0, 1.0, MaskEnhanceParams(), seed, train=False)
    held_out = validation_samples(shards, fraction, samples, prep)
    if not held_out:
        raise UserError(f"no held-out samples in {', '.join(outputs)} at val_fraction {fraction} (a run's split: its data.val_fraction)")
    if len(held_out) < samples:
        log.warning("only %d held-out sample%s at val_fraction %s (asked for %d): the table scores those", len(held_out),
                    "" if len(held_out) == 1 else "s", fraction, samples)
    rows = [[s["source"] / 255.0, (s["mask"] > 0).astype(np.float64), s["target"] / 255.0] for s in held_out]
    table = []
    for uri, found, eraser, meta in erasers:
        crop = getattr(eraser, "clip_size", 0)
        inputs = [replace_crop(s, crop) for s in held_out]
        started = time.perf_counter()
        predictions = predict(eraser, inputs, seed)
        seconds = (time.perf_counter() - started) / len(inputs)
        results = [scores(p, s["source"] / 255.0, s["target"] / 255.0, s["mask"] > 0) for p, s in zip(predictions, held_out)]
        table.append({"checkpoint": uri, "resolved": found, "eraser": meta["eraser"]["name"], "step": meta.get("step"),
                      **{k: round(float(np.mean([r[k] for r in results])), 5) for k in results[0]}, "seconds_per_image": round(seconds, 4)})
        for row, p, s in zip(rows, predictions, held_out):
            row.append(paste_back(p, s["source"] / 255.0, s["mask"] > 0))
    if sheet_path:
        write_png(sheet_path, sheet(rows))
    return {"samples": len(held_out), "resolution": resolution, "val_fraction": fraction, "device": str(target), "table": table,
            "sheet": sheet_path}


def replace_crop(sample: dict, crop: int) -> dict:
    """A prepared sample with the object crop an eraser's visual guidance needs (none when it needs none)."""
    sample = {k: v for k, v in sample.items() if k != "clip"}
    return sample | ({"clip": object_crop(sample["source"], sample["mask"], crop)} if crop else {})


def format_table(result: dict) -> str:
    header = f"{'checkpoint':<48} {'eraser':<12} {'step':>6} {'PSNR mask':>10} {'SSIM mask':>10} {'change out':>11} {'s/image':>8}"
    lines = [f"{result['samples']} held-out sample{'' if result['samples'] == 1 else 's'} at {result['resolution']} px (val_fraction {result['val_fraction']}, {result['device']})",
             header, "-" * len(header)]
    for row in result["table"]:
        name = row["checkpoint"] if len(row["checkpoint"]) <= 48 else "…" + row["checkpoint"][-47:]
        lines.append(f"{name:<48} {row['eraser']:<12} {row['step'] if row['step'] is not None else '-':>6} {row['psnr_mask']:>10.2f} "
                     f"{row['ssim_mask']:>10.4f} {row['change_outside']:>11.4f} {row['seconds_per_image']:>8.3f}")
    if result["sheet"]:
        lines.append(f"sheet: {result['sheet']} (source | mask | target | " + " | ".join(r["eraser"] for r in result["table"]) + ")")
    return "\n".join(lines)
