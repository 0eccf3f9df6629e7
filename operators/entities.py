"""The entity bank's per-entity work: quality checks and cutting an entity (pixels + mask) out of its image.

Checks run cheapest first: geometry from the annotation (area ratio, box side) on every segment,
before any mask is decoded; the mask decode, the shape checks (fragmentation, truncation at the
image border) and the crop happen once, when an entity is first needed (``materialize``): a group
offers far more candidates than its backgrounds can use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pydantic import Field

from ..dataset import Reject
from .annotations import Segment, segment_crop
from .codecs import BadInput
from .params import Params


class EntityLimits(Params):
    """Which segments make usable entities."""

    min_area_ratio: float = Field(0.05, ge=0, le=1, description="smallest mask area / source image area")
    max_area_ratio: float = Field(0.95, ge=0, le=1, description="largest mask area / source image area")
    min_box_side: int = Field(32, ge=1, description="shortest side of the entity's box, px")
    min_main_component: float = Field(
        0.8, ge=0, le=1, description="fragmentation: largest connected part / mask area, at least"
    )
    max_border_contact: float = Field(
        0.2, ge=0, le=1, description="truncation: share of the box perimeter on the image border, at most"
    )
    # Objectness of class-agnostic masks (SA-1B): what is not a whole object goes before any model runs.
    max_inside_larger: float = Field(
        1.0, ge=0, le=1,
        description="part of a whole: share of the mask inside a larger candidate of the same image, at most (1: off)",
    )
    min_box_fill: float = Field(0.0, ge=0, le=1, description="mask area / box area, at least (a mostly empty box: not one object)")
    min_textured: float = Field(
        0.0, ge=0, le=1, description="share of the mask's pixels on an edge or texture (gradient >= 16/255), at least (flat wall, sky: 0)"
    )
    # SmartEraser drops classes with too few surviving entities; a streamed run cannot wait for the survivors,
    # so the count is of the class's rows in the split's csv (before any check).
    min_class_entities: int = Field(0, ge=0, description="Open Images: classes with fewer masks in their split are dropped (rare_class)")

    ORDERED = (("min_area_ratio", "max_area_ratio", True),)


@dataclass
class Entity:
    """One object of a source image, to be pasted elsewhere; its pixels are cut on first use."""

    id: str  # "<unit>/<record>#<segment index>"
    record: str  # "<unit>/<record>" of the source image: never pasted back into it
    segment: Segment
    area_ratio: float  # mask area / source image area
    source: np.ndarray | None = None  # the decoded source image (BGR); None once the entity proved unusable
    ids: np.ndarray | None = None  # panoptic: the source's segment-id map, until the crop is cut
    pixels: np.ndarray | None = None  # BGR crop of the entity's box (a view into the source image)
    mask: np.ndarray | None = None  # uint8 0/1 mask of the same crop: the entity's alpha
    scores: dict[str, float] = field(default_factory=dict)
    model_inputs: dict[str, np.ndarray] | None = None  # what a scorer's model sees, prepared in the CPU task
    pixel_scale: float = 1.0  # source pixels per annotated pixel, per side (< 1 for a reduced decode)
    bounds: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) of the crop in the source, once cut

    def __getstate__(self) -> dict:
        """Pickled without ``pixels`` when it is the cut view: pickle would copy it whole (a full-resolution
        group's crops came to ~300 MB on the way to a model stage); rebuilt from ``source`` (shared with its
        background, so it travels once) and ``bounds`` when loaded. Pixels given directly travel as they are."""
        return self.__dict__ | {"pixels": None} if self._cut_from_source() else self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._cut_from_source():
            x0, y0, x1, y1 = self.bounds
            self.pixels = self.source[y0:y1, x0:x1]

    def _cut_from_source(self) -> bool:
        return self.bounds is not None and self.source is not None

    @property
    def category(self) -> str | None:
        return self.segment.category

    @property
    def area(self) -> float:
        """Mask area in the pixels the entity is cut from."""
        return self.segment.area * self.pixel_scale ** 2


def materialize(entity: Entity, limits: EntityLimits) -> Reject | None:
    """Decode the mask, run the shape checks and cut the crop (once); why not, if unusable."""
    if entity.mask is not None:
        return None
    height, width = entity.source.shape[:2]
    try:
        crop, bounds = segment_crop(entity.segment, entity.ids, (height, width))
    except BadInput as bad:
        return bad.reject
    rejected = shape_reject(crop, bounds, height, width, limits)
    if rejected is None:
        x0, y0, x1, y1 = entity.bounds = tuple(int(v) for v in bounds)
        entity.pixels, entity.mask = entity.source[y0:y1, x0:x1], crop
        if limits.min_textured > 0:
            share = entity.scores["textured"] = textured_share(entity.pixels, crop)
            if share < limits.min_textured:
                rejected = Reject.because("flat_texture", f"{share:.2f} of the mask is edge or texture < {limits.min_textured}")
                entity.pixels = entity.mask = entity.bounds = None
    entity.ids = None
    if rejected:
        entity.source = None
    return rejected


def geometry_reject(segment: Segment, height: int, width: int, limits: EntityLimits) -> Reject | None:
    """Area-ratio and box-size checks on the annotation alone; why the segment is unusable, or None."""
    ratio = segment.area / float(height * width)
    if ratio < limits.min_area_ratio:
        return Reject.because("area_too_small", f"mask covers {ratio:.4f} of the image < {limits.min_area_ratio}")
    if ratio > limits.max_area_ratio:
        return Reject.because("area_too_large", f"mask covers {ratio:.4f} of the image > {limits.max_area_ratio}")
    side = min(segment.box[2], segment.box[3])
    if side < limits.min_box_side:
        return Reject.because("bbox_too_small", f"bbox side {side:.0f}px < {limits.min_box_side}px")
    fill = segment.area / max(1.0, segment.box[2] * segment.box[3])
    if fill < limits.min_box_fill:
        return Reject.because("sparse_box", f"mask fills {fill:.2f} of its box < {limits.min_box_fill}")
    return None


def nested_rejects(segments: list[Segment], max_inside: float) -> dict[int, Reject]:
    """Parts of a whole: each segment lying mostly (> `max_inside` of its area) inside a larger one of the
    same list (SA-1B nests whole / part / subpart masks), by segment index. From the RLEs, no decode; only
    pairs whose boxes meet are compared. The wholes stay, so an object is never lost with its parts."""
    rled = [s for s in segments if s.rle is not None]
    if max_inside >= 1.0 or len(rled) < 2:
        return {}
    boxes = np.array([s.box for s in rled], np.float64)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
    meets = (np.minimum(x1[:, None], x1) > np.maximum(x0[:, None], x0)) & (np.minimum(y1[:, None], y1) > np.maximum(y0[:, None], y0))
    areas = np.array([s.area for s in rled])
    larger = areas[None, :] > areas[:, None]
    found = {}
    for i, segment in enumerate(rled):
        others = np.flatnonzero(meets[i] & larger[i])
        if not len(others):
            continue
        inside = mask_utils.iou([segment.rle], [rled[j].rle for j in others], [1] * len(others))[0]  # crowd: |a∩b| / |a|
        best = int(np.argmax(inside))
        if inside[best] > max_inside:
            found[segment.index] = Reject.because(
                "part_of_larger", f"{inside[best]:.2f} of the mask lies inside segment {rled[others[best]].index} > {max_inside}")
    return found


def textured_share(pixels: np.ndarray, mask: np.ndarray) -> float:
    """Share of the mask's pixels where the image has an edge or texture (Sobel magnitude >= 16 on 0..255 grey),
    on the crop area-averaged to ~64k pixels like the shape checks."""
    factor = _coarse_factor(mask.shape)
    grey = cv2.cvtColor(_area_reduced(pixels, factor, cv2.BORDER_REPLICATE), cv2.COLOR_BGR2GRAY).astype(np.float32)
    inside = _area_reduced(mask * np.uint8(255), factor, cv2.BORDER_CONSTANT) >= 128
    magnitude = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    return float((magnitude[inside] >= 16 * 4).mean()) if inside.any() else 0.0  # a 3x3 Sobel scales gradients by 4


_CC_PIXELS = 1 << 16


def _coarse_factor(shape: tuple[int, ...]) -> int:
    """The whole factor per side that brings an image of `shape` to at most ~64k pixels (1: it is that small)."""
    return max(1, math.ceil(math.sqrt(shape[0] * shape[1] / _CC_PIXELS)))


def _area_reduced(image: np.ndarray, factor: int, border: int) -> np.ndarray:
    """`image` averaged over `factor` x `factor` blocks, its right and bottom edges padded (`border`) to whole
    blocks: a whole factor takes OpenCV's fast area path, ~4x a fractional one on SA-1B-sized masks."""
    if factor == 1:
        return image
    height, width = image.shape[:2]
    padded = cv2.copyMakeBorder(image, 0, -height % factor, 0, -width % factor, border, value=0)
    return cv2.resize(padded, (padded.shape[1] // factor, padded.shape[0] // factor), interpolation=cv2.INTER_AREA)


def _coarse(crop: np.ndarray) -> np.ndarray:
    """The crop area-averaged to at most ~64k pixels: connected parts of a large mask are found
    ~30x faster at that scale, and parts too small to survive it cannot change the main share much."""
    factor = _coarse_factor(crop.shape)
    if factor == 1:
        return crop
    small = (_area_reduced(crop * np.uint8(255), factor, cv2.BORDER_CONSTANT) >= 128).astype(np.uint8)
    return small if small.any() else crop


def shape_reject(
    crop: np.ndarray, bounds: tuple[int, int, int, int], height: int, width: int, limits: EntityLimits
) -> Reject | None:
    """Fragmentation and border-truncation checks on a decoded 0/1 mask crop."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(_coarse(crop), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    main = areas.max() / areas.sum()
    if main < limits.min_main_component:
        return Reject.because("fragmented", f"largest of {count - 1} parts holds {main:.2f} of the mask < {limits.min_main_component}")
    x0, y0, x1, y1 = bounds
    on_border = (
        (int(crop[0].sum()) if y0 == 0 else 0)
        + (int(crop[-1].sum()) if y1 == height else 0)
        + (int(crop[:, 0].sum()) if x0 == 0 else 0)
        + (int(crop[:, -1].sum()) if x1 == width else 0)
    )
    contact = on_border / (2.0 * ((x1 - x0) + (y1 - y0)))
    if contact > limits.max_border_contact:
        return Reject.because("truncated_at_border", f"{contact:.2f} of the bbox perimeter lies on the image border > {limits.max_border_contact}")
    return None
