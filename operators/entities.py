"""The entity bank's per-entity work: quality checks and cutting an entity (pixels + mask) out of its image.

Checks run cheapest first: geometry from the annotation (area ratio, box side) on every segment,
before any mask is decoded; the mask decode, the shape checks (fragmentation, truncation at the
image border) and the crop happen once, when an entity is first needed (``materialize``): a group
offers far more candidates than its backgrounds can use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import Field

from ..dataset import Reject
from .annotations import Segment, decode_rle_crop, panoptic_crop
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

    ORDERED = (("min_area_ratio", "max_area_ratio", True),)


@dataclass
class Entity:
    """One object of a source image, to be pasted elsewhere; its pixels are cut on first use."""

    id: str  # "<unit>/<record>#<segment index>"
    record: str  # "<unit>/<record>" of the source image: never pasted back into it
    segment: Segment
    area_ratio: float  # mask area / source image area
    source: np.ndarray | None = None  # the decoded source image (BGR) until the crop is cut
    ids: np.ndarray | None = None  # panoptic: the source's segment-id map, until the crop is cut
    pixels: np.ndarray | None = None  # BGR crop of the entity's box (a view into the source image)
    mask: np.ndarray | None = None  # uint8 0/1 mask of the same crop: the entity's alpha
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def category(self) -> str | None:
        return self.segment.category

    @property
    def area(self) -> float:
        return self.segment.area


def materialize(entity: Entity, limits: EntityLimits) -> Reject | None:
    """Decode the mask, run the shape checks and cut the crop (once); why not, if unusable."""
    if entity.mask is not None:
        return None
    height, width = entity.source.shape[:2]
    try:
        if entity.ids is None:
            crop, bounds = decode_rle_crop(entity.segment.rle, height, width)
        else:
            crop, bounds = panoptic_crop(entity.ids, entity.segment)
    except BadInput as bad:
        return bad.reject
    rejected = shape_reject(crop, bounds, height, width, limits)
    if rejected is None:
        x0, y0, x1, y1 = bounds
        entity.pixels, entity.mask = entity.source[y0:y1, x0:x1], crop
    entity.source = entity.ids = None
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
    return None


_CC_PIXELS = 1 << 16


def _coarse(crop: np.ndarray) -> np.ndarray:
    """The crop area-averaged to at most ~64k pixels: connected parts of a large mask are found
    ~30x faster at that scale, and parts too small to survive it cannot change the main share much."""
    if crop.size <= _CC_PIXELS:
        return crop
    factor = float(np.sqrt(crop.size / _CC_PIXELS))
    size = (max(1, round(crop.shape[1] / factor)), max(1, round(crop.shape[0] / factor)))
    small = (cv2.resize(crop * np.uint8(255), size, interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8)
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
