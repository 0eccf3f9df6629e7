"""Mask enhancement (SmartEraser "ME"): loose training masks that look like what users draw.

Modes, after the SmartEraser release: ``exact``; ``erode`` to 80-90 % of the area; ``dilate`` to
125-150 %; ``hull`` (convex hull, then dilated to 125-150 %); ``ellipse`` (dilated to 200-250 %,
then a fitted ellipse); ``bbox`` (the box enlarged to 110-120 % as a jittered polygon); and
``brush``: thick random strokes over the object. Modes are gated by shape, and a variant covering
more than ``max_area_ratio`` of the image falls back to the exact mask. The pipelines record the
mode used per sample; training calls the same function on the fly.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field, field_validator

from .params import Params

MODES = ("exact", "erode", "dilate", "hull", "ellipse", "bbox", "brush")


class MaskEnhanceParams(Params):
    modes: tuple[str, ...] = Field(("exact",), description=f"modes drawn from, uniformly among those allowed: {MODES}")
    max_area_ratio: float = Field(0.7, gt=0, le=1, description="a variant above this share of the image falls back to exact")

    @field_validator("modes")
    @classmethod
    def _known(cls, modes):
        unknown = [m for m in modes if m not in MODES]
        if not modes or unknown:
            raise ValueError(f"modes must be a non-empty subset of {list(MODES)}; unknown: {unknown}")
        return modes


def allowed_modes(mask: np.ndarray, modes: tuple[str, ...]) -> list[str]:
    """The modes that suit this mask's shape (release rules: box modes for compact masks, hull modes for
    masks that are non-convex but not wildly so)."""
    points = cv2.findNonZero(mask)
    x, y, w, h = cv2.boundingRect(points)
    area, image_area = float(np.count_nonzero(mask)), float(mask.size)
    hull_area = max(cv2.contourArea(cv2.convexHull(points)), area)
    fill = area / (w * h)
    allowed = []
    for mode in modes:
        if mode == "bbox" and (fill < 0.5 or w * h / image_area > 0.4):
            continue
        if mode in ("hull", "ellipse") and (area / hull_area < 0.6 or hull_area / image_area > 0.5):
            continue
        if mode == "hull" and area / hull_area > 0.95:  # already convex: hull would equal dilate
            continue
        allowed.append(mode)
    return allowed or ["exact"]


def _resize_by_area(mask: np.ndarray, ratio: float) -> np.ndarray:
    """Grow (ratio > 1) or shrink (ratio < 1) a 0/1 mask isotropically until its area is `ratio` times larger."""
    area = np.count_nonzero(mask)
    if ratio >= 1:
        outside = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 3)
        values = outside[mask == 0]
        if values.size == 0:
            return mask.copy()
        k = min(int((ratio - 1) * area), values.size - 1)
        return (outside <= np.partition(values, k)[k]).astype(np.uint8)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    values = inside[mask > 0]
    k = min(max(int(ratio * area), 1), values.size) - 1
    return (inside >= -np.partition(-values, k)[k]).astype(np.uint8)


def _hull(mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(mask)
    cv2.fillConvexPoly(out, cv2.convexHull(cv2.findNonZero(mask)), 1)
    return out


def _ellipse(mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(mask)
    contour = cv2.findNonZero(mask)
    if len(contour) < 5:
        return mask
    cv2.ellipse(out, cv2.fitEllipse(contour), 1, thickness=-1)
    return out | mask


def _bbox_polygon(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y, w, h = cv2.boundingRect(mask)  # the box of its nonzero pixels, without listing them
    grow = np.sqrt(rng.uniform(1.10, 1.20))
    cx, cy, hw, hh = x + w / 2, y + h / 2, w * grow / 2, h * grow / 2
    corners = np.array([[cx - hw, cy - hh], [cx + hw, cy - hh], [cx + hw, cy + hh], [cx - hw, cy + hh]])
    jitter = 0.03 * max(w, h)
    points = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):  # each edge: bulge outwards, jitter the vertices
        normal = np.array([b[1] - a[1], a[0] - b[0]]) / max(np.hypot(*(b - a)), 1e-6)
        bulge = rng.uniform(0, 0.1) * np.hypot(*(b - a))
        for t in np.linspace(0, 1, 8, endpoint=False):
            points.append(a + t * (b - a) + normal * bulge * 4 * t * (1 - t) + rng.uniform(-jitter, jitter, 2))
    out = np.zeros_like(mask)
    cv2.fillPoly(out, [np.round(points).astype(np.int32)], 1)
    return out | mask


def _brush(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y, w, h = cv2.boundingRect(mask)  # the box of its nonzero pixels, without listing them
    size = np.sqrt(np.count_nonzero(mask))
    out = _resize_by_area(mask, rng.uniform(1.05, 1.15))
    for _ in range(rng.integers(2, 5)):
        vertices = rng.uniform([x - 0.1 * w, y - 0.1 * h], [x + 1.1 * w, y + 1.1 * h], size=(rng.integers(3, 7), 2))
        thickness = max(2, int(size * rng.uniform(0.08, 0.2)))
        cv2.polylines(out, [np.round(vertices).astype(np.int32)], False, 1, thickness=thickness)
    return out


def enhance_mask(mask: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one mode to a 0/1 uint8 mask (full image size); returns a new 0/1 mask."""
    if mode == "exact":
        return mask.copy()
    if mode == "erode":
        return _resize_by_area(mask, rng.uniform(0.80, 0.90))
    if mode == "dilate":
        return _resize_by_area(mask, rng.uniform(1.25, 1.50))
    if mode == "hull":
        return _resize_by_area(_hull(mask), rng.uniform(1.25, 1.50)) | mask
    if mode == "ellipse":
        return _ellipse(_resize_by_area(mask, rng.uniform(2.0, 2.5)))
    if mode == "bbox":
        return _bbox_polygon(mask, rng)
    if mode == "brush":
        return _brush(mask, rng)
    raise ValueError(f"unknown mask-enhancement mode {mode!r}; known: {MODES}")


def random_enhance(mask: np.ndarray, params: MaskEnhanceParams, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Draw an allowed mode and apply it; returns (mask, mode actually used)."""
    if params.modes == ("exact",):
        return mask, "exact"
    candidates = allowed_modes(mask, params.modes)
    mode = candidates[rng.integers(len(candidates))]
    out = enhance_mask(mask, mode, rng)
    if np.count_nonzero(out) > params.max_area_ratio * out.size:
        return mask, "exact"
    return out, mode
