"""An open_clip model built offline from a config and a local or s3:// checkpoint; encodes images and prompts.

The architecture comes from open_clip's built-in configs or a model-config JSON registered with
``open_clip.add_model_config``; weights never come from a hub (``pretrained=None``, then
``open_clip.load_checkpoint``), and the tokenizer must be open_clip's bundled BPE. Importing this
module loads torch and open_clip: only processes that build a model should.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from .checkpoints import CheckpointError, local_path
from .devices import Device, Precision, resolve_device, resolve_precision


def resolve_model(model: str) -> str:
    """The open_clip name of `model`: a built-in name, or a model-config JSON (local or s3://) registered
    under its file stem. Models that need a Hugging Face tokenizer or text tower are refused (no hub)."""
    if model.endswith(".json"):
        path = local_path(model, "CLIP model config")
        try:
            config = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"CLIP model config {model} is not readable JSON: {exc}") from None
        if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
            raise ValueError(f"CLIP model config {model} lacks embed_dim, vision_cfg or text_cfg")
        name = Path(path).stem
        if open_clip.get_model_config(name) != config:  # registered once per process, not per scorer
            open_clip.add_model_config(path)
    else:
        name = model
        config = open_clip.get_model_config(name)
        if config is None:
            raise ValueError(f"unknown open_clip model {model!r}: a built-in name (open_clip.list_models()) or a .json config")
    text = config["text_cfg"]
    if text.get("hf_tokenizer_name") or text.get("hf_model_name") or "siglip" in name.lower():
        raise ValueError(f"CLIP model {model} needs a Hugging Face tokenizer or text model; only models with "
                         "open_clip's bundled tokenizer load offline")
    return name


@contextlib.contextmanager
def _quiet_random_init():
    """Hide open_clip's "Model initialized randomly" warning: the checkpoint is loaded right after."""
    drop = logging.Filter()
    drop.filter = lambda record: not record.getMessage().startswith("No pretrained weights loaded")
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


class ClipModel:
    """The model, tokenizer and eval transform of one open_clip architecture, ready for inference."""

    def __init__(self, model: str, checkpoint: str, precision: Precision = "fp32", device: Device = "auto"):
        self.name = resolve_model(model)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)  # half precision is for GPUs
        weights = local_path(checkpoint, f"CLIP {self.name} checkpoint")
        with _quiet_random_init():
            self.model = open_clip.create_model(
                self.name, pretrained=None, precision=self.precision, device=self.device, pretrained_text=False
            )
        try:
            open_clip.load_checkpoint(self.model, weights)
        except Exception as exc:  # torch.load and load_state_dict raise many types for a wrong or broken file
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise CheckpointError(f"CLIP checkpoint {checkpoint} does not fit model {self.name}: {reason}") from None
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(self.name)
        config = PreprocessCfg(**open_clip.get_model_preprocess_cfg(self.model))
        self.preprocess = image_transform_v2(config, is_train=False)
        self.side = config.size[0] if isinstance(config.size, (tuple, list)) else config.size
        self.mean = torch.tensor(config.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(config.std, device=self.device).view(1, 3, 1, 1)
        self.input_dtype = open_clip.get_input_dtype(self.precision)

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """Unit image embeddings (n, d) float32 of RGB uint8 images, in one forward pass. Squares already at the
        model's input size (``ClipScorerParams.model_inputs``) are only normalised, on the device; others go
        through open_clip's own transform (PIL resize and crop, on this process's CPU)."""
        if all(image.shape[:2] == (self.side, self.side) for image in images):
            batch = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            batch = (batch - self.mean) / self.std
        else:
            batch = torch.stack([self.preprocess(Image.fromarray(image)) for image in images])
        features = self.model.encode_image(batch.to(self.device, dtype=self.input_dtype), normalize=True)
        return features.float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Unit text embeddings (n, d) float32."""
        features = self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True)
        return features.float().cpu().numpy()
