"""Erase Diffusion (EraDiff, arXiv 2503.07026) on a Stable Diffusion inpainting UNet, from the paper (no code
was released; docs/METHODS.md and the README say where we chose).

**Dynamic composition.** The training target moves along the diffusion path from the image with the
object to the clean image: ``x̃_t = (1 - λ_t) z_ori + λ_t z_obj`` with ``λ_t = 1 - ᾱ_t`` (at t = 0 the
clean image, at t = T the image with the object), ``x_t = √ᾱ_t x̃_t + √(1 - ᾱ_t) ε``. ``z_ori`` is
the target's latents; ``z_obj`` the latents of the target with the object layer composited back, the
layer rebuilt from ``alpha.png`` (where the alpha is non-zero the source's pixels, elsewhere the
target's): a Video4Removal pair has no alpha and its binary mask stands in, so changes the pair shows
outside the mask (noise, light) never enter the path. Our choice: mixing in latent space, as the
formula is written, on the two encoded images.

**Chain loss.** With γ ~ U{1..γ_max} (at most t), one DDIM step from x_t with the predicted noise,
``x̂_{t-γ} = √ᾱ_{t-γ} (x_t - √(1-ᾱ_t) ε_θ) / √ᾱ_t + √(1-ᾱ_{t-γ}) ε_θ``, is compared with the mixed
latent at t - γ, ``√ᾱ_{t-γ} x̃_{t-γ} + √(1-ᾱ_{t-γ}) ε`` (the same ε).

**Self-rectifying attention.** In the self-attention of the chosen UNet parts, a query inside the mask
attends only to keys outside it (an additive bias of -inf on masked keys, rows guarded when every key
is masked); queries outside the mask attend as before. Which layers the paper uses is not stated: a
switch (``mask_attention_blocks``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextModel, CLIPTokenizer

from .. import storage
from ..operators.checkpoints import CheckpointError
from .eraser import Eraser, ddim_inpaint, latent_mask, vae_latents
from .erasers import EraDiffParams
from .weights import check_part, load_part, part_folder, read_config


def mix_latents(z_ori: torch.Tensor, z_obj: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x̃_t = (1 - λ_t) z_ori + λ_t z_obj, λ_t = 1 - ᾱ_t (per sample t)."""
    lam = (1 - alphas_cumprod[t]).view(-1, 1, 1, 1).to(z_ori.dtype)
    return (1 - lam) * z_ori + lam * z_obj


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_s: torch.Tensor) -> torch.Tensor:
    """A deterministic DDIM step from t to s (s < t) with the predicted noise `eps`."""
    abar_t, abar_s = abar_t.view(-1, 1, 1, 1), abar_s.view(-1, 1, 1, 1)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    return abar_s.sqrt() * x0 + (1 - abar_s).sqrt() * eps


def chain_target(z_ori, z_obj, eps, alphas_cumprod, s) -> torch.Tensor:
    """The mixed latent at s with the same noise: √ᾱ_s x̃_s + √(1 - ᾱ_s) ε."""
    abar_s = alphas_cumprod[s].view(-1, 1, 1, 1).to(z_ori.dtype)
    return abar_s.sqrt() * mix_latents(z_ori, z_obj, alphas_cumprod, s) + (1 - abar_s).sqrt() * eps


def object_layer(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The target with the object layer composited back (source pixels where the alpha is non-zero)."""
    return torch.where(batch["alpha"] > 0, batch["source"], batch["target"])


def mask_bias(mask: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) additive attention bias for a (B, 1, H, W) mask at a layer of L = h x w tokens: -inf where
    the query and the key both lie inside the mask, 0 elsewhere; a row is left unbiased when every key is masked."""
    height, width = mask.shape[-2:]
    factor = (height * width / length) ** 0.5
    size = (round(height / factor), round(width / factor))
    inside = (F.interpolate(mask.float(), size=size, mode="nearest") > 0.5).flatten(1)  # (B, L)
    blocked = inside[:, :, None] & inside[:, None, :]
    blocked &= ~inside.all(dim=1)[:, None, None]  # every key masked: no key would be left to attend to
    bias = torch.zeros(blocked.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(blocked, float("-inf"))[:, None]


class MaskAwareAttention:
    """Self-attention processor with the self-rectifying bias of the current mask (``set_mask`` before a
    UNet call); without a mask, or on cross-attention, it is diffusers' scaled-dot-product processor."""

    def __init__(self):
        self.mask: torch.Tensor | None = None
        self.plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.mask is None or encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        residual = hidden_states
        batch, length, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        query, key, value = (x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        bias = mask_bias(self.mask, length, query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, length, -1)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _parts(params: EraDiffParams) -> dict[str, str]:
    return {name: storage.join(params.base, name) for name in ("unet", "vae", "scheduler", "text_encoder", "tokenizer")}


def check_parts(params: EraDiffParams) -> None:
    parts = _parts(params)
    unet = check_part(UNet2DConditionModel, parts["unet"], "EraDiff UNet")
    vae = check_part(AutoencoderKL, parts["vae"], "EraDiff VAE")
    text = check_part(CLIPTextModel, parts["text_encoder"], "EraDiff text encoder")
    read_config(part_folder(parts["scheduler"], "EraDiff scheduler"), parts["scheduler"], "EraDiff scheduler", "scheduler_config.json")
    part_folder(parts["tokenizer"], "EraDiff tokenizer")
    latent = vae.get("latent_channels", 4)
    if unet.get("in_channels") != 2 * latent + 1:
        raise CheckpointError(f"EraDiff UNet {parts['unet']} takes {unet.get('in_channels')} channels; an inpainting UNet takes {2 * latent + 1}")
    if unet.get("cross_attention_dim") != text.get("hidden_size"):
        raise CheckpointError(f"EraDiff UNet cross_attention_dim {unet.get('cross_attention_dim')} != its text encoder's width {text.get('hidden_size')}")


class EraDiff(Eraser):
    def __init__(self, params: EraDiffParams, device: torch.device):
        super().__init__(params)
        parts = _parts(params)
        self.unet = load_part(UNet2DConditionModel, parts["unet"], "EraDiff UNet")
        self.vae = load_part(AutoencoderKL, parts["vae"], "EraDiff VAE").requires_grad_(False).eval()
        text_encoder = load_part(CLIPTextModel, parts["text_encoder"], "EraDiff text encoder").eval()
        tokenizer = CLIPTokenizer.from_pretrained(part_folder(parts["tokenizer"], "EraDiff tokenizer"))
        with torch.no_grad():  # the prompt is fixed: encoded once, the text encoder is not kept
            ids = [tokenizer(p, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
                   for p in (params.prompt, "")]
            prompt, empty = (text_encoder(i).last_hidden_state for i in ids)
        self.register_buffer("prompt_embeds", prompt, persistent=False)
        self.register_buffer("empty_embeds", empty, persistent=False)
        self.scheduler_config = DDPMScheduler.load_config(part_folder(parts["scheduler"], "EraDiff scheduler"))
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False)
        self.attention = MaskAwareAttention()
        if params.mask_attention:
            self.unet.set_attn_processor({
                name: self.attention if name.endswith("attn1.processor") and name.split("_", 1)[0] in params.mask_attention_blocks else processor
                for name, processor in self.unet.attn_processors.items()
            })
        self.to(device)

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def _unet(self, x, t, mask, context):
        self.attention.mask = mask if self.params.mask_attention else None
        try:
            return self.unet(x, t, context).sample
        finally:
            self.attention.mask = None

    def _epsilon(self, prediction, x_t, t):
        """The model's noise estimate, from an epsilon or a v prediction."""
        if self.noise_scheduler.config.prediction_type != "v_prediction":
            return prediction
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * prediction + (1 - abar).sqrt() * x_t

    def forward(self, batch, drop_condition=False, generator=None):
        with torch.no_grad():
            z_ori = vae_latents(self.vae, batch["target"], generator)
            z_obj = vae_latents(self.vae, object_layer(batch), generator)
            masked = vae_latents(self.vae, batch["source"] * (batch["mask"] < 0.5), generator)
        size, device = z_ori.shape[0], z_ori.device
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(1, steps, (size,), generator=generator, device=device)
        gamma = torch.randint(1, self.params.gamma_max + 1, (size,), generator=generator, device=device)
        s = (t - gamma).clamp(min=0)
        eps = torch.randn(z_ori.shape, generator=generator, device=device, dtype=z_ori.dtype)
        abar = self.alphas_cumprod.to(z_ori.dtype)
        x_t = abar[t].sqrt().view(-1, 1, 1, 1) * mix_latents(z_ori, z_obj, abar, t) + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps
        mask = latent_mask(batch["mask"], z_ori)
        context = (self.empty_embeds if drop_condition else self.prompt_embeds).expand(size, -1, -1)
        prediction = self._unet(torch.cat([x_t, mask, masked], dim=1), t, mask, context)
        estimate = ddim_step(x_t, self._epsilon(prediction.float(), x_t, t), abar[t], abar[s])
        return (estimate.float() - chain_target(z_ori, z_obj, eps, abar, s).float()).pow(2).mean(dim=(1, 2, 3))

    @torch.no_grad()
    def erase(self, batch, generator=None):
        masked = vae_latents(self.vae, batch["source"] * (batch["mask"] < 0.5), sample=False)
        mask = latent_mask(batch["mask"], masked)
        size = masked.shape[0]
        guided = self.params.guidance_scale > 1
        self.attention.mask = (torch.cat([mask, mask]) if guided else mask) if self.params.mask_attention else None
        try:
            return ddim_inpaint(self, masked, mask, self.prompt_embeds.expand(size, -1, -1), self.empty_embeds.expand(size, -1, -1), generator)
        finally:
            self.attention.mask = None
