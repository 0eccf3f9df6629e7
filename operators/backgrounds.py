"""Backgrounds: which images may receive a pasted entity, and the instances they already hold."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from ..dataset import Reject
from .annotations import Segment
from .codecs import resample
from .params import Params


class BackgroundParams(Params):
    """Background selection (the defaults admit COCO/COCONut, 640 px long side, and SA-1B, 1500 px short side)."""

    min_short_side: int = Field(256, ge=1, description="shortest image side, px")
    max_aspect_ratio: float = Field(3.0, ge=1, description="long side / short side, at most")
    resize_short_side: int | None = Field(
        None, ge=64,
        description="resize backgrounds to this short side before pasting (null: keep size); JPEGs are then decoded "
        "at the smallest DCT scale keeping it, entities cut at that scale",
    )
    min_instance_area_ratio: float = Field(
        0.001, ge=0, le=1, description="segments smaller than this share of the image are not instances"
    )
    max_instance_area_ratio: float = Field(
        0.4, ge=0, le=1,
        description="class-agnostic (SA-1B) boxes covering this share of the image or more are stuff (walls, sky), ignored; "
        "a classed thing (panoptic, Open Images) is an object at any size",
    )

    ORDERED = (("min_instance_area_ratio", "max_instance_area_ratio", True),)


@dataclass(frozen=True)
class Instance:
    """An object already present in an image: its box (x, y, w, h in px), mask area and category."""

    box: tuple[float, float, float, float]
    area: float
    category: str | None = None

    def scaled(self, sx: float, sy: float) -> "Instance":
        x, y, w, h = self.box
        return Instance((x * sx, y * sy, w * sx, h * sy), self.area * sx * sy, self.category)


@dataclass
class Background:
    record: str  # "<unit>/<record>"
    image: np.ndarray  # BGR
    instances: list[Instance]
    exif_turned: bool = False  # the stored pixels were turned upright to fit the annotations (codecs.orient)
    categories: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.categories = {i.category for i in self.instances if i.category}


def background_reject(height: int, width: int, params: BackgroundParams) -> Reject | None:
    short, long = min(height, width), max(height, width)
    if short < params.min_short_side:
        return Reject.because("background_too_small", f"short side {short}px < {params.min_short_side}px")
    if long / short > params.max_aspect_ratio:
        return Reject.because("background_aspect", f"aspect ratio {long / short:.2f} > {params.max_aspect_ratio}")
    return None


def instances_of(segments: list[Segment], height: int, width: int, params: BackgroundParams) -> list[Instance]:
    """Objects of an image for the overlap rule: things that are not tiny. Without a class, a mask whose box
    covers most of the image is taken for stuff; with one, it is the image's main object, never to be buried."""
    image_area = float(height * width)
    instances = []
    for seg in segments:
        if not seg.thing or seg.area / image_area < params.min_instance_area_ratio:
            continue
        if seg.category is None and seg.box[2] * seg.box[3] / image_area >= params.max_instance_area_ratio:
            continue
        instances.append(Instance(box=seg.box, area=seg.area, category=seg.category))
    return instances


def resize_background(background: Background, short_side: int) -> Background:
    """Scale a background and its instances so that its short side is `short_side`."""
    height, width = background.image.shape[:2]
    scale = short_side / min(height, width)
    size = (round(width * scale), round(height * scale))
    image = resample(background.image, size)
    instances = [i.scaled(scale, scale) for i in background.instances]
    return Background(background.record, image, instances, background.exif_turned)
