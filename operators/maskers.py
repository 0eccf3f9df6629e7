"""The pluggable masker interface and the weight-free ``mog`` masker.

A masker turns a pair (full-resolution foreground frame, its background frame, the MOG2 object
mask found at analysis resolution) into the training mask, or says why it cannot. One call takes a
list of pairs, so a model-based masker (GroundingDINO + SAM2) can batch them, across segments too.
Every masker is chosen by the ``masker.name`` config key.

The ``mog`` masker refines the coarse MOG2 mask at full resolution with the pair itself: pixels
near the MOG2 object where the two frames differ, the connected parts that touch the MOG2
object, holes filled; optionally GrabCut on the source frame, seeded by that mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, Sequence

import cv2
import numpy as np
from pydantic import Field

from ..dataset import Reject
from .params import Params
from .video_mog import disk, fill_holes

_BLUR = (5, 5)  # Gaussian kernel applied to both frames before differencing (sensor noise)


@dataclass(frozen=True)
class MaskInput:
    source: np.ndarray  # full-resolution BGR frame showing the object
    target: np.ndarray | None  # full-resolution BGR frame of the same scene without it (None: the masker never reads it)
    prior: np.ndarray  # uint8 0/1 MOG2 object mask, analysis resolution (same aspect ratio)
    whole_frame: bool = True  # False: a region pair's crop (crops of one segment show different parts of the scene)


@dataclass(frozen=True)
class MaskResult:
    mask: np.ndarray | None  # uint8 0/255, the size of ``source``; None when the pair is rejected
    reject: Reject | None = None  # why, when ``mask`` is None


class Masker(Protocol):
    name: str
    items_are_clip: bool  # one masks() call takes one segment's frames (a model that tracks across them)

    def masks(self, items: Sequence[MaskInput]) -> list[MaskResult]: ...


class MogMasker(Params):
    """MOG2 mask refined by the pair's full-resolution difference (CPU, no weights)."""

    name: Literal["mog"] = "mog"
    items_are_clip: ClassVar[bool] = False
    needs_target: ClassVar[bool] = True  # the pair's difference refines the MOG2 mask
    diff_threshold: int = Field(20, ge=1, le=255, description="a pixel belongs to the object where a blurred channel differs by more")
    search_radius: float = Field(
        0.02, ge=0, le=0.2, description="the object is looked for this far around the MOG2 mask, fraction of the long side",
    )
    close_radius: float = Field(0.004, ge=0, le=0.05, description="closing radius that joins the object's parts, fraction of the long side")
    grabcut: bool = Field(False, description="refine with GrabCut on the source frame (~0.1-1 s per pair)")
    grabcut_iterations: int = Field(3, ge=1, le=20, description="GrabCut iterations")
    min_area: float = Field(0.002, ge=0, le=1, description="mask share of the frame, at least")
    max_area: float = Field(0.5, ge=0, le=1, description="mask share of the frame, at most")
    min_prior_iou: float = Field(0.3, ge=0, le=1, description="IoU with the MOG2 mask, at least (else the difference found something else)")

    def build(self) -> "MogMasker":
        """Every masker config's ``build()`` gives its masker; this one needs no model, so it is its own."""
        return self

    def masks(self, items: Sequence[MaskInput]) -> list[MaskResult]:
        return [self.refine(item) for item in items]

    def refine(self, item: MaskInput) -> MaskResult:
        height, width = item.source.shape[:2]
        long_side = max(height, width)
        prior = cv2.resize(item.prior, (width, height), interpolation=cv2.INTER_NEAREST)
        region = cv2.dilate(prior, disk(round(self.search_radius * long_side)))
        x, y, w, h = cv2.boundingRect(region)
        crop = (slice(y, y + h), slice(x, x + w))
        mask = np.zeros((height, width), np.uint8)
        mask[crop] = self._difference(item.source[crop], item.target[crop], region[crop], prior[crop], long_side)
        if self.grabcut and mask.any():
            mask[crop] = self._grabcut(item.source[crop], mask[crop], region[crop])
        area = cv2.countNonZero(mask) / mask.size
        if area < self.min_area:
            return MaskResult(None, Reject.because("mask_too_small", f"refined mask covers {area:.4f} of the frame < min_area={self.min_area}"))
        if area > self.max_area:
            return MaskResult(None, Reject.because("mask_too_large", f"refined mask covers {area:.3f} of the frame > max_area={self.max_area}"))
        iou = cv2.countNonZero(mask & prior) / max(1, cv2.countNonZero(mask | prior))
        if iou < self.min_prior_iou:
            return MaskResult(None, Reject.because("mask_disagrees", f"IoU {iou:.2f} with the MOG2 mask < min_prior_iou={self.min_prior_iou}"))
        return MaskResult(mask * np.uint8(255))

    def _difference(self, source, target, region, prior, long_side) -> np.ndarray:
        """0/1 mask of the differing pixels in the region, parts touching the prior only, closed and filled."""
        diff = cv2.absdiff(cv2.GaussianBlur(source, _BLUR, 0), cv2.GaussianBlur(target, _BLUR, 0)).max(axis=2)
        differs = ((diff > self.diff_threshold) & (region > 0)).astype(np.uint8)
        differs = cv2.morphologyEx(differs, cv2.MORPH_CLOSE, disk(round(self.close_radius * long_side)))
        _, components = cv2.connectedComponents(differs, connectivity=8)
        touching = np.unique(components[(prior > 0) & (differs > 0)])
        return fill_holes(np.isin(components, touching[touching > 0]).astype(np.uint8))

    def _grabcut(self, source, mask, region) -> np.ndarray:
        """GrabCut seeded by the difference mask: sure object where it survives erosion, sure background outside the region."""
        seeds = np.full(mask.shape, cv2.GC_BGD, np.uint8)
        seeds[region > 0] = cv2.GC_PR_BGD
        seeds[mask > 0] = cv2.GC_PR_FGD
        seeds[cv2.erode(mask, disk(2)) > 0] = cv2.GC_FGD
        if not np.isin(seeds, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
            return mask  # the mask fills the whole search region: nothing to learn the background from
        background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(source, seeds, None, background, foreground, self.grabcut_iterations, cv2.GC_INIT_WITH_MASK)
        return fill_holes(((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.uint8))
