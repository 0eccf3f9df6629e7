"""composition: one paste (the source/target/mask contract) and pairing a group's entities with its backgrounds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pairmine.operators.annotations import Segment
from pairmine.operators.backgrounds import Background
from pairmine.operators.blending import BlendParams
from pairmine.operators.composition import (
    Composite,
    PairingParams,
    compose_pair,
    pair_group,
    rng_for,
    rotate,
)
from pairmine.operators.entities import Entity, EntityLimits
from pairmine.operators.mask_enhance import MaskEnhanceParams
from pairmine.operators.placement import PlacementParams
from pairmine.operators.quality import paste_signals
from pairmine.dataset import Reject
from pairmine.operators.backgrounds import Instance

H, W = 240, 320


def pairs_of(backgrounds, entities, pairing, placement, blend, enhance, seed, limits=EntityLimits()):
    """All triplets and rejects of pair_group (which yields triplets and appends rejects)."""
    rejects = []
    pairs = list(pair_group(backgrounds, entities, pairing, placement, blend, enhance, limits, seed, rejects))
    return pairs, rejects


PLACEMENT = PlacementParams()
CENTRE_OUTSIDE = PlacementParams(centre_outside_instances=True)  # with it, one central instance blocks every spot
BLEND = BlendParams()
EXACT = MaskEnhanceParams()
LOOSE = MaskEnhanceParams(modes=("exact", "dilate", "hull", "ellipse", "bbox", "brush"))


def picture(seed: int, height: int = H, width: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 40 * seed % 256)], -1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def make_entity(record: str, index: int = 0, category: str | None = None, size: int = 60, seed: int = 0) -> Entity:
    """A disk-shaped entity cut from a random picture; its source image is `record`."""
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), size // 2 - 1, 1, -1)
    area = float(mask.sum())
    seg = Segment(index=index, box=(0.0, 0.0, float(size), float(size)), area=area, category=category)
    return Entity(f"{record}#{index}", record, seg, area / (H * W), pixels=picture(seed + 100, size, size), mask=mask)


def make_background(record: str, instances=(), seed: int = 0) -> Background:
    return Background(record, picture(seed), list(instances))


def check_composite(composite: Composite, background: Background):
    """The output contract of one paste."""
    source, alpha, mask = composite.source, composite.alpha, composite.mask
    assert source.shape == background.image.shape and source.dtype == np.uint8
    assert alpha.shape == mask.shape == background.image.shape[:2]
    assert set(np.unique(mask)) <= {0, 1} and 0 < mask.sum() < mask.size
    changed = (source != background.image).any(axis=2)
    assert not changed[alpha == 0].any()  # outside the blended pixels, source == target exactly
    assert (mask[alpha > 0] == 1).all()  # the training mask covers every blended pixel
    assert changed.any()
    x, y, w, h = composite.meta["paste"]["box"]
    ys, xs = np.nonzero(alpha)
    assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h
    object_ratio = composite.meta["mask"]["object_area_ratio"]
    if composite.meta["blending"]["method"] == "feather":  # its alpha's support is the object's outline
        assert object_ratio == pytest.approx((alpha > 0).mean(), abs=1e-5)
    else:  # matting may leave alpha 0 on object pixels that look like the surround
        assert (alpha > 0).mean() <= object_ratio + 1e-5
    assert composite.meta["mask"]["area_ratio"] == pytest.approx(mask.mean(), abs=1e-5)


@pytest.mark.parametrize("method", ["feather", "matting"])
@pytest.mark.parametrize("enhance", [EXACT, LOOSE], ids=["exact", "loose"])
def test_compose_pair_contract(enhance, method):
    instances = [Instance((30.0, 40.0, 50.0, 60.0), 2000.0, "dog"), Instance((220.0, 150.0, 60.0, 50.0), 2200.0, "cat")]
    background = make_background("u/bg", instances)
    variants = set()
    for seed in range(12):
        blend = BlendParams(method=method)
        result = compose_pair(background, make_entity("u/src", category="dog"), PLACEMENT, blend, enhance, np.random.default_rng(seed))
        assert isinstance(result, Composite), result
        assert result.meta["blending"]["method"] == method
        check_composite(result, background)
        assert result.meta["paste"]["size_rule"] == "same_category"
        # the signals, computed around the paste only, are those of the whole images (the ring can reach an edge)
        assert {k: v for k, v in result.meta["quality"].items() if k != "scale_vs_category"} == paste_signals(result.source, result.alpha)
        variants.add(result.meta["mask"]["variant"])
        if result.meta["mask"]["variant"] == "exact" and method == "feather":
            np.testing.assert_array_equal(result.mask, result.alpha > 0)
    assert variants == {"exact"} if enhance is EXACT else len(variants) >= 3


def test_compose_pair_sizes_the_entity_to_the_matched_area():
    """No instances: the entity keeps its share of its source image (jitter 0), up to resampling."""
    placement = PlacementParams(size_jitter=0.0, min_paste_area_ratio=0.0)
    entity = make_entity("u/src", size=80)
    entity.area_ratio = 0.1  # as if cut from an image 10x its area
    result = compose_pair(make_background("u/bg"), entity, placement, BlendParams(feather_ratio=0.0), EXACT, np.random.default_rng(0))
    assert result.meta["paste"]["size_rule"] == "source_scale" and result.meta["paste"]["fallback_scale"] == 1.0
    assert (result.alpha > 0).sum() / (H * W) == pytest.approx(0.1, rel=0.05)


def test_an_entity_is_enlarged_at_most_max_upscale_per_side():
    """A small entity matched to a large instance is cut to max_upscale² its area; one the area floor would
    need enlarged further is a reject, not a blurred paste."""
    placement = PlacementParams(size_jitter=0.0, max_upscale=2.0)
    large = Instance((10.0, 10.0, 150.0, 150.0), 20000.0, "dog")
    entity = make_entity("u/src", category="dog", size=40)
    result = compose_pair(make_background("u/bg", [large]), entity, placement, BlendParams(method="feather", feather_ratio=0.0),
                          EXACT, np.random.default_rng(0))
    assert isinstance(result, Composite), result
    assert result.meta["paste"]["size_rule"] == "upscale_limit"
    assert result.meta["mask"]["object_area_ratio"] * H * W == pytest.approx(4 * entity.area, rel=0.05)
    assert compose_pair(make_background("u/bg", [large]), entity, placement.model_copy(update={"max_upscale": 8.0}), BLEND, EXACT,
                        np.random.default_rng(0)).meta["paste"]["size_rule"] == "same_category"
    tiny = make_entity("u/src", category="dog", size=20)  # 253 px: the 5 % floor (3,840 px) needs 3.9x
    result = compose_pair(make_background("u/bg", [large]), tiny, placement, BLEND, EXACT, np.random.default_rng(0))
    assert isinstance(result, Reject) and result.reason == "upscale_limit" and "3.90x" in result.detail


def test_compose_pair_with_rotation_keeps_the_contract():
    placement = PlacementParams(max_rotation_deg=45.0)
    background = make_background("u/bg")
    angles = set()
    for seed in range(6):
        result = compose_pair(background, make_entity("u/src"), placement, BLEND, EXACT, np.random.default_rng(seed))
        check_composite(result, background)
        angle = result.meta["paste"]["rotation_deg"]
        assert -45.0 <= angle <= 45.0
        angles.add(angle)
    assert len(angles) == 6


def test_compose_pair_rejects_when_r1_and_r2_are_empty():
    """An instance box over the whole admissible centre region: no position at any scale."""
    blocker = Instance((0.2 * W, 0.2 * H, 0.6 * W, 0.6 * H), 500.0)
    result = compose_pair(make_background("u/bg", [blocker]), make_entity("u/src"), CENTRE_OUTSIDE, BLEND, EXACT, np.random.default_rng(0))
    assert isinstance(result, Reject) and result.reason == "no_position" and result.detail


def test_compose_pair_is_deterministic():
    background = make_background("u/bg", [Instance((30.0, 40.0, 50.0, 60.0), 2000.0)])
    a = compose_pair(background, make_entity("u/src"), PLACEMENT, BLEND, LOOSE, np.random.default_rng(3))
    b = compose_pair(background, make_entity("u/src"), PLACEMENT, BLEND, LOOSE, np.random.default_rng(3))
    for field in ("source", "alpha", "mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.meta == b.meta


@pytest.mark.parametrize("shape", [(7, 11), (8, 12), (1, 5), (30, 17)])
@pytest.mark.parametrize("degrees, k", [(90, 1), (-90, -1), (180, 2), (0, 0)])
@pytest.mark.parametrize("channels", [(), (3,)])
def test_rotate_by_right_angles_is_exact(shape, degrees, k, channels):
    image = np.random.default_rng(0).integers(0, 256, shape + channels, dtype=np.uint8)
    np.testing.assert_array_equal(rotate(image, degrees), np.rot90(image, k))


@pytest.mark.parametrize("degrees", [17, 45, -60, 137])
def test_rotate_keeps_the_whole_crop(degrees):
    """An opaque alpha keeps its mass (bilinear resampling conserves it up to rounding) on a canvas
    of the rotated bounding-box size."""
    h, w = 30, 50
    out = rotate(np.full((h, w), 255, np.uint8), degrees)
    t = np.deg2rad(degrees)
    assert out.shape[:2] == (
        int(np.ceil(abs(w * np.sin(t)) + abs(h * np.cos(t)) - 1e-6)),
        int(np.ceil(abs(w * np.cos(t)) + abs(h * np.sin(t)) - 1e-6)),
    )
    assert out.sum() / 255 == pytest.approx(h * w, rel=0.02)


def test_rng_for_depends_only_on_seed_and_names():
    draw = lambda *a: rng_for(*a).integers(0, 2**31, 4).tolist()  # noqa: E731
    assert draw(0, "u/a") == draw(0, "u/a")
    assert len({tuple(draw(0, "u/a")), tuple(draw(1, "u/a")), tuple(draw(0, "u/b")), tuple(draw(0, "u/a", "x"))}) == 4


# --- pairing ---------------------------------------------------------------------------------------


def group(n: int = 4):
    records = [f"u/r{i}" for i in range(n)]
    backgrounds = [make_background(r, seed=i) for i, r in enumerate(records)]
    entities = [make_entity(r, index=j, seed=3 * i + j) for i, r in enumerate(records) for j in range(2)]
    return backgrounds, entities


def test_entities_are_never_pasted_into_their_own_source():
    backgrounds, entities = group()
    pairing = PairingParams(pairs_per_background=3, max_entity_uses=10)
    for seed in range(5):
        pairs, rejects = pairs_of(backgrounds, entities, pairing, PLACEMENT, BLEND, EXACT, seed)
        assert len(pairs) == 3 * len(backgrounds) and rejects == []
        for pair in pairs:
            assert pair.entity.record != pair.background.record


def test_a_background_with_only_its_own_entities_gets_no_entity():
    backgrounds, entities = group(2)
    own = [e for e in entities if e.record == "u/r0"]
    pairs, rejects = pairs_of(backgrounds[:1], own, PairingParams(), PLACEMENT, BLEND, EXACT, 0)
    assert pairs == []
    assert [(r.input, r.stage, r.reason) for r in rejects] == [("u/r0:0", "compose", "no_entity")]


def test_max_entity_uses_is_respected():
    backgrounds = [make_background(f"u/bg{i}", seed=i) for i in range(5)]
    entity = make_entity("u/src")
    for uses in (1, 2, 3):
        pairs, rejects = pairs_of(backgrounds, [entity], PairingParams(max_entity_uses=uses), PLACEMENT, BLEND, EXACT, 0)
        assert len(pairs) == uses
        assert len(rejects) == 5 - uses and {r.reason for r in rejects} == {"no_entity"}


def test_an_entity_is_used_once_per_background():
    backgrounds = [make_background("u/bg")]
    pairs, rejects = pairs_of(backgrounds, [make_entity("u/src")], PairingParams(pairs_per_background=3, max_entity_uses=10), PLACEMENT, BLEND, EXACT, 0)
    assert len(pairs) == 1 and [r.input for r in rejects] == ["u/bg:1", "u/bg:2"]


def test_no_position_becomes_a_compose_reject():
    blocker = Instance((0.2 * W, 0.2 * H, 0.6 * W, 0.6 * H), 500.0)
    backgrounds = [make_background("u/bg", [blocker])]
    entities = [make_entity("u/a"), make_entity("u/b")]
    pairs, rejects = pairs_of(backgrounds, entities, PairingParams(entity_attempts=5), CENTRE_OUTSIDE, BLEND, EXACT, 0)
    assert pairs == []
    assert len(rejects) == 1 and (rejects[0].input, rejects[0].stage, rejects[0].reason) == ("u/bg:0", "compose", "no_position")
    assert "u/a#0" in rejects[0].detail or "u/b#0" in rejects[0].detail


def test_same_category_entities_are_preferred():
    backgrounds = [make_background("u/bg", [Instance((30.0, 40.0, 50.0, 60.0), 2000.0, "dog")])]
    entities = [make_entity("u/a", 0, "cat"), make_entity("u/b", 0, "dog"), make_entity("u/c", 0, "cat")]
    for seed in range(10):
        pairs, _ = pairs_of(backgrounds, entities, PairingParams(), PLACEMENT, BLEND, EXACT, seed)
        assert [p.entity.category for p in pairs] == ["dog"]
    picked = {pairs_of(backgrounds, entities, PairingParams(prefer_same_category=False), PLACEMENT, BLEND, EXACT, s)[0][0].entity.id for s in range(20)}
    assert len(picked) > 1


def test_pairing_is_deterministic_and_seed_dependent():
    backgrounds, entities = group()
    pairing = PairingParams(pairs_per_background=2)

    def run(seed):
        pairs, rejects = pairs_of(backgrounds, entities, pairing, PLACEMENT, BLEND, LOOSE, seed)
        return [(p.background.record, p.index, p.entity.id, p.composite.source.tobytes(), p.composite.mask.tobytes()) for p in pairs], rejects

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_background_result_does_not_depend_on_the_other_backgrounds():
    """Each background draws from its own generator: dropping another background changes nothing for it
    (with unlimited uses, so the shared use counter cannot interfere)."""
    backgrounds, entities = group()
    pairing = PairingParams(max_entity_uses=100)
    full, _ = pairs_of(backgrounds, entities, pairing, PLACEMENT, BLEND, EXACT, 1)
    alone, _ = pairs_of(backgrounds[2:3], entities, pairing, PLACEMENT, BLEND, EXACT, 1)
    (mine,) = [p for p in full if p.background.record == "u/r2"]
    assert mine.entity.id == alone[0].entity.id
    np.testing.assert_array_equal(mine.composite.source, alone[0].composite.source)
