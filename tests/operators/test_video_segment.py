"""process_segment end to end on the sample clips: correct pairs where the camera is static, reasons elsewhere."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pairmine import __version__
from pairmine.operators.maskers import MaskResult
from pairmine.dataset import sample_key
from pairmine.operators import video4removal
from pairmine.operators.video4removal import PIPELINE, Video4RemovalParams, process_segment, split_video
from pairmine.operators.video_io import probe

PARAMS = Video4RemovalParams()
HASH = "c0ffee"
REASONS = {  # every reject reason the pipeline may give, by stage
    "read": {"unreadable", "empty_file", "not_a_video", "no_video_stream", "unsupported_codec", "video_too_large",
             "unknown_frame_rate", "too_short", "video_too_small"},
    "decode": {"decode_error", "truncated_video"},
    "screen": {"camera_motion", "scene_cut", "flicker", "low_texture", "too_short"},
    "mog": {"no_background_frame", "no_foreground_frame"},
    "pair": {"mse_above_threshold", "background_differs", "object_in_background", "misaligned",
             "no_clean_frame", "movers_overlap", "tiny_object", "border_cut"},  # the last four: region pairs
    "mask": {"mask_too_small", "mask_too_large", "mask_disagrees", "invalid_mask"},
    "analyse": {"unexpected_error"},  # footage that broke an operator in a way no check foresaw
}


@pytest.fixture(scope="module")
def video(testdata):
    return testdata / "video"


@pytest.fixture(scope="module")
def static(video):
    return process_segment("synth/static", str(video / "synth_static_dev.mp4"), 0, 150, PARAMS, HASH)


def decode(sample: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    images = [cv2.imdecode(np.frombuffer(sample[k], np.uint8), cv2.IMREAD_UNCHANGED) for k in ("source.jpg", "target.jpg", "mask.png")]
    return *images, json.loads(sample["json"])


def test_footage_that_breaks_an_operator_is_its_segments_reject_not_the_jobs_end(video, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("as if the screening had a bug this footage finds")

    monkeypatch.setattr(video4removal, "screen", broken)
    samples, rejects, _ = process_segment("synth/static", str(video / "synth_static_dev.mp4"), 0, 150, PARAMS, HASH)
    assert samples == []
    assert [(r.input, r.stage, r.reason) for r in rejects] == [("synth/static#0-150", "analyse", "unexpected_error")]
    assert rejects[0].detail.startswith("ZeroDivisionError: as if")


def test_static_clip_gives_pairs_with_correct_masks_and_clean_targets(static, video):
    samples, rejects, _ = static
    truth = np.load(video / "synth_static_dev.gt.npz")["masks"]
    assert samples, rejects
    for sample in samples:
        source, target, mask, meta = decode(sample)
        gt = truth[meta["source"]["frame"]]
        assert mask.shape == gt.shape  # full resolution: no resize needed
        assert np.logical_and(mask > 0, gt).sum() / np.logical_or(mask > 0, gt).sum() >= 0.6
        assert truth[meta["target"]["frame"]].sum() <= 0.0001 * gt.size  # the target is free of the object


def test_samples_have_the_syn4removal_layout_and_full_metadata(static):
    samples, _, _ = static
    for index, sample in enumerate(samples):
        source, target, mask, meta = decode(sample)
        assert set(sample) == {"__key__", "source.jpg", "target.jpg", "mask.png", "effect_mask.png", "json"}
        assert sample["__key__"] == meta["key"] == sample_key("synth/static#0-150", HASH, index)
        assert source.shape == target.shape == (540, 960, 3) and mask.shape == (540, 960) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}  # neither empty nor full
        assert meta["pipeline"] == PIPELINE and meta["video"] == "synth/static" and meta["segment"] == [0, 150]
        assert meta["source"]["frame"] != meta["target"]["frame"]
        assert meta["source"]["time"] == pytest.approx(meta["source"]["frame"] / 25)
        assert meta["target"]["time"] == pytest.approx(meta["target"]["frame"] / 25)
        assert meta["video_info"] == {"width": 960, "height": 540, "fps": 25.0, "frames": 150, "codec": "h264", "duration": 6.0, "pixel_aspect": [1, 1], "rotation": 0, "interlaced": False}
        assert meta["reader"] == "pyav" and meta["masker"] == "mog"
        assert meta["config_hash"] == HASH and meta["version"] == __version__
        assert 0 <= meta["mse"] <= PARAMS.pairing.max_mse and meta["shift_px"] <= PARAMS.pairing.max_shift_px
        assert 0 < meta["foreground_ratio"] < 1 and 0 < meta["mask_ratio"] < 1 and meta["motion"] <= PARAMS.screen.max_motion


def test_stats_count_frames_and_time_every_stage(static):
    samples, _, stats = static
    counts = stats.counts
    assert counts["segments"] == 1 and counts["frames"] == 50 and counts["static_segments"] == 1
    assert counts["fg_frames"] > 0 and counts["bg_frames"] > 0 and counts["pairs"] == len(samples)
    assert counts["reader_pyav"] == 1
    assert set(stats.seconds) == {"decode", "screen", "mog", "pair", "mask", "encode"}


def test_outputs_are_deterministic_and_independent_of_the_source_kind(static, video):
    path = video / "synth_static_dev.mp4"
    again = process_segment("synth/static", str(path), 0, 150, PARAMS, HASH)
    from_file = process_segment("synth/static", lambda: open(path, "rb"), 0, 150, PARAMS, HASH)
    assert again[0] == static[0] == from_file[0]
    assert again[1] == static[1] == from_file[1]


def test_decord_finds_the_same_pairs(static, video):
    params = Video4RemovalParams(decode={"reader": "decord"})
    samples, _, stats = process_segment("synth/static", str(video / "synth_static_dev.mp4"), 0, 150, params, HASH)
    metas = [decode(s)[3] for s in samples]
    assert [m["reader"] for m in metas] == ["decord"] * len(metas) and stats.counts["reader_decord"] == 1
    assert [(m["source"]["frame"], m["target"]["frame"]) for m in metas] == [
        (m["source"]["frame"], m["target"]["frame"]) for m in (decode(s)[3] for s in static[0])
    ]


def test_a_segment_uses_only_its_own_frames(static, video):
    samples, _, stats = process_segment("synth/static", str(video / "synth_static_dev.mp4"), 0, 75, PARAMS, HASH)
    assert samples and stats.counts["frames"] == 25
    for index, sample in enumerate(samples):
        meta = decode(sample)[3]
        assert meta["segment"] == [0, 75] and 0 <= meta["source"]["frame"] < 75 and 0 <= meta["target"]["frame"] < 75
        assert sample["__key__"] == sample_key("synth/static#0-75", HASH, index)
    assert not {s["__key__"] for s in samples} & {s["__key__"] for s in static[0]}  # segments never share keys


class BoxMasker:
    """A minimal masker through the plugin interface: the MOG2 object's bounding box, grown by a margin."""

    name = "box"
    items_are_clip = False

    def __init__(self, margin: float):
        self.margin = margin

    def masks(self, items):
        results = []
        for item in items:
            height, width = item.source.shape[:2]
            x, y, w, h = cv2.boundingRect(cv2.resize(item.prior, (width, height), interpolation=cv2.INTER_NEAREST))
            grow = round(self.margin * max(width, height))
            mask = np.zeros((height, width), np.uint8)
            mask[max(0, y - grow) : y + h + grow, max(0, x - grow) : x + w + grow] = 255
            results.append(MaskResult(mask))
        return results


def test_another_masker_plugs_in_and_the_sample_invariants_are_enforced(static, video):
    path = str(video / "synth_static_dev.mp4")
    boxed, rejects, _ = process_segment("synth/static", path, 0, 150, PARAMS, HASH, masker=BoxMasker(0.01))
    assert len(boxed) == len(static[0]) and not rejects
    for sample in boxed:
        _, _, mask, meta = decode(sample)
        x, y, w, h = cv2.boundingRect(mask)
        assert meta["masker"] == "box" and cv2.countNonZero(mask) == w * h  # a filled box
    everything, rejects, _ = process_segment("synth/static", path, 0, 150, PARAMS, HASH, masker=BoxMasker(1.0))
    assert everything == [] and {(r.stage, r.reason) for r in rejects} == {("mask", "invalid_mask")}
    assert all("mask is full" in r.detail for r in rejects)


@pytest.mark.parametrize("clip", ["synth_pan_dev", "bikes", "carphone_pristine"])
def test_moving_camera_gives_no_pair_and_says_so(video, clip):
    samples, rejects, stats = process_segment(clip, str(video / f"{clip}.mp4"), 0, 10**6, PARAMS, HASH)
    assert samples == [] and stats.counts["pairs"] == 0
    assert "camera_motion" in {r.reason for r in rejects}
    assert all(r.reason in REASONS[r.stage] for r in rejects)


@pytest.mark.parametrize("clip", ["01_dog", "02_cups"])
def test_object_always_in_view_gives_region_pairs_or_a_reason_for_every_part(video, clip):
    samples, rejects, stats = process_segment(clip, str(video / f"{clip}.mp4"), 0, 10**6, PARAMS, HASH)
    assert samples or rejects
    assert all(r.reason in REASONS[r.stage] and r.detail for r in rejects)
    assert all(json.loads(s["json"])["mode"] == "region" for s in samples), "no whole frame is clean"
    if not samples:
        assert {r.stage for r in rejects} & {"mog", "pair", "screen"}
    assert stats.counts["static_segments"] >= 1  # the camera is static: the screening keeps part of the clip


@pytest.fixture
def broken(video, testdata, tmp_path):
    static, dog = (video / "synth_static_dev.mp4").read_bytes(), (video / "01_dog.mp4").read_bytes()
    made = {
        "truncated": static[: len(static) // 2],
        "truncated_faststart": dog[: len(dog) * 2 // 5],
        "empty": b"",
        "garbage": bytes(range(256)) * 400,
        "image": (testdata / "photos" / "astronaut.png").read_bytes(),
    }
    for name, data in made.items():
        (tmp_path / f"{name}.mp4").write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(
    "name, stage, reason",
    [("truncated", "read", "unreadable"), ("empty", "read", "empty_file"), ("garbage", "read", "unreadable"),
     ("image", "read", "not_a_video")],
)
def test_broken_files_are_rejected_cleanly(broken, name, stage, reason):
    samples, rejects, stats = process_segment(name, str(broken / f"{name}.mp4"), 0, 300, PARAMS, HASH)
    assert samples == [] and [(r.input, r.stage, r.reason) for r in rejects] == [(f"{name}#0-300", stage, reason)]
    assert stats.counts["segments"] == 1


def test_a_truncated_stream_is_used_up_to_the_cut_and_the_rest_rejected(broken, video):
    path = str(broken / "truncated_faststart.mp4")
    samples, rejects, stats = process_segment("dog", path, 0, 289, PARAMS, HASH)
    cut = [r for r in rejects if r.stage == "decode"]
    assert len(cut) == 1 and cut[0].reason == "decode_error" and cut[0].input.endswith("-289")
    decoded_up_to = int(cut[0].input.split("#")[1].split("-")[0])
    assert 0 < decoded_up_to < 289 and stats.counts["frames"] == len(range(0, decoded_up_to, PARAMS.decode.stride))
    assert all(r.reason in REASONS[r.stage] for r in rejects)


def test_absurd_resolution_is_rejected(video):
    params = Video4RemovalParams(decode={"max_pixels": 640 * 360})
    samples, rejects, _ = process_segment("big", str(video / "synth_static_dev.mp4"), 0, 150, params, HASH)
    assert samples == [] and [r.reason for r in rejects] == ["video_too_large"]


def test_split_video_covers_the_video_in_segments_of_about_the_configured_length(video):
    info = probe(str(video / "02_cups.mp4"), PARAMS.decode)
    for seconds in (1.0, 3.0, 4.0, 60.0):
        segments = split_video(info, Video4RemovalParams(segment_seconds=seconds))
        assert segments[0][0] == 0 and segments[-1][1] == info.frames
        assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
        target = min(seconds * info.fps, info.frames)
        assert all(0.66 * target <= stop - start <= 1.5 * target for start, stop in segments)
