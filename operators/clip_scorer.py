"""CLIP entity scoring: does the cut-out entity look like its category, or like an object at all?

Each entity's crop is composited on a plain grey square (outside its mask, and the padding, turn grey),
encoded by an open_clip image tower and compared with "a photo of a {category}"; entities without a
category take the best of generic object prompts (as in SmartEraser and X-Paste; docs/METHODS.md, Syn4Removal).
This module holds the config and the thresholds and imports no torch: the model (``clip_model``) loads
only where a scorer is built, once per process or Ray actor.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import cv2
import numpy as np
from pydantic import Field, field_validator, model_validator

from ..dataset import Reject
from .checkpoints import check_exists, local_path
from .devices import Precision
from .entities import Entity
from .model_stage import ModelStageParams
from .params import RUNTIME
from .scorers import AnnotationScorer, Score

LOGIT_SCALE = 100.0  # CLIP's trained logit scale: logit = 100 × cosine similarity
# Valid thresholds per scale. A logit threshold under 1 (cosine 0.01) is a cosine given on the wrong
# scale: SmartEraser's script compares 0.2 with logits and so keeps every entity.
_RANGES = {"logit": (1.0, 100.0), "cosine": (-1.0, 1.0)}
_HINTS = {
    "logit": "CLIP logits are cosine × 100 (15-35 for a match), so a cosine-sized value keeps nearly everything: "
    "use scale: cosine, or multiply by 100",
    "cosine": "cosine similarity lies in [-1, 1]: use scale: logit, or divide by 100",
}


class ClipScorerParams(ModelStageParams):
    """The CLIP scorer: which model, where its weights are, how to threshold, how to run it."""

    name: Literal["clip"] = "clip"
    model: str = Field(
        "ViT-B-32",
        min_length=1,
        description="open_clip architecture name (OpenAI's weights need the -quickgelu variant, e.g. ViT-B-32-quickgelu), "
        "or a local/s3:// open_clip model-config JSON, registered under its file stem",
    )
    checkpoint: str = Field(
        min_length=1,
        description="the model's weights, local path or s3:// URI (an open_clip state dict: .pt/.bin/.safetensors); "
        "never downloaded from a hub",
    )
    batch_size: int = Field(32, ge=1, le=4096, description="entity crops per forward pass", json_schema_extra=RUNTIME)
    precision: Precision = Field(
        "fp16", description="on CUDA (bf16 needs an Ampere GPU or later, else it is refused); the CPU always runs fp32 "
        "(half precision there is slow or unsupported)"
    )
    scale: Literal["logit", "cosine"] = Field(
        "logit", description="score unit: logit = cosine similarity × 100 (CLIP's own logits, 15-35 for a match), or cosine"
    )
    threshold: float = Field(
        25.0,
        description="entities scoring below it are dropped; logit: 1 to 100, cosine: -1 to 1. 25 logit (= 0.25 cosine) "
        "is X-Paste's cut-off; SmartEraser's script compares 0.2 with logits, which drops nothing",
    )
    class_thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-category thresholds on the same scale (X-Paste's per-class tolerance)"
    )
    generic_threshold: float | None = Field(
        None, description="threshold of entities without a category (scored on generic_prompts); unset: threshold"
    )
    prompt: str = Field("a photo of a {category}", min_length=1, description="text of a category; holds {category}")
    generic_prompts: tuple[str, ...] = Field(
        ("a photo of an object", "a photo of a thing", "a photo of an item"),
        min_length=1,
        description="texts for entities without a category (SA-1B); the entity's score is its best match",
    )
    background: int = Field(128, ge=0, le=255, description="grey level of the plain background the masked crop is put on")
    context: bool = Field(
        False,
        description="also score the entity's box with its real surroundings, recorded as scores['clip_context']; "
        "the threshold always applies to the masked crop, the pixels that will be pasted",
    )
    annotation: AnnotationScorer = Field(
        default_factory=AnnotationScorer,
        description="the annotations' own checks, applied first, before any mask is cut: crowds (panoptic iscrowd), "
        "SA-1B's predicted IoU and stability, Open Images' PredictedIoU (the release filters SAM's masks so too)",
    )
    needs_pixels: ClassVar[bool] = True

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt):
        try:
            filled = prompt.format(category="\0")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt may hold only the field {{category}}: {exc!r}") from None
        if "\0" not in filled:
            raise ValueError("prompt must hold {category}")
        return prompt

    @model_validator(mode="after")
    def _thresholds_fit_scale(self):
        low, high = _RANGES[self.scale]
        named = {"threshold": self.threshold, "generic_threshold": self.generic_threshold}
        named.update({f"class_thresholds[{k!r}]": v for k, v in self.class_thresholds.items()})
        for key, value in named.items():
            if value is not None and not low <= value <= high:
                raise ValueError(f"{key} {value} is outside [{low:g}, {high:g}] on the {self.scale} scale; {_HINTS[self.scale]}")
        return self

    def threshold_for(self, category: str | None) -> float:
        if category is None:
            return self.threshold if self.generic_threshold is None else self.generic_threshold
        return self.class_thresholds.get(category, self.threshold)

    def prompts_for(self, category: str | None) -> tuple[str, ...]:
        return self.generic_prompts if category is None else (self.prompt.format(category=category),)

    def model_inputs(self, entity: Entity) -> dict[str, np.ndarray]:
        """What the model sees of a cut entity, made in the CPU task so a GPU actor gets only these: the masked
        crop on the plain background (and, with `context`, the box as it is), each an RGB square at the model's
        input size (resizing a square is CLIP's resize + centre crop)."""
        side = clip_input_size(self.model)
        inputs = {"clip": square_input(entity.pixels, entity.mask, self.background, side)}
        if self.context:
            inputs["clip_context"] = square_input(entity.pixels, None, self.background, side)
        return inputs

    def check_files(self) -> None:
        """Fail fast, in the driver, when the weights or a JSON model config are missing; loads nothing."""
        check_exists(self.checkpoint, f"CLIP {self.model} checkpoint")
        if self.model.endswith(".json"):
            check_exists(self.model, "CLIP model config")

    def build(self) -> "ClipScorer":
        """The scorer itself: loads the model (do it once per process or actor)."""
        return ClipScorer(self)


@functools.lru_cache(maxsize=8)
def clip_input_size(model: str) -> int:
    """The image side of an open_clip architecture, read from its config JSON (a local/s3:// file, or the one
    open_clip ships) without importing torch or open_clip."""
    if model.endswith(".json"):
        path = Path(local_path(model, "CLIP model config"))
    else:
        spec = importlib.util.find_spec("open_clip")
        path = Path(spec.submodule_search_locations[0]) / "model_configs" / f"{model}.json"
    try:
        size = json.loads(path.read_text())["vision_cfg"]["image_size"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the image size of CLIP model {model} from {path}: {exc}") from None
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def square_input(pixels: np.ndarray, mask: np.ndarray | None, grey: int, side: int) -> np.ndarray:
    """``on_background`` at `side` px: area averaging when shrinking (antialiased, like PIL), bicubic when growing.

    A crop larger than `side` is shrunk before it is composed, never padded to a full-resolution square:
    area averaging is linear, so the composite's average is the masked pixels' average plus grey times the
    share of the mask left out (a megapixel crop: ~2 ms instead of ~16).
    """
    height, width = pixels.shape[:2]
    if max(height, width) <= side:
        return np.ascontiguousarray(cv2.resize(on_background(pixels, mask, grey), (side, side), interpolation=cv2.INTER_CUBIC))
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if mask is None:
        small = _area(pixels, size)
    else:
        masked = _area(cv2.bitwise_and(pixels, pixels, mask=mask.view(np.uint8)), size)
        left_out = 1 - _area(mask.astype(np.float32), size)
        small = np.clip(masked + grey * left_out[..., None] + 0.5, 0, 255).astype(np.uint8)
    return on_background(small, None, grey)  # its long side is `side`: the square is the input


def _area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area averaging to `size` (width, height), first by the largest whole factor, OpenCV's fast path (3-7x
    faster on a large crop; the rows and columns past a multiple of the factor, fewer than it, are left out)."""
    height, width = image.shape[:2]
    factor = min(height // size[1], width // size[0])
    if factor > 1:
        whole = image[: height // factor * factor, : width // factor * factor]
        image = cv2.resize(whole, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def on_background(pixels: np.ndarray, mask: np.ndarray | None, grey: int) -> np.ndarray:
    """The BGR crop as an RGB square: centred, padded with `grey`, and grey outside `mask` when one is given.

    A square keeps the whole entity through CLIP's resize-and-centre-crop.
    """
    height, width = pixels.shape[:2]
    side = max(height, width)
    square = np.full((side, side, 3), grey, np.uint8)
    y, x = (side - height) // 2, (side - width) // 2
    region = square[y : y + height, x : x + width]
    rgb = pixels[..., ::-1]
    if mask is None:
        region[:] = rgb
    else:
        np.copyto(region, rgb, where=mask[..., None].astype(bool))
    return square


class ClipScorer:
    """The EntityScorer of ClipScorerParams: batched open_clip inference, text embeddings cached per prompt."""

    name: ClassVar[str] = "clip"
    needs_pixels: ClassVar[bool] = True

    def __init__(self, params: ClipScorerParams):
        from .clip_model import ClipModel  # torch and open_clip load here, where a model is needed

        self.params = params
        self.model = ClipModel(params.model, params.checkpoint, params.precision, params.device)
        self._texts: dict[str, np.ndarray] = {}

    def model_inputs(self, entity: Entity) -> dict[str, np.ndarray]:
        return self.params.model_inputs(entity)

    @property
    def annotation(self) -> AnnotationScorer:
        return self.params.annotation

    @property
    def provenance(self) -> dict:
        """What produced the scores, for each sample's json: the model, the device and the precision it ran in."""
        return {"name": self.name, "model": self.params.model, "device": str(self.model.device), "precision": self.model.precision}

    def score(self, entities: Sequence[Entity]) -> list[Score]:
        size = self.params.batch_size
        return [score for start in range(0, len(entities), size) for score in self._score_batch(entities[start : start + size])]

    def _score_batch(self, entities: Sequence[Entity]) -> list[Score]:
        params = self.params
        missing = [e.id for e in entities if e.pixels is None and e.model_inputs is None]
        if missing:
            raise ValueError(f"entities {missing[:3]} have no pixels: materialize them before CLIP scoring")
        prompts = [params.prompts_for(e.category) for e in entities]
        self._embed({p for group in prompts for p in group} - self._texts.keys())
        inputs = [e.model_inputs or params.model_inputs(e) for e in entities]  # prepared in the CPU task, normally
        images = self.model.encode_images([i["clip"] for i in inputs])
        if params.context:
            boxes = self.model.encode_images([i["clip_context"] for i in inputs])
            for entity, image, texts in zip(entities, boxes, prompts):
                entity.scores["clip_context"] = round(self._similarity(image, texts), 5)
        return [self._verdict(self._similarity(image, texts), e.category) for e, image, texts in zip(entities, images, prompts)]

    def _embed(self, new_prompts: set[str]) -> None:
        """One prompt per pass: its embedding then never depends on which prompts came along."""
        for prompt in sorted(new_prompts):
            self._texts[prompt] = self.model.encode_texts([prompt])[0]

    def _similarity(self, image: np.ndarray, prompts: tuple[str, ...]) -> float:
        cosine = max(float(image @ self._texts[p]) for p in prompts)
        return cosine * LOGIT_SCALE if self.params.scale == "logit" else cosine

    def _verdict(self, value: float, category: str | None) -> Score:
        threshold = self.params.threshold_for(category)
        if value >= threshold:
            return Score(value)
        subject = "generic prompts" if category is None else repr(category)
        return Score(value, Reject.because("clip_score_below_threshold", f"clip {self.params.scale} {value:.4g} < {threshold:g} for {subject}"))
