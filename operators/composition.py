"""Composition: paste one entity into one background, and pair a group's entities with its backgrounds.

An entity is never pasted into its own source image; when no entity finds room (R1 ∩ R2 empty at
every scale), the background is skipped with the reason instead of forcing a bad paste.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np
from pydantic import Field

from ..dataset import Reject
from .backgrounds import Background
from .blending import BlendParams, entity_alpha, edge_px, paste, place
from .codecs import resample
from .entities import Entity, EntityLimits, materialize
from .mask_enhance import MaskEnhanceParams, random_enhance
from .params import Params
from .placement import PlacementParams, choose_position, size_target
from .quality import PasteQualityParams, paste_signals, perceptual_hash, quality_reject


class PairingParams(Params):
    pairs_per_background: int = Field(1, ge=1, le=64, description="triplets made from each background")
    entity_attempts: int = Field(3, ge=1, le=100, description="entities tried per triplet before giving up")
    max_entity_uses: int = Field(2, ge=1, description="times one entity may be pasted")
    prefer_same_category: bool = Field(True, description="prefer entities whose category the background holds")


@dataclass
class Composite:
    source: np.ndarray  # BGR
    alpha: np.ndarray  # full-size uint8 blending alpha
    mask: np.ndarray  # full-size uint8 0/1 training mask (after mask enhancement)
    meta: dict


@dataclass
class Pair:
    background: Background
    entity: Entity
    index: int  # triplet number within its background
    composite: Composite


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends only on the seed and the given ids (never on scheduling)."""
    words = [int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "little") for n in names]
    return np.random.default_rng([seed, *words])


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate an image (any channel count) about its centre on an expanded canvas, zero outside."""
    h, w = image.shape[:2]
    # Pixel centres run from 0 to w-1, so the centre is (w-1)/2: (w/2, h/2) would shift the crop by half a
    # pixel (blurring it) and push its last row or column off the canvas.
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    eps = 1e-6  # cos(90°) is 6e-17, not 0: without slack the canvas grows by a pixel
    new_w, new_h = int(np.ceil(h * sin + w * cos - eps)), int(np.ceil(h * cos + w * sin - eps))
    matrix[0, 2] += (new_w - w) / 2
    matrix[1, 2] += (new_h - h) / 2
    return cv2.warpAffine(image, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR, borderValue=0)


def compose_pair(
    background: Background,
    entity: Entity,
    placement: PlacementParams,
    blend: BlendParams,
    enhance: MaskEnhanceParams,
    rng: np.random.Generator,
    quality: PasteQualityParams = PasteQualityParams(),
) -> Composite | Reject:
    """Paste `entity` into `background`, or say why it cannot be done (no place, or a quality threshold)."""
    height, width = background.image.shape[:2]
    pixels, alpha = entity.pixels, entity.mask * np.uint8(255)
    angle = float(rng.uniform(-placement.max_rotation_deg, placement.max_rotation_deg)) if placement.max_rotation_deg else 0.0
    if angle:
        pixels, alpha = rotate(pixels, angle), rotate(alpha, angle)
    target_area, rule = size_target(entity.area_ratio, entity.category, background.instances, height, width, placement, rng)
    largest = entity.area * placement.max_upscale**2  # a blurred enlargement is a cue the eraser could learn
    if target_area > largest:
        floor = placement.min_paste_area_ratio * height * width
        if largest < floor:
            return Reject.because("upscale_limit", f"the {placement.min_paste_area_ratio} area floor needs the entity "
                                  f"enlarged {np.sqrt(floor / entity.area):.2f}x > max_upscale {placement.max_upscale}")
        target_area, rule = largest, "upscale_limit"
    scale = float(np.sqrt(target_area / entity.area))
    box_w, box_h = max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale))
    min_scale = float(np.sqrt(placement.min_paste_area_ratio * height * width / target_area))
    spot = choose_position(box_w, box_h, height, width, background.instances, placement, rng, min_scale)
    if spot is None:
        return Reject.because("no_position", f"R1 ∩ R2 is empty for a {box_w}x{box_h} box at scales {[round(s, 3) for s in placement.scales]}")
    size = (spot.width, spot.height)
    inside = (resample(alpha, size) >= 128).astype(np.uint8)
    area = int(inside.sum())
    if area == 0:
        return Reject.because("mask_vanished", f"entity vanished when resized to {spot.width}x{spot.height}")
    width_px = edge_px(area, blend)
    resized = resample(pixels, size)
    source, alpha = paste(background.image, resized, entity_alpha(resized, inside, width_px, blend), spot.x, spot.y)
    exact = place(inside, spot.x, spot.y, height, width)  # the object's outline (matting may leave 0s inside it)
    exact_area = cv2.countNonZero(exact)  # 0/1 masks: their sum, ~8x faster on a full-size one
    if exact_area == 0 or exact_area == exact.size:
        return Reject.because("degenerate_mask", f"pasted mask covers {exact_area} of {exact.size} px")
    mask, variant = random_enhance(exact, enhance, rng)
    x0, y0 = max(spot.x, 0), max(spot.y, 0)
    meta = {
        "paste": {
            "box": [x0, y0, min(spot.x + spot.width, width) - x0, min(spot.y + spot.height, height) - y0],
            "size_rule": rule,
            "target_area_ratio": round(target_area / (height * width), 5),
            "fallback_scale": round(spot.scale, 4),
            "scale": round(scale * spot.scale * entity.pixel_scale, 5),  # from the source image as stored
            "rotation_deg": round(angle, 3),
            "candidates": spot.candidates,
            "max_instance_overlap": round(spot.max_overlap, 4),
        },
        "mask": {
            "area_ratio": round(cv2.countNonZero(mask) / mask.size, 5),
            "object_area_ratio": round(exact_area / exact.size, 5),
            "variant": variant,
        },
        "blending": {"method": blend.method, "edge_px": round(width_px, 3)},
        "quality": paste_signals(source, alpha, (spot.x, spot.y, spot.width, spot.height)),
        "phash": perceptual_hash(entity.pixels, entity.mask),  # as cut: every paste of one entity shares it
    }
    same = [i.area for i in background.instances if entity.category and i.category == entity.category]
    if same:  # the pasted size against the objects of its category already in the image
        meta["quality"]["scale_vs_category"] = round(exact_area / float(np.median(same)), 4)
    return quality_reject(meta["quality"], quality) or Composite(source, alpha, mask, meta)


def pair_group(
    backgrounds: list[Background],
    entities: list[Entity],
    pairing: PairingParams,
    placement: PlacementParams,
    blend: BlendParams,
    enhance: MaskEnhanceParams,
    limits: EntityLimits,
    seed: int,
    rejects: list[Reject],
    quality: PasteQualityParams = PasteQualityParams(),
) -> Iterator[Pair]:
    """Yield each background's triplets, drawing entities from the other images of the group.

    Triplets come one at a time so that a group never holds more than one full-size composite.
    An entity is cut when first drawn; one that fails its shape checks is rejected and not drawn
    again. Rejects are appended to `rejects`.
    """
    uses: Counter[str] = Counter()
    unusable: set[str] = set()
    for background in backgrounds:
        rng = rng_for(seed, background.record)
        tried: set[str] = set()
        for index in range(pairing.pairs_per_background):
            failure = Reject.because("no_entity", "no entity from another image of the group is left")
            attempts = 0
            while attempts < pairing.entity_attempts:
                pool = [
                    e
                    for e in entities
                    if e.record != background.record and e.id not in tried and e.id not in unusable
                    and uses[e.id] < pairing.max_entity_uses
                ]
                if pairing.prefer_same_category and background.categories:
                    pool = [e for e in pool if e.category in background.categories] or pool
                if not pool:
                    break
                entity = pool[rng.integers(len(pool))]
                tried.add(entity.id)
                rejected = materialize(entity, limits)
                if rejected:  # a bad entity, not a failed placement: draw another
                    unusable.add(entity.id)
                    rejects.append(rejected.at(entity.id, "entity"))
                    continue
                attempts += 1
                result = compose_pair(background, entity, placement, blend, enhance, rng, quality)
                if isinstance(result, Composite):
                    uses[entity.id] += 1
                    failure = None
                    yield Pair(background, entity, index, result)
                    break
                failure = Reject.because(result.reason, f"{result.detail} (entity {entity.id})")
            if failure is not None:
                rejects.append(failure.at(f"{background.record}:{index}", "compose"))
