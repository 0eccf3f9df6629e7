"""Screening: static runs on a static clip, camera motion on moving ones, and splits at cuts, flicker and pans."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pairmine.operators.video_io import DecodeParams, analysis_size, probe, read_frames
from pairmine.operators.video_screen import CLEAN, ScreenParams, screen, tile_shift

PARAMS = ScreenParams()
STRIDE = DecodeParams().stride


@pytest.fixture(scope="module")
def clips(testdata):
    """Grey analysis frames, frame numbers, fps and full width of each clip, decoded once."""
    cache = {}

    def load(name: str, stride: int = STRIDE):
        if (name, stride) not in cache:
            path = str(testdata / "video" / f"{name}.mp4")
            info = probe(path, DecodeParams())
            frames = read_frames(path, range(0, info.frames, stride), ("pyav",), analysis_size(info.width, info.height, 480), 1).frames
            greys = [cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY) for f in frames]
            cache[name, stride] = (greys, [f.index for f in frames], info.fps, info.width)
        return cache[name, stride]

    return load


def test_static_clip_is_one_run_with_no_drift(clips):
    greys, indices, fps, width = clips("synth_static_dev")
    result = screen(greys, indices, fps, width, PARAMS)
    assert [(r.first, r.stop) for r in result.runs] == [(0, len(greys))]
    assert result.dropped == [] and set(result.labels) == {CLEAN}
    assert np.abs(result.displacement).max() < 1.0  # analysis pixels, over the whole clip


@pytest.mark.parametrize("stride", [1, 2])
def test_a_short_stride_reads_static_footage_as_static(clips, stride):
    """At stride 1, a phase correlation's sub-pixel noise divided by one frame read as camera motion and split a
    real static clip (01_dog) with camera_motion rejects; motion is measured over at least 3 frames."""
    result = screen(*clips("01_dog", stride), PARAMS)
    assert [(r.first, r.stop) for r in result.runs] == [(0, len(result.labels) + 1)] and result.dropped == []
    at_stride_3 = screen(*clips("01_dog"), PARAMS).steps.motion
    assert np.nanpercentile(result.steps.motion, 90) < 1.5 * np.nanpercentile(at_stride_3, 90)
    pan = clips("synth_pan_dev", stride)
    assert np.median(screen(*pan, PARAMS).steps.motion) * pan[3] == pytest.approx(2.0, abs=0.2), "a pan keeps its true speed"
    greys, indices, fps, width = clips("01_dog", stride)
    for start in (124 // stride, 133 // stride, 193 // stride):  # a segment's first steps: nothing 3 frames back
        later = screen(greys[start:], indices[start:], fps, width, PARAMS)
        assert [(r.first, r.stop) for r in later.runs] == [(0, len(greys) - start)] and later.dropped == [], start


def test_at_stride_1_a_cut_splits_two_static_shots_where_it_is(clips):
    """The 3-frame motion baseline never reaches across a cut (its far correlation read the other shot as motion)."""
    a, b = clips("synth_static_dev", 1), clips("01_dog", 1)
    size = a[0][0].shape[::-1]
    greys = a[0][:60] + [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in b[0][:60]]
    result = screen(greys, list(range(120)), 25.0, 960, PARAMS)
    assert result.labels[59] == "scene_cut" and result.labels.count("scene_cut") == 1
    assert [(r.first, r.stop) for r in result.runs] == [(0, 60), (60, 120)] and result.dropped == []


def test_pan_is_measured_at_its_true_speed(clips):
    greys, indices, fps, width = clips("synth_pan_dev")
    result = screen(greys, indices, fps, width, PARAMS)
    assert result.runs == [] and [s.reject.reason for s in result.dropped] == ["camera_motion"]
    assert np.median(result.steps.motion) * width == pytest.approx(2.0, abs=0.2)  # README: 2 px per frame


@pytest.mark.parametrize("name", ["bikes", "carphone_pristine"])
def test_moving_camera_leaves_no_static_run(clips, name):
    result = screen(*clips(name), PARAMS)
    assert result.runs == []
    assert "camera_motion" in [s.reject.reason for s in result.dropped]
    assert "max_motion" in result.dropped[0].reject.detail


def test_a_cut_splits_two_static_shots(clips):
    a, b = clips("synth_static_dev"), clips("01_dog")
    size = a[0][0].shape[::-1]
    greys = a[0][:30] + [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in b[0][:30]]
    indices = list(range(0, 60 * STRIDE, STRIDE))
    result = screen(greys, indices, 25.0, 960, PARAMS)
    assert result.labels[29] == "scene_cut" and result.labels.count("scene_cut") == 1
    assert [(r.first, r.stop) for r in result.runs] == [(0, 30), (30, 60)]


def test_strong_flicker_is_dropped_and_the_rest_kept(clips):
    greys, indices, fps, width = clips("synth_static_dev")
    flickering = [cv2.convertScaleAbs(g, alpha=1.3) if i >= 30 and i % 2 == 0 else g for i, g in enumerate(greys)]
    result = screen(flickering, indices, fps, width, PARAMS)
    assert all(label == "flicker" for label in result.labels[29:])
    assert [(r.first, r.stop) for r in result.runs] == [(0, 30)]
    assert [(s.first, s.stop, s.reject.reason) for s in result.dropped] == [(30, len(greys), "flicker")]


def test_a_pan_in_the_middle_splits_the_clip_into_two_static_runs(clips):
    greys, indices, fps, width = clips("synth_static_dev")
    panned = []
    for i, grey in enumerate(greys):
        offset = 1.5 * (min(max(i, 20), 30) - 20)  # still, then 1.5 analysis px per sample, then still again
        panned.append(cv2.warpAffine(grey, np.float32([[1, 0, offset], [0, 1, 0]]), grey.shape[::-1], borderMode=cv2.BORDER_REFLECT))
    result = screen(panned, indices, fps, width, PARAMS)
    assert [(r.first, r.stop) for r in result.runs] == [(0, 21), (30, len(greys))]
    assert [(s.first, s.stop, s.reject.reason) for s in result.dropped] == [(21, 30, "camera_motion")]


def test_short_static_stretches_are_dropped_as_too_short(clips):
    greys, indices, fps, width = clips("synth_static_dev")
    result = screen(greys[:10], indices[:10], fps, width, ScreenParams(min_static_seconds=10 * STRIDE / fps + 1))
    assert result.runs == [] and [s.reject.reason for s in result.dropped] == ["too_short"]


def test_a_static_run_as_long_as_min_static_seconds_is_kept(clips):
    """A clip of exactly 2.0 s (stride 3 at 25 fps: 17 samples, 0..48, the last two frames unanalysed) was "shorter
    than 2.0 s": its samples' first-to-last span is 1.96 s. A run of n samples spans n strides."""
    greys, indices, fps, width = clips("synth_static_dev")
    seconds = 17 * STRIDE / fps
    kept = screen(greys[:17], indices[:17], fps, width, ScreenParams(min_static_seconds=seconds))
    assert [(r.first, r.stop) for r in kept.runs] == [(0, 17)]
    short = screen(greys[:16], indices[:16], fps, width, ScreenParams(min_static_seconds=seconds))
    assert short.runs == [] and [s.reject.reason for s in short.dropped] == ["too_short"]


def test_tile_shift_ignores_an_object_moving_across_one_tile(clips):
    greys = clips("synth_static_dev")[0]
    still = greys[0].astype(np.float32)
    moved = still.copy()
    moved[20:80, 20:140] = np.roll(still[20:80, 20:140], 25, axis=1)  # content moves inside one tile only
    shift = tile_shift(still, moved, 3, PARAMS.min_tile_response)
    assert np.hypot(*shift) < 0.1
    shifted = np.roll(still, (2, 3), axis=(0, 1))  # the whole frame: 3 px right, 2 px down
    assert tile_shift(still, shifted, 3, PARAMS.min_tile_response) == pytest.approx([3, 2], abs=0.1)
