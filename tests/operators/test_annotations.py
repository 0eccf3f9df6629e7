"""annotations: SA-1B / panoptic parsing and mask decoding, checked against pycocotools and scalar ports."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pairmine.operators.annotations import (
    Segment,
    decode_rle_crop,
    load_panoptic_categories,
    panoptic_crop,
    parse_openimages,
    parse_panoptic,
    parse_sa1b,
    rle_runs,
    segment_crop,
    segments_info_of,
)
from pairmine.operators.codecs import BadInput, decode_panoptic_ids

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

# --- independent references ------------------------------------------------------------------------


def ref_runs(counts: str) -> list[int]:
    """Line-by-line Python port of pycocotools' rleFrString (maskApi.c)."""
    cnts, p, s = [], 0, counts.encode()
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << 5 * k
        if len(cnts) > 2:
            x += cnts[-2]
        cnts.append(x)
    return cnts


def ref_counts(runs: list[int]) -> str:
    """Python port of pycocotools' rleToString: any runs (even invalid ones) to a counts string."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10) == 0 and x == 0 or (c & 0x10) != 0 and x == -1)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def random_mask(kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(20, 160, 2))
    mask = np.zeros((h, w), np.uint8)
    if kind == "blobs":
        for _ in range(rng.integers(1, 5)):
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(2, w // 2 + 3)), int(rng.integers(2, h // 2 + 3)))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == "noise":
        mask = (rng.random((h, w)) < 0.5).astype(np.uint8)
    elif kind == "pixel":
        mask[rng.integers(0, h), rng.integers(0, w)] = 1
    elif kind == "corners":
        mask[0, 0] = mask[-1, -1] = 1
    elif kind == "full":
        mask[:] = 1
    elif kind == "border_rows":
        mask[0] = mask[-1] = 1
    return mask


MASK_KINDS = ["blobs", "noise", "pixel", "corners", "full", "border_rows"]

# --- RLE decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_rle_runs_match_the_scalar_port(kind):
    rng = np.random.default_rng(MASK_KINDS.index(kind))
    for _ in range(5):
        mask = random_mask(kind, rng)
        counts = encode(mask)["counts"]
        runs = rle_runs(counts)
        assert runs.tolist() == ref_runs(counts)
        assert runs.sum() == mask.size


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_decode_rle_crop_matches_pycocotools(kind):
    rng = np.random.default_rng(100 + MASK_KINDS.index(kind))
    for _ in range(5):
        mask = random_mask(kind, rng)
        rle = encode(mask)
        full = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        crop, (x0, y0, x1, y1) = decode_rle_crop(rle, *mask.shape)
        assert (x0, y0, x1, y1) == tight_box(full)
        assert crop.dtype == np.uint8 and set(np.unique(crop)) <= {0, 1}
        np.testing.assert_array_equal(crop, full[y0:y1, x0:x1])
        assert crop.sum() == full.sum()  # nothing outside the bounds


def test_decode_rle_crop_long_runs_in_a_large_image():
    """A lone pixel in a 3000x4000 image needs multi-character values (runs of millions)."""
    mask = np.zeros((3000, 4000), np.uint8)
    mask[2999, 3998] = 1
    rle = encode(mask)
    before = 3998 * 3000 + 2999  # column-major position of the pixel
    assert rle_runs(rle["counts"]).tolist() == ref_runs(rle["counts"]) == [before, 1, mask.size - before - 1]
    crop, bounds = decode_rle_crop(rle, 3000, 4000)
    assert bounds == (3998, 2999, 3999, 3000) and crop.tolist() == [[1]]


def _area_resized(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    return (cv2.resize(mask * np.uint8(255), grid[::-1], interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8)


@pytest.mark.parametrize("factor", [2, 4])
def test_segment_crop_at_a_reduced_grid_is_the_area_resized_mask(factor):
    """An image decoded at 1/f (sizes divisible by f): the crop equals the whole mask area-resized to the
    grid, at the same tight bounds; panoptic and RLE segments alike."""
    rng = np.random.default_rng(factor)
    for _ in range(5):
        mask = random_mask("blobs", rng)
        mask = np.pad(mask, ((0, -mask.shape[0] % factor), (0, -mask.shape[1] % factor)))
        grid = (mask.shape[0] // factor, mask.shape[1] // factor)
        expected = _area_resized(mask, grid)
        if not expected.any():
            continue
        x0, y0, x1, y1 = tight_box(expected)
        ids = mask.astype(np.int32) * 7
        for segment, seg_ids in ((Segment(0, (0, 0, 0, 0), 0, rle=encode(mask)), None),
                                 (Segment(0, (0.0, 0.0, *mask.shape[::-1]), 0, segment_id=7), ids)):
            crop, bounds = segment_crop(segment, seg_ids, grid)
            assert bounds == (x0, y0, x1, y1)
            np.testing.assert_array_equal(crop, expected[y0:y1, x0:x1])


def test_segment_crop_at_a_ceil_sized_grid_stays_close():
    """Odd sizes: a JPEG decoded at 1/2 is ceil(size / 2); the crop still lands where the object is."""
    mask = np.zeros((301, 451), np.uint8)
    cv2.ellipse(mask, (300, 120), (90, 60), 20.0, 0, 360, 1, -1)
    grid = (151, 226)
    crop, (x0, y0, x1, y1) = segment_crop(Segment(0, (0, 0, 0, 0), 0, rle=encode(mask)), None, grid)
    placed = np.zeros(grid, np.uint8)
    placed[y0:y1, x0:x1] = crop
    expected = _area_resized(mask, grid)
    assert (placed & expected).sum() / (placed | expected).sum() > 0.97


def test_segment_crop_of_a_sliver_that_vanishes_is_empty_mask():
    mask = np.zeros((64, 64), np.uint8)
    mask[10, 5:40] = 1  # one row: covers half of no 4x4 block
    with pytest.raises(BadInput) as err:
        segment_crop(Segment(0, (0, 0, 0, 0), 0, rle=encode(mask)), None, (16, 16))
    assert err.value.reason == "empty_mask"


def test_rle_runs_decode_negative_deltas():
    """From the fourth value on, counts store deltas that may be negative."""
    runs = [10, 50, 3, 2, 40, 1]
    assert rle_runs(ref_counts(runs)).tolist() == runs


CORRUPT_COUNTS = {
    "runs_too_short": (lambda: ref_counts([5, 3]), 4, 4, "corrupt_rle"),
    "runs_too_long": (lambda: ref_counts([5, 3, 20]), 4, 4, "corrupt_rle"),
    "valid_counts_wrong_size": (lambda: encode(np.eye(10, dtype=np.uint8))["counts"], 10, 11, "corrupt_rle"),
    "negative_run": (lambda: ref_counts([5, 8, 6, -3]), 4, 4, "corrupt_rle"),
    "outside_alphabet": (lambda: "12~3", 4, 4, "corrupt_rle"),
    "space": (lambda: "1 3", 4, 4, "corrupt_rle"),
    "ends_mid_value": (lambda: "1" + chr(48 + 0x21), 4, 4, "corrupt_rle"),
    "non_ascii": (lambda: "1é3", 4, 4, "corrupt_rle"),
    "empty_counts": (lambda: "", 4, 4, "corrupt_rle"),
    "value_too_long": (lambda: chr(48 + 0x20) * 7 + "1", 4, 4, "corrupt_rle"),
    "no_foreground": (lambda: ref_counts([16]), 4, 4, "empty_mask"),
    "zero_length_foreground": (lambda: ref_counts([16, 0]), 4, 4, "empty_mask"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT_COUNTS))
def test_corrupt_rle_is_rejected_with_reason(name):
    make, h, w, reason = CORRUPT_COUNTS[name]
    with pytest.raises(BadInput) as info:
        decode_rle_crop({"size": [h, w], "counts": make()}, h, w)
    assert info.value.reason == reason


# --- SA-1B parsing ---------------------------------------------------------------------------------


def sa1b_doc(*segmentations, **extra) -> bytes:
    return json.dumps({"image": {}, "annotations": [{"segmentation": s, **extra} for s in segmentations]}).encode()


def test_parse_sa1b_real_record_matches_decoded_masks(sa1b_members):
    doc = json.loads(sa1b_members["sa_100.json"])
    h, w = doc["image"]["height"], doc["image"]["width"]
    parsed = parse_sa1b(sa1b_members["sa_100.json"], h, w)
    assert parsed.invalid == {} and len(parsed.segments) == len(doc["annotations"])
    for segment, ann in zip(parsed.segments, doc["annotations"]):
        full = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
        x0, y0, x1, y1 = tight_box(full)
        assert segment.area == full.sum()
        assert segment.box == (x0, y0, x1 - x0, y1 - y0)
        assert segment.scores == {"predicted_iou": ann["predicted_iou"], "stability_score": ann["stability_score"]}
        assert segment.thing and not segment.crowd and segment.category is None
        assert segment.source_id == str(ann["id"])  # SA-1B's own annotation id, to join a pair back to its mask


def test_parse_sa1b_uncompressed_counts_equal_compressed():
    rng = np.random.default_rng(5)
    mask = random_mask("blobs", rng)
    h, w = mask.shape
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(edges).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    parsed = parse_sa1b(sa1b_doc({"size": [h, w], "counts": runs}, {"size": [h, w], "counts": encode(mask)["counts"]}), h, w)
    assert parsed.invalid == {}
    a, b = parsed.segments
    assert isinstance(a.rle["counts"], str) and a.rle["counts"] == b.rle["counts"]
    assert a.area == b.area == mask.sum() and a.box == b.box


@pytest.mark.parametrize(
    "segmentation, reason",
    [
        ([[10.0, 10.0, 20.0, 10.0, 20.0, 20.0]], "malformed_annotation"),  # polygon, not RLE
        ({"size": [4, 4]}, "malformed_annotation"),
        ({"counts": "13"}, "malformed_annotation"),
        ({"size": [4], "counts": "13"}, "malformed_annotation"),
        ({"size": [4, 4], "counts": 13}, "malformed_annotation"),
        ({"size": [4, 4], "counts": ["a", "b"]}, "malformed_annotation"),
        ({"size": [4, 4], "counts": [-1, 17]}, "malformed_annotation"),
        ({"size": [4, 4], "counts": [None]}, "malformed_annotation"),
        ({"size": [4, 4], "counts": [2**40]}, "malformed_annotation"),
        # pycocotools' area / toBbox read past such strings (their answers changed from call to call)
        ({"size": [4, 4], "counts": "\u00ff\u00ff\u00ff"}, "corrupt_rle"),
        ({"size": [4, 4], "counts": "05a"}, "corrupt_rle"),  # ends in the middle of a value
        ({"size": [4, 4], "counts": ""}, "corrupt_rle"),
        ({"size": [4, 5], "counts": "04"}, "rle_size_mismatch"),
        ({"size": [5, 4], "counts": "04"}, "rle_size_mismatch"),
    ],
)
def test_parse_sa1b_flags_unusable_annotations_and_keeps_the_rest(segmentation, reason):
    good = {"size": [4, 4], "counts": ref_counts([5, 6, 5])}
    parsed = parse_sa1b(sa1b_doc(good, segmentation, good), 4, 4)
    assert [s.index for s in parsed.segments] == [0, 2]
    assert [(i, r.reason) for i, r in parsed.invalid.items()] == [(1, reason)]
    assert all(s.area == 6 for s in parsed.segments)


def test_parse_sa1b_missing_scores_are_absent_not_zero():
    doc = json.dumps({"annotations": [{"segmentation": {"size": [4, 4], "counts": ref_counts([5, 6, 5])}, "predicted_iou": 0.9}]})
    (segment,) = parse_sa1b(doc.encode(), 4, 4).segments
    assert segment.scores == {"predicted_iou": 0.9}


def test_parse_sa1b_a_score_that_is_not_a_number_is_said_so():
    """A writer that stored "0.93": it read as a missing score (`missing_scores`, sending the user to look for an
    absent key)."""
    rle = {"size": [4, 4], "counts": ref_counts([5, 6, 5])}
    doc = json.dumps({"annotations": [{"segmentation": rle, "predicted_iou": "0.93", "stability_score": 0.9},
                                      {"segmentation": rle, "predicted_iou": 0.9, "stability_score": 0.9}]})
    parsed = parse_sa1b(doc.encode(), 4, 4)
    assert [s.index for s in parsed.segments] == [1]
    assert parsed.invalid[0].reason == "malformed_annotation" and "predicted_iou is str '0.93', not a number" in parsed.invalid[0].detail


@pytest.mark.parametrize("data", [b"{", b"\xff\xfe\x00", b"[1, 2]", b'{"annotations": 3}', b"{}", b"null"])
def test_parse_sa1b_malformed_json(data):
    with pytest.raises(BadInput) as info:
        parse_sa1b(data, 4, 4)
    assert info.value.reason == "malformed_json"


def test_parse_sa1b_truncated_json_from_tar(sa1b_members):
    with pytest.raises(BadInput) as info:
        parse_sa1b(sa1b_members["sa_900002.json"], 500, 741)
    assert info.value.reason == "malformed_json"


def test_parse_sa1b_size_mismatch_record_from_tar(sa1b_members):
    doc = json.loads(sa1b_members["sa_900003.json"])
    parsed = parse_sa1b(sa1b_members["sa_900003.json"], doc["image"]["height"], doc["image"]["width"])
    assert parsed.segments == []
    assert [r.reason for r in parsed.invalid.values()] == ["rle_size_mismatch"] * len(doc["annotations"])


# --- panoptic --------------------------------------------------------------------------------------


def test_load_panoptic_categories(panoptic):
    cats = load_panoptic_categories(panoptic["categories"])
    assert len(cats) == len(panoptic["categories"])
    for c in panoptic["categories"]:
        assert cats[c["id"]] == {"name": c["name"], "isthing": bool(c["isthing"])}
    assert load_panoptic_categories([{"id": "7", "name": "x"}]) == {7: {"name": "x", "isthing": True}}


@pytest.mark.parametrize("categories", [{"id": 1}, "[]", [{"name": "x"}], [{"id": "one", "name": "x"}], [None]])
def test_load_panoptic_categories_malformed(categories):
    with pytest.raises(BadInput) as info:
        load_panoptic_categories(categories)
    assert info.value.reason == "malformed_json"


def test_segments_info_both_layouts(panoptic):
    info = panoptic["annotation"]["segments_info"]
    assert segments_info_of(panoptic["annotation"]) is info
    assert segments_info_of(info) is info


@pytest.mark.parametrize("doc", [{"file_name": "x.png"}, {"segments_info": {}}, "segments", None, 3])
def test_segments_info_rejects_other_shapes(doc):
    with pytest.raises(BadInput) as info:
        segments_info_of(doc)
    assert info.value.reason == "malformed_json"


def _sample_segments(panoptic, categories=None):
    info = panoptic["image_info"]
    cats = load_panoptic_categories(panoptic["categories"] if categories is None else categories)
    return parse_panoptic(panoptic["annotation"]["segments_info"], cats, info["height"], info["width"])


def test_parse_panoptic_sample(panoptic):
    parsed = _sample_segments(panoptic)
    by_id = {c["id"]: c for c in panoptic["categories"]}
    declared = panoptic["annotation"]["segments_info"]
    assert parsed.invalid == {} and len(parsed.segments) == len(declared)
    for segment, info in zip(parsed.segments, declared):
        assert segment.segment_id == info["id"] and segment.source_id == str(info["id"]) and segment.rle is None
        assert segment.box == tuple(float(v) for v in info["bbox"]) and segment.area == info["area"]
        assert segment.category == by_id[info["category_id"]]["name"]
        assert segment.thing == bool(by_id[info["category_id"]]["isthing"])
        assert segment.crowd == bool(info["iscrowd"])
    assert any(s.crowd for s in parsed.segments) and any(not s.thing for s in parsed.segments)


def test_parse_panoptic_unknown_category(panoptic):
    without_person = [c for c in panoptic["categories"] if c["name"] != "person"]
    parsed = _sample_segments(panoptic, without_person)
    persons = [i for i, s in enumerate(panoptic["annotation"]["segments_info"]) if s["category_id"] == 1]
    assert persons and [i for i, r in parsed.invalid.items() if r.reason == "unknown_category"] == persons
    assert {s.category for s in parsed.segments}.isdisjoint({"person"})
    assert len(parsed.segments) + len(parsed.invalid) == len(panoptic["annotation"]["segments_info"])


@pytest.mark.parametrize(
    "info, reason",
    [
        ({"id": 5, "category_id": 1, "bbox": [1, 1, 2, 2]}, "malformed_annotation"),  # no area
        ({"id": 5, "category_id": 1, "area": 4}, "malformed_annotation"),  # no bbox
        ({"id": "x", "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4}, "malformed_annotation"),
        ("segment", "malformed_annotation"),
        ({"id": 5, "category_id": 999, "bbox": [1, 1, 2, 2], "area": 4}, "unknown_category"),
        ({"id": 5, "category_id": 1, "bbox": [1, 1, 0, 2], "area": 4}, "bad_bbox"),
        ({"id": 5, "category_id": 1, "bbox": [-3, 1, 2, 2], "area": 4}, "bad_bbox"),
        ({"id": 5, "category_id": 1, "bbox": [5, 1, 20, 2], "area": 4}, "bad_bbox"),
        ({"id": 5, "category_id": 1, "bbox": [1, 8, 2, 20], "area": 4}, "bad_bbox"),
    ],
)
def test_parse_panoptic_invalid_entries(info, reason):
    cats = {1: {"name": "person", "isthing": True}}
    good = {"id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 50}
    parsed = parse_panoptic([good, info], cats, 10, 10)
    assert [s.segment_id for s in parsed.segments] == [7]
    assert [(i, r.reason) for i, r in parsed.invalid.items()] == [(1, reason)]


def test_panoptic_crop_is_the_segment_inside_its_box(panoptic):
    ids = decode_panoptic_ids(panoptic["png"], 10**8)
    for segment in _sample_segments(panoptic).segments:
        crop, (x0, y0, x1, y1) = panoptic_crop(ids, segment)
        full = ids == segment.segment_id
        assert (x0, y0, x1, y1) == tight_box(full)  # the sample's boxes are tight
        np.testing.assert_array_equal(crop, full[y0:y1, x0:x1])
        assert crop.sum() == segment.area


def test_panoptic_crop_clips_a_box_past_the_edge():
    ids = np.zeros((10, 10), np.int32)
    ids[6:, 7:] = 3
    crop, bounds = panoptic_crop(ids, Segment(0, (7.0, 6.0, 3.5, 4.5), 12.0, segment_id=3))
    assert bounds == (7, 6, 10, 10) and crop.sum() == 12 and crop.all()


def test_panoptic_crop_without_pixels_is_empty_mask():
    ids = np.zeros((10, 10), np.int32)
    ids[0, 0] = 3
    with pytest.raises(BadInput) as info:
        panoptic_crop(ids, Segment(0, (2.0, 2.0, 5.0, 5.0), 25.0, segment_id=3))
    assert info.value.reason == "empty_mask"


def _oi_row(label: str = "/m/01yrx", **overrides) -> dict:
    row = {"MaskPath": "x.png", "ImageID": "x", "LabelName": label, "BoxID": "1", "BoxXMin": "0.1", "BoxXMax": "0.5",
           "BoxYMin": "0.2", "BoxYMax": "0.6", "PredictedIoU": "0.8"}
    return row | overrides


def _png(mask: np.ndarray) -> bytes:
    return cv2.imencode(".png", mask)[1].tobytes()


def test_open_images_masks_are_resized_to_the_image_and_bad_rows_rejected():
    height, width = 300, 450
    full = np.zeros((height, width), np.uint8)
    cv2.ellipse(full, (200, 150), (120, 80), 0, 0, 360, 255, -1)
    small = cv2.resize(full, (300, 200), interpolation=cv2.INTER_AREA)  # the release's masks come at their own size
    categories = {"/m/01yrx": {"name": "Cat", "count": 5}}
    rows = [_oi_row(MaskPath="a.png"), _oi_row(), _oi_row("/m/0nope"), _oi_row(), _oi_row(BoxXMin="nan"), _oi_row(), _oi_row(PredictedIoU=""),
            _oi_row()]
    masks = [_png(small), _png(np.full((200, 200), 255, np.uint8)), _png(small), None, _png(small), b"garbage", _png(small),
             _png((small > 127).astype(np.uint8))]  # the last saved as 0/1
    parsed = parse_openimages(rows, masks, categories, height, width, max_pixels=10**7)
    reasons = {i: r.reason for i, r in parsed.invalid.items()}
    assert reasons == {1: "mask_size_mismatch", 2: "unknown_category", 3: "missing_mask", 4: "non_finite_value", 5: "corrupt_mask"}
    first, last, zero_one = parsed.segments
    assert (first.index, first.category, first.scores, first.source_id) == (0, "Cat", {"predicted_iou": 0.8}, "a.png")
    assert last.scores == {}  # no PredictedIoU: no score, not a zero
    differ = np.logical_xor(mask_utils.decode(zero_one.rle), mask_utils.decode(first.rle)).sum()
    assert differ < 0.01 * first.area, "a 0/1 mask is the same object (up to its resize)"
    decoded = mask_utils.decode(first.rle)
    assert decoded.shape == (height, width)
    assert np.logical_xor(decoded, full > 0).sum() < 0.02 * (full > 0).sum()  # the object, at the image's size
    assert first.area == decoded.sum() and first.box == pytest.approx((80, 70, 241, 161), abs=2)


def test_open_images_rows_and_masks_must_pair_up():
    with pytest.raises(BadInput, match="malformed_annotation"):
        parse_openimages([_oi_row()], [], {}, 10, 10, 100)


def test_open_images_masks_in_any_common_encoding_are_the_same_object():
    """Masks re-saved by other tools: a VOC-style palette, a red object on black, the object in an RGBA's alpha
    (its colour white everywhere), 16-bit 0/1. Read as grey they were empty_mask, and their image lost as a
    background; each is the object, at the image's size."""
    import io

    from PIL import Image

    height, width = 300, 450
    full = np.zeros((height, width), np.uint8)
    cv2.ellipse(full, (200, 150), (120, 80), 0, 0, 360, 1, -1)
    small = cv2.resize(full, (300, 200), interpolation=cv2.INTER_NEAREST)

    def pil_png(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    palette = Image.fromarray(small, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # index 1 = VOC's dark red
    red = np.zeros((200, 300, 3), np.uint8)
    red[..., 2] = small * 255
    rgba = np.full((200, 300, 4), 255, np.uint8)
    rgba[..., 3] = small * 255
    encodings = {"palette": pil_png(palette), "red": _png(red), "alpha": _png(rgba), "16-bit 0/1": _png(small.astype(np.uint16))}
    categories = {"/m/01yrx": {"name": "Cat", "count": 5}}
    parsed = parse_openimages([_oi_row() for _ in encodings], list(encodings.values()), categories, height, width, max_pixels=10**7)
    assert not parsed.invalid, {name: parsed.invalid.get(k) for k, name in enumerate(encodings)}
    for name, segment in zip(encodings, parsed.segments):
        decoded = mask_utils.decode(segment.rle)
        assert np.logical_xor(decoded, full).sum() < 0.02 * full.sum(), name


def test_panoptic_crop_refuses_a_box_that_cuts_its_segment(panoptic):
    """A bbox smaller than its segment gave a straight-edged fragment, sized as the whole object would be."""
    ids = decode_panoptic_ids(panoptic["png"], 10**8)
    segment = max(_sample_segments(panoptic).segments, key=lambda s: s.area)
    x, y, w, h = segment.box
    cut = dataclasses.replace(segment, box=(x, y, w * 0.6, h * 0.6))
    with pytest.raises(BadInput) as info:
        panoptic_crop(ids, cut)
    assert info.value.reason == "bbox_mismatch" and f"of its declared {segment.area:.0f} px" in info.value.detail
    assert panoptic_crop(ids, segment)[0].sum() == segment.area
