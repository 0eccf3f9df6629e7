"""The ``gdino_sam2`` masker of Video4Removal: GroundingDINO boxes for text prompts, SAM2 masks in them,
kept where they lie on the MOG2 foreground (docs/METHODS.md, Video4Removal).

A pair's mask is the union of the detected objects that moved: an object counts when at least
``min_motion_overlap`` of its SAM2 mask lies on the MOG2 object mask (scaled to full resolution), and
the pair is kept when the objects kept cover at least ``min_motion_explained`` of that mask; otherwise
it is rejected ("no_detection_explains_motion"), never given a mask of something that stood still.
With ``propagate``, the items of one ``masks()`` call are the selected frames of one segment in time
order: SAM2's video predictor tracks every detected object across its whole frames, so an object found on
one frame is masked on the others too; each object is prompted once, on the first frame it is detected on
(boxes linked frame to frame by IoU). Region pairs' crops show other parts of the scene and other sizes:
each is segmented on its own. Masks stay on the model's device: the matching with the motion
runs there and only the pair's uint8 mask comes back.

This module holds the config, the geometry (arrays, testable without models) and the masker's logic;
torch loads where the geometry runs, GroundingDINO and SAM2 (``gdino_sam2_models``, which never imports
this module) only where a masker is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar, Literal, Sequence

import cv2
import numpy as np
from pydantic import Field, field_validator

from .. import storage
from ..dataset import Reject
from .checkpoints import check_exists, local_path
from .devices import Precision, ampere_or_later, resolve_device, resolve_precision
from .maskers import MaskInput, MaskResult
from .model_stage import ModelStageParams
from .video_regions import Blob, link_tracks

if TYPE_CHECKING:
    from .gdino_sam2_models import Detections

NO_MOVING_OBJECT = "no_detection_explains_motion"
DEFAULT_PROMPTS = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "dog", "cat")
# the weights fields and how errors name them
WEIGHTS = {
    "gdino_checkpoint": "GroundingDINO checkpoint",
    "text_encoder": "GroundingDINO text encoder (BERT folder)",
    "sam2_checkpoint": "SAM2 checkpoint",
}


class GdinoSam2MaskerParams(ModelStageParams):
    """GroundingDINO + SAM2: which models, where their weights are, how detections are matched to the motion."""

    name: Literal["gdino_sam2"] = "gdino_sam2"
    gdino_config: str = Field(
        "GroundingDINO_SwinT_OGC.py",
        min_length=1,
        description="GroundingDINO's python config: a file shipped with groundingdino-py (GroundingDINO_SwinT_OGC.py, "
        "GroundingDINO_SwinB_cfg.py) or a local/s3:// path to one",
    )
    gdino_checkpoint: str = Field(
        min_length=1,
        description="GroundingDINO weights for that config, local or s3:// (a torch file holding {'model': state dict}, "
        "like groundingdino_swint_ogc.pth); never downloaded from a hub",
    )
    text_encoder: str = Field(
        min_length=1,
        description="local or s3:// folder of GroundingDINO's BERT (save_pretrained of bert-base-uncased: config, weights, "
        "vocab/tokenizer files); replaces the config's hub name, which would need the network",
    )
    prompts: tuple[str, ...] = Field(
        DEFAULT_PROMPTS, min_length=1, max_length=64, description="object names to detect, one caption 'person . car . ...'"
    )
    box_threshold: float = Field(0.35, gt=0, lt=1, description="a box is detected when a prompt token scores above it (GroundingDINO's default)")
    text_threshold: float = Field(
        0.25, gt=0, lt=1, description="a detected box is labelled with the prompts scoring above it (labels appear in reject details)",
    )
    max_detections: int = Field(16, ge=1, le=300, description="boxes per frame after NMS, best first; each one costs a SAM2 prompt")
    nms_iou: float = Field(0.7, gt=0, le=1, description="boxes overlapping a better one by more (IoU) are dropped")
    detect_short_side: int = Field(
        800, ge=128, le=2048, description="frames are resized to this short side for GroundingDINO (long side at most ×1333/800, as trained)",
    )
    sam2_config: str = Field(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        min_length=1,
        description="SAM2 model config: a name inside sam2 (configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml: the model size) or a "
        "local/s3:// YAML file of the same form; keep image_size 1024",
    )
    sam2_checkpoint: str = Field(
        min_length=1, description="SAM2 weights for that config, local or s3:// (a torch file holding {'model': state dict})",
    )
    min_motion_overlap: float = Field(
        0.5, gt=0, le=1, description="share of a detected object's mask on the MOG2 foreground for it to count as the moving object",
    )
    min_motion_explained: float = Field(
        0.6, ge=0, le=1, description="share of the MOG2 foreground the kept objects must cover, else the pair is rejected",
    )
    propagate: bool = Field(
        False,
        description="track the detected objects across the segment's selected whole frames with SAM2's video predictor "
        "(objects found on one frame are masked on all); else, and for region crops, each frame is segmented on its own",
    )
    same_object_iou: float = Field(
        0.5, gt=0, le=1, description="with propagate: a box overlapping a box of the previous frame with detections by this "
        "IoU is that object again, already tracked, and is not prompted again",
    )
    precision: Precision = Field(
        "bf16", description="on CUDA, the autocast dtype of both models (SAM2's own examples run bf16; bf16 needs an Ampere GPU "
        "or later, else it is refused: fp16 there); the CPU always runs fp32",
    )
    tf32: bool = Field(True, description="on CUDA, what autocast leaves in fp32 (and all of precision: fp32) runs its matmuls "
                                         "and convolutions in TF32 (Ampere and later); off: full fp32")

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, prompts):
        cleaned = tuple(p.strip().lower() for p in prompts)
        if not all(cleaned) or any(c in p for p in cleaned for c in ".?"):
            raise ValueError("prompts are non-empty object names without '.' or '?' (GroundingDINO's phrase separators)")
        if len(set(cleaned)) < len(cleaned):
            raise ValueError("prompts must differ from each other")
        return cleaned

    needs_target: ClassVar[bool] = False  # detection and SAM2 look at the source frame only: the target stays behind

    def check_files(self) -> None:
        """Fail fast, in the driver, when weights or a config given as a path are missing; loads nothing."""
        for field, what in WEIGHTS.items():
            check_exists(getattr(self, field), what)
        if storage.is_s3(self.gdino_config) or os.path.basename(self.gdino_config) != self.gdino_config:
            check_exists(self.gdino_config, "GroundingDINO config")  # a bare name is a config shipped with groundingdino-py
        if storage.is_s3(self.sam2_config):
            check_exists(self.sam2_config, "SAM2 config")  # a local one that is no file is a name inside sam2

    def build(self) -> "GdinoSam2Masker":
        """The masker itself: loads both models (do it once per process or actor)."""
        return GdinoSam2Masker(self)


def full_resolution(prior: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The MOG2 object mask (analysis resolution, 0/1) as a bool mask of the full frame."""
    return cv2.resize(prior, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def boxes_on_motion(boxes: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Which pixel boxes hold any moving pixel: the others cannot be the moving object and need no SAM2 prompt."""
    height, width = motion.shape
    counts = cv2.integral(motion.astype(np.uint8))  # (height + 1, width + 1) running sums
    x0, x1 = (np.clip(np.stack([np.floor(boxes[:, 0]), np.ceil(boxes[:, 2])]), 0, width).astype(int))
    y0, y1 = (np.clip(np.stack([np.floor(boxes[:, 1]), np.ceil(boxes[:, 3])]), 0, height).astype(int))
    return counts[y1, x1] - counts[y0, x1] - counts[y1, x0] + counts[y0, x0] > 0


def explain_motion(objects, labels: Sequence[str], motion, min_overlap: float, min_explained: float) -> MaskResult:
    """The union of the objects that moved as a 0/255 mask, or why the motion has no detected object.

    ``objects`` (n, H, W) bool masks of the detected objects, ``motion`` the (H, W) bool MOG2 mask (numpy
    arrays or torch tensors: computed where ``objects`` lie, so masks on a GPU never leave it; only the
    uint8 mask and a few counts come back): an object moved when at least ``min_overlap`` of it lies on
    the motion; the union of those must cover at least ``min_explained`` of the motion.
    """
    import torch

    objects = torch.as_tensor(objects)
    motion = torch.as_tensor(motion, device=objects.device)
    moving = int(motion.count_nonzero())
    if not moving:
        return MaskResult(None, Reject.because(NO_MOVING_OBJECT, "the MOG2 object mask is empty"))
    if not len(objects):
        return MaskResult(None, Reject.because(NO_MOVING_OBJECT, "no detected object lies on the moving region"))
    areas = objects.flatten(1).sum(1).cpu().numpy()
    on_motion = (objects & motion).flatten(1).sum(1).cpu().numpy() / np.maximum(areas, 1)
    kept = (areas > 0) & (on_motion >= min_overlap)
    union = objects[torch.from_numpy(kept).to(objects.device)].any(0)
    explained = int((union & motion).count_nonzero()) / moving
    if not kept.any() or explained < min_explained:
        best = int(on_motion.argmax())
        return MaskResult(None, Reject.because(
            NO_MOVING_OBJECT,
            f"{len(objects)} objects; the best, {labels[best]}, lies {on_motion[best]:.2f} on the motion "
            f"(min_motion_overlap={min_overlap}); the moving ones cover {explained:.2f} of it (min_motion_explained={min_explained})",
        ))
    if bool(union.all()):
        return MaskResult(None, Reject.because("mask_full", f"the moving objects ({', '.join(np.asarray(labels)[kept])}) cover the whole frame"))
    return MaskResult(union.to(torch.uint8).mul_(255).cpu().numpy())


def object_prompts(found: Sequence["Detections"], min_iou: float) -> list[tuple[int, int]]:
    """(frame, box index) of each object's first detection in a clip: boxes are linked frame to frame by IoU
    (``video_regions.link_tracks``), so SAM2's tracker is prompted once per object, not on every frame it is seen."""
    boxes = [Blob(frame, tuple(box), 0.0, k) for frame, d in enumerate(found) for k, box in enumerate(d.boxes)]  # label: box index
    first: dict[int, tuple[int, int]] = {}
    for blob in link_tracks(boxes, min_iou):
        first.setdefault(blob.track, (blob.frame, blob.label))
    return sorted(first.values())


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _by_size(sizes: Sequence[tuple[int, int]], size: int) -> list[list[int]]:
    """Indices of frames in batches of at most `size` frames of one detector input size: frames padded to a shared
    size would each get boxes that depend on the others; crops of one aspect ratio scale to one size and batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, key in enumerate(sizes):
        groups.setdefault(key, []).append(index)
    return [chunk for indices in groups.values() for chunk in _chunks(indices, size)]


class GdinoSam2Masker:
    """The Masker of GdinoSam2MaskerParams: batched detection, box-prompted SAM2, matching with the MOG2 mask."""

    name: ClassVar[str] = "gdino_sam2"

    def __init__(self, params: GdinoSam2MaskerParams):
        from .gdino_sam2_models import GroundingDino, Sam2  # torch and both libraries load here, where models are needed

        self.params = params
        self.device = resolve_device(params.device)
        self.precision = resolve_precision(params.precision, self.device)
        self.tf32 = params.tf32 and ampere_or_later(self.device)
        if self.device.type == "cuda":  # process-wide switches: this actor's process runs only this model
            import torch

            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        # every weights file first: a missing one fails before any model is built
        paths = {field: local_path(getattr(params, field), what) for field, what in WEIGHTS.items()}
        self.detector = GroundingDino(params, paths["gdino_checkpoint"], paths["text_encoder"], self.device)
        self.segmenter = Sam2(params.sam2_config, params.sam2_checkpoint, paths["sam2_checkpoint"], self.device, video=params.propagate)

    @property
    def provenance(self) -> dict:
        """What produced the masks, for each sample's json: the models, the device and the precision they ran in."""
        return {"name": self.name, "model": f"{self.params.gdino_config} + {self.params.sam2_config}",
                "device": str(self.device), "precision": self.precision + ("+tf32" if self.tf32 else "")}

    @property
    def items_are_clip(self) -> bool:
        """True when one ``masks()`` call takes the frames of one clip (propagation): calls must not mix segments."""
        return self.params.propagate

    def masks(self, items: Sequence[MaskInput]) -> list[MaskResult]:
        if not items:
            return []
        import torch

        half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        if half is not None:  # only ever on CUDA
            with torch.autocast("cuda", dtype=half):
                return self._masks(items)
        return self._masks(items)

    def _masks(self, items: Sequence[MaskInput]) -> list[MaskResult]:
        params = self.params
        motions = [full_resolution(item.prior, item.source.shape[:2]) for item in items]
        found: list[Detections] = [None] * len(items)
        for chunk in _by_size([self.detector.input_size(item.source.shape) for item in items], params.batch_size):
            for k, detections in zip(chunk, self.detector.detect([items[k].source for k in chunk])):
                found[k] = detections
        found = [d.subset(boxes_on_motion(d.boxes, motion)) for d, motion in zip(found, motions)]
        objects, labels = [None] * len(items), [d.labels for d in found]
        clip = [k for k, item in enumerate(items) if item.whole_frame] if params.propagate else []
        if clip:  # the segment's whole frames, tracked; region crops (other parts of the scene) on their own
            tracked, names = self._track([items[k] for k in clip], [found[k] for k in clip])
            for k, masks in zip(clip, tracked):
                objects[k], labels[k] = masks, names
        alone = [k for k in range(len(items)) if objects[k] is None]
        for k, masks in zip(alone, self._segment([items[k] for k in alone], [found[k] for k in alone])):
            objects[k] = masks
        return [
            explain_motion(o, names, motion, params.min_motion_overlap, params.min_motion_explained)
            for o, names, motion in zip(objects, labels, motions)
        ]

    def _segment(self, items: Sequence[MaskInput], found: list[Detections]) -> list:
        """Each frame's box-prompted masks (n, H, W), on the device; SAM2 encodes only the frames that have boxes."""
        import torch

        objects = [torch.zeros((0, *item.source.shape[:2]), dtype=torch.bool, device=self.device) for item in items]
        prompted = [k for k, d in enumerate(found) if len(d.boxes)]
        for chunk in _chunks(prompted, self.params.batch_size):
            masks = self.segmenter.segment([items[k].source for k in chunk], [found[k].boxes for k in chunk])
            for k, mask in zip(chunk, masks):
                objects[k] = mask
        return objects

    def _track(self, items: Sequence[MaskInput], found: list[Detections]) -> tuple[list, tuple[str, ...]]:
        """Each object detected in the clip, prompted on its first frame, tracked over the whole clip: each frame
        gets all objects' masks, which carry the returned labels."""
        prompts = object_prompts(found, self.params.same_object_iou)
        boxes = [(frame, found[frame].boxes[k]) for frame, k in prompts]
        objects = self.segmenter.track([item.source for item in items], boxes, self.params.batch_size)
        return objects, tuple(found[frame].labels[k] for frame, k in prompts)
