"""entities: geometry checks on the annotation, shape checks on the decoded crop, and the RGBA cut."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pairmine.operators.annotations import Segment
from pairmine.operators.entities import Entity, EntityLimits, _coarse, geometry_reject, materialize, nested_rejects, shape_reject

H, W = 200, 300
LIMITS = EntityLimits()  # 0.05 <= area ratio <= 0.95, box side >= 32, main part >= 0.8, border contact <= 0.2


def segment(area_ratio: float, box_w: float = 100, box_h: float = 100) -> Segment:
    return Segment(index=0, box=(10.0, 10.0, box_w, box_h), area=area_ratio * H * W)


@pytest.mark.parametrize(
    "area_ratio, box_w, box_h, reason",
    [
        (0.049, 100, 100, "area_too_small"),
        (0.05, 100, 100, None),  # the bound itself passes
        (0.5, 100, 100, None),
        (0.95, 290, 199, None),
        (0.951, 290, 199, "area_too_large"),
        (0.2, 31, 200, "bbox_too_small"),
        (0.2, 200, 31.9, "bbox_too_small"),
        (0.2, 32, 32, None),
    ],
)
def test_geometry_reject(area_ratio, box_w, box_h, reason):
    result = geometry_reject(segment(area_ratio, box_w, box_h), H, W, LIMITS)
    assert (result.reason if result else None) == reason
    if result:
        assert result.detail  # a detail for the rejects table


def test_geometry_reject_follows_the_limits():
    loose = EntityLimits(min_area_ratio=0.001, max_area_ratio=0.999, min_box_side=1)
    assert geometry_reject(segment(0.002, 2, 2), H, W, loose) is None
    assert geometry_reject(segment(0.002, 2, 2), H, W, LIMITS).reason == "area_too_small"


@pytest.mark.parametrize(
    "values", [{"min_area_ratio": 0.5, "max_area_ratio": 0.5}, {"min_area_ratio": 0.6, "max_area_ratio": 0.4}, {"min_box_side": 0}, {"foo": 1}]
)
def test_entity_limits_reject_bad_values(values):
    with pytest.raises(ValidationError):
        EntityLimits(**values)


def disk(h: int, w: int, cx: int, cy: int, r: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (cx, cy), r, 1, -1)
    return mask


def crop_of(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return mask[y0:y1, x0:x1].copy(), (int(x0), int(y0), int(x1), int(y1))


def test_compact_interior_mask_passes_shape_checks():
    crop, bounds = crop_of(disk(H, W, 150, 100, 40))
    assert shape_reject(crop, bounds, H, W, LIMITS) is None


@pytest.mark.parametrize("speck_ratio, fragmented", [(0.05, False), (0.2, False), (0.3, True), (1.0, True)])
def test_fragmentation_is_the_main_part_share(speck_ratio, fragmented):
    """Two separate squares: the main part holds 1 / (1 + speck_ratio) of the mask (bound 0.8)."""
    mask = np.zeros((H, W), np.uint8)
    mask[50:90, 50:90] = 1  # 1600 px
    side = int(round(np.sqrt(1600 * speck_ratio)))
    mask[120 : 120 + side, 150 : 150 + side] = 1
    crop, bounds = crop_of(mask)
    main = 1600 / mask.sum()
    assert (main < LIMITS.min_main_component) == fragmented
    result = shape_reject(crop, bounds, H, W, LIMITS)
    assert (result is not None and result.reason == "fragmented") == fragmented


@pytest.mark.parametrize("shape", [(1501, 1203), (401, 331), (2250, 1500)])
@pytest.mark.parametrize("speck_ratio, fragmented", [(0.1, False), (0.4, True)])
def test_large_masks_are_checked_on_a_copy_of_at_most_64k_pixels_with_the_full_size_verdict(shape, speck_ratio, fragmented):
    """A main blob and a speck in a crop whose sides are not multiples of the reduction: the reduced copy
    keeps both parts and their share of the mask, so the verdict is the full-size one."""
    h, w = shape
    mask = np.zeros((h + 20, w + 20), np.uint8)
    cv2.ellipse(mask, (w // 3, h // 2), (w // 4, h // 3), 0, 0, 360, 1, -1)
    side = int(np.sqrt(mask.sum() * speck_ratio))
    mask[h + 10 - side:h + 10, w + 10 - side:w + 10] = 1  # at the crop's bottom-right corner
    crop, bounds = crop_of(mask)
    small = _coarse(crop)
    assert small.size <= 1 << 16 and small.shape[0] < crop.shape[0]
    count, _, stats, _ = cv2.connectedComponentsWithStats(small, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    assert count == 3 and abs(areas.max() / areas.sum() - 1 / (1 + speck_ratio)) < 0.02
    result = shape_reject(crop, bounds, h + 20, w + 20, LIMITS)
    assert (result is not None and result.reason == "fragmented") == fragmented


def test_diagonal_touching_parts_are_one_component():
    """8-connectivity: squares that touch at a corner are one object, not fragments."""
    mask = np.zeros((H, W), np.uint8)
    mask[40:80, 40:80] = 1
    mask[80:120, 80:120] = 1
    crop, bounds = crop_of(mask)
    assert shape_reject(crop, bounds, H, W, LIMITS) is None


def border_contact(crop: np.ndarray, bounds, h: int, w: int) -> float:
    """Independent count: mask pixels lying on the image's outermost rows/columns / box perimeter."""
    x0, y0, x1, y1 = bounds
    full = np.zeros((h, w), np.uint8)
    full[y0:y1, x0:x1] = crop
    on_edge = full[0].sum() + full[-1].sum() + full[:, 0].sum() + full[:, -1].sum()
    return on_edge / (2.0 * ((x1 - x0) + (y1 - y0)))


@pytest.mark.parametrize(
    "name, make",
    [
        ("cut_by_left_edge", lambda: disk(H, W, 10, 100, 50)),  # chord of ~98 px on a 120+100 px box
        ("slightly_touching_top", lambda: disk(H, W, 150, 38, 40)),  # a few pixels on the top edge
        ("corner_quarter", lambda: disk(H, W, 0, 0, 60)),
        ("full_width_band", lambda: np.pad(np.ones((40, W), np.uint8), ((80, 80), (0, 0)))),
        ("interior", lambda: disk(H, W, 150, 100, 30)),
    ],
)
def test_border_truncation_is_the_share_of_the_box_perimeter_on_the_border(name, make):
    crop, bounds = crop_of(make())
    contact = border_contact(crop, bounds, H, W)
    result = shape_reject(crop, bounds, H, W, LIMITS)
    assert (result is not None and result.reason == "truncated_at_border") == (contact > LIMITS.max_border_contact)
    if name == "interior":
        assert contact == 0 and result is None
    if name in ("cut_by_left_edge", "corner_quarter"):
        assert result is not None  # the cases are built to cross the 0.2 bound


def test_border_contact_bound_is_configurable():
    crop, bounds = crop_of(disk(H, W, 10, 100, 50))
    assert shape_reject(crop, bounds, H, W, EntityLimits(max_border_contact=1.0)) is None


def test_materialize_cuts_pixels_and_mask_once_as_a_view_of_the_source():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    full = disk(H, W, 150, 100, 30)
    rle = mask_utils.encode(np.asfortranarray(full))
    rle["counts"] = rle["counts"].decode()
    seg = Segment(index=0, box=tuple(mask_utils.toBbox(rle)), area=float(full.sum()), rle=rle)
    entity = Entity("u/r#0", "u/r", seg, full.sum() / (H * W), source=image)
    assert materialize(entity, EntityLimits()) is None and entity.source is image
    ys, xs = np.nonzero(full)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    assert entity.bounds == (x0, y0, x1, y1) and np.shares_memory(entity.pixels, image)
    np.testing.assert_array_equal(entity.pixels, image[y0:y1, x0:x1])
    np.testing.assert_array_equal(entity.mask, full[y0:y1, x0:x1])
    assert materialize(entity, EntityLimits()) is None  # a second call is a no-op


def test_a_cut_entity_pickles_its_source_once_not_its_crop():
    import pickle

    from pycocotools import mask as mask_utils

    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    entities = []
    for k, centre in enumerate(((150, 100), (80, 80))):
        full = disk(H, W, *centre, 30)
        rle = mask_utils.encode(np.asfortranarray(full))
        rle["counts"] = rle["counts"].decode()
        seg = Segment(index=k, box=tuple(mask_utils.toBbox(rle)), area=float(full.sum()), rle=rle)
        entities.append(Entity(f"u/r#{k}", "u/r", seg, full.sum() / (H * W), source=image))
        assert materialize(entities[-1], EntityLimits()) is None
    buffers = []
    data = pickle.dumps(entities, protocol=5, buffer_callback=buffers.append)
    assert len(data) < 20_000, "no crop copied into the pickle"
    assert sum(b.raw().nbytes for b in buffers) == image.nbytes + sum(e.mask.nbytes for e in entities), "the source once, out of band"
    loaded = pickle.loads(data, buffers=buffers)
    assert loaded[0].source is loaded[1].source
    for before, after in zip(entities, loaded):
        np.testing.assert_array_equal(after.pixels, before.pixels)
        assert np.shares_memory(after.pixels, after.source)
    given = Entity("u/r#2", "u/r", entities[0].segment, 0.1, pixels=image[:20, :30].copy(), mask=np.ones((20, 30), np.uint8))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(given)).pixels, given.pixels)  # no source to cut from: kept


def test_materialize_reports_a_failed_shape_check_and_keeps_no_pixels():
    from pycocotools import mask as mask_utils

    full = disk(H, W, 150, 100, 30) | disk(H, W, 20, 20, 12)  # two parts: the small one holds ~14 %
    rle = mask_utils.encode(np.asfortranarray(full))
    rle["counts"] = rle["counts"].decode()
    seg = Segment(index=0, box=tuple(mask_utils.toBbox(rle)), area=float(full.sum()), rle=rle)
    entity = Entity("u/r#0", "u/r", seg, 0.1, source=np.zeros((H, W, 3), np.uint8))
    why = materialize(entity, EntityLimits(min_main_component=0.9))
    assert why.reason == "fragmented" and "largest of 2 parts" in why.detail
    assert entity.mask is None and entity.pixels is None and entity.source is None


def test_entity_properties_come_from_its_segment():
    seg = Segment(index=3, box=(0, 0, 10, 10), area=42.0, category="dog")
    entity = Entity("u/r#3", "u/r", seg, 0.1)
    assert (entity.category, entity.area, entity.mask, entity.scores) == ("dog", 42.0, None, {})


# --- objectness of class-agnostic masks ----------------------------------------------------------------


def rle_segment(index: int, mask: np.ndarray) -> Segment:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return Segment(index=index, box=tuple(mask_utils.toBbox(rle)), area=float(mask.sum()), rle=rle)


def test_a_part_inside_a_larger_candidate_is_rejected_and_the_whole_kept():
    whole = disk(H, W, 150, 100, 60)
    part = disk(H, W, 150, 100, 25)  # wholly inside the whole
    straddling = disk(H, W, 215, 100, 20)  # half inside the whole, half out
    apart = disk(H, W, 40, 40, 20)
    segments = [rle_segment(0, whole), rle_segment(1, part), rle_segment(2, straddling), rle_segment(3, apart)]
    found = nested_rejects(segments, 0.9)
    assert set(found) == {1} and found[1].reason == "part_of_larger" and "inside segment 0" in found[1].detail
    assert nested_rejects(segments, 0.3).keys() == {1, 2}
    assert nested_rejects(segments, 1.0) == {}  # off


def test_a_mostly_empty_box_is_rejected_when_asked():
    ring = Segment(index=0, box=(10.0, 10.0, 100, 100), area=0.1 * 100 * 100 + 0.0)
    assert geometry_reject(ring, H, W, EntityLimits(min_area_ratio=0)) is None  # off by default
    why = geometry_reject(ring, H, W, EntityLimits(min_area_ratio=0, min_box_fill=0.15))
    assert why.reason == "sparse_box" and "fills 0.10 of its box" in why.detail


@pytest.mark.parametrize("texture, rejected", [(0, True), (40, False)])
def test_a_flat_region_is_not_an_entity(texture, rejected):
    rng = np.random.default_rng(1)
    image = np.full((H, W, 3), 120, np.uint8)  # a flat wall ...
    image = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)  # ... with sensor noise
    full = disk(H, W, 150, 100, 40)
    image[full > 0] = np.clip(image[full > 0] + rng.integers(-texture, texture + 1, (int(full.sum()), 3)), 0, 255)
    entity = Entity("u/r#0", "u/r", rle_segment(0, full), 0.1, source=image)
    why = materialize(entity, EntityLimits(min_textured=0.15))
    assert (why is not None and why.reason == "flat_texture") == rejected
    assert (entity.pixels is None) == rejected
    if not rejected:
        assert entity.scores["textured"] >= 0.15
