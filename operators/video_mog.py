"""MOG2 background subtraction over one static run, and the classification of its frames.

The model starts from the run's temporal median (the best single guess of the empty scene: MOG2
would otherwise keep whatever its first frame shows as a background mode), learns over the whole
run once at a fixed rate of 1/frames (warm-up; MOG2's own rate favours the first frames, which then
pass as background even with an object in them), then classifies every frame with learning frozen:
frames at the start of a run are judged like the others, and a passing object does not become
background while it crosses.
MOG2 runs on colour, which separates shadows (darker, same chromaticity; labelled 127) from
objects far better than grey, at ~2 ms per 480x270 frame and pass. Shadow pixels are not object,
but a background frame must be free of both. Grey footage gets no shadow labels (see
`subtract_background`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from .params import Params

_FOREGROUND, _SHADOW = 255, 127  # MOG2's labels
_MEDIAN_FRAMES = 15  # frames, evenly spaced, whose median seeds the model
_GREY_SPREAD = 8  # levels between a pixel's channels under which footage counts as grey (`colourless`)


class MogParams(Params):
    var_threshold: float = Field(16.0, gt=0, description="MOG2 varThreshold: squared Mahalanobis distance to a background mode")
    shadow_threshold: float = Field(0.5, gt=0, lt=1, description="MOG2 shadow tau: a shadow is darker by at most this factor")
    morph_radius: float = Field(0.004, ge=0, le=0.05, description="opening radius against noise, fraction of the long side (close: 2x)")
    min_component: float = Field(0.0005, ge=0, le=1, description="connected components smaller than this share of the frame are noise")
    background_max_ratio: float = Field(0.001, ge=0, le=1, description="background frame: foreground + shadow share of the frame, at most")
    min_object: float = Field(0.005, ge=0, le=1, description="foreground frame: its largest object covers this share, at least")
    max_object: float = Field(0.3, ge=0, le=1, description="foreground frame: all objects together cover this share, at most")
    max_objects: int = Field(4, ge=1, description="foreground frame: this many objects, at most (crowds give poor masks)")

    ORDERED = (("min_object", "max_object", False), ("background_max_ratio", "min_object", True))  # else a frame could be both


@dataclass(frozen=True)
class FrameClass:
    kind: Literal["background", "foreground", "neither"]
    moving: float  # share of the frame that MOG2 marks as foreground or shadow (after opening)
    objects: int  # connected components kept as objects
    area: float  # share of the frame the objects cover
    mask: np.ndarray  # uint8 0/1 object mask at analysis resolution (holes filled)
    shadow: np.ndarray  # uint8 0/1 pixels MOG2 labels shadow (after opening)
    movers: np.ndarray  # uint8 0/1 pixels MOG2 marks foreground or shadow (after opening): what a clean region lacks


def disk(radius_px: int) -> np.ndarray:
    """Elliptic structuring element of the given radius (0: a single pixel)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))


def colourless(frame: np.ndarray, max_spread: int = _GREY_SPREAD) -> bool:
    """Whether a BGR frame is grey (IR / night cameras, desaturated clips): 99 % of its pixels' channels lie
    within `max_spread` levels of each other (compression leaves ~3; the sample clips' colour, 26 and more)."""
    spread = cv2.absdiff(frame.max(axis=2), frame.min(axis=2))
    return bool(np.percentile(spread, 99) <= max_spread)


def subtract_background(frames: list[np.ndarray], params: MogParams) -> list[np.ndarray]:
    """MOG2 labels (0 background, 127 shadow, 255 foreground) of each BGR frame of one static run. On grey
    footage there are no shadow labels: without colour MOG2's shadow test (darker, same chromaticity) holds for
    every darker pixel, and dark parts of objects fell out of their masks."""
    step = max(1, len(frames) // _MEDIAN_FRAMES)
    median = np.median(np.stack(frames[::step]), axis=0).astype(np.uint8)
    mog = cv2.createBackgroundSubtractorMOG2(history=len(frames), varThreshold=params.var_threshold, detectShadows=not colourless(median))
    mog.setShadowThreshold(params.shadow_threshold)
    mog.apply(median)
    for frame in frames:
        mog.apply(frame, learningRate=1 / len(frames))
    return [mog.apply(frame, learningRate=0) for frame in frames]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Each outer contour filled: objects become solid (a removal mask must cover the whole object)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, cv2.FILLED)
    return filled


def classify(labels: np.ndarray, params: MogParams) -> FrameClass:
    """Background, foreground (coherent objects in the area range) or neither, from one frame's MOG2 labels."""
    radius = round(params.morph_radius * max(labels.shape))
    moving = cv2.morphologyEx((labels > 0).astype(np.uint8), cv2.MORPH_OPEN, disk(radius))
    shadow = cv2.morphologyEx((labels == _SHADOW).astype(np.uint8), cv2.MORPH_OPEN, disk(radius))
    objects = cv2.morphologyEx((labels == _FOREGROUND).astype(np.uint8), cv2.MORPH_OPEN, disk(radius))
    objects = fill_holes(cv2.morphologyEx(objects, cv2.MORPH_CLOSE, disk(2 * radius)))
    _, components, stats, _ = cv2.connectedComponentsWithStats(objects, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA] / labels.size
    kept = 1 + np.flatnonzero(areas >= params.min_component)
    mask = np.isin(components, kept).astype(np.uint8)
    area, largest = float(areas[kept - 1].sum()), float(areas.max(initial=0.0))
    moving_ratio = float(moving.mean())
    if moving_ratio <= params.background_max_ratio:
        kind = "background"
    elif largest >= params.min_object and area <= params.max_object and len(kept) <= params.max_objects:
        kind = "foreground"
    else:
        kind = "neither"
    return FrameClass(kind, moving_ratio, len(kept), area, mask, shadow, moving)
