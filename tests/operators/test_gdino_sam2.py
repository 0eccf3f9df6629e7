"""The gdino_sam2 masker: the matching geometry on hand-made masks, and the real load -> batch -> infer path of
tiny random GroundingDINO and SAM2 models (tests/models.py) on frames of synth_static_dev.

Random weights make the detections meaningless, so model tests check contracts (shapes, dtypes, the
MaskResult rules, determinism, batching) and the decisions are tested on the geometry functions.
"""

from __future__ import annotations

import os

import boto3
import cv2
import numpy as np
import pytest
import torch
from helpers import through_stage
from models import tiny_gdino, tiny_sam2
from pydantic import ValidationError

from pairmine.operators.checkpoints import CheckpointError
from pairmine.operators.devices import resolve_device
from pairmine.operators.gdino_sam2 import (
    NO_MOVING_OBJECT,
    GdinoSam2MaskerParams,
    boxes_on_motion,
    explain_motion,
    full_resolution,
    object_prompts,
)
from pairmine.operators.gdino_sam2_models import Detections
from pairmine.operators.maskers import MaskInput, MaskResult
from pairmine.operators.video4removal import SegmentMasking, Video4RemovalParams, analyse_segment, encode_samples
from pairmine.pipelines.model_stages import StageActor
from pairmine.operators.video_io import DecodeParams, analysis_size, read_frames

SOURCES, TARGET = (60, 75, 90), 0  # frames with the object / the empty scene
PROMPTS = ("person", "car", "dog")


@pytest.fixture(scope="module")
def video(testdata):
    return testdata / "video" / "synth_static_dev.mp4"


@pytest.fixture(scope="module")
def frames(video) -> dict[int, np.ndarray]:
    return {f.index: f.image for f in read_frames(str(video), [TARGET, *SOURCES], ("pyav",), None, 1).frames}


@pytest.fixture(scope="module")
def truth(testdata) -> np.ndarray:
    return np.load(testdata / "video" / "synth_static_dev.gt.npz")["masks"]


@pytest.fixture(scope="module")
def priors(truth) -> dict[int, np.ndarray]:
    """The ground-truth object masks at analysis size, as uint8 0/1 like the MOG2 masks."""
    size = analysis_size(truth.shape[2], truth.shape[1], DecodeParams().analysis_long_side)
    return {k: cv2.resize(truth[k].astype(np.uint8), size, interpolation=cv2.INTER_AREA) for k in SOURCES}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("tiny-models")
    return {**tiny_gdino(directory), **tiny_sam2(directory)}


def make_params(tiny: dict, **changes) -> GdinoSam2MaskerParams:
    """Small detection input keeps the Swin-T backbone quick; a low box threshold gives random weights boxes."""
    return GdinoSam2MaskerParams(**{**tiny, "prompts": PROMPTS, "detect_short_side": 256, "box_threshold": 0.05, **changes})


@pytest.fixture(scope="module")
def masker(tiny):
    return make_params(tiny, batch_size=2, max_detections=2).build()


def wide_motion(prior: np.ndarray) -> np.ndarray:
    """Motion over the whole frame but a thin border: every detected box touches it, so SAM2 runs on all of them."""
    wide = np.ones_like(prior)
    wide[[0, -1], :] = wide[:, [0, -1]] = 0
    return wide


def assert_contract(result: MaskResult, shape: tuple[int, int]) -> None:
    """A mask (uint8 0/255, the frame's size, neither empty nor full) or a reject with its reason and detail."""
    assert isinstance(result, MaskResult)
    if result.mask is None:
        assert result.reject.reason in {NO_MOVING_OBJECT, "mask_full"} and result.reject.detail
    else:
        assert result.mask.dtype == np.uint8 and result.mask.shape == shape and result.reject is None
        assert set(np.unique(result.mask)) == {0, 255}


def same(a: MaskResult, b: MaskResult) -> bool:
    if a.mask is None or b.mask is None:
        return a.mask is b.mask and a.reject == b.reject
    return np.array_equal(a.mask, b.mask)


def box_of(mask: np.ndarray) -> list[float]:
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    return [x, y, x + w, y + h]


# -- configuration --------------------------------------------------------------------------------------------


def test_prompts_are_cleaned_and_checked(tiny):
    assert make_params(tiny, prompts=(" Person ", "CAR")).prompts == ("person", "car")
    for bad in [(), ("person", ""), ("a. b",), ("what?",), ("car", "Car")]:
        with pytest.raises(ValidationError):
            make_params(tiny, prompts=bad)


@pytest.mark.parametrize("change", [{"concurrency": (2, 1)}, {"concurrency": (0, 1)}, {"min_motion_overlap": 0},
                                    {"box_threshold": 1.0}, {"num_gpus": 2}, {"device": "tpu"}, {"name": "mog"}])
def test_out_of_range_values_are_refused(tiny, change):
    with pytest.raises(ValidationError):
        make_params(tiny, **change)


def test_weights_are_required():
    with pytest.raises(ValidationError) as caught:
        GdinoSam2MaskerParams()
    assert {e["loc"][0] for e in caught.value.errors()} == {"gdino_checkpoint", "text_encoder", "sam2_checkpoint"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_auto_device_is_the_cpu_here_and_cuda_is_refused(masker, tiny):
    assert masker.device == torch.device("cpu") == resolve_device("auto")
    assert next(masker.detector.model.parameters()).device.type == next(masker.segmenter.model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="no GPU"):
        make_params(tiny, device="cuda").build()
    # what each sample's json records: the CPU runs fp32, whatever precision the config asks of CUDA
    assert masker.provenance == {"name": "gdino_sam2", "model": f"{masker.params.gdino_config} + {masker.params.sam2_config}",
                                 "device": "cpu", "precision": "fp32"}


# -- geometry on hand-made boxes and masks --------------------------------------------------------------------


def test_prior_is_scaled_to_the_frame(priors, truth):
    motion = full_resolution(priors[75], truth.shape[1:])
    assert motion.shape == truth.shape[1:] and motion.dtype == bool
    assert np.count_nonzero(motion & truth[75]) / np.count_nonzero(motion | truth[75]) > 0.8


def test_only_boxes_holding_motion_need_a_mask(truth):
    motion = truth[75]
    height, width = motion.shape
    on_object = box_of(motion)
    background = [0, 0, width / 10, height / 10]
    assert not motion[: height // 10, : width // 10].any()
    reaching_out = [on_object[0] - width, on_object[1], on_object[2] + width, on_object[3] + height]  # clipped to the frame
    kept = boxes_on_motion(np.array([on_object, background, reaching_out], np.float32), motion)
    assert kept.tolist() == [True, False, True]
    assert boxes_on_motion(np.zeros((0, 4), np.float32), motion).shape == (0,)


def test_the_moving_object_is_kept_and_static_ones_dropped(truth):
    motion, obj = truth[75], truth[75]
    height, width = motion.shape
    static = np.zeros_like(obj)
    static[: height // 4, : width // 4] = True  # a parked car, away from the motion
    assert not (static & motion).any()
    result = explain_motion(np.stack([static, obj]), ("car", "person"), motion, 0.5, 0.6)
    assert result.mask is not None and result.reject is None
    assert np.array_equal(result.mask > 0, obj), "the union is exactly the moving object: the static one is left out"


def test_all_moving_objects_are_united(truth):
    motion = truth[75]
    left, right = motion.copy(), motion.copy()
    columns = np.flatnonzero(motion.any(axis=0))
    middle = columns[len(columns) // 2]
    left[:, middle:] = right[:, :middle] = False
    result = explain_motion(np.stack([left, right]), ("person", "person"), motion, 0.5, 0.9)
    assert np.array_equal(result.mask > 0, motion)
    alone = explain_motion(left[None], ("person",), motion, 0.5, 0.9)
    assert alone.mask is None and alone.reject.reason == NO_MOVING_OBJECT, "half the motion unexplained: rejected"
    assert f"cover {np.count_nonzero(left) / np.count_nonzero(motion):.2f} of it" in alone.reject.detail


def test_no_object_on_the_motion_is_a_reject_that_says_how_close_the_best_came(truth):
    motion = truth[75]
    height, width = motion.shape
    static = np.zeros_like(motion)
    static[: height // 4, : width // 4] = True
    none = explain_motion(np.zeros((0, height, width), bool), (), motion, 0.5, 0.6)
    assert none.mask is None and none.reject.reason == NO_MOVING_OBJECT and none.reject.detail
    assert not (static & motion).any()
    off = explain_motion(static[None], ("car",), motion, 0.5, 0.6)
    assert off.mask is None and off.reject.reason == NO_MOVING_OBJECT
    assert "car" in off.reject.detail and "0.00 on the motion" in off.reject.detail
    half_on = motion | np.roll(motion, motion.shape[1] // 3, axis=1)  # the object plus as much static area
    share = np.count_nonzero(half_on & motion) / np.count_nonzero(half_on)
    assert explain_motion(half_on[None], ("dog",), motion, share + 0.01, 0.6).mask is None
    assert explain_motion(half_on[None], ("dog",), motion, share - 0.01, 0.6).mask is not None


def test_results_keep_the_sample_invariants(truth):
    motion = truth[75]
    empty = explain_motion(motion[None], ("person",), np.zeros_like(motion), 0.5, 0.6)
    assert empty.mask is None and empty.reject.reason == NO_MOVING_OBJECT
    everything = np.ones_like(motion)
    full = explain_motion(everything[None], ("bus",), everything, 0.5, 0.6)
    assert full.mask is None and full.reject.reason == "mask_full"
    assert_contract(explain_motion(motion[None], ("person",), motion, 0.5, 0.6), motion.shape)


# -- the models -----------------------------------------------------------------------------------------------


def test_detections_are_pixel_boxes_best_first_after_nms(masker, frames):
    images = [frames[k] for k in SOURCES]
    params = masker.params
    found = masker.detector.detect(images)
    assert len(found) == len(images) and masker.detector.detect([]) == []
    height, width = images[0].shape[:2]
    for detections in found:
        boxes, scores = detections.boxes, detections.scores
        assert boxes.dtype == scores.dtype == np.float32 and boxes.shape == (len(scores), 4) == (len(detections.labels), 4)
        assert 0 < len(boxes) <= params.max_detections, "random weights score everything above a low threshold"
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()
        assert (boxes[:, :2] <= boxes[:, 2:]).all()
        assert (scores > params.box_threshold).all() and (np.diff(scores) <= 0).all()
        assert all(set(label.split("/")) <= set(params.prompts) for label in detections.labels)
        for i in range(len(boxes)):
            for j in range(i):
                assert iou(boxes[i], boxes[j]) <= params.nms_iou + 1e-6
    alone = masker.detector.detect(images[1:2])[0]
    assert np.allclose(alone.boxes, found[1].boxes, atol=0.05) and alone.labels == found[1].labels, "batching changes nothing"


def test_text_masks_are_upstreams_built_once_per_caption(masker, frames, monkeypatch):
    from groundingdino.models.GroundingDINO import groundingdino as gdino_module

    from pairmine.operators import gdino_sam2_models as models

    model = masker.detector.model
    tokenized = model.tokenizer([masker.detector.caption] * 3, padding="longest", return_tensors="pt")
    ours, upstream = models.text_masks(tokenized, model.specical_tokens, None), models._upstream_text_masks(tokenized, model.specical_tokens, None)
    assert torch.equal(ours[0], upstream[0]) and torch.equal(ours[1], upstream[1])
    assert len(ours[2]) == 3 and all(torch.equal(a, b) for a, b in zip(ours[2], upstream[2]))
    assert ours[0].any(2).all() and len(ours[2][0]) == len(PROMPTS), "each token attends to its phrase; one span per prompt"
    assert models.text_masks(tokenized, model.specical_tokens, None)[0] is ours[0], "built once, then reused"

    assert gdino_module.generate_masks_with_special_tokens_and_transfer_map is models.text_masks, "what the forward calls"
    images = [frames[k] for k in SOURCES]
    cached = masker.detector.detect(images)
    monkeypatch.setattr(gdino_module, "generate_masks_with_special_tokens_and_transfer_map", models._upstream_text_masks)
    for a, b in zip(cached, masker.detector.detect(images)):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores) and a.labels == b.labels


def test_deformable_attention_gets_the_level_shapes_as_python_ints(masker, frames, monkeypatch):
    """Upstream iterates the levels' (H, W) tensor, one GPU synchronisation per element it reads (12 per layer on
    CUDA); every layer now reads them once, as python ints, with the same boxes."""
    from groundingdino.models.GroundingDINO import ms_deform_attn

    from pairmine.operators import gdino_sam2_models as models

    seen, upstream = [], models._upstream_deformable_attention
    monkeypatch.setattr(models, "_upstream_deformable_attention", lambda value, shapes, *rest: seen.append(shapes) or upstream(value, shapes, *rest))
    ours = masker.detector.detect([frames[SOURCES[0]]])[0]
    layers = sum(isinstance(m, ms_deform_attn.MultiScaleDeformableAttention) for m in masker.detector.model.modules())
    assert len(seen) == layers and all(isinstance(s, list) and all(isinstance(v, int) for level in s for v in level) for s in seen)
    monkeypatch.setattr(ms_deform_attn, "multi_scale_deformable_attn_pytorch", upstream)
    theirs = masker.detector.detect([frames[SOURCES[0]]])[0]
    assert np.array_equal(ours.boxes, theirs.boxes) and np.array_equal(ours.scores, theirs.scores) and ours.labels == theirs.labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def test_sam2_gives_one_full_resolution_mask_per_box(masker, frames, truth):
    images = [frames[75], frames[90]]
    boxes = [np.array([box_of(truth[75]), [0, 0, 100, 80]], np.float32), np.array([box_of(truth[90])], np.float32)]
    masks = masker.segmenter.segment(images, boxes)
    assert [tuple(m.shape) for m in masks] == [(2, *truth.shape[1:]), (1, *truth.shape[1:])]
    assert all(m.dtype == torch.bool and m.device == masker.device for m in masks), "bool masks, left on the model's device"
    again = masker.segmenter.segment(images, boxes)
    assert all(torch.equal(a, b) for a, b in zip(masks, again)), "deterministic for fixed inputs"


@pytest.mark.parametrize("tracking", [False, True])
def test_sam2_built_for_the_cpu_on_a_machine_with_a_gpu_stays_off_it(tiny, frames, truth, monkeypatch, tracking):
    """SAM2's position encoding and RoPE put tensors on CUDA whenever torch sees it: a num_gpus: 0 actor (or the
    driver's weight check) on a GPU machine opened a context on GPU 0 and mixed devices. Here torch is a CPU build,
    so any CUDA tensor raises."""
    from pairmine.operators.gdino_sam2_models import Sam2

    params = make_params(tiny)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what a GPU machine answers
    segmenter = Sam2(params.sam2_config, params.sam2_checkpoint, tiny["sam2_checkpoint"], torch.device("cpu"), video=tracking)
    assert torch.cuda.is_available(), "the machine's answer is back once the model is built"
    (mask,) = segmenter.segment([frames[75]], [np.array([box_of(truth[75])], np.float32)])
    assert mask.device.type == "cpu" and tuple(mask.shape) == (1, *truth.shape[1:])


def test_sam2_inputs_are_prepared_on_the_device_as_sam2_prepares_them(masker, frames):
    from sam2.utils.transforms import SAM2Transforms

    images = [frames[75], np.ascontiguousarray(frames[90][:, :-96])]
    ours = masker.segmenter.transforms.forward_batch(images)
    theirs = SAM2Transforms(1024, 0.0).forward_batch([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in images])
    assert ours.shape == theirs.shape == (2, 3, 1024, 1024) and ours.device == masker.device
    assert torch.allclose(ours, theirs, atol=1e-4), "RGB, [0, 1], the same antialiased resize and normalisation"


def test_masks_of_a_batch_equal_those_one_by_one(masker, frames, priors):
    items = [MaskInput(frames[k], frames[TARGET], wide_motion(priors[k])) for k in SOURCES]  # batch_size 2: chunks of 2 and 1
    assert masker.masks([]) == []
    results = masker.masks(items)
    assert len(results) == len(items)
    for result, item in zip(results, items):
        assert_contract(result, item.source.shape[:2])
        assert result.reject.detail != "no detected object lies on the moving region", "every box touches the wide motion: SAM2 ran"
    assert all(same(a, masker.masks([item])[0]) for a, item in zip(results, items)), "batching changes nothing"


@pytest.fixture(scope="module")
def tracker(tiny):
    return make_params(tiny, propagate=True, max_detections=1).build()


def test_propagation_tracks_each_box_over_the_whole_clip(tracker, frames, truth):
    images = [frames[k] for k in SOURCES]
    masks = tracker.segmenter.track(images, [(1, np.array(box_of(truth[75]), np.float32))], 2)
    assert [tuple(m.shape) for m in masks] == [(1, *truth.shape[1:])] * len(images) and all(m.dtype == torch.bool for m in masks)
    none = tracker.segmenter.track(images, [], 2)
    assert [tuple(m.shape) for m in none] == [(0, *truth.shape[1:])] * len(images)


def test_each_object_of_a_clip_is_prompted_once():
    def found(*boxes):
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.ones(len(boxes), np.float32), ("person",) * len(boxes))

    walker, parked, newcomer = [10, 10, 50, 90], [200, 40, 260, 80], [120, 0, 160, 30]
    clip = [found(walker), found(), found([14, 10, 54, 90], parked), found(parked, [20, 12, 60, 92], newcomer)]
    assert object_prompts(clip, 0.5) == [(0, 0), (2, 1), (3, 2)], "the walker once, on frame 0; the others where they first show"
    assert object_prompts(clip, 0.95) == [(0, 0), (2, 0), (2, 1), (3, 1), (3, 2)], "boxes that overlap less are new objects"
    assert object_prompts([found(), found()], 0.5) == []


def test_clip_state_has_the_keys_of_sam2s_own(tracker, frames, tmp_path):
    for name, k in (("0", TARGET), ("1", SOURCES[0])):
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), frames[k])
    assert tracker.segmenter._clip_state([frames[TARGET]], 1).keys() == tracker.segmenter.model.init_state(str(tmp_path)).keys()


def test_propagating_masker_keeps_the_contract(tracker, frames, priors):
    assert tracker.items_are_clip
    items = [MaskInput(frames[k], frames[TARGET], wide_motion(priors[k])) for k in SOURCES[1:]]
    results = tracker.masks(items)
    assert len(results) == len(items) and tracker.masks([]) == []
    for result, item in zip(results, items):
        assert_contract(result, item.source.shape[:2])
    assert all(same(a, b) for a, b in zip(results, tracker.masks(items)))


def test_propagation_tracks_the_whole_frames_and_segments_region_crops_alone(tracker, frames, priors):
    """region.mode auto mixes whole frames and crops of other sizes in one segment: SAM2's tracker refused the
    clip (frames of one size only) and the job died. Crops show other parts of the scene: each goes alone."""
    whole = [MaskInput(frames[k], frames[TARGET], wide_motion(priors[k])) for k in SOURCES[1:]]
    crop = MaskInput(np.ascontiguousarray(frames[SOURCES[0]][40:, 100:-60]), np.ascontiguousarray(frames[TARGET][40:, 100:-60]),
                     wide_motion(priors[SOURCES[0]]), whole_frame=False)
    results = tracker.masks([whole[0], crop, whole[1]])
    for result, item in zip(results, [whole[0], crop, whole[1]]):
        assert_contract(result, item.source.shape[:2])
    assert same(results[1], tracker.masks([crop])[0])
    assert all(same(a, b) for a, b in zip(results[::2], tracker.masks(whole))), "the whole frames are the clip, as without the crop"


# -- weights: missing, foreign, on S3 --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["gdino_checkpoint", "text_encoder", "sam2_checkpoint", "gdino_config"])
@pytest.mark.parametrize("step", ["check_files", "build"])
def test_missing_files_fail_before_any_model_loads(tiny, tmp_path, field, step):
    missing = str(tmp_path / "nowhere")
    params = make_params(tiny, **{field: missing})
    with pytest.raises(CheckpointError, match="not found") as caught:
        getattr(params, step)()
    assert missing in str(caught.value) and "\n" not in str(caught.value)
    assert ("SAM2" if field.startswith("sam2") else "GroundingDINO") in str(caught.value)


def test_files_that_are_there_pass_the_driver_check(tiny):
    assert make_params(tiny).check_files() is None
    assert make_params(tiny, gdino_config="GroundingDINO_SwinT_OGC.py", sam2_config="configs/sam2.1/sam2.1_hiera_t.yaml").check_files() is None


@pytest.mark.parametrize("field, other, model", [("gdino_checkpoint", "sam2_checkpoint", "GroundingDINO"),
                                                 ("sam2_checkpoint", "gdino_checkpoint", "SAM2"),
                                                 ("sam2_checkpoint", "sam2_config", "SAM2")])
def test_weights_of_another_model_are_a_clear_error(tiny, field, other, model):
    with pytest.raises(CheckpointError) as caught:
        make_params(tiny, **{field: tiny[other]}).build()
    message = str(caught.value)
    assert message.startswith(f"{model} checkpoint {tiny[other]} ") and "\n" not in message
    assert "does not fit" in message or "not a readable torch checkpoint" in message


def test_prompts_the_text_encoder_cannot_read_are_refused(tiny):
    with pytest.raises(ValueError, match="unicorn"):
        make_params(tiny, prompts=("person", "unicorn")).build()


def test_a_folder_that_is_no_bert_is_a_clear_error(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(CheckpointError, match=f"GroundingDINO text encoder {tmp_path} is not a BERT folder"):
        make_params(tiny, text_encoder=str(tmp_path)).build()


def test_weights_and_configs_load_from_s3(tiny, masker, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRMINE_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3")
    uris = {}
    for field, path in tiny.items():
        files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
        for file in files:
            s3.upload_file(file, s3_bucket, f"models/{field}/{os.path.relpath(file, os.path.dirname(path))}")
        uris[field] = f"s3://{s3_bucket}/models/{field}/{os.path.basename(path)}"
    params = make_params(tiny, **uris)
    params.check_files()
    loaded = params.build()
    for ours, theirs in ((loaded.detector.model, masker.detector.model), (loaded.segmenter.model, masker.segmenter.model)):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert os.path.isdir(tmp_path / "cache"), "downloaded into the cache"


# -- the Ray-facing stage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("propagate", [False, True])
def test_mask_stage_masks_every_candidate_and_times_itself(tiny, video, propagate):
    config = Video4RemovalParams(pairing={"max_pairs": 2})
    work = analyse_segment("synth/static", str(video), 0, 150, config)
    empty = analyse_segment("synth/short", str(video), 0, 3, config)  # too short: no candidates
    assert work.candidates and not empty.candidates
    stage = StageActor(SegmentMasking(make_params(tiny, propagate=propagate, max_detections=2)))
    assert all(item.target is None for item in stage.stage.inputs(work)), "the masker never reads the target frames: they stay"
    through_stage(stage, [work, empty])
    results = work.results
    assert len(results) == len(work.candidates) and empty.results == []
    for result, candidate in zip(results, work.candidates):
        assert_contract(result, candidate.source.image.shape[:2])
    assert work.stats.counts["masked"] == len(work.candidates) and empty.stats.counts["masked"] == 0
    assert work.stats.seconds["mask"] > 0 and work.stats.seconds["mask_idle"] == 0, "no idle time before the first call"
    through_stage(stage, [empty])
    assert empty.stats.seconds["mask_idle"] > 0
    samples = encode_samples(work, stage.model.name, config, "c0ffee")
    assert len(samples) + sum(r.stage == "mask" for r in work.rejects) == len(work.candidates)


def test_the_masker_takes_region_crops_through_the_same_interface(masker, testdata):
    """Region pairs hand the masker crops (and the crop's MOG2 mask): its masks have the crop's size."""
    config = Video4RemovalParams(region={"mode": "region"}, pairing={"max_pairs": 2})
    work = analyse_segment("crowd", str(testdata / "video" / "synth_crowd_dev.mp4"), 0, 240, config)
    assert work.candidates and all("crop" in c.meta for c in work.candidates)
    for candidate, result in zip(work.candidates, masker.masks([c.mask_input() for c in work.candidates])):
        x0, y0, x1, y1 = candidate.meta["crop"]
        assert candidate.source.image.shape[:2] == (y1 - y0, x1 - x0)
        assert_contract(result, candidate.source.image.shape[:2])


def test_frames_of_different_sizes_are_never_detected_in_one_padded_batch(masker, frames, priors, monkeypatch):
    """Two videos' frames in one call (rows_per_call > 1): each detection batch holds one frame size, so a
    frame's boxes are those it gets alone, whichever frames share its call."""
    narrow = np.ascontiguousarray(frames[SOURCES[0]][:, :-96])
    items = [MaskInput(frames[SOURCES[0]], frames[TARGET], wide_motion(priors[SOURCES[0]])),
             MaskInput(narrow, np.ascontiguousarray(frames[TARGET][:, :-96]), wide_motion(priors[SOURCES[0]])),
             MaskInput(frames[SOURCES[1]], frames[TARGET], wide_motion(priors[SOURCES[1]]))]
    shapes, detect = [], masker.detector.detect
    monkeypatch.setattr(masker.detector, "detect", lambda images: shapes.append({im.shape for im in images}) or detect(images))
    results = masker.masks(items)
    assert len(shapes) == 2 and all(len(batch) == 1 for batch in shapes)
    assert shapes[0] == {frames[SOURCES[0]].shape}  # the two full-size frames together (batch_size 2), the narrow one alone
    monkeypatch.undo()
    assert all(same(a, masker.masks([item])[0]) for a, item in zip(results, items)), "a frame's result does not depend on its batch"


def test_crops_of_one_aspect_ratio_share_a_detection_batch(masker, frames, priors, monkeypatch):
    """Batches are keyed on the detector's input size, not the frame's: a region crop and a larger one of the same
    aspect ratio scale to one input and run together instead of one at a time."""
    small = cv2.resize(frames[SOURCES[0]], (720, 405), interpolation=cv2.INTER_AREA)
    assert masker.detector.input_size(small.shape) == masker.detector.input_size(frames[SOURCES[0]].shape)
    items = [MaskInput(frames[SOURCES[0]], frames[TARGET], wide_motion(priors[SOURCES[0]])),
             MaskInput(small, cv2.resize(frames[TARGET], (720, 405), interpolation=cv2.INTER_AREA), wide_motion(priors[SOURCES[0]]))]
    batches, detect = [], masker.detector.detect
    monkeypatch.setattr(masker.detector, "detect", lambda images: batches.append(len(images)) or detect(images))
    results = masker.masks(items)
    assert batches == [2]
    monkeypatch.undo()
    for result, item in zip(results, items):
        assert_contract(result, item.source.shape[:2])
