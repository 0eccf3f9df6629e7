"""SmartEraser (masked-region guidance, visual guidance) on a Stable Diffusion inpainting UNet.

As the release trains it (docs/METHODS.md): the UNet input is ``[noisy latents, mask, VAE(source)]``
where the source is the *whole* image, object included (region guidance; without it, the masked
source as in plain inpainting). The prompt "Remove the instance of object" is encoded by CLIP's text
tower, and the hidden state of "object" is replaced by a visual token: the CLIP image embedding of
the object (on white, cropped to the mask's box) through ``x + Linear(LayerNorm(x))`` (visual
guidance). The unconditional branch (condition dropout, guidance) is the empty prompt with the token
of a zero image in second place. Epsilon (or v) MSE on DDPM noise; UNet, text tower and token MLP
train, VAE and image tower stay frozen. Each idea is a switch, so the paper's ablations are configs.
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from .. import storage
from ..operators.checkpoints import CheckpointError
from .eraser import Eraser, ddim_inpaint, latent_mask, vae_latents
from .erasers import SmartEraserParams
from .weights import check_part, load_part, part_folder, read_config

OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class TokenMLP(torch.nn.Module):
    """The visual token of an image embedding: ``x + Linear(LayerNorm(x))`` (the release's IM2TEXT);
    without the residual when the image embedding and the text hidden size differ."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm, self.fc = torch.nn.LayerNorm(in_dim), torch.nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.norm(x))
        return x + y if x.shape[-1] == y.shape[-1] else y


def _parts(params: SmartEraserParams) -> dict[str, str]:
    return {"unet": storage.join(params.base, "unet"), "vae": storage.join(params.base, "vae"),
            "scheduler": storage.join(params.base, "scheduler"), "clip": params.clip}


def _prompt_ids(tokenizer, params: SmartEraserParams) -> tuple[list[int], int, list[int]]:
    """The prompt's token ids (BOS ... EOS, unpadded), the placeholder's position, and the empty prompt padded alike."""
    ids = tokenizer(params.prompt).input_ids
    word = tokenizer(params.placeholder, add_special_tokens=False).input_ids
    if len(word) != 1:
        raise CheckpointError(f"eraser.placeholder {params.placeholder!r} is {len(word)} tokens for the CLIP tokenizer; it must be one")
    if word[0] not in ids:
        raise CheckpointError(f"eraser.placeholder {params.placeholder!r} is not a word of eraser.prompt {params.prompt!r}")
    empty = tokenizer("", padding="max_length", max_length=len(ids), truncation=True).input_ids
    return ids, ids.index(word[0]), empty


def check_parts(params: SmartEraserParams) -> None:
    """Before Ray starts: every part exists, fits its architecture, and the parts fit each other."""
    parts = _parts(params)
    unet = check_part(UNet2DConditionModel, parts["unet"], "SmartEraser UNet")
    vae = check_part(AutoencoderKL, parts["vae"], "SmartEraser VAE")
    read_config(part_folder(parts["scheduler"], "SmartEraser scheduler"), parts["scheduler"], "SmartEraser scheduler", "scheduler_config.json")
    clip = check_part(CLIPModel, parts["clip"], "SmartEraser CLIP")
    latent = vae.get("latent_channels", 4)
    if unet.get("in_channels") != 2 * latent + 1:
        raise CheckpointError(f"SmartEraser UNet {parts['unet']} takes {unet.get('in_channels')} channels; an inpainting UNet for this "
                              f"VAE takes {2 * latent + 1} (noisy latents, mask, image latents)")
    text_width = clip.get("text_config", {}).get("hidden_size")
    if unet.get("cross_attention_dim") != text_width:
        raise CheckpointError(f"SmartEraser UNet cross_attention_dim {unet.get('cross_attention_dim')} != the CLIP text width {text_width} ({params.clip})")
    _prompt_ids(CLIPTokenizer.from_pretrained(part_folder(params.clip, "SmartEraser CLIP")), params)


class SmartEraser(Eraser):
    def __init__(self, params: SmartEraserParams, device: torch.device):
        super().__init__(params)
        parts = _parts(params)
        self.unet = load_part(UNet2DConditionModel, parts["unet"], "SmartEraser UNet")
        self.vae = load_part(AutoencoderKL, parts["vae"], "SmartEraser VAE").requires_grad_(False).eval()
        self.text_encoder = load_part(CLIPTextModel, parts["clip"], "SmartEraser CLIP text tower")
        clip_folder = part_folder(parts["clip"], "SmartEraser CLIP")
        tokenizer = CLIPTokenizer.from_pretrained(clip_folder)
        self.scheduler_config = DDPMScheduler.load_config(part_folder(parts["scheduler"], "SmartEraser scheduler"))
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        ids, self.placeholder_index, empty = _prompt_ids(tokenizer, params)
        self.register_buffer("prompt_ids", torch.tensor([ids]), persistent=False)
        self.register_buffer("empty_ids", torch.tensor([empty]), persistent=False)
        if params.visual_guidance:
            clip = read_config(clip_folder, params.clip, "SmartEraser CLIP")
            # a CLIPModel folder keeps the projection width at its top level, not in its vision config
            vision = CLIPVisionConfig.from_dict({**clip.get("vision_config", {}), "projection_dim": clip.get("projection_dim", 512)})
            self.image_encoder = load_part(CLIPVisionModelWithProjection, parts["clip"], "SmartEraser CLIP image tower", config=vision)
            self.image_encoder.requires_grad_(False).eval()
            self.token_mlp = TokenMLP(self.image_encoder.config.projection_dim, self.text_encoder.config.hidden_size)
            processor = os.path.join(clip_folder, "preprocessor_config.json")
            mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
            if os.path.isfile(processor):
                config = read_config(clip_folder, params.clip, "SmartEraser CLIP", "preprocessor_config.json")
                mean, std = config.get("image_mean", mean), config.get("image_std", std)
            self.register_buffer("clip_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("clip_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.to(device)

    @property
    def clip_size(self) -> int:
        """Side of the object crops the image tower takes (0: no visual guidance, no crops needed)."""
        return self.image_encoder.config.image_size if self.params.visual_guidance else 0

    def trainable(self) -> dict[str, torch.nn.Module]:
        parts = {"unet": self.unet, "text_encoder": self.text_encoder}
        return parts | ({"token_mlp": self.token_mlp} if self.params.visual_guidance else {})

    def condition(self, clip: torch.Tensor | None, batch: int, drop: bool) -> torch.Tensor:
        """(B, L, D) encoder hidden states: the prompt with the object's visual token in place of the placeholder,
        or (``drop``) the empty prompt with a zero image's token in second place, as the release builds both."""
        ids = (self.empty_ids if drop else self.prompt_ids).expand(batch, -1)
        hidden = self.text_encoder(ids).last_hidden_state
        if not self.params.visual_guidance:
            return hidden
        pixels = torch.zeros(batch, 3, self.clip_size, self.clip_size, device=hidden.device)
        if not drop:
            pixels = (clip.float() / 255 - self.clip_mean) / self.clip_std
        with torch.no_grad():
            embeds = self.image_encoder(pixel_values=pixels).image_embeds
        token = self.token_mlp(embeds.to(hidden.dtype))[:, None]
        if drop:
            return torch.cat([hidden[:, :1], token, hidden[:, 1:-1]], dim=1)
        k = self.placeholder_index
        return torch.cat([hidden[:, :k], token, hidden[:, k + 1 :]], dim=1)

    def _guide(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the UNet sees of the source: all of it (region guidance), or the source with the mask blanked."""
        source = batch["source"]
        return source if self.params.region_guidance else source * (batch["mask"] < 0.5)

    def forward(self, batch, drop_condition=False, generator=None):
        with torch.no_grad():
            latents = vae_latents(self.vae, batch["target"], generator)
            guide = vae_latents(self.vae, self._guide(batch), generator)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        inputs = torch.cat([noisy, latent_mask(batch["mask"], latents), guide], dim=1)
        context = self.condition(batch.get("clip"), latents.shape[0], drop_condition)
        prediction = self.unet(inputs, timesteps, context).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))

    @torch.no_grad()
    def erase(self, batch, generator=None):
        guide = vae_latents(self.vae, self._guide(batch), sample=False)
        size, clip = guide.shape[0], batch.get("clip")
        uncond = self.condition(clip, size, drop=True) if self.params.guidance_scale > 1 else None
        return ddim_inpaint(self, guide, latent_mask(batch["mask"], guide), self.condition(clip, size, drop=False), uncond, generator)
