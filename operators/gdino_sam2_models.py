"""GroundingDINO and SAM2 built offline from their own configs and local or s3:// weights, run batched.

Both load strictly: weights that are missing, unreadable, or of another model (keys or shapes that do not
fit the config) raise ``CheckpointError`` naming the file and the model, before any frame is seen.
GroundingDINO's BERT comes from a folder (``text_encoder``), never from the hub name in its config.
Importing this module loads torch, groundingdino and sam2: only processes that build a masker should. It
also hands GroundingDINO's forward a text-mask builder that runs once per caption (``text_masks``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from typing import Protocol

import cv2
import numpy as np
import torch
from groundingdino.models import build_model
from groundingdino.models.GroundingDINO import groundingdino as gdino_module
from groundingdino.models.GroundingDINO import ms_deform_attn
from groundingdino.util.misc import clean_state_dict, nested_tensor_from_tensor_list
from groundingdino.util.slconfig import SLConfig
from hydra import compose
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.transforms import SAM2Transforms
from torchvision.ops import nms
from transformers import AutoConfig, AutoTokenizer

from .. import storage
from .checkpoints import CheckpointError, local_path

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics, both models' input normalisation
_LONG_PER_SHORT = 1333 / 800  # GroundingDINO's resize: short side 800, long side at most 1333
# What sam2's build_sam2 / build_sam2_video_predictor add to a config (apply_postprocessing=True).
_SAM2_IMAGE = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}
_SAM2_VIDEO = {
    "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 8,
}


@dataclass(frozen=True)
class Detections:
    """GroundingDINO's boxes on one frame, best first."""

    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 in pixels of the full frame
    scores: np.ndarray  # (n,) float32
    labels: tuple[str, ...]  # the prompts each box matched

    def subset(self, keep: np.ndarray) -> "Detections":
        return Detections(self.boxes[keep], self.scores[keep], tuple(np.asarray(self.labels, dtype=object)[keep]))


class DetectorSettings(Protocol):
    """What GroundingDino reads of its configuration (the gdino_sam2 masker's config provides it)."""

    gdino_config: str
    gdino_checkpoint: str
    text_encoder: str
    prompts: tuple[str, ...]
    detect_short_side: int
    box_threshold: float
    text_threshold: float
    nms_iou: float
    max_detections: int


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def load_state(path: str, uri: str, what: str) -> dict[str, torch.Tensor]:
    """The state dict in a torch checkpoint file: the file itself or its "model" entry (the official layout)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a broken or foreign file
        raise CheckpointError(f"{what} {uri} is not a readable torch checkpoint: {_one_line(exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {uri} holds no state dict (a dict of tensors, or {{'model': one}})")
    return state


def fit(model: torch.nn.Module, state: dict, uri: str, what: str, model_name: str, optional: str | None = None) -> None:
    """Load `state` into `model`; any weight missing or left over (outside the `optional` key prefix) is an error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: another size or variant of the model
        raise CheckpointError(f"{what} {uri} does not fit {model_name}: {_one_line(exc)}") from None
    missing = [k for k in missing if not (optional and k.startswith(optional))]
    unexpected = [k for k in unexpected if not (optional and k.startswith(optional))]
    if missing or unexpected:
        raise CheckpointError(
            f"{what} {uri} does not fit {model_name}: {len(missing)} of its weights missing ({', '.join(missing[:3])}), "
            f"{len(unexpected)} unknown ({', '.join(unexpected[:3])})"
        )


def _gdino_config(config: str) -> str:
    """A local path of the config: a file shipped with groundingdino-py by its name, else a local or s3:// path."""
    if not storage.is_s3(config) and os.path.basename(config) == config:
        shipped = os.path.join(find_spec("groundingdino").submodule_search_locations[0], "config", config)
        if os.path.isfile(shipped):
            return shipped
    return local_path(config, "GroundingDINO config")


def _bert_tokenizer(path: str, uri: str):
    """The tokenizer of a BERT folder (GroundingDINO reads it with AutoTokenizer and BertModel); refuses other folders."""
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:  # transformers' ways of saying "no such files"
        raise CheckpointError(f"GroundingDINO text encoder {uri} is not a BERT folder: {_one_line(exc)}") from None
    if model_type != "bert":
        raise CheckpointError(f"GroundingDINO text encoder {uri} is not a BERT folder: it holds a {model_type} model")
    return tokenizer


_upstream_text_masks = gdino_module.generate_masks_with_special_tokens_and_transfer_map


@lru_cache(maxsize=16)
def _text_masks_of(input_ids: tuple[tuple[int, ...], ...], special_tokens: tuple[int, ...], device: str) -> tuple:
    with torch.inference_mode(False):  # kept across calls: plain tensors, whatever mode the first call ran in
        masks, positions, spans = _upstream_text_masks({"input_ids": torch.tensor(input_ids)}, list(special_tokens), None)
        return masks.to(device), positions.to(device), [span.to(device) for span in spans]


def text_masks(tokenized, special_tokens_list, tokenizer) -> tuple:
    """GroundingDINO's text masks (which caption tokens attend to which, their positions, each phrase's tokens):
    upstream's own function, run on the CPU once per caption batch and kept on the model's device (the model only
    reads them). Upstream builds them in every forward with a python loop over device tensors: ~90 GPU
    synchronisations per frame for 8 prompts."""
    ids = tokenized["input_ids"]
    return _text_masks_of(tuple(map(tuple, ids.tolist())), tuple(special_tokens_list), str(ids.device))


gdino_module.generate_masks_with_special_tokens_and_transfer_map = text_masks  # what GroundingDINO.forward calls

_upstream_deformable_attention = ms_deform_attn.multi_scale_deformable_attn_pytorch


def deformable_attention(value, value_spatial_shapes, sampling_locations, attention_weights):
    """GroundingDINO's multi-scale deformable attention (groundingdino-py runs its pytorch version), upstream's own
    function given the feature levels' (H, W) as python ints read once: it iterates the device tensor, one GPU
    synchronisation per element it reads (12 per layer, 12 layers a forward)."""
    return _upstream_deformable_attention(value, value_spatial_shapes.tolist(), sampling_locations, attention_weights)


ms_deform_attn.multi_scale_deformable_attn_pytorch = deformable_attention  # what MultiScaleDeformableAttention.forward calls


class GroundingDino:
    """Text-prompted boxes on batches of BGR frames, the prompts joined into one caption."""

    def __init__(self, params: DetectorSettings, weights: str, text_encoder: str, device: torch.device):
        self.params, self.device = params, device
        self.mean_std = [torch.tensor(v, device=device)[:, None, None] for v in (_MEAN, _STD)]  # on the device once
        model_name = f"GroundingDINO {params.gdino_config}"
        config = _gdino_config(params.gdino_config)
        try:
            args = SLConfig.fromfile(config)
        except Exception as exc:  # the config is python code: anything can go wrong in it
            raise ValueError(f"GroundingDINO config {params.gdino_config} does not load: {_one_line(exc)}") from None
        self.caption, self.spans = self._caption(_bert_tokenizer(text_encoder, params.text_encoder), params.prompts)
        args.text_encoder_type, args.device = text_encoder, str(device)
        args.use_checkpoint = args.use_transformer_ckpt = False  # activation checkpointing is for training
        try:
            model = build_model(args)
        except OSError as exc:  # the folder has a config and a tokenizer but no weights
            raise CheckpointError(f"GroundingDINO text encoder {params.text_encoder} is not a BERT folder: {_one_line(exc)}") from None
        state = clean_state_dict(load_state(weights, params.gdino_checkpoint, "GroundingDINO checkpoint"))
        # the folder gave BERT its weights; the checkpoint (fine-tuned BERT included) overrides them
        fit(model, state, params.gdino_checkpoint, "GroundingDINO checkpoint", model_name, optional="bert.")
        self.model = model.to(device).eval()

    @staticmethod
    def _caption(tokenizer, prompts: tuple[str, ...]) -> tuple[str, list[tuple[int, int]]]:
        """The caption "a . b ." and each prompt's token span in it; refuses prompts the vocabulary cannot tell apart."""
        caption = " . ".join(prompts) + " ."
        pieces = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        dot, unknown = tokenizer.convert_tokens_to_ids("."), tokenizer.unk_token_id
        expected = [tokenizer.cls_token_id] + [t for piece in pieces for t in (*piece, dot)] + [tokenizer.sep_token_id]
        if tokenizer(caption)["input_ids"] != expected or dot == unknown:
            raise ValueError("GroundingDINO's tokenizer splits the caption differently from the prompts (a '.' missing from its vocabulary?)")
        if len(expected) > 256:
            raise ValueError(f"the prompts take {len(expected)} tokens, GroundingDINO reads at most 256")
        if any(t == unknown for piece in pieces for t in piece):
            raise ValueError(f"prompts {[p for p, piece in zip(prompts, pieces) if unknown in piece]} hold words unknown to the text encoder")
        starts = np.cumsum([1] + [len(piece) + 1 for piece in pieces])
        return caption, [(int(s), int(s) + len(piece)) for s, piece in zip(starts, pieces)]

    def input_size(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(width, height) a frame of this (height, width, ...) shape is detected at: detect_short_side, the long
        side capped. Frames of one input size share a batch unpadded."""
        height, width = shape[:2]
        short = self.params.detect_short_side
        scale = min(short / min(height, width), short * _LONG_PER_SHORT / max(height, width))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        """A BGR frame as GroundingDINO's normalised RGB input at its input size."""
        size = self.input_size(image.shape)
        shrinks = size[0] * size[1] < image.shape[0] * image.shape[1]
        rgb = cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        pixels = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div_(255)
        mean, std = self.mean_std
        return (pixels - mean) / std

    @torch.inference_mode()
    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """The boxes on each frame scoring above box_threshold for some prompt, after NMS, best max_detections."""
        if not images:
            return []
        out = self.model(nested_tensor_from_tensor_list([self._tensor(im) for im in images]), captions=[self.caption] * len(images))
        tokens = out["pred_logits"].sigmoid()  # (frames, queries, 256): each query's score per caption token
        per_prompt = torch.stack([tokens[..., start:stop].amax(dim=-1) for start, stop in self.spans], dim=-1)
        return [self._boxes(scores, boxes, im.shape[:2]) for scores, boxes, im in zip(per_prompt, out["pred_boxes"], images)]

    def _boxes(self, per_prompt: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int]) -> Detections:
        """One frame's queries ((queries, prompts) scores, normalised cx, cy, w, h) as pixel boxes."""
        params = self.params
        per_prompt, boxes = per_prompt.float(), boxes.float()  # under autocast they may be fp16/bf16 (torchvision's nms takes neither bf16 nor mixed)
        score = per_prompt.amax(dim=-1)
        keep = torch.nonzero(score > params.box_threshold).flatten()
        height, width = shape
        centre, half = boxes[keep, :2], boxes[keep, 2:] / 2
        xyxy = torch.cat([centre - half, centre + half], dim=1) * boxes.new_tensor([width, height, width, height])
        xyxy = torch.minimum(xyxy.clamp(min=0), boxes.new_tensor([width, height, width, height]))
        best = nms(xyxy, score[keep], params.nms_iou)[: params.max_detections]
        labels = tuple(self._label(row) for row in per_prompt[keep[best]].tolist())
        return Detections(xyxy[best].cpu().numpy().astype(np.float32), score[keep[best]].cpu().numpy().astype(np.float32), labels)

    def _label(self, scores: list[float]) -> str:
        """The prompts a box scores above text_threshold for, best first (at least the best one)."""
        order = sorted(range(len(scores)), key=lambda p: -scores[p])
        return "/".join(self.params.prompts[p] for p in order if scores[p] > self.params.text_threshold) or self.params.prompts[order[0]]


def sam2_config(config: str, video: bool) -> DictConfig:
    """A SAM2 config (a name inside sam2, or a local/s3:// YAML file) with the post-processing sam2's builders add."""
    if storage.is_s3(config) or os.path.isfile(config):
        cfg = OmegaConf.load(local_path(config, "SAM2 config"))
    else:
        try:
            cfg = compose(config_name=config)  # sam2's own configs, found through the hydra module sam2 registers
        except MissingConfigException:
            raise ValueError(
                f"SAM2 config {config!r} is neither a file nor one of sam2's configs (configs/sam2.1/sam2.1_hiera_t.yaml, ...)"
            ) from None
    for key, value in {**_SAM2_IMAGE, **(_SAM2_VIDEO if video else {})}.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def _memory_as_features(module, args, kwargs):
    """sam2 keeps frame memories in bfloat16 and leaves CUDA autocast to mix them with float32 features; without
    autocast (the CPU, fp32 on a GPU), a memory without object pointers (reverse tracking) stays bfloat16 and
    the memory attention fails. Cast it to the features' dtype first."""
    return args, {**kwargs, "memory": kwargs["memory"].to(kwargs["curr"][0].dtype)}


class DeviceTransforms(SAM2Transforms):
    """SAM2's input transform (RGB in [0, 1], a bilinear antialiased resize to a square, ImageNet normalisation)
    done on the model's device from BGR uint8 frames: only the uint8 frame crosses to the GPU, no CPU resize."""

    def __init__(self, resolution: int, device: torch.device):
        super().__init__(resolution=resolution, mask_threshold=0.0)
        self.device = device
        self.mean_std = [torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (self.mean, self.std)]

    def forward_batch(self, img_list: list[np.ndarray]) -> torch.Tensor:
        return torch.cat([self._pixels(image) for image in img_list])

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        rgb = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).flip(-1).permute(2, 0, 1)[None].float() / 255
        square = torch.nn.functional.interpolate(rgb, (self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True)
        mean, std = self.mean_std
        return (square - mean) / std


@contextmanager
def _cuda_unseen():
    """torch.cuda.is_available() is False inside: two of SAM2's modules put tensors on CUDA whenever it is there (a
    position-encoding cache, the RoPE frequencies), whatever device the model is for: built for the CPU on a machine
    with a GPU, the model opened a CUDA context on GPU 0 (memory another actor may hold) for tensors it then moves."""
    seen = torch.cuda.is_available
    torch.cuda.is_available = lambda: False
    try:
        yield
    finally:
        torch.cuda.is_available = seen


class Sam2:
    """Box-prompted SAM2 masks of BGR frames, one by one (image predictor) or tracked across a clip (video
    predictor): preprocessed on the model's device, masks returned there as bool tensors."""

    def __init__(self, config: str, checkpoint: str, weights: str, device: torch.device, video: bool):
        with nullcontext() if device.type == "cuda" else _cuda_unseen():
            model = instantiate(sam2_config(config, video).model, _recursive_=True)
        if model.image_size != 1024:  # sam2's predictors hard-code the feature sizes of 1024-px input
            raise ValueError(f"SAM2 config {config} has image_size {model.image_size}; sam2's predictors need 1024")
        fit(model, load_state(weights, checkpoint, "SAM2 checkpoint"), checkpoint, "SAM2 checkpoint", f"SAM2 {config}")
        self.model = model.to(device).eval()
        self.model.memory_attention.register_forward_pre_hook(_memory_as_features, with_kwargs=True)
        self.device = device
        self.transforms = DeviceTransforms(self.model.image_size, device)
        self.predictor = SAM2ImagePredictor(self.model)
        self.predictor._transforms = self.transforms  # set_image_batch's BGR frames go to the device as uint8

    @torch.inference_mode()
    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[torch.Tensor]:
        """(n, H, W) bool masks, on the device, of each BGR frame's n pixel boxes (n >= 1); the frames are encoded
        in one pass. SAM2ImagePredictor.predict_batch's own steps, less its copy of full-size float masks to numpy."""
        self.predictor.set_image_batch(list(images))
        masks = []
        for k, (image, frame_boxes) in enumerate(zip(images, boxes)):
            _, _, _, box = self.predictor._prep_prompts(None, None, frame_boxes, None, True, img_idx=k)
            found, _, _ = self.predictor._predict(None, None, box, None, multimask_output=False, img_idx=k)
            masks.append(found.reshape(len(frame_boxes), *image.shape[:2]))
        return masks

    @torch.inference_mode()
    def track(self, images: list[np.ndarray], prompts: list[tuple[int, np.ndarray]], batch_size: int) -> list[torch.Tensor]:
        """Objects prompted by a pixel box on one frame each, (frame index, box), tracked over all frames of one
        clip (same-size BGR frames, in time order): per frame (objects, H, W) bool masks on the device."""
        height, width = images[0].shape[:2]
        if any(im.shape[:2] != (height, width) for im in images):
            raise ValueError("the frames of one clip must have one size (they come from one video)")
        if not prompts:
            return [torch.zeros((0, height, width), dtype=torch.bool, device=self.device) for _ in images]
        state = self._clip_state(images, batch_size)
        for obj_id, (frame, box) in enumerate(prompts):
            self.model.add_new_points_or_box(state, frame_idx=frame, obj_id=obj_id, box=box)
        masks: dict[int, torch.Tensor] = {}
        for reverse in (False, True):  # from the first prompted frame forwards, then back to the clip's start
            for frame, _, logits in self.model.propagate_in_video(state, reverse=reverse):
                masks.setdefault(frame, logits[:, 0] > 0)
        return [masks[frame] for frame in range(len(images))]

    def _clip_state(self, images: list[np.ndarray], batch_size: int) -> dict:
        """SAM2VideoPredictor.init_state for frames in memory (it reads only JPEG folders and MP4 files), every
        frame encoded up front in batches: its one-frame feature cache would re-encode frames as tracking moves."""
        pixels = self.transforms.forward_batch(images)
        cached = {}
        for start in range(0, len(images), batch_size):
            chunk = pixels[start : start + batch_size]
            out = self.model.forward_image(chunk)
            for k in range(len(chunk)):
                levels = {key: [level[k : k + 1] for level in out[key]] for key in ("backbone_fpn", "vision_pos_enc")}
                cached[start + k] = (chunk[k : k + 1], levels)
        return {
            "images": pixels, "num_frames": len(images), "offload_video_to_cpu": False, "offload_state_to_cpu": False,
            "video_height": images[0].shape[0], "video_width": images[0].shape[1], "device": self.device,
            "storage_device": self.device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": cached,
            "constants": {}, "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
            "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
        }
