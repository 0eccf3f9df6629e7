"""Pairing inside one static run: each foreground frame with a background frame of the same scene.

The background frames nearest in time are ranked by mean squared error outside the dilated object
(and its shadow); the first that passes every check makes the pair: a low error (same light), no
region outside the object differs (the object is the only change, so a "background" frame holding
something else is refused), the object region does differ (the object is not still there, e.g.
stopped and absorbed by MOG2), and the two frames are aligned (a translation-only ECC fit outside
the object, started from the screening's camera track, finds at most ``max_shift_px``). A diverse
subset of the pairs is then kept so that one walking person does not give hundreds of
near-identical samples. Everything runs at analysis resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import Field

from ..dataset import Reject
from .params import Params
from .video_mog import disk

_ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-3)
_ECC_BLUR = 5  # Gaussian kernel of ECC's own smoothing, against sensor noise
_SPECK_RADIUS = 1  # differing specks this small are noise, not a stray object


class PairingParams(Params):
    max_mse: float = Field(
        30.0, gt=0, description="mean squared error per channel outside the object, at most (noise and flicker of the sample "
                                "clips: 0.2-6.5 at 480 px; a full-resolution shift of 0.5 px: 7-24, of 1 px: 28-95)",
    )
    exclusion_radius: float = Field(0.015, ge=0, le=0.2, description="object mask dilation before the MSE, fraction of the long side")
    candidates: int = Field(16, ge=1, le=1000, description="background frames nearest in time compared with each foreground frame")
    change_threshold: int = Field(25, ge=1, le=255, description="a pixel differs when a channel differs by more than this")
    min_changed: float = Field(0.5, ge=0, le=1, description="share of object pixels that differ between the pair, at least")
    min_mask_core: float = Field(
        0.1, ge=0, le=1, description="share of the object mask more than 2 analysis px from its edge, at least: an object that "
                                     "stayed until MOG2's background took it in leaves a mask of edge slivers, and stays in the target",
    )
    max_stray: float = Field(
        0.001, ge=0, le=1, description="largest region outside the object (and its shadow) that differs between the pair, "
                                       "share of the frame, at most: the object must be the only change",
    )
    max_shift_px: float = Field(1.0, ge=0, description="residual camera shift between the pair, full-resolution pixels, at most")
    min_gap_seconds: float = Field(1.0, ge=0, description="kept pairs' source frames are at least this far apart in time")
    max_mask_iou: float = Field(0.5, ge=0, le=1, description="kept pairs' object masks overlap at most this much (IoU)")
    max_pairs: int = Field(8, ge=1, le=99, description="pairs per segment, at most")


@dataclass(frozen=True)
class Pair:
    source: int  # position of the foreground frame among the segment's samples
    target: int  # position of the background frame
    mse: float  # outside the dilated object region
    changed: float  # share of object pixels that differ
    shift: float  # residual camera shift, full-resolution pixels


@dataclass(frozen=True)
class Miss:
    """Why a foreground frame found no background frame to pair with."""

    source: int
    mse: float  # of the candidate behind the verdict: the best miss explains the frame
    reject: Reject  # mse_above_threshold, background_differs, object_in_background, misaligned


def masked_mse(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float:
    """Mean squared error per channel where ``keep`` is non-zero (cv2.norm: 0.03 ms at 480x270, numpy 13 ms)."""
    count = cv2.countNonZero(keep)
    return float(cv2.norm(a, b, cv2.NORM_L2SQR, mask=keep)) / max(1, count * a.shape[2]) if count else float("inf")


def changed_share(a: np.ndarray, b: np.ndarray, mask: np.ndarray, threshold: int) -> float:
    """Share of the mask's pixels where some channel of ``a`` and ``b`` differs by more than ``threshold``."""
    differs = cv2.absdiff(a, b).max(axis=2) > threshold
    return float(differs[mask > 0].mean()) if mask.any() else 0.0


def residual_shift(target: np.ndarray, source: np.ndarray, keep: np.ndarray, start: np.ndarray) -> float:
    """|translation| (analysis px) that ECC fits between two grey frames outside the object; inf if it fails."""
    warp = np.float32([[1, 0, start[0]], [0, 1, start[1]]])
    try:
        _, warp = cv2.findTransformECC(target, source, warp, cv2.MOTION_TRANSLATION, _ECC_CRITERIA, keep, _ECC_BLUR)
    except cv2.error:  # no convergence: the frames do not align by a translation
        return float("inf")
    return float(np.hypot(warp[0, 2], warp[1, 2]))


def stray_share(a: np.ndarray, b: np.ndarray, look: np.ndarray, threshold: int) -> float:
    """Largest blob of differing pixels where ``look`` is non-zero, as a share of the frame (specks opened away)."""
    differs = ((cv2.absdiff(a, b).max(axis=2) > threshold) & (look > 0)).astype(np.uint8)
    differs = cv2.morphologyEx(differs, cv2.MORPH_OPEN, disk(_SPECK_RADIUS))
    _, _, stats, _ = cv2.connectedComponentsWithStats(differs, connectivity=8)
    return float(stats[1:, cv2.CC_STAT_AREA].max(initial=0)) / differs.size


_CORE_PX = 2  # analysis px: a mask's core is what a disk of this radius leaves when eroding it


def pair_frame(
    source: int, frames: list[np.ndarray], greys: list[np.ndarray], mask: np.ndarray, shadow: np.ndarray,
    backgrounds: list[int], displacement: np.ndarray, full_width: int, params: PairingParams,
) -> Pair | Miss:
    """Pair one foreground frame (position ``source``; MOG2 ``mask`` and ``shadow``) with one of ``backgrounds``.

    Candidates are tried in order of MSE; the first that passes every check wins, else the best
    candidate's failure is returned.
    """
    area = cv2.countNonZero(mask)
    core = cv2.countNonZero(cv2.erode(mask, disk(_CORE_PX))) / area if area else 0.0
    if core < params.min_mask_core:
        return Miss(source, float("inf"), Reject.because(
            "mask_slivers", f"{core:.2f} of the object mask lies over {_CORE_PX} px from its edge (min_mask_core={params.min_mask_core}): "
                            "an object still long enough to be taken into the background, only its moving edges masked"))
    height, width = mask.shape
    radius = round(params.exclusion_radius * max(height, width))
    keep = (cv2.dilate(mask | shadow, disk(radius)) == 0).astype(np.uint8)  # the object's shadow may differ too
    nearest = sorted(backgrounds, key=lambda b: (abs(b - source), b))[: params.candidates]
    ranked = sorted((masked_mse(frames[source], frames[b], keep), b) for b in nearest)
    first_miss = None
    for mse, target in ranked:
        if mse > params.max_mse:
            break
        outcome = _check(source, target, mse, frames, greys, mask, keep, displacement, full_width / width, params)
        if isinstance(outcome, Pair):
            return outcome
        first_miss = first_miss or outcome
    best = ranked[0][0]
    return first_miss or Miss(
        source, best, Reject.because("mse_above_threshold", f"best MSE outside the object {best:.1f} > max_mse={params.max_mse}"))


def _check(
    source: int, target: int, mse: float, frames: list[np.ndarray], greys: list[np.ndarray], mask: np.ndarray,
    keep: np.ndarray, displacement: np.ndarray, scale: float, params: PairingParams,
) -> Pair | Miss:
    stray = stray_share(frames[source], frames[target], keep, params.change_threshold)
    if stray > params.max_stray:
        return Miss(source, mse, Reject.because(
            "background_differs", f"a {stray:.4f}-of-the-frame region outside the object differs (max_stray={params.max_stray})"))
    changed = changed_share(frames[source], frames[target], mask, params.change_threshold)
    if changed < params.min_changed:
        return Miss(source, mse, Reject.because(
            "object_in_background", f"only {changed:.2f} of the object differs in the background frame (min_changed={params.min_changed})"))
    shift = residual_shift(greys[target], greys[source], keep, displacement[source] - displacement[target]) * scale
    if shift > params.max_shift_px:
        return Miss(source, mse, Reject.because(
            "misaligned", f"camera shift {shift:.2f} px between the frames > max_shift_px={params.max_shift_px}"))
    return Pair(source, target, mse, changed, shift)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = cv2.countNonZero(a | b)
    return cv2.countNonZero(a & b) / union if union else 1.0


def select_diverse(pairs: list[Pair], masks: dict[int, np.ndarray], times: list[float], params: PairingParams) -> list[Pair]:
    """Best pairs first (lowest MSE); skip any too close in time or too similar in mask to one already kept."""
    kept: list[Pair] = []
    for pair in sorted(pairs, key=lambda p: (p.mse, p.source)):
        if len(kept) == params.max_pairs:
            break
        if all(
            abs(times[pair.source] - times[k.source]) >= params.min_gap_seconds
            and mask_iou(masks[pair.source], masks[k.source]) <= params.max_mask_iou
            for k in kept
        ):
            kept.append(pair)
    return sorted(kept, key=lambda p: p.source)
