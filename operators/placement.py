"""Where and how large an entity is pasted: size matching, then a position in R1 ∩ R2.

R1: the pasted box buries no existing object (for every instance box, overlap / that box's area
stays under a bound; optionally at least one instance is touched enough to sit "next to" it; the
box centre stays out of a border band and, optionally, out of every instance box). R2: the box lies inside the
image (fully, by default). Both are evaluated exactly on a grid of candidate top-left corners, at
scales 1, 1/2, 1/3, 1/4 of the matched size, and one feasible corner is drawn with the caller's RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, field_validator

from .params import Params
from .backgrounds import Instance


class PlacementParams(Params):
    size_jitter: float = Field(0.2, ge=0, lt=1, description="matched area is scaled by U(1-j, 1+j)")
    min_paste_area_ratio: float = Field(0.05, ge=0, le=1, description="pasted mask area / image area, at least")
    max_paste_area_ratio: float = Field(0.5, ge=0, le=1, description="pasted mask area / image area, at most")
    max_upscale: float = Field(
        2.0, ge=1, description="the entity's pixels are enlarged at most this much per side: a larger matched size is "
        "cut to it, and a paste the floor would need enlarged further is a reject (upscale_limit)",
    )
    max_instance_overlap: float = Field(
        0.5, ge=0, le=1, description="R1: overlap with an instance box / that box's area, at most"
    )
    min_instance_overlap: float = Field(
        0.0, ge=0, le=1, description="R1: the largest such overlap, at least (0: no lower bound)"
    )
    centre_outside_instances: bool = Field(
        False,
        description="R1: the pasted box centre is also outside every instance box (the SmartEraser release's "
        "rule; never satisfiable on SA-1B's masks, which tile the whole image)",
    )
    border_band: float = Field(0.2, ge=0, lt=0.5, description="R1: the centre stays this share of W/H from the edges")
    min_inside_fraction: float = Field(1.0, gt=0, le=1, description="R2: share of the pasted box inside the image")
    scales: tuple[float, ...] = Field((1.0, 1 / 2, 1 / 3, 1 / 4), description="fallback scales, tried in order")
    grid: int = Field(64, ge=2, le=1024, description="candidate positions per axis")
    max_rotation_deg: float = Field(0.0, ge=0, le=180, description="random rotation in [-r, r] degrees")

    @field_validator("scales")
    @classmethod
    def _scales(cls, scales):
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError("scales must be a non-empty list of values in (0, 1]")
        return scales

    ORDERED = (("min_paste_area_ratio", "max_paste_area_ratio", False), ("min_instance_overlap", "max_instance_overlap", False))


@dataclass(frozen=True)
class Placement:
    x: int  # top-left corner of the pasted box; negative or past the edge only when R2 allows it
    y: int
    width: int
    height: int
    scale: float  # the fallback scale that found room
    candidates: int  # feasible grid positions at that scale
    max_overlap: float  # largest overlap / instance-box area at the chosen position


def covered_fraction(instances: list[Instance], height: int, width: int, cells: int = 128) -> float:
    """Share of the image covered by the union of instance boxes (rasterised on a coarse grid)."""
    if not instances:
        return 0.0
    grid = np.zeros((cells, cells), bool)
    for inst in instances:
        x, y, w, h = inst.box
        grid[int(y / height * cells) : int(np.ceil((y + h) / height * cells)), int(x / width * cells) : int(np.ceil((x + w) / width * cells))] = True
    return float(grid.mean())


def size_target(
    entity_area_ratio: float,
    category: str | None,
    instances: list[Instance],
    height: int,
    width: int,
    params: PlacementParams,
    rng: np.random.Generator,
) -> tuple[float, str]:
    """Mask area (px) to give the entity, and which rule chose it.

    Same-category instances of the background set the size; else the background's instances of any
    kind at least the floor's size (class-agnostic SA-1B: most of its masks are parts, smaller than any
    paste, and drawing among them put nine pastes in ten at the floor); else the entity keeps its share of
    its source image. The result is capped by half the image area free of instances and floored at
    ``min_paste_area_ratio``.
    """
    image_area = float(height * width)
    floor = params.min_paste_area_ratio * image_area
    same = [i for i in instances if category is not None and i.category == category]
    pasteable = [i for i in instances if i.area >= floor]
    if same:
        base, rule = same[rng.integers(len(same))].area, "same_category"
    elif pasteable:
        base, rule = pasteable[rng.integers(len(pasteable))].area, "background_instances"
    else:
        base, rule = entity_area_ratio * image_area, "source_scale"
    area = base * rng.uniform(1 - params.size_jitter, 1 + params.size_jitter)
    free = 1.0 - covered_fraction(instances, height, width)
    cap = min(params.max_paste_area_ratio, free / 2) * image_area
    return float(max(min(area, cap), floor)), rule


def _axis(lo: int, hi: int, grid: int) -> np.ndarray:
    return np.unique(np.linspace(lo, hi, min(grid, hi - lo + 1)).round().astype(np.int64))


def feasible_positions(
    box_w: int, box_h: int, height: int, width: int, instances: list[Instance], params: PlacementParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate corners xs, ys and, on the (ys, xs) grid, the R1 ∩ R2 mask and the max overlap."""
    f = params.min_inside_fraction
    x_lo, x_hi = -int((1 - f) * box_w), width - int(np.ceil(f * box_w))
    y_lo, y_hi = -int((1 - f) * box_h), height - int(np.ceil(f * box_h))
    if x_hi < x_lo or y_hi < y_lo:
        empty = np.zeros((0, 0), bool)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty.astype(float)
    xs, ys = _axis(x_lo, x_hi, params.grid), _axis(y_lo, y_hi, params.grid)
    inside_x = np.clip(np.minimum(xs + box_w, width) - np.maximum(xs, 0), 0, None)
    inside_y = np.clip(np.minimum(ys + box_h, height) - np.maximum(ys, 0), 0, None)
    ok = np.outer(inside_y, inside_x) >= f * box_w * box_h - 1e-6  # R2
    cx, cy = xs + box_w / 2, ys + box_h / 2
    band_x, band_y = params.border_band * width, params.border_band * height
    ok &= np.outer((cy >= band_y) & (cy <= height - band_y), (cx >= band_x) & (cx <= width - band_x))
    overlap = np.zeros(ok.shape)
    if instances:
        boxes = np.array([i.box for i in instances], float)
        bx0, by0 = boxes[:, 0:1], boxes[:, 1:2]
        bx1, by1 = bx0 + boxes[:, 2:3], by0 + boxes[:, 3:4]
        ox = np.clip(np.minimum(xs + box_w, bx1) - np.maximum(xs, bx0), 0, None)  # (N, nx)
        oy = np.clip(np.minimum(ys + box_h, by1) - np.maximum(ys, by0), 0, None)  # (N, ny)
        areas = np.maximum(boxes[:, 2] * boxes[:, 3], 1.0)
        # divided before the outer product: a division over (N, ny, nx) cost ~10x the rest of this function
        overlap = ((oy / areas[:, None])[:, :, None] * ox[:, None, :]).max(axis=0)
        ok &= overlap <= params.max_instance_overlap
        if params.min_instance_overlap > 0:
            ok &= overlap >= params.min_instance_overlap
        if params.centre_outside_instances:
            in_x = (cx >= bx0) & (cx <= bx1)
            in_y = (cy >= by0) & (cy <= by1)
            ok &= ~(in_y[:, :, None] & in_x[:, None, :]).any(axis=0)
    return xs, ys, ok, overlap


def choose_position(
    box_w: int,
    box_h: int,
    height: int,
    width: int,
    instances: list[Instance],
    params: PlacementParams,
    rng: np.random.Generator,
    min_scale: float = 0.0,
) -> Placement | None:
    """Draw a corner from R1 ∩ R2, trying the fallback scales (not below `min_scale`); None if all are empty."""
    for scale in params.scales:
        if scale < min_scale and scale != params.scales[0]:
            continue
        w, h = max(1, round(box_w * scale)), max(1, round(box_h * scale))
        xs, ys, ok, overlap = feasible_positions(w, h, height, width, instances, params)
        rows, cols = np.nonzero(ok)
        if rows.size:
            pick = rng.integers(rows.size)
            r, c = rows[pick], cols[pick]
            return Placement(int(xs[c]), int(ys[r]), w, h, scale, int(rows.size), float(overlap[r, c]))
    return None
