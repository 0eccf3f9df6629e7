"""syn4removal: extract_group on real SA-1B and panoptic rows, score_entities, and compose_group's samples.

Expectations are recomputed from the raw sample files (json, pycocotools, OpenCV/PIL decoding), never
copied from a run: which records must fail and why comes from the testdata README.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from helpers import panoptic_row
from pydantic import ValidationError

from pairmine.dataset import sample_key
from pairmine.operators import syn4removal
from pairmine.operators.codecs import encode_jpeg, splice_jpeg_rows
from pairmine.operators.scorers import AnnotationScorer
from pairmine.operators.syn4removal import (
    PIPELINE,
    Syn4RemovalParams,
    SynMaskEnhanceParams,
    compose_group,
    extract_group,
    materialize_all,
    score_entities,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

UNIT = "sa_000000.tar"
GOOD = ("sa_142238", "sa_100", "sa_101", "sa_102", "sa_103")  # the tar's records that the README calls good
DEFAULT = Syn4RemovalParams()
LOOSE = Syn4RemovalParams(
    seed=3,
    pairing={"pairs_per_background": 2},
    mask_enhancement={"modes": ["exact", "dilate", "hull", "ellipse", "bbox", "brush"]},
)
PANOPTIC = Syn4RemovalParams(entities={"min_area_ratio": 0.005})  # the sample's people cover ~1 % each


def extract(row: dict, params: Syn4RemovalParams = DEFAULT):
    return extract_group(row, params, params.entities.scorer)


def record_rejects(group) -> set[tuple[str, str, str]]:
    """(input, stage, reason) of the rejects about whole records (not segments or triplets)."""
    return {(r.input, r.stage, r.reason) for r in group.rejects if "#" not in r.input and ":" not in r.input}


def sa1b_json(members: dict, stem: str) -> dict:
    return json.loads(members[f"{stem}.json"])


def decode_rle(segmentation: dict) -> np.ndarray:
    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()})


# --- extract_group on the SA-1B tar ----------------------------------------------------------------


def test_each_bad_sa1b_record_is_rejected_with_its_reason(sa1b_row, sa1b_members):
    group = extract(sa1b_row())
    assert record_rejects(group) == {
        (f"{UNIT}/sa_900001", "decode", "truncated_image"),
        (f"{UNIT}/sa_900002", "annotation", "malformed_json"),
        (f"{UNIT}/sa_900003", "background", "annotations_invalid"),
        (f"{UNIT}/sa_900004", "decode", "image_too_large"),
        # met by the reader and carried through the row unchanged
        (f"{UNIT}/sa_900005", "read", "missing_image"),
        (f"{UNIT}/../../sa_900006.jpg", "read", "unsafe_member"),
    }
    mismatched = [r for r in group.rejects if r.input.startswith(f"{UNIT}/sa_900003#")]
    assert len(mismatched) == len(sa1b_json(sa1b_members, "sa_900003")["annotations"])
    assert {(r.stage, r.reason) for r in mismatched} == {("annotation", "rle_size_mismatch")}


def test_a_json_that_is_no_object_or_nests_too_deep_is_that_records_reject(sa1b_row):
    """It failed the whole group (and so the job): the parsed list was parsed again."""
    row = sa1b_row(("sa_100", "sa_101"))
    image = row["records"][0]["image"]
    odd = {"list": b"[]", "null": b"null", "number": b"5", "deep": b'{"annotations": ' + b"[" * 5000 + b"]" * 5000 + b"}"}
    row["records"] += [{"id": name, "segmentation": None, "image": image, "annotation": doc} for name, doc in odd.items()]
    group = extract(row)
    assert record_rejects(group) == {(f"{UNIT}/{name}", "annotation", "malformed_json") for name in odd}
    assert sorted(b.record for b in group.backgrounds) == [f"{UNIT}/sa_100", f"{UNIT}/sa_101"]


def test_an_error_no_check_foresaw_is_the_records_reject_not_the_jobs_end(sa1b_row, monkeypatch):
    row = sa1b_row(("sa_100", "sa_101"))
    broken = row["records"][1]["image"]
    real = syn4removal.decode_image

    def decode(data, *args):
        if data is broken:
            raise ZeroDivisionError("as if an operator had a bug this record finds")
        return real(data, *args)

    monkeypatch.setattr(syn4removal, "decode_image", decode)
    group = extract(row)
    assert record_rejects(group) == {(f"{UNIT}/sa_101", "extract", "unexpected_error")}
    assert "ZeroDivisionError: as if" in next(r.detail for r in group.rejects if r.reason == "unexpected_error")
    assert [b.record for b in group.backgrounds] == [f"{UNIT}/sa_100"] and {e.record for e in group.entities} == {f"{UNIT}/sa_100"}


def test_only_good_sa1b_records_give_backgrounds_and_entities(sa1b_row):
    group = extract(sa1b_row())
    good = [f"{UNIT}/{s}" for s in GOOD]
    assert sorted(b.record for b in group.backgrounds) == sorted(good)
    assert group.entities and {e.record for e in group.entities} <= set(good)
    assert (group.unit, group.consumed, group.unit_total) == (UNIT, [r["id"] for r in sa1b_row()["records"]], -1)


def extract_and_cut(row: dict, params: Syn4RemovalParams = DEFAULT):
    """extract_group, then every candidate cut now (as for a scorer that needs pixels)."""
    group = extract(row, params)
    group.entities, rejects = materialize_all(group.entities, params.entities)
    group.rejects += rejects
    return group


@pytest.fixture(scope="module")
def sa1b_group(sa1b_row):
    return extract_and_cut(sa1b_row())


def test_every_annotation_of_a_good_record_is_kept_or_rejected_once(sa1b_group, sa1b_members):
    for background in sa1b_group.backgrounds:
        stem = background.record.split("/", 1)[1]
        n = len(sa1b_json(sa1b_members, stem)["annotations"])
        kept = [int(e.id.rsplit("#", 1)[1]) for e in sa1b_group.entities if e.record == background.record]
        rejected = [int(r.input.rsplit("#", 1)[1]) for r in sa1b_group.rejects if r.input.startswith(background.record + "#")]
        assert sorted(kept + rejected) == list(range(n)), stem


def test_kept_sa1b_entities_pass_every_limit_recomputed_from_the_json(sa1b_group, sa1b_members):
    limits, scorer = DEFAULT.entities, DEFAULT.entities.scorer
    for entity in sa1b_group.entities:
        stem, index = entity.id.split("/", 1)[1].split("#")
        doc = sa1b_json(sa1b_members, stem)
        ann = doc["annotations"][int(index)]
        h, w = doc["image"]["height"], doc["image"]["width"]
        full = decode_rle(ann["segmentation"])
        ys, xs = np.nonzero(full)
        assert limits.min_area_ratio <= full.sum() / (h * w) <= limits.max_area_ratio
        assert min(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) >= limits.min_box_side
        assert ann["predicted_iou"] >= scorer.min_predicted_iou and ann["stability_score"] >= scorer.min_stability_score
        assert entity.area_ratio == pytest.approx(full.sum() / (h * w))
        assert entity.scores["predicted_iou"] == ann["predicted_iou"] and entity.scores["annotation"] == round(ann["predicted_iou"], 5)
        # the RGBA crop: alpha is the mask inside its tight box, colour the image's pixels there
        image = cv2.imdecode(np.frombuffer(sa1b_members[f"{stem}.jpg"], np.uint8), cv2.IMREAD_COLOR)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        np.testing.assert_array_equal(entity.mask, full[y0:y1, x0:x1])
        np.testing.assert_array_equal(entity.pixels, image[y0:y1, x0:x1])


def test_sa1b_entity_rejects_are_truthful(sa1b_group, sa1b_members):
    """Each reject reason holds for the raw annotation it names."""
    limits, scorer = DEFAULT.entities, DEFAULT.entities.scorer
    checked = Counter()
    for reject in sa1b_group.rejects:
        if reject.stage != "entity":
            continue
        stem, index = reject.input.split("/", 1)[1].split("#")
        doc = sa1b_json(sa1b_members, stem)
        ann = doc["annotations"][int(index)]
        h, w = doc["image"]["height"], doc["image"]["width"]
        full = decode_rle(ann["segmentation"])
        ys, xs = np.nonzero(full)
        holds = {
            "area_too_small": lambda: full.sum() / (h * w) < limits.min_area_ratio,
            "area_too_large": lambda: full.sum() / (h * w) > limits.max_area_ratio,
            "bbox_too_small": lambda: min(np.ptp(xs) + 1, np.ptp(ys) + 1) < limits.min_box_side,
            "low_predicted_iou": lambda: ann["predicted_iou"] < scorer.min_predicted_iou,
            "low_stability_score": lambda: ann["stability_score"] < scorer.min_stability_score,
            "fragmented": lambda: cv2.connectedComponentsWithStats(full, connectivity=8)[2][1:, 4].max() / full.sum()
            < limits.min_main_component,
            "truncated_at_border": lambda: (full[0].sum() + full[-1].sum() + full[:, 0].sum() + full[:, -1].sum())
            / (2.0 * (np.ptp(xs) + 1 + np.ptp(ys) + 1))
            > limits.max_border_contact,
        }[reject.reason]
        assert holds(), reject
        checked[reject.reason] += 1
    assert len(checked) >= 3  # the sample exercises several checks


def test_sa1b_stats_count_what_happened(sa1b_row, sa1b_group, sa1b_members):
    counts = sa1b_group.stats.counts
    n_records = len(sa1b_row()["records"])
    failed = {r.input for r in sa1b_group.rejects if r.stage in ("decode", "annotation") and "#" not in r.input}
    assert counts["records"] == n_records
    assert counts["images"] == n_records - len(failed)
    assert counts["backgrounds_kept"] == len(sa1b_group.backgrounds)
    assert counts["entity_candidates"] == sum(
        len(sa1b_json(sa1b_members, b.record.split("/")[1])["annotations"]) for b in sa1b_group.backgrounds
    )
    assert {"decode", "annotations", "entities"} <= set(sa1b_group.stats.seconds)


def test_entities_are_cut_only_when_composition_draws_them(sa1b_row):
    group = extract(sa1b_row())
    candidates = len(group.entities)
    assert candidates and all(e.mask is None for e in group.entities)
    samples = compose_group(group, DEFAULT, "cfg0")
    counts = group.stats.counts
    cut_out = [r for r in group.rejects if r.stage == "entity" and r.reason in ("fragmented", "truncated_at_border", "corrupt_rle")]
    assert counts["entities_kept"] + counts["entities_unused"] + len(cut_out) == candidates
    assert counts["entities_unused"] > 0 and counts["entities_kept"] >= len({json.loads(s["json"])["entity"]["id"] for s in samples})
    assert all((e.mask is None) == (e.bounds is None) and e.source is not None for e in group.entities if e.id not in {r.input for r in cut_out})


def test_a_record_without_image_bytes_is_a_decode_reject(sa1b_members):
    row = {
        "unit": UNIT, "kind": "sa1b", "categories": "", "rejects": [], "consumed": ["sa_900005"], "unit_total": 1,
        "records": [{"id": "sa_900005", "image": b"", "annotation": sa1b_members["sa_900005.json"], "segmentation": None}],
    }
    group = extract(row)
    assert record_rejects(group) == {(f"{UNIT}/sa_900005", "decode", "empty_file")} and not group.backgrounds


def test_resized_backgrounds_have_the_configured_short_side(sa1b_row):
    params = Syn4RemovalParams(backgrounds={"resize_short_side": 300})
    group = extract(sa1b_row(("sa_100", "sa_101")), params)
    assert [min(b.image.shape[:2]) for b in group.backgrounds] == [300, 300]


def test_a_reduced_decode_keeps_every_decision_and_cuts_smaller_entities(sa1b_row):
    """With 200-px backgrounds the ~500-px samples decode at 1/2 (``codecs.reduction``). The checks count
    annotated pixels, so the same entities and rejects come out; only their crops are smaller, and the
    triplets meet the output contract at the new size."""
    small = Syn4RemovalParams(backgrounds={"resize_short_side": 200})
    full, reduced = extract(sa1b_row()), extract(sa1b_row(), small)
    assert reduced.stats.counts["reduced_decodes"] == reduced.stats.counts["images"] > 0
    assert [b.record for b in reduced.backgrounds] == [b.record for b in full.backgrounds]
    assert full.stats.counts["reduced_decodes"] == 0
    assert [e.id for e in reduced.entities] == [e.id for e in full.entities]
    assert [r.to_dict() for r in reduced.rejects] == [r.to_dict() for r in full.rejects]
    full_cut, full_out = materialize_all(full.entities, DEFAULT.entities)
    small_cut, small_out = materialize_all(reduced.entities, small.entities)
    assert [e.id for e in small_cut] == [e.id for e in full_cut]
    assert [(r.input, r.reason) for r in small_out] == [(r.input, r.reason) for r in full_out]
    for big, little in zip(full_cut, small_cut):
        assert little.pixel_scale == pytest.approx(0.5, abs=0.01)
        assert little.mask.shape == little.pixels.shape[:2]
        assert all(s <= b // 2 + 2 for s, b in zip(little.mask.shape, big.mask.shape))  # thin slivers may vanish
        assert little.mask.sum() == pytest.approx(big.mask.sum() / 4, rel=0.1)
        assert little.area == pytest.approx(little.mask.sum(), rel=0.1)
    reduced = extract(sa1b_row(), small)
    samples = compose_group(reduced, small, "cfg0")
    assert samples and all(min(b.image.shape[:2]) == 200 for b in reduced.backgrounds)
    check_samples(samples, reduced, small, "cfg0")


# --- score_entities --------------------------------------------------------------------------------


def test_score_entities_splits_and_records_the_score(sa1b_row):
    loose = Syn4RemovalParams(entities={"scorer": {"min_predicted_iou": 0.0, "min_stability_score": 0.0}})
    entities = extract(sa1b_row(), loose).entities
    strict = AnnotationScorer(min_predicted_iou=0.9, min_stability_score=0.0)
    kept, rejects = score_entities(entities, strict, stage="clip")
    assert len(kept) + len(rejects) == len(entities)
    assert all(e.segment.scores["predicted_iou"] >= 0.9 for e in kept)
    assert {(r.stage, r.reason) for r in rejects} <= {("clip", "low_predicted_iou")}
    assert {r.input for r in rejects} == {e.id for e in entities if e.segment.scores["predicted_iou"] < 0.9}
    assert all(e.scores["annotation"] == round(e.segment.scores["predicted_iou"], 5) for e in entities)
    assert score_entities([], strict) == ([], [])


# --- compose_group ---------------------------------------------------------------------------------


def decode(data: bytes) -> tuple[np.ndarray, str]:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im), im.mode


def touched_blocks(mask: np.ndarray, block: int = 16, margin: int = 2) -> np.ndarray:
    """The JPEG MCUs (16 px with 4:2:0 chroma) holding a mask pixel, grown by the chroma upsampling reach."""
    h, w = mask.shape
    grid = np.zeros(((h + block - 1) // block, (w + block - 1) // block), bool)
    ys, xs = np.nonzero(mask)
    grid[ys // block, xs // block] = True
    near = np.kron(grid, np.ones((block, block), bool))[:h, :w].astype(np.uint8)
    return cv2.dilate(near, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0


def check_samples(samples: list[dict], group, params: Syn4RemovalParams, config_hash: str):
    """The output contract of every sample, from its encoded files."""
    backgrounds = {b.record: b for b in group.backgrounds}
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys)
    for sample in samples:
        assert set(sample) == {"__key__", "source.jpg", "target.jpg", "mask.png", "alpha.png", "json"}
        meta = json.loads(sample["json"])
        background = backgrounds[meta["background"]["id"]]
        index = int(sample["__key__"].rsplit("-", 1)[1])
        assert sample["__key__"] == meta["key"] == sample_key(background.record, config_hash, index)
        assert meta["pipeline"] == PIPELINE and meta["config_hash"] == config_hash and meta["seed"] == params.seed
        assert meta["entity"]["source"] != background.record and meta["entity"]["id"].startswith(meta["entity"]["source"] + "#")
        assert isinstance(meta["entity"]["annotation"], str)  # the dataset's own id of the entity's mask
        source, source_mode = decode(sample["source.jpg"])
        target, target_mode = decode(sample["target.jpg"])
        mask, mask_mode = decode(sample["mask.png"])
        alpha, alpha_mode = decode(sample["alpha.png"])
        h, w = background.image.shape[:2]
        assert (meta["background"]["height"], meta["background"]["width"]) == (h, w)
        assert source.shape == target.shape == (h, w, 3) and source_mode == target_mode == "RGB"
        assert mask.shape == alpha.shape == (h, w) and mask_mode == alpha_mode == "L"
        assert set(np.unique(mask)) <= {0, 255} and 0 < np.count_nonzero(mask) < mask.size
        assert (mask[alpha > 0] == 255).all()  # every blended pixel is inside the mask
        assert np.count_nonzero(mask) / mask.size == pytest.approx(meta["mask"]["area_ratio"], abs=1e-5)
        # Both JPEGs come from one encoder and differ before encoding only under the mask: blocks away
        # from it are bit-identical after decoding.
        far = ~touched_blocks(mask > 0)
        assert far.any() and np.array_equal(source[far], target[far])
        # the target is the background itself, up to the error of a reference JPEG encoder at that quality
        background_rgb = background.image[..., ::-1]
        buf = io.BytesIO()
        Image.fromarray(background_rgb).save(buf, "JPEG", quality=params.jpeg_quality)
        reference = np.abs(decode(buf.getvalue())[0].astype(int) - background_rgb).mean()
        assert np.abs(target.astype(int) - background_rgb).mean() <= 1.25 * reference + 0.25
        assert np.abs(source.astype(int) - target)[mask > 0].mean() > 1  # something was pasted


@pytest.mark.parametrize("params", [DEFAULT, LOOSE], ids=["default", "loose_masks"])
def test_compose_group_samples_meet_the_output_contract(sa1b_row, params):
    group = extract(sa1b_row(), params)
    samples = compose_group(group, params, "cfg0")
    assert samples
    check_samples(samples, group, params, "cfg0")
    assert group.stats.counts["pairs"] == len(samples)
    # each (background, triplet index) ends as a sample or as a compose reject, never both or neither
    made = {(json.loads(s["json"])["background"]["id"], int(s["__key__"].rsplit("-", 1)[1])) for s in samples}
    failed = {tuple(r.input.rsplit(":", 1)) for r in group.rejects if r.stage == "compose"}
    failed = {(b, int(i)) for b, i in failed}
    expected = {(b.record, i) for b in group.backgrounds for i in range(params.pairing.pairs_per_background)}
    assert made | failed == expected and not made & failed


def test_a_source_jpeg_is_its_whole_encode(sa1b_row, monkeypatch):
    """The source's file is the target's with the paste box's rows re-encoded: the same bytes as encoding the
    source whole, so the box covers every changed row (the real splice runs; its result is compared)."""
    spliced = []

    def checked(base, image, rows, quality):
        data = splice_jpeg_rows(base, image, rows, quality)
        spliced.append((data == encode_jpeg(image, quality, row_restarts=True), rows[1] - rows[0] < image.shape[0]))
        return data

    monkeypatch.setattr(syn4removal, "splice_jpeg_rows", checked)
    samples = compose_group(extract(sa1b_row(), LOOSE), LOOSE, "cfg0")
    assert len(spliced) == len(samples) > 0 and all(same for same, _ in spliced)
    assert any(partial for _, partial in spliced)  # some pastes leave rows to copy


def test_compose_group_is_deterministic(sa1b_row):
    def run():
        group = extract(sa1b_row(), LOOSE)
        return compose_group(group, LOOSE, "cfg0"), [r.to_dict() for r in group.rejects]

    assert run() == run()


def test_config_hash_and_seed_change_keys_and_draws(sa1b_row):
    base = compose_group(extract(sa1b_row(), LOOSE), LOOSE, "cfg0")
    rehashed = compose_group(extract(sa1b_row(), LOOSE), LOOSE, "cfg1")
    assert {s["__key__"] for s in base}.isdisjoint({s["__key__"] for s in rehashed})
    assert [s["source.jpg"] for s in base] == [s["source.jpg"] for s in rehashed]
    reseeded = LOOSE.model_copy(update={"seed": LOOSE.seed + 1})
    other = compose_group(extract(sa1b_row(), reseeded), reseeded, "cfg0")
    assert [s["source.jpg"] for s in other] != [s["source.jpg"] for s in base]


def test_syn_mask_enhancement_refuses_erode():
    with pytest.raises(ValidationError, match="erode"):
        SynMaskEnhanceParams(modes=("exact", "erode"))
    with pytest.raises(ValidationError):
        Syn4RemovalParams(mask_enhancement={"modes": ["erode"]})
    with pytest.raises(ValidationError):
        SynMaskEnhanceParams(modes=("smudge",))
    assert SynMaskEnhanceParams(modes=("dilate", "bbox")).modes == ("dilate", "bbox")


# --- panoptic --------------------------------------------------------------------------------------


def test_panoptic_entities_are_the_usable_things(panoptic):
    group = extract_and_cut(panoptic_row(panoptic), PANOPTIC)
    info = panoptic["image_info"]
    image_area = info["height"] * info["width"]
    things = {c["id"]: c["name"] for c in panoptic["categories"] if c["isthing"]}
    limits = PANOPTIC.entities
    record = f"val2017/{panoptic['stem']}_a"
    candidates = {
        i: s for i, s in enumerate(panoptic["annotation"]["segments_info"])
        if s["category_id"] in things and limits.min_area_ratio <= s["area"] / image_area <= limits.max_area_ratio
        and min(s["bbox"][2:]) >= limits.min_box_side
    }
    entity_index = {int(e.id.rsplit("#", 1)[1]): e for e in group.entities}
    assert entity_index and set(entity_index) <= set(candidates)
    shape_rejects = {int(r.input.rsplit("#", 1)[1]): r.reason for r in group.rejects if r.stage == "entity" and r.reason in ("fragmented", "truncated_at_border", "crowd")}
    assert set(entity_index) | set(shape_rejects) == set(candidates)
    for index, segment in candidates.items():
        if segment["iscrowd"]:
            assert shape_rejects[index] == "crowd"
    for index, entity in entity_index.items():
        segment = panoptic["annotation"]["segments_info"][index]
        assert entity.category == things[segment["category_id"]] and entity.record == record
        assert entity.mask.sum() == segment["area"]  # panopticapi areas are pixel counts
        assert entity.mask.shape == entity.pixels.shape[:2] == (segment["bbox"][3], segment["bbox"][2])
    stuff = [i for i, s in enumerate(panoptic["annotation"]["segments_info"]) if s["category_id"] not in things]
    assert stuff and not any(r.input.endswith(f"#{i}") for r in group.rejects for i in stuff)
    (background,) = group.backgrounds
    assert background.categories <= set(things.values())
    assert all(inst.category in things.values() for inst in background.instances)


def test_panoptic_both_segments_info_layouts_give_the_same_group(panoptic):
    as_dict = extract(panoptic_row(panoptic), PANOPTIC)
    as_list = extract(panoptic_row(panoptic, annotation=panoptic["annotation"]["segments_info"]), PANOPTIC)
    assert [e.id for e in as_dict.entities] == [e.id for e in as_list.entities]
    assert as_dict.rejects == as_list.rejects
    assert [i.box for i in as_dict.backgrounds[0].instances] == [i.box for i in as_list.backgrounds[0].instances]


def test_panoptic_unknown_category_rejects_those_segments(panoptic):
    categories = [c for c in panoptic["categories"] if c["name"] != "person"]
    group = extract(panoptic_row(panoptic, categories=categories), PANOPTIC)
    persons = [i for i, s in enumerate(panoptic["annotation"]["segments_info"]) if s["category_id"] == 1]
    unknown = sorted(int(r.input.rsplit("#", 1)[1]) for r in group.rejects if r.reason == "unknown_category")
    assert unknown == persons and all(r.stage == "annotation" for r in group.rejects if r.reason == "unknown_category")
    assert all(e.category != "person" for e in group.entities)


def _resized_png(png: bytes) -> bytes:
    array = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".png", cv2.resize(array, (320, 214), interpolation=cv2.INTER_NEAREST))[1].tobytes()


def _as_jpeg(png: bytes) -> bytes:
    return cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda p: {"segmentation": _resized_png(p["png"])}, "segmentation_size_mismatch"),
        (lambda p: {"segmentation": _as_jpeg(p["png"])}, "corrupt_panoptic_png"),
        (lambda p: {"segmentation": p["png"][: len(p["png"]) // 2]}, "truncated_image"),
        (lambda p: {"annotation": b'{"segments_info": [1, 2'}, "malformed_json"),
        (lambda p: {"annotation": {"file_name": "x.png"}}, "malformed_json"),
        (lambda p: {"annotation": b"\xff\xfe"}, "malformed_json"),
    ],
)
def test_bad_panoptic_records_are_rejected_with_reason(panoptic, change, reason):
    row = panoptic_row(panoptic, **change(panoptic))
    group = extract(row, PANOPTIC)
    assert record_rejects(group) == {(f"val2017/{panoptic['stem']}_a", "annotation", reason)}
    assert not group.backgrounds and not group.entities


def test_bad_panoptic_categories_reject_every_record_of_the_row(panoptic):
    """The categories are per unit: a broken list makes every record unusable, without raising."""
    row = panoptic_row(panoptic, ids=("a", "b"))
    row["categories"] = json.dumps({"not": "a list"})
    group = extract(row, PANOPTIC)
    assert not group.backgrounds and not group.entities
    assert {(r.input, r.stage, r.reason) for r in group.rejects} == {
        (f"val2017/{panoptic['stem']}_{i}", "annotation", "malformed_json") for i in ("a", "b")
    }


def test_a_single_panoptic_image_never_receives_its_own_entities(panoptic):
    group = extract(panoptic_row(panoptic), PANOPTIC)
    assert group.entities
    assert compose_group(group, PANOPTIC, "cfg0") == []
    assert [(r.stage, r.reason) for r in group.rejects if r.stage == "compose"] == [("compose", "no_entity")]


def test_panoptic_entities_are_sized_like_same_category_instances(panoptic):
    group = extract(panoptic_row(panoptic, ids=("a", "b")), PANOPTIC)
    samples = compose_group(group, PANOPTIC, "cfg0")
    assert samples
    check_samples(samples, group, PANOPTIC, "cfg0")
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["entity"]["category"] == "person" and meta["paste"]["size_rule"] == "same_category"


def test_a_reduced_panoptic_decode_keeps_the_entities_and_scales_the_instances(panoptic):
    """The panoptic map stays at the annotated size; entity masks come out area-scaled to the half-size
    decode, and the background's instance boxes shrink with the image."""
    small = PANOPTIC.model_copy(update={"backgrounds": PANOPTIC.backgrounds.model_copy(update={"resize_short_side": 200})})
    assert [e.id for e in extract(panoptic_row(panoptic), small).entities] == [e.id for e in extract(panoptic_row(panoptic), PANOPTIC).entities]
    full, reduced = extract_and_cut(panoptic_row(panoptic), PANOPTIC), extract_and_cut(panoptic_row(panoptic), small)
    assert reduced.stats.counts["reduced_decodes"] == 1
    cut = {e.id: e for e in full.entities}
    both = [(cut[e.id], e) for e in reduced.entities if e.id in cut]
    assert len(both) >= 0.8 * len(cut) > 0  # the shape checks look at the cut pixels: a part may merge or split at half size
    for big, little in both:
        assert little.mask.shape == little.pixels.shape[:2]
        assert little.mask.sum() == pytest.approx(big.mask.sum() / 4, rel=0.15)
    (big_bg,), (small_bg,) = full.backgrounds, reduced.backgrounds
    scale = min(small_bg.image.shape[:2]) / min(big_bg.image.shape[:2])
    for a, b in zip(big_bg.instances, small_bg.instances):
        assert b.box == pytest.approx(tuple(v * scale for v in a.box), rel=0.02, abs=1.0) and b.category == a.category
