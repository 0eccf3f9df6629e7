"""Screening: split a segment's sampled frames into static runs; say why the rest is unusable.

Each step between consecutive sampled frames is measured three ways on the grey analysis frames:
camera motion (median of per-tile phase-correlation shifts, so that a moving object covering a
few tiles does not read as camera motion; over at least 3 frames whatever the stride, so that
the same footage reads the same), content change (a scene cut), and mean-brightness
change (flicker, exposure jumps). A run is a stretch of frames joined only by clean steps; runs
shorter than ``min_static_seconds`` are dropped too. Pairs are only ever made inside one run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import Field

from ..dataset import Reject
from .params import Params

CLEAN = "ok"
_THUMB_WIDTH = 64  # content change is measured on thumbnails: insensitive to noise and small objects
MOTION_BASELINE = 3  # frames, at least, that camera motion is measured over: a phase correlation's sub-pixel noise
# divided by fewer frames reads as motion (max_motion is calibrated at stride 3; at stride 1 static footage was rejected)


class ScreenParams(Params):
    max_motion: float = Field(
        2e-4, ge=0, le=1,
        description="camera motion per frame, as a fraction of the frame width, at most (measured over at least 3 frames "
                    "whatever the stride: static clips <= 6e-5 at p90, hand-held 4e-4, 2 px/frame pan 2e-3)",
    )
    tiles: int = Field(3, ge=1, le=8, description="motion is the median shift of tiles x tiles phase correlations")
    min_tile_response: float = Field(0.1, ge=0, le=1, description="phase-correlation peak of a tile, at least, to count")
    max_scene_change: float = Field(0.15, gt=0, le=1, description="mean absolute thumbnail difference / 255 per step, at most (scene cut)")
    max_flicker: float = Field(0.05, gt=0, le=1, description="relative change of mean brightness per step, at most")
    min_static_seconds: float = Field(
        2.0, ge=0, description="static runs shorter than this are dropped (a run of n analysed frames spans n strides)")


@dataclass(frozen=True)
class Steps:
    """Per-step measurements; entry i is the step from sample i to sample i + 1."""

    shift: np.ndarray  # [n-1, 2] camera shift (dx, dy) in analysis pixels; nan where unmeasurable
    motion: np.ndarray  # [n-1] |shift| / frames between the samples / analysis width
    change: np.ndarray  # [n-1] mean absolute thumbnail difference / 255
    flicker: np.ndarray  # [n-1] relative change of mean brightness


@dataclass(frozen=True)
class Span:
    """Samples [first, stop) of a segment: a static run (no reject), or a stretch dropped and why."""

    first: int
    stop: int
    reject: Reject | None = None


@dataclass(frozen=True)
class Screening:
    steps: Steps
    labels: list[str]  # per step: CLEAN, "camera_motion", "scene_cut", "flicker" or "low_texture"
    runs: list[Span]  # static runs, in order
    dropped: list[Span]  # the other samples, grouped, with a reason
    displacement: np.ndarray  # [n, 2] camera position of each sample relative to its run's first (analysis px)


def tile_shift(prev: np.ndarray, curr: np.ndarray, tiles: int, min_response: float) -> np.ndarray:
    """Median (dx, dy) of per-tile phase correlations between two float32 grey frames; nan if < 3 tiles respond."""
    height, width = prev.shape
    th, tw = height // tiles, width // tiles
    if th < 2 or tw < 2:  # tiles of a pixel hold no shift to measure (and phaseCorrelate refuses them)
        return np.full(2, np.nan)
    window = cv2.createHanningWindow((tw, th), cv2.CV_32F)
    shifts = []
    for y in range(0, tiles * th, th):
        for x in range(0, tiles * tw, tw):
            shift, response = cv2.phaseCorrelate(prev[y : y + th, x : x + tw], curr[y : y + th, x : x + tw], window)
            if response >= min_response:
                shifts.append(shift)
    if len(shifts) < min(3, tiles * tiles):
        return np.full(2, np.nan)
    return np.median(np.asarray(shifts), axis=0)


def measure_steps(greys: list[np.ndarray], indices: list[int], params: ScreenParams) -> Steps:
    """Camera shift, content change and brightness change between consecutive sampled frames."""
    height, width = greys[0].shape
    thumb_size = (_THUMB_WIDTH, max(1, round(height * _THUMB_WIDTH / width)))
    floats = [g.astype(np.float32) for g in greys]
    thumbs = [cv2.resize(f, thumb_size, interpolation=cv2.INTER_AREA) for f in floats]
    means = np.array([max(float(t.mean()), 1.0) for t in thumbs])
    change = np.array([float(cv2.norm(a, b, cv2.NORM_L1)) / a.size / 255 for a, b in zip(thumbs, thumbs[1:])])
    flicker = np.abs(np.diff(means)) / means[:-1]
    shift = np.array([tile_shift(a, b, params.tiles, params.min_tile_response) for a, b in zip(floats, floats[1:])]).reshape(-1, 2)
    motion = np.hypot(shift[:, 0], shift[:, 1]) / np.diff(np.asarray(indices, dtype=np.float64)) / width
    cut = (change > params.max_scene_change) | (flicker > params.max_flicker)  # a step no baseline reaches across
    for step in range(len(motion)):
        first, last = _baseline(indices, cut, step)
        if (first, last) != (step, step + 1):
            far = tile_shift(floats[first], floats[last], params.tiles, params.min_tile_response)
            if not np.isnan(far).any():
                motion[step] = np.hypot(*far) / (indices[last] - indices[first]) / width
    return Steps(shift, motion, change, flicker)


def _baseline(indices: list[int], cut: np.ndarray, step: int) -> tuple[int, int]:
    """The samples (first, last) that step `step`'s camera motion is measured between: the step's own, widened back
    (then forward, at a segment's start) to span MOTION_BASELINE frames, never across a cut or a flicker."""
    first, last = step, step + 1
    while indices[last] - indices[first] < MOTION_BASELINE and first > 0 and not cut[first - 1]:
        first -= 1
    while indices[last] - indices[first] < MOTION_BASELINE and last + 1 < len(indices) and not cut[last]:
        last += 1
    return first, last


def label_steps(steps: Steps, params: ScreenParams) -> list[str]:
    """Why each step breaks a static run, or CLEAN; a cut explains any motion or brightness reading."""
    labels = []
    for motion, change, flicker in zip(steps.motion, steps.change, steps.flicker):
        if change > params.max_scene_change:
            labels.append("scene_cut")
        elif flicker > params.max_flicker:
            labels.append("flicker")
        elif np.isnan(motion):
            labels.append("low_texture")
        elif motion > params.max_motion:
            labels.append("camera_motion")
        else:
            labels.append(CLEAN)
    return labels


def _runs(labels: list[str]) -> list[tuple[int, int]]:
    """Maximal sample ranges [first, stop) joined only by clean steps."""
    runs, first = [], 0
    for step, label in enumerate(labels):
        if label != CLEAN:
            runs.append((first, step + 1))
            first = step + 1
    runs.append((first, len(labels) + 1))
    return runs


def _describe(reason: str, steps: Steps, picked: list[int], params: ScreenParams, width: int) -> str:
    """Measured values behind a reason, over the given steps."""
    if reason == "camera_motion":
        median, peak = np.nanmedian(steps.motion[picked]), np.nanmax(steps.motion[picked])
        return (f"median camera motion {median:.2e} of the width per frame ({median * width:.2f} px/frame at full resolution), "
                f"max {peak:.2e}; limit max_motion={params.max_motion:.1e}")
    if reason == "scene_cut":
        return f"thumbnail change {np.max(steps.change[picked]):.3f} > max_scene_change={params.max_scene_change}"
    if reason == "flicker":
        return f"brightness change {np.max(steps.flicker[picked]):.3f} per step > max_flicker={params.max_flicker}"
    if reason == "low_texture":
        return "too few tiles with a phase-correlation peak to measure camera motion"
    return f"static for less than min_static_seconds={params.min_static_seconds}"


def screen(greys: list[np.ndarray], indices: list[int], fps: float, width: int, params: ScreenParams) -> Screening:
    """Static runs of a segment's sampled grey frames (frame numbers ``indices``; ``width`` = full-res width, for details)."""
    steps = measure_steps(greys, indices, params)
    labels = label_steps(steps, params)
    runs, dropped, pending = [], [], []  # pending: consecutive dropped runs, merged into one span
    stride = float(np.median(np.diff(indices))) if len(indices) > 1 else 1.0
    for first, stop in _runs(labels):
        seconds = (indices[stop - 1] - indices[first] + stride) / fps  # each sample stands for a stride of frames
        if seconds >= params.min_static_seconds and stop - first >= 2:
            runs.append(Span(first, stop))
            if pending:
                dropped.append(_dropped_span(pending, labels, steps, params, width))
                pending = []
        else:
            pending.append((first, stop))
    if pending:
        dropped.append(_dropped_span(pending, labels, steps, params, width))
    displacement = np.zeros((len(greys), 2))
    for run in runs:
        displacement[run.first + 1 : run.stop] = np.cumsum(steps.shift[run.first : run.stop - 1], axis=0)
    return Screening(steps, labels, runs, dropped, displacement)


def _dropped_span(parts: list[tuple[int, int]], labels: list[str], steps: Steps, params: ScreenParams, width: int) -> Span:
    """One span over consecutive dropped runs; its reason is the most frequent break among its steps."""
    first, stop = parts[0][0], parts[-1][1]
    touching = range(max(0, first - 1), min(len(labels), stop))  # the steps inside and at both edges
    breaks = Counter(labels[s] for s in touching if labels[s] != CLEAN)
    if not breaks:
        return Span(first, stop, Reject.because("too_short", _describe("too_short", steps, [], params, width)))
    reason = sorted(breaks.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    picked = [s for s in touching if labels[s] == reason]
    return Span(first, stop, Reject.because(reason, _describe(reason, steps, picked, params, width)))
