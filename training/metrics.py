"""What a training run measures and writes: per-step metrics, validation scores and sheets, progress.

Rank 0 keeps the step lines of the current checkpoint interval and writes them at each checkpoint as
``<run>/metrics/steps-<first>-<last>.jsonl`` (local or S3: whole objects, no appends; a resumed run
rewrites the same intervals), with TensorBoard events beside them when tensorboardX is installed and
the run is local. Validation scores an eraser on held-out samples: PSNR and SSIM inside the mask
against the target, and the mean change outside the mask (what the eraser altered where nothing
should change, before its prediction is pasted back), plus a sheet: source | mask | prediction | target.
"""

from __future__ import annotations

import json
import logging
import re
import time

import cv2
import numpy as np

from .. import storage

log = logging.getLogger("pairmine")
PROGRESS_FILE = "progress.json"
STATE_FILE, REPORT_FILE = "state.pt", "metrics.json"  # in a checkpoint: optimizer, schedule, step and position; its report
METRICS = "metrics"  # the run's folder of step lines and validation scores


def _validation_uri(run_uri: str, step: int) -> str:
    return storage.join(run_uri, METRICS, f"validation-{step:08d}.json")


def checkpoint_name(step: int) -> str:
    """A checkpoint's folder in the run: named by its step, so the run's progress.json can name the one it committed."""
    return f"checkpoint_{step:08d}"


def checkpoint_step(name: str) -> int:
    """The step in a checkpoint folder's name; -1 for a name of another form (Ray's timestamps, older runs)."""
    found = re.fullmatch(r"checkpoint_(\d+)", name)
    return int(found.group(1)) if found else -1


def read_progress(run_uri: str) -> dict:
    """The run's progress.json: step, stream position and (since checkpoints are named by step) the committed
    checkpoint's folder; step 0 at position 0 for a new run."""
    return storage.read_json(storage.join(run_uri, PROGRESS_FILE)) or {"step": 0, "position": 0}


class MetricsLog:
    def __init__(self, run_uri: str, writer: bool, log_every: int, progress=None):
        self.run_uri, self.writer, self.log_every = run_uri, writer, log_every
        self.progress = progress  # the driver's progress display (pipelines.progress.Board), or None
        self.pending: list[dict] = []
        self.board = None
        if writer and not storage.is_s3(run_uri):
            try:
                from tensorboardX import SummaryWriter

                self.board = SummaryWriter(storage.join(run_uri, "tensorboard"))
            except ImportError:
                pass

    def step(self, record: dict) -> None:
        """One metric line (every `log_every` steps): kept for the next checkpoint, logged, and on TensorBoard."""
        if not self.writer:
            return
        record = {"time": round(time.time(), 3), **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}}
        self.pending.append(record)
        if self.progress is not None:
            self.progress.put.remote({k: record[k] for k in ("step", "loss", "samples_per_s")})
        log.info("step %d: loss %.4f, lr %.3g, %.1f samples/s, data wait %.2fs / compute %.2fs, skipped %d",
                 record["step"], record["loss"], record["lr"], record["samples_per_s"], record["data_wait_s"], record["compute_s"],
                 record["skipped"])
        if self.board:
            for name in ("loss", "lr", "samples_per_s", "data_wait_s", "compute_s", "skipped"):
                self.board.add_scalar(f"train/{name}", record[name], record["step"])

    def checkpoint(self, report: dict, name: str) -> None:
        """Write the interval's step lines, the validation scores, and the progress a rerun starts from: the step,
        the stream position and the checkpoint folder `name`, written after that checkpoint's upload, so it commits it."""
        if self.pending:
            first, last = self.pending[0]["step"], self.pending[-1]["step"]
            lines = "".join(json.dumps(r) + "\n" for r in self.pending)
            storage.write_bytes(storage.join(self.run_uri, METRICS, f"steps-{first:08d}-{last:08d}.jsonl"), lines.encode())
            self.pending = []
        step = report["step"]
        storage.write_bytes(_validation_uri(self.run_uri, step), json.dumps(report, indent=2).encode())
        storage.write_bytes(storage.join(self.run_uri, PROGRESS_FILE), json.dumps({"step": step, "position": report["position"], "checkpoint": name}).encode())
        if self.board:
            for name, value in report.items():
                if name.startswith("val_"):
                    self.board.add_scalar(f"validation/{name[4:]}", value, step)
            self.board.flush()


def read_step_metrics(run_uri: str) -> list[dict]:
    """Every step line a run wrote, in step order (the last write of a step wins: a resumed run rewrites)."""
    lines: dict[int, dict] = {}
    for entry in storage.list_dir(storage.join(run_uri, METRICS)):
        if storage.basename(entry.path).startswith("steps-"):
            for line in storage.read_bytes(storage.uri_of(run_uri, entry)).decode().splitlines():
                record = json.loads(line)
                lines[record["step"]] = record
    return [lines[step] for step in sorted(lines)]


def loss_summary(lines: list[dict]) -> dict:
    """Mean loss over the first and the last quarter of a run's step lines, and its median rate: the whole run,
    every fit of it (a resumed one's included)."""
    losses, rates = [line["loss"] for line in lines], [line["samples_per_s"] for line in lines]
    window = max(1, len(losses) // 4)
    return {
        "first_loss": round(float(np.mean(losses[:window])), 6) if losses else None,
        "last_loss": round(float(np.mean(losses[-window:])), 6) if losses else None,
        "samples_per_s": round(float(np.median(rates)), 3) if rates else None,
    }


def read_validation(run_uri: str, step: int) -> dict:
    """The validation scores written with the checkpoint of `step` (``val_*``); empty if there are none."""
    report = storage.read_json(_validation_uri(run_uri, step)) or {}
    return {k: v for k, v in report.items() if k.startswith("val_")}


def remove_metrics_after(run_uri: str, step: int) -> None:
    """Delete the metric files that reach past `step` (a run going back to an earlier checkpoint rewrites them)."""
    for entry in storage.list_dir(storage.join(run_uri, METRICS)):
        if max(map(int, re.findall(r"\d+", storage.basename(entry.path))), default=-1) > step:
            storage.delete(storage.uri_of(run_uri, entry))


# --- scores -----------------------------------------------------------------------------------------


def psnr(prediction: np.ndarray, target: np.ndarray, where: np.ndarray) -> float:
    """PSNR (dB) of float images in [0, 1] over the pixels where `where` (H, W) is true."""
    error = float(np.mean((prediction[where] - target[where]) ** 2)) if where.any() else 0.0
    return 10 * np.log10(1.0 / error) if error > 0 else 100.0


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Gaussian window, sigma 1.5) of float images in [0, 1], averaged over channels."""
    c1, c2 = 0.01**2, 0.03**2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim.mean(axis=2) if ssim.ndim == 3 else ssim


def scores(prediction: np.ndarray, source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Float RGB images in [0, 1], a bool mask: quality inside the mask, change outside it."""
    inside = mask.astype(bool)
    return {
        "psnr_mask": round(psnr(prediction, target, inside), 4),
        "ssim_mask": round(float(ssim_map(prediction.astype(np.float32), target.astype(np.float32))[inside].mean()), 5),
        "change_outside": round(float(np.abs(prediction - source)[~inside].mean()) if (~inside).any() else 0.0, 6),
    }


def paste_back(prediction: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The prediction inside the mask, the source everywhere else: nothing outside the mask changes."""
    return np.where(mask.astype(bool)[..., None], prediction, source)


def sheet(rows: list[list[np.ndarray]], cell: int = 256) -> np.ndarray:
    """RGB uint8 grid of equally sized float [0, 1] panels, each resized to `cell` px high."""
    def fit(panel):
        panel = np.repeat(panel[..., None], 3, axis=2) if panel.ndim == 2 else panel
        scale = cell / panel.shape[0]
        return cv2.resize((panel * 255).clip(0, 255).astype(np.uint8), (round(panel.shape[1] * scale), cell), interpolation=cv2.INTER_AREA)

    lines = [np.concatenate([fit(p) for p in row], axis=1) for row in rows]
    width = max(line.shape[1] for line in lines)
    return np.concatenate([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines], axis=0)


def write_png(uri: str, rgb: np.ndarray) -> None:
    """An RGB image as a PNG file, local or s3://."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    storage.write_bytes(uri, data.tobytes())


def predict(eraser, samples: list[dict], seed: int, batch_size: int = 4) -> list[np.ndarray]:
    """The eraser's float RGB [0, 1] predictions of prepared samples (see data.prepare_sample), in order."""
    import torch

    from .eraser import to_batch

    device = next(eraser.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    predictions = []
    was_training = eraser.training
    eraser.eval()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        rows = {name: torch.from_numpy(np.stack([s[name] for s in chunk])) for name in chunk[0] if name not in ("key", "pipeline")}
        predictions += list(eraser.erase(to_batch(rows, device), generator).permute(0, 2, 3, 1).float().cpu().numpy())
    eraser.train(was_training)
    return predictions


def validate(eraser, samples: list[dict], folder: str, seed: int) -> dict:
    """Scores of the eraser on prepared held-out samples (means), and ``validation.png`` in `folder`."""
    results, rows = [], []
    for sample, prediction in zip(samples, predict(eraser, samples, seed)):
        source, target = sample["source"] / 255.0, sample["target"] / 255.0
        mask = sample["mask"] > 0
        results.append(scores(prediction, source, target, mask))
        overlay = np.where(mask[..., None], 0.5 * source + 0.5 * np.array([1.0, 0.0, 0.0]), source)
        rows.append([source, overlay, paste_back(prediction, source, mask), target])
    if rows:
        write_png(f"{folder}/validation.png", sheet(rows))
    return {f"val_{name}": round(float(np.mean([r[name] for r in results])), 5) for name in results[0]} | {"val_samples": len(results)} if results else {}
