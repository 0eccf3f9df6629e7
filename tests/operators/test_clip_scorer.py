"""CLIP scoring with a tiny random open_clip model: the real load -> composite -> batch -> infer path on CPU.

The weights are random, so no score means anything by itself: every expectation is a relation (same
inputs give the same scores, batching changes nothing, logit = 100 × cosine, thresholds split the
scores where they are put) or is recomputed here from the scorer's own single-prompt results.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import boto3
import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pairmine.operators.annotations import Segment
from pairmine.operators.checkpoints import CheckpointError
from pairmine.operators.clip_model import ClipModel
from pairmine.operators.clip_scorer import ClipScorerParams, clip_input_size, on_background, square_input
from pairmine.operators.entities import Entity
from pairmine.operators.scorers import Score
from pairmine.operators.syn4removal import EntityScoring, Syn4RemovalParams, extract_group, score_entities
from pairmine.pipelines.model_stages import INPUTS, ITEM, OUTPUT, Sized, StageActor, with_output

from helpers import panoptic_row, through_stage
from models import tiny_clip

PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "photos"
# (file, category): photos of the sample data; None stands for SA-1B's uncategorised entities
PHOTO_ENTITIES = [
    ("astronaut.png", "person"), ("chelsea.png", "cat"), ("coffee.png", "cup"), ("motorcycle_left.png", "motorcycle"),
    ("rocket.jpg", None), ("chelsea.png", None), ("astronaut.png", None),
]
GOOD_SA1B = ("sa_142238", "sa_100", "sa_101", "sa_102", "sa_103")  # the tar's usable records (testdata README)
TINY_NAME = "pairmine-tiny-clip"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[str, str]:
    return tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def clip_params(tiny, **overrides) -> ClipScorerParams:
    """The tiny model on the cosine scale, keeping everything unless told otherwise."""
    config, checkpoint = tiny
    keep = {"min_predicted_iou": 0.0, "min_stability_score": 0.0}  # the annotation checks that run first, open too
    return ClipScorerParams(**{"model": config, "checkpoint": checkpoint, "scale": "cosine", "threshold": -1.0, "annotation": keep, **overrides})


@pytest.fixture(scope="module")
def scorer(tiny):
    return clip_params(tiny).build()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: cv2.imread(str(PHOTOS / name)) for name, _ in PHOTO_ENTITIES}


def photo_entity(index: int, image: np.ndarray, category: str | None, mask: np.ndarray | None = None) -> Entity:
    """A materialised entity: a crop of the photo (different per index) and an elliptic mask."""
    crop = image[index * 7 :, index * 5 :]
    height, width = crop.shape[:2]
    if mask is None:
        mask = np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, (width // 2, height // 2), (width * 2 // 5, height * 2 // 5), 0, 0, 360, 1, -1)
    segment = Segment(index=index, box=(index * 5, index * 7, width, height), area=float(mask.sum()), category=category)
    return Entity(f"photos/{index}#{index}", f"photos/{index}", segment, 0.5, pixels=crop, mask=mask)


@pytest.fixture
def entities(photos) -> list[Entity]:
    return [photo_entity(i, photos[name], category) for i, (name, category) in enumerate(PHOTO_ENTITIES)]


def values(scores: list[Score]) -> np.ndarray:
    return np.array([s.value for s in scores])


def cut_between(scores: np.ndarray, rank: int) -> float:
    """A threshold halfway between the rank-th and the next score: float noise cannot move a score across it."""
    ordered = np.sort(scores)
    return float((ordered[rank - 1] + ordered[rank]) / 2)


# --- parameters ---------------------------------------------------------------------------------------


def test_defaults_use_the_logit_scale_with_x_paste_threshold():
    params = ClipScorerParams(checkpoint="s3://b/clip.pt")
    assert (params.scale, params.threshold, params.model, params.device) == ("logit", 25.0, "ViT-B-32", "auto")
    assert params.needs_pixels and params.name == "clip"
    assert params.threshold_for("cat") == params.threshold_for(None) == 25.0
    assert params.prompts_for("cat") == ("a photo of a cat",)
    assert params.prompts_for(None) == params.generic_prompts


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"threshold": 0.2}, "threshold 0.2 is outside [1, 100] on the logit scale; CLIP logits are cosine × 100"),
        ({"scale": "cosine", "threshold": 25}, "threshold 25.0 is outside [-1, 1] on the cosine scale"),
        ({"class_thresholds": {"cat": 0.3}}, "class_thresholds['cat'] 0.3 is outside [1, 100]"),
        ({"generic_threshold": 120}, "generic_threshold 120.0 is outside [1, 100]"),
        ({"prompt": "a photo"}, "prompt must hold {category}"),
        ({"prompt": "a {style} photo of a {category}"}, "prompt may hold only the field {category}"),
        ({"concurrency": (2, 1)}, "concurrency is (min, max) actors"),
        ({"concurrency": (0, 1)}, "concurrency is (min, max) actors"),
        ({"num_gpus": 1.5}, "less than or equal to 1"),
        ({"precision": "fp8"}, "Input should be 'fp32', 'fp16' or 'bf16'"),
        ({"generic_prompts": ()}, "at least 1 item"),
        ({"background": 256}, "less than or equal to 255"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"thresholds": 20}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_parameters_are_refused(overrides, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ClipScorerParams(checkpoint="clip.pt", **overrides)


def test_the_checkpoint_is_required():
    with pytest.raises(ValidationError, match="checkpoint"):
        ClipScorerParams()


# --- compositing ----------------------------------------------------------------------------------------


def test_crops_are_centred_on_a_grey_square_in_rgb():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (3, 6, 3), dtype=np.uint8)
    mask = rng.integers(0, 2, (3, 6), dtype=np.uint8)
    square = on_background(pixels, mask, 77)
    assert square.shape == (6, 6, 3) and square.dtype == np.uint8
    assert (square[:1] == 77).all() and (square[4:] == 77).all(), "padding above and below"
    inside = square[1:4]
    assert np.array_equal(inside[mask == 1], pixels[..., ::-1][mask == 1])
    assert (inside[mask == 0] == 77).all()
    assert np.array_equal(on_background(pixels, None, 77)[1:4], pixels[..., ::-1])


@pytest.mark.parametrize("shape", [(1000, 700), (333, 1201), (224, 300), (90, 60)])
def test_a_crop_shrunk_before_it_is_composed_is_the_composed_square_resized(shape):
    rng = np.random.default_rng(sum(shape))
    pixels = cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (0, 0), 4)
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (shape[1] // 2, shape[0] // 2), (shape[1] // 3, shape[0] // 3), 0, 0, 360, 1, -1)
    for m in (mask, None):
        square = on_background(pixels, m, 77)
        reference = cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA if square.shape[0] > 224 else cv2.INTER_CUBIC)
        fast = square_input(pixels, m, 77, 224)
        assert fast.shape == (224, 224, 3) and fast.dtype == np.uint8
        ref = reference.astype(int)
        one_pixel = max(np.abs(ref[1:] - ref[:-1]).mean(), np.abs(ref[:, 1:] - ref[:, :-1]).mean())
        assert np.abs(fast.astype(int) - ref).mean() <= one_pixel, "the same picture, up to a sub-pixel shift"
        assert (fast[:, :2] == 77).all() if shape[0] > shape[1] else (fast[:2] == 77).all(), "grey padding on the short side"


# --- the model --------------------------------------------------------------------------------------------


def test_embeddings_are_unit_float32_rows(scorer, entities):
    images = scorer.model.encode_images([on_background(e.pixels, e.mask, 128) for e in entities[:3]])
    texts = scorer.model.encode_texts(["a photo of a cat", "a photo of a dog"])
    assert images.shape == (3, 16) and texts.shape == (2, 16)
    assert images.dtype == texts.dtype == np.float32
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert not np.allclose(texts[0], texts[1])


def test_auto_device_is_the_cpu_here_and_half_precision_falls_back_to_fp32(tiny, scorer, entities):
    import torch

    assert scorer.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    half = clip_params(tiny, precision="bf16", device="cpu").build()
    assert half.model.precision == "fp32" and half.provenance["precision"] == "fp32" and half.provenance["device"] == "cpu"
    assert next(half.model.model.parameters()).dtype == torch.float32
    assert np.array_equal(values(half.score(entities)), values(scorer.score(entities)))


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tiny):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="device 'cuda' was asked for, but this process sees no GPU"):
        clip_params(tiny, device="cuda").build()


def test_scores_are_deterministic_and_in_entity_order(tiny, scorer, entities):
    scores = scorer.score(entities)
    assert len(scores) == len(entities)
    assert all(isinstance(s.value, float) and -1 <= s.value <= 1 and s.passed for s in scores)
    first = values(scores)
    assert len(np.unique(first.round(6))) == len(entities), "different crops get different scores"
    assert np.array_equal(values(scorer.score(entities)), first)
    assert np.array_equal(values(clip_params(tiny).build().score(entities)), first), "a fresh load of the same weights"
    assert np.allclose(values(scorer.score(entities[::-1])), first[::-1], rtol=0, atol=1e-6)


def test_batching_gives_the_scores_of_one_by_one(tiny, scorer, entities):
    assert scorer.score([]) == []
    one_by_one = np.array([scorer.score([e])[0].value for e in entities])
    for batch_size in (2, 3, 5, len(entities), 64):  # 7 entities: uneven last batches, one batch, a larger batch
        batched = values(clip_params(tiny, batch_size=batch_size).build().score(entities))
        np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-6, err_msg=f"batch_size {batch_size}")


def test_logit_scale_is_100_times_cosine_with_the_same_ranking(tiny, scorer, entities):
    cosine = values(scorer.score(entities))
    logit_scores = clip_params(tiny, scale="logit", threshold=1.0).build().score(entities)
    logit = values(logit_scores)
    np.testing.assert_allclose(logit, 100 * cosine, rtol=1e-6)
    assert np.array_equal(np.argsort(logit), np.argsort(cosine))
    assert [s.passed for s in logit_scores] == list(logit >= 1.0)


def test_threshold_splits_the_scores_and_rejects_with_reason(tiny, scorer, entities):
    cosine = values(scorer.score(entities))
    cut = cut_between(cosine, 3)
    judged = clip_params(tiny, threshold=cut).build().score(entities)
    assert [s.passed for s in judged] == list(cosine >= cut)
    assert sum(s.passed for s in judged) == len(entities) - 3
    for score in judged:
        if score.passed:
            assert score.reject is None
        else:
            assert score.reject.reason == "clip_score_below_threshold"
            assert f"{score.value:.4g}" in score.reject.detail and f"{cut:g}" in score.reject.detail


def test_class_and_generic_thresholds_override_the_default(tiny, scorer, entities):
    cosine = dict(zip((e.id for e in entities), values(scorer.score(entities))))
    cut = cut_between(np.array(list(cosine.values())), 3)
    failing = next(e for e in entities if e.category and cosine[e.id] < cut)
    passing = next(e for e in entities if e.category and cosine[e.id] >= cut)
    generic = [e for e in entities if e.category is None]
    params = clip_params(
        tiny, threshold=cut, generic_threshold=1.0,
        class_thresholds={failing.category: cosine[failing.id] - 0.01, passing.category: cosine[passing.id] + 0.01},
    )
    verdicts = {e.id: s.passed for e, s in zip(entities, params.build().score(entities))}
    assert verdicts[failing.id] and not verdicts[passing.id]
    assert not any(verdicts[e.id] for e in generic), "generic_threshold 1.0 (cosine) rejects every uncategorised entity"
    others = [e for e in entities if e.category not in (None, failing.category, passing.category)]
    assert others and all(verdicts[e.id] == (cosine[e.id] >= cut) for e in others)


def test_prompts_category_template_and_best_generic_prompt(tiny, scorer, entities):
    default = values(scorer.score(entities))
    generic = [i for i, e in enumerate(entities) if e.category is None]
    categorised = [i for i, e in enumerate(entities) if e.category]
    each_prompt = np.array(
        [values(clip_params(tiny, generic_prompts=(p,)).build().score(entities)) for p in scorer.params.generic_prompts]
    )
    np.testing.assert_allclose(default[generic], each_prompt.max(axis=0)[generic], rtol=0, atol=1e-6)
    np.testing.assert_allclose(each_prompt[:, categorised], np.tile(default[categorised], (3, 1)), rtol=0, atol=1e-6)
    reworded = values(clip_params(tiny, prompt="a blurry photo of the {category}").build().score(entities))
    assert not np.allclose(reworded[categorised], default[categorised])
    np.testing.assert_allclose(reworded[generic], default[generic], rtol=0, atol=1e-6)


def test_context_scores_the_whole_box_and_keeps_the_masked_verdict(tiny, photos, entities):
    plain = clip_params(tiny).build()
    cosine = values(plain.score(entities))
    cut = cut_between(cosine, 3)
    judged = clip_params(tiny, threshold=cut, context=True).build().score(entities)
    np.testing.assert_allclose(values(judged), cosine, rtol=0, atol=1e-6)
    assert [s.passed for s in judged] == list(cosine >= cut), "the masked crop decides"
    unmasked = [
        photo_entity(i, photos[name], category, mask=np.ones(e.mask.shape, np.uint8))
        for i, ((name, category), e) in enumerate(zip(PHOTO_ENTITIES, entities))
    ]
    whole_box = values(plain.score(unmasked))
    np.testing.assert_allclose([e.scores["clip_context"] for e in entities], whole_box, rtol=0, atol=1e-5)
    assert not np.allclose(whole_box, cosine, atol=1e-3)


# --- weights and model configs ----------------------------------------------------------------------------


def test_missing_checkpoint_names_the_path_and_the_model(tiny, tmp_path):
    missing = str(tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match=f"^CLIP {TINY_NAME} checkpoint not found: {missing}$"):
        clip_params(tiny, checkpoint=missing).build()
    with pytest.raises(CheckpointError, match=f"^CLIP ViT-B-32 checkpoint not found: {missing}$"):
        ClipScorerParams(checkpoint=missing).check_files()  # the driver's early check: no model is loaded
    with pytest.raises(CheckpointError, match=f"^CLIP model config not found: {tmp_path}/tiny.json$"):
        clip_params(tiny, model=str(tmp_path / "tiny.json")).check_files()
    clip_params(tiny).check_files()


def test_checkpoint_of_another_model_is_a_checkpoint_error(tiny, tmp_path):
    _, wider = tiny_clip(tmp_path, name="pairmine-tiny-clip-wide", width=48)
    with pytest.raises(CheckpointError) as caught:
        clip_params(tiny, checkpoint=wider).build()
    message = str(caught.value)
    assert message.startswith(f"CLIP checkpoint {wider} does not fit model {TINY_NAME}: ")
    assert len(message) > len(f"CLIP checkpoint {wider} does not fit model {TINY_NAME}: ") and "\n" not in message
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"CLIP checkpoint {junk} does not fit model {TINY_NAME}"):
        clip_params(tiny, checkpoint=str(junk)).build()


def test_unusable_model_configs_are_refused_before_loading(tiny, tmp_path):
    _, checkpoint = tiny
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"embed_dim": 16}))
    cases = {
        "ViT-Nope-32": "unknown open_clip model 'ViT-Nope-32'",
        str(incomplete): "lacks embed_dim, vision_cfg or text_cfg",
        "roberta-ViT-B-32": "needs a Hugging Face tokenizer or text model",  # would download from the hub
        str(tmp_path / "absent.json"): "CLIP model config not found",
    }
    for model, message in cases.items():
        with pytest.raises(ValueError, match=message):
            ClipScorerParams(model=model, checkpoint=checkpoint).build()


def test_model_config_and_checkpoint_load_from_s3(tiny, scorer, entities, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRMINE_CACHE", str(tmp_path / "cache"))
    client = boto3.client("s3")
    for path, key in zip(tiny, (f"models/{TINY_NAME}.json", "models/tiny.pt")):
        client.upload_file(path, s3_bucket, key)
    remote = clip_params(tiny, model=f"s3://{s3_bucket}/models/{TINY_NAME}.json", checkpoint=f"s3://{s3_bucket}/models/tiny.pt")
    assert np.array_equal(values(remote.build().score(entities)), values(scorer.score(entities)))
    assert (tmp_path / "cache" / "s3" / s3_bucket / "models" / "tiny.pt").is_file()


# --- the Ray-facing stage on real SA-1B groups ---------------------------------------------------------------


def sa1b_groups(sa1b_row, params: ClipScorerParams) -> list:
    """Two groups of the sample tar's good records, cut for a pixel scorer (extract_group materialises them)."""
    groups = [extract_group(sa1b_row(stems), Syn4RemovalParams(), params) for stems in (GOOD_SA1B[:2], GOOD_SA1B[2:])]
    assert all(g.entities for g in groups) and all(e.mask is not None for g in groups for e in g.entities)
    return groups


def outcome(group) -> tuple:
    """What scoring leaves in a group: kept ids with their scores, rejects."""
    kept = {e.id: e.scores["clip"] for e in group.entities}
    return kept, sorted((r.input, r.stage, r.reason) for r in group.rejects)


@pytest.fixture(scope="module")
def sa1b_cut(tiny, sa1b_row) -> float:
    """A threshold that keeps some and rejects some of the SA-1B groups' entities."""
    params = clip_params(tiny)
    cosine = values(params.build().score([e for g in sa1b_groups(sa1b_row, params) for e in g.entities]))
    return cut_between(cosine, len(cosine) // 2)


def assert_scored_like_score_entities(tiny, sa1b_row, scored_groups, params):
    """The stage's groups hold exactly what score_entities gives, group by group, with the same scorer."""
    reference = sa1b_groups(sa1b_row, params)
    scorer = params.build()
    for group in reference:
        group.entities, rejects = score_entities(group.entities, scorer)
        group.rejects += rejects
    assert len(scored_groups) == len(reference)
    for got, want in zip(scored_groups, reference):
        (got_kept, got_rejects), (want_kept, want_rejects) = outcome(got), outcome(want)
        assert got_kept.keys() == want_kept.keys() and got_rejects == want_rejects
        assert np.allclose([got_kept[k] for k in got_kept], [want_kept[k] for k in got_kept], rtol=0, atol=2e-5)


def test_stage_scores_a_batch_of_groups_like_score_entities(tiny, sa1b_row, sa1b_cut):
    params = clip_params(tiny, threshold=sa1b_cut, batch_size=4)  # 4 divides neither group's entity count
    groups = sa1b_groups(sa1b_row, params)
    candidates = [len(g.entities) for g in groups]
    stage = StageActor(EntityScoring(params))
    assert through_stage(stage, groups) == groups
    assert_scored_like_score_entities(tiny, sa1b_row, groups, params)
    assert any(g.entities for g in groups) and any(r.reason == "clip_score_below_threshold" for g in groups for r in g.rejects)
    clip_rejects = [r for g in groups for r in g.rejects if r.reason == "clip_score_below_threshold"]
    assert {r.stage for r in clip_rejects} == {"entity"} and all(f"{sa1b_cut:g}" in r.detail for r in clip_rejects)
    assert [g.stats.counts["entities_scored"] for g in groups] == candidates
    assert all(g.stats.seconds["score"] > 0 for g in groups)
    assert sum(g.stats.seconds["score_idle"] for g in groups) == 0, "no idle time before the first call"

    pause = 0.05
    time.sleep(pause)
    later = sa1b_groups(sa1b_row, params)[:1]
    through_stage(stage, later)
    assert later[0].stats.seconds["score_idle"] >= pause
    assert later[0].stats.counts["entities_scored"] == candidates[0]


def test_stage_as_a_ray_data_actor(ray_local, tiny, sa1b_row, sa1b_cut):
    params = clip_params(tiny, threshold=sa1b_cut, batch_size=4)
    stage, groups = EntityScoring(params), sa1b_groups(sa1b_row, params)
    dataset = ray_local.data.from_items([{ITEM: k, INPUTS: Sized(stage.inputs(g))} for k, g in enumerate(groups)]).map_batches(
        StageActor, fn_constructor_args=(stage,), batch_size=2, concurrency=1, batch_format="pandas"
    )
    for row in dataset.take_all():
        with_output(stage, groups[row[ITEM]], row[OUTPUT])
    groups = sorted(groups, key=lambda g: g.consumed)
    groups = [g for stems in (GOOD_SA1B[:2], GOOD_SA1B[2:]) for g in groups if g.consumed == list(stems)]
    assert_scored_like_score_entities(tiny, sa1b_row, groups, params)
    assert all(g.stats.counts["entities_scored"] > 0 and g.stats.seconds["score"] > 0 for g in groups)


def test_input_size_comes_from_the_model_config_without_torch(tiny):
    assert clip_input_size("ViT-B-32") == 224 and clip_input_size(tiny[0]) == 32


def test_inputs_prepared_in_the_cpu_task_score_like_open_clips_own_transform(tiny, sa1b_row, sa1b_cut):
    params = clip_params(tiny, threshold=sa1b_cut, context=True)
    groups = sa1b_groups(sa1b_row, params)  # extract_group prepares every entity's model inputs
    entities = [e for g in groups for e in g.entities]
    assert entities and all(e.model_inputs["clip"].shape == (32, 32, 3) and "clip_context" in e.model_inputs for e in entities)
    scorer = params.build()
    prepared = scorer.score(entities)
    reference = ClipModel(params.model, params.checkpoint).encode_images(
        [on_background(e.pixels, e.mask, params.background) for e in entities])  # open_clip's PIL transform
    fast = scorer.model.encode_images([e.model_inputs["clip"] for e in entities])
    assert np.abs(fast - reference).max() < 0.05  # area vs. PIL resampling: the same image to CLIP
    assert [s.passed for s in prepared] == [s.passed for s in scorer.score([dataclasses.replace(e, model_inputs=None) for e in entities])]
    stage = StageActor(EntityScoring(params))
    through_stage(stage, groups)
    assert all(e.model_inputs is None for g in groups for e in g.entities), "the inputs went to the model, not back into the groups"


def test_a_pixel_scorer_keeps_the_annotations_own_checks(tiny, sa1b_row, panoptic):
    """Choosing CLIP replaced the annotation scorer: panoptic crowds became entities and SA-1B's predicted IoU and
    stability gates were gone. They run first, before any mask is cut."""
    crowd = {**panoptic["annotation"], "segments_info": [{**s, "iscrowd": 1} for s in panoptic["annotation"]["segments_info"]]}
    group = extract_group(panoptic_row(panoptic, annotation=crowd), Syn4RemovalParams(entities={"min_area_ratio": 0.005}), clip_params(tiny))
    assert not group.entities and any(r.reason == "crowd" for r in group.rejects)
    strict = clip_params(tiny, annotation={"min_predicted_iou": 1.0})
    sa1b = extract_group(sa1b_row(GOOD_SA1B[:2]), Syn4RemovalParams(), strict)
    assert not sa1b.entities and any(r.reason == "low_predicted_iou" for r in sa1b.rejects)
    kept = extract_group(sa1b_row(GOOD_SA1B[:2]), Syn4RemovalParams(), clip_params(tiny))
    assert kept.entities and all("annotation" in e.scores for e in kept.entities), "the annotation score is recorded beside CLIP's"
