"""The eraser interface: what the training loop, validation and ``pairmine erase`` ask of any eraser.

An eraser is a ``torch.nn.Module`` whose ``forward`` takes a batch and returns one loss per sample
(the loop weighs them, so a skipped sample weighs 0 and every worker still steps in lockstep), whose
``erase`` returns predictions, and whose trainable parts are named (``trainable``): exactly those are
saved in a checkpoint, beside the eraser's config; its frozen parts are loaded again from the
config's paths. A batch is a dict of tensors on the eraser's device:

    source, target  (B, 3, H, W) float in [-1, 1]     mask, alpha  (B, 1, H, W) float in [0, 1]
    clip            (B, 3, C, C) uint8, the object on white, cropped to the mask's box (visual guidance)
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import storage
from ..operators.checkpoints import CheckpointError, local_path
from .erasers import EraserParams

ERASER_FILE = "eraser.json"
FORMAT = 1


class Eraser(torch.nn.Module):
    params: EraserParams

    def __init__(self, params: EraserParams):
        super().__init__()
        self.params = params

    def trainable(self) -> dict[str, torch.nn.Module]:
        """The parts the optimiser updates, by name; a checkpoint holds these and only these."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor], drop_condition: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) training losses; ``drop_condition``: the step trains the unconditional branch (for guidance)."""
        raise NotImplementedError

    def erase(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) predictions in [0, 1] of the source with the masked object removed (not pasted back)."""
        raise NotImplementedError

    def train(self, mode: bool = True):
        """Train mode for the trainable parts; every other submodule (the frozen parts) stays in eval mode."""
        super().train(False)
        for module in self.trainable().values():
            module.train(mode)
        self.training = mode
        return self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for module in self.trainable().values() for p in module.parameters() if p.requires_grad]

    def checkpoint_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a checkpoint holds, by part: the trainable parts' weights (an adapter-only eraser overrides this)."""
        return {name: module.state_dict() for name, module in self.trainable().items()}

    def load_checkpoint_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Load one part of ``checkpoint_state``, strictly (RuntimeError when it does not fit)."""
        self.trainable()[name].load_state_dict(state, strict=True)

    def save(self, directory: str, extra: dict | None = None) -> None:
        """The checkpoint state (one safetensors file per part) and ``eraser.json`` (the config, `extra` facts)."""
        os.makedirs(directory, exist_ok=True)
        for name, weights in self.checkpoint_state().items():
            state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
            save_file(state, os.path.join(directory, f"{name}.safetensors"))
        meta = {"format": FORMAT, "eraser": self.params.model_dump(mode="json"), **(extra or {})}
        with open(os.path.join(directory, ERASER_FILE), "w") as f:
            json.dump(meta, f, indent=2)

    def load_trainable(self, directory: str) -> None:
        """Load what ``save`` wrote; every saved tensor must fit (strict)."""
        device = str(next(self.parameters()).device)
        for name in self.checkpoint_state():
            path = os.path.join(directory, f"{name}.safetensors")
            if not os.path.isfile(path):
                raise CheckpointError(f"eraser checkpoint {directory} lacks {name}.safetensors")
            try:
                state = load_file(path, device=device)
            except (SafetensorError, OSError) as exc:  # cut short or overwritten
                raise CheckpointError(f"{path} is not a readable safetensors file (damaged?): {storage.first_line(exc)[:200]}") from None
            try:
                self.load_checkpoint_state(name, state)
            except RuntimeError as exc:
                raise CheckpointError(f"{path} does not fit the {self.params.name} {name}: {' '.join(str(exc).split())[:300]}") from None


def read_eraser_file(uri: str) -> tuple[str, dict]:
    """The local folder of a saved eraser (a checkpoint's ``eraser/``, local or s3://) and its eraser.json."""
    folder = local_path(uri, "eraser checkpoint")
    if os.path.isdir(os.path.join(folder, "eraser")):
        folder = os.path.join(folder, "eraser")  # a training checkpoint folder: the eraser is inside
    path = os.path.join(folder, ERASER_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{uri} is not a saved eraser (no readable {ERASER_FILE}: {exc})") from None
    if meta.get("format") != FORMAT or not isinstance(meta.get("eraser"), dict):
        raise CheckpointError(f"{uri}: {ERASER_FILE} is not an eraser of format {FORMAT}")
    return folder, meta


def vae_latents(vae, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
    """Scaled VAE latents of images in [-1, 1] (a sample of the posterior, or its mode)."""
    posterior = vae.encode(images.to(vae.dtype)).latent_dist
    latents = posterior.sample(generator) if sample else posterior.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def vae_images(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] of scaled VAE latents."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype)).sample
    return ((images.float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def ddim_inpaint(eraser, image_latents: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, uncond: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM sampling of an inpainting UNet (``eraser.unet``, input ``[latents, mask, image latents]``) with
    classifier-free guidance when ``guidance_scale`` > 1; returns images in [0, 1]."""
    from diffusers import DDIMScheduler

    params = eraser.params
    scheduler = DDIMScheduler.from_config(eraser.scheduler_config)
    scheduler.set_timesteps(params.inference_steps, device=image_latents.device)
    latents = torch.randn(image_latents.shape, generator=generator, device=image_latents.device, dtype=image_latents.dtype)
    latents = latents * scheduler.init_noise_sigma
    scale = params.guidance_scale
    if scale > 1:
        context, mask, image_latents = torch.cat([uncond, context]), torch.cat([mask, mask]), torch.cat([image_latents, image_latents])
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]) if scale > 1 else latents
        eps = eraser.unet(torch.cat([scheduler.scale_model_input(x, t), mask, image_latents], dim=1), t, context).sample
        if scale > 1:
            unconditional, conditional = eps.chunk(2)
            eps = unconditional + scale * (conditional - unconditional)
        latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
    return vae_images(eraser.vae, latents)


def latent_mask(mask: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """A (B, 1, H, W) mask at the latents' size, nearest (1 = the region to erase)."""
    return torch.nn.functional.interpolate(mask, size=latents.shape[-2:], mode="nearest")


def to_batch(rows: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Arrays of the data path (uint8, channels last) as an eraser batch (floats, channels first)."""
    def image(name):
        return rows[name].to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)

    batch = {"source": image("source"), "target": image("target"),
             "mask": rows["mask"].to(device)[:, None].float(), "alpha": rows["alpha"].to(device)[:, None].float() / 255}
    if "clip" in rows:
        batch["clip"] = rows["clip"].to(device).permute(0, 3, 1, 2)
    return batch
