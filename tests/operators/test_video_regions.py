"""Region pairs: crops around each object paired with a frame clean there, checked against ground truth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pairmine.operators.video4removal import Video4RemovalParams, effect_mask, EffectParams, process_segment
from pairmine.operators.video_mog import disk
from pairmine.operators.video_regions import (
    Blob, MoverCounts, RegionParams, clean_frames, components, crop_box, find_blobs, link_tracks, movers_in,
)

HASH = "c0ffee"
PARAMS = RegionParams()


def _decode(sample, name, flags=cv2.IMREAD_UNCHANGED):
    return cv2.imdecode(np.frombuffer(sample[name], np.uint8), flags)


@pytest.fixture(scope="module")
def crowd(testdata):
    """synth_crowd_dev: some object always in view, so no whole frame is clean; each object's area is clean at other times."""
    video = testdata / "video"
    labels = np.load(video / "synth_crowd_dev.gt.npz")["labels"]
    return process_segment("crowd", str(video / "synth_crowd_dev.mp4"), 0, 240, Video4RemovalParams(), HASH), labels


def test_a_crowded_clip_gives_region_pairs_clean_and_well_masked(crowd):
    (samples, rejects, stats), labels = crowd
    assert samples and stats.counts["bg_frames"] == 0, "no whole frame is clean: every pair is a region pair"
    objects = set()
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["mode"] == "region" and len(meta["crop"]) == 4 and isinstance(meta["track"], int)
        x0, y0, x1, y1 = meta["crop"]
        source_gt = labels[meta["source"]["frame"], y0:y1, x0:x1]
        target_gt = labels[meta["target"]["frame"], y0:y1, x0:x1]
        assert not target_gt.any(), "the target crop is free of every ground-truth object"
        mask = _decode(sample, "mask.png") > 0
        assert mask.shape == (y1 - y0, x1 - x0) == _decode(sample, "source.jpg").shape[:2], "native pixels, no resampling"
        iou = (mask & (source_gt > 0)).sum() / (mask | (source_gt > 0)).sum()
        assert iou >= 0.6, f"mask IoU {iou:.2f} with the crop's ground-truth objects"
        objects |= set(np.unique(source_gt)) - {0}
        effect = _decode(sample, "effect_mask.png") > 0
        assert (effect >= mask).all() and meta["effect_ratio"] >= meta["mask_ratio"], "the effect mask holds the object"
    assert len(objects) >= 2, f"pairs of {len(objects)} objects"


def test_whole_frames_stay_whole_where_a_frame_is_clean(testdata):
    samples, _, _ = process_segment("static", str(testdata / "video" / "synth_static_dev.mp4"), 0, 150, Video4RemovalParams(), HASH)
    metas = [json.loads(s["json"]) for s in samples]
    assert metas and all(m["mode"] == "frame" and "crop" not in m for m in metas)
    forced = [json.loads(s["json"]) for s in process_segment(
        "static", str(testdata / "video" / "synth_static_dev.mp4"), 0, 150, Video4RemovalParams(region={"mode": "region"}), HASH)[0]]
    assert forced and all(m["mode"] == "region" for m in forced)


@pytest.mark.parametrize("clip", ["synth_pan_dev", "bikes", "carphone_pristine"])
def test_moving_cameras_still_give_nothing_in_region_mode(testdata, clip):
    samples, rejects, _ = process_segment(clip, str(testdata / "video" / f"{clip}.mp4"), 0, 10**6, Video4RemovalParams(region={"mode": "region"}), HASH)
    assert samples == [] and "camera_motion" in {r.reason for r in rejects}


def test_frame_mode_keeps_the_whole_frame_method(crowd, testdata):
    samples, rejects, _ = process_segment("crowd", str(testdata / "video" / "synth_crowd_dev.mp4"), 0, 240,
                                          Video4RemovalParams(region={"mode": "frame"}), HASH)
    assert samples == [] and {r.reason for r in rejects} == {"no_background_frame"}


def test_crops_grow_by_the_margin_to_the_minimum_side_and_stay_inside():
    params = RegionParams(margin=0.5, min_side=64)
    assert crop_box((40, 40, 60, 80), (200, 300), 1.0, params.model_copy(update={"min_side": 16})) == (30, 20, 70, 100), "+50 % each side"
    assert crop_box((40, 40, 60, 80), (200, 300), 1.0, params) == (18, 20, 82, 100), "the width grows to the minimum side"
    assert crop_box((40, 40, 44, 44), (200, 300), 1.0, params) == (10, 10, 74, 74)  # tiny: the minimum side
    assert crop_box((0, 0, 20, 20), (200, 300), 1.0, params)[:2] == (0, 0), "shifted into the frame"
    square = crop_box((40, 40, 60, 80), (200, 300), 1.0, params.model_copy(update={"square": True}))
    assert square[2] - square[0] == square[3] - square[1] == 80
    assert crop_box((40, 40, 44, 44), (200, 300), 4.0, params) == (34, 34, 50, 50), "min_side is in full-resolution pixels"


def test_a_crop_grows_to_hold_every_mover_it_touches():
    objects = np.zeros((100, 100), np.uint8)
    objects[40:60, 40:50] = 1  # the object
    objects[45:55, 58:80] = 1  # another mover reaching into its crop
    crop, mask = movers_in((30, 30, 60, 70), *components(objects))
    assert crop == (30, 30, 80, 70) and mask.sum() == objects.sum(), "both movers inside, both in the mask"


def test_clean_frames_have_no_mover_in_the_dilated_crop():
    moving = {0: np.zeros((100, 100), np.uint8), 1: np.zeros((100, 100), np.uint8), 2: np.zeros((100, 100), np.uint8)}
    moving[1][45:50, 45:50] = 1  # inside the crop
    moving[2][5:10, 5:10] = 1  # far away: still clean here
    assert clean_frames((40, 40, 60, 60), MoverCounts(moving), RegionParams(clean_max_ratio=0.0)) == [0, 2]


def test_objects_link_into_tracks_and_the_unusable_are_counted():
    masks = {}
    for frame in range(3):
        mask = np.zeros((100, 200), np.uint8)
        mask[40:60, 20 + 10 * frame : 40 + 10 * frame] = 1  # walks right
        mask[10:30, 150:170] = 1 if frame < 2 else 0  # stands, then leaves
        mask[0:10, 100:110] = 1  # cut by the top edge
        mask[80, 80] = 1  # a speck
        masks[frame] = mask
    blobs, _, left_out = find_blobs(masks, RegionParams(min_object=0.001))
    assert left_out == {"border_cut": 3, "tiny_object": 3}
    tracks = {}
    for blob in blobs:
        tracks.setdefault(blob.track, []).append(blob.frame)
    assert sorted(tracks.values()) == [[0, 1], [0, 1, 2]]
    assert link_tracks([Blob(0, (0, 0, 10, 10), 0.1, 1), Blob(1, (50, 50, 60, 60), 0.1, 1)], 0.3)[1].track == 1, "no overlap: a new track"


def test_the_effect_mask_is_the_object_and_its_shadow_near_it():
    source = np.full((100, 100, 3), 128, np.uint8)
    target = source.copy()
    source[30:60, 30:50] = 250  # the object
    source[60:70, 30:60] = 60  # its shadow, just below it
    source[5:10, 90:95] = 250  # a change far away: not the object's effect
    mask = np.zeros((100, 100), np.uint8)
    mask[30:60, 30:50] = 255
    effect = effect_mask(source, target, mask, EffectParams(near=0.5)) > 0
    assert effect[30:60, 30:50].all() and effect[62:68, 35:55].all() and not effect[5:10, 90:95].any()


def test_the_effect_mask_is_worked_out_near_the_object_as_on_the_whole_frame():
    """Cut to the object's box grown by its reach, the mask is exactly the whole-frame definition: blurred
    differences over the threshold within `near` x size (Euclidean) of the object, opened; also for an
    object at the frame's corner and one whose reach covers the frame."""
    rng = np.random.default_rng(3)
    source = cv2.GaussianBlur(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8), (9, 9), 0)
    target = source.copy()
    field = cv2.GaussianBlur(rng.random((90, 160)).astype(np.float32), (0, 0), 3)
    target[field > np.quantile(field, 0.7)] += 60  # blobs of change, some near each object
    for box, near in (((60, 30, 90, 50), 0.5), ((0, 0, 20, 12), 1.0), ((70, 40, 80, 50), 5.0)):
        mask = np.zeros((90, 160), np.uint8)
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 255
        reach = max(1, round(near * max(x1 - x0, y1 - y0)))
        yy, xx = np.mgrid[0:90, 0:160]
        distance = np.sqrt(np.maximum(np.maximum(x0 - xx, xx - (x1 - 1)), 0) ** 2 + np.maximum(np.maximum(y0 - yy, yy - (y1 - 1)), 0) ** 2)
        differs = cv2.absdiff(cv2.GaussianBlur(source, (5, 5), 0), cv2.GaussianBlur(target, (5, 5), 0)).max(axis=2) > 25
        opened = cv2.morphologyEx((differs & (distance <= reach)).astype(np.uint8), cv2.MORPH_OPEN, disk(1))
        expected = ((opened > 0) | (mask > 0)).astype(np.uint8) * 255
        got = effect_mask(source, target, mask, EffectParams(near=near))
        assert 0 < (got > 0).sum() - (mask > 0).sum(), "some differences count"
        np.testing.assert_array_equal(got, expected)
