"""OmniEraser: a FLUX transformer with LoRA, conditioned on the masked source, the object and the mask.

As the release trains it (after diffusers' flux-control example): the transformer's input embedder is
widened to four packed parts, ``[noisy latents, source with the mask at -1, object only (the rest at
-1), 1 - mask repeated to the latent channels]`` (new weight columns zero, the first copied, so the
widened model starts as the base model); LoRA on the released target modules (the embedder included:
its new columns learn through the LoRA update only, ``add_adapter`` freezes the base weight);
flow matching (``x_t = (1 - σ) x0 + σ ε``, target ``ε - x0``) with FLUX-dev's guidance embedding;
the fixed prompt "There is nothing here." as precomputed embeddings read from a file, so no T5 is
needed to train. A checkpoint holds the LoRA weights only; the widened embedder is rebuilt from the
base weights when it loads.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open

from .. import storage
from ..operators.checkpoints import CheckpointError, local_path
from .eraser import Eraser, latent_mask, vae_images, vae_latents
from .erasers import OmniEraserParams
from .weights import check_part, load_part, part_folder, read_config

PARTS = 4  # noisy latents, masked source, object only, mask
EMBEDDINGS = ("prompt_embeds", "pooled_prompt_embeds")


def _parts(params: OmniEraserParams) -> dict[str, str]:
    return {name: storage.join(params.base, name) for name in ("transformer", "vae", "scheduler")}


def read_embeddings(uri: str) -> dict[str, torch.Tensor]:
    """The precomputed prompt: a safetensors file with prompt_embeds (1, L, D) and pooled_prompt_embeds (1, P)."""
    path = local_path(uri, "OmniEraser prompt embeddings")
    try:
        with safe_open(path, "pt") as f:
            found = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own types for a file of another kind
        raise CheckpointError(f"OmniEraser prompt embeddings {uri} are not a safetensors file: {exc}") from None
    missing = [k for k in EMBEDDINGS if k not in found]
    if missing:
        raise CheckpointError(f"OmniEraser prompt embeddings {uri} lack {', '.join(missing)}")
    return {k: found[k] for k in EMBEDDINGS}


def save_embeddings(path: str, prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor) -> None:
    """Write the file ``prompt_embeddings`` points at (e.g. from FluxPipeline.encode_prompt("There is nothing here."))."""
    from safetensors.torch import save_file

    save_file({"prompt_embeds": prompt_embeds.detach().float().contiguous().cpu(),
               "pooled_prompt_embeds": pooled_prompt_embeds.detach().float().contiguous().cpu()}, path)


def check_parts(params: OmniEraserParams) -> None:
    parts = _parts(params)
    transformer = check_part(FluxTransformer2DModel, parts["transformer"], "OmniEraser transformer")
    vae = check_part(AutoencoderKL, parts["vae"], "OmniEraser VAE")
    read_config(part_folder(parts["scheduler"], "OmniEraser scheduler"), parts["scheduler"], "OmniEraser scheduler", "scheduler_config.json")
    packed = 4 * vae.get("latent_channels", 16)
    if transformer.get("in_channels") != packed:
        raise CheckpointError(f"OmniEraser transformer {parts['transformer']} takes {transformer.get('in_channels')} features; "
                              f"this VAE's packed latents have {packed} (use the base FLUX transformer, not a widened one)")
    embeddings = read_embeddings(params.prompt_embeddings)
    text, pooled = embeddings["prompt_embeds"].shape, embeddings["pooled_prompt_embeds"].shape
    if len(text) != 3 or text[-1] != transformer.get("joint_attention_dim") or len(pooled) != 2 or pooled[-1] != transformer.get("pooled_projection_dim"):
        raise CheckpointError(f"OmniEraser prompt embeddings {params.prompt_embeddings} are {tuple(text)} / {tuple(pooled)}; the transformer "
                              f"takes (1, L, {transformer.get('joint_attention_dim')}) / (1, {transformer.get('pooled_projection_dim')})")


def widen_x_embedder(transformer: FluxTransformer2DModel, parts: int) -> None:
    """The input embedder takes `parts` packed inputs: new weight columns zero, the first copied, bias copied."""
    old = transformer.x_embedder
    new = torch.nn.Linear(old.in_features * parts, old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_features] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    transformer.x_embedder = new
    transformer.register_to_config(in_channels=old.in_features * parts, out_channels=old.in_features)


def pack(latents: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = latents.shape
    return FluxPipeline._pack_latents(latents, batch, channels, height, width)


class OmniEraser(Eraser):
    def __init__(self, params: OmniEraserParams, device: torch.device):
        super().__init__(params)
        parts = _parts(params)
        self.transformer = load_part(FluxTransformer2DModel, parts["transformer"], "OmniEraser transformer")
        self.vae = load_part(AutoencoderKL, parts["vae"], "OmniEraser VAE").requires_grad_(False).eval()
        self.scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(part_folder(parts["scheduler"], "OmniEraser scheduler"))
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        widen_x_embedder(self.transformer, PARTS)
        self.transformer.requires_grad_(False)
        self.transformer.add_adapter(LoraConfig(r=params.lora_rank, lora_alpha=params.lora_alpha, init_lora_weights="gaussian",
                                                target_modules=list(params.lora_target_modules)))
        embeddings = read_embeddings(params.prompt_embeddings)
        self.register_buffer("prompt_embeds", embeddings["prompt_embeds"], persistent=False)
        self.register_buffer("pooled_prompt_embeds", embeddings["pooled_prompt_embeds"], persistent=False)
        self.to(device)

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"lora": self.transformer}  # its trainable parameters are the LoRA weights alone

    def checkpoint_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"lora": get_peft_model_state_dict(self.transformer)}

    def load_checkpoint_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        result = set_peft_model_state_dict(self.transformer, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        expected = set(get_peft_model_state_dict(self.transformer))
        if unexpected or set(state) != expected:
            raise RuntimeError(f"LoRA weights of another model: {len(expected - set(state))} missing, {len(unexpected)} unknown")

    def _condition(self, batch) -> tuple[torch.Tensor, tuple[int, int]]:
        """The three packed conditions (masked source, object only, 1 - mask) and the latent size."""
        mask, source = batch["mask"], batch["source"]
        with torch.no_grad():
            masked = vae_latents(self.vae, torch.where(mask > 0.5, -1.0, source), sample=False)
            only = vae_latents(self.vae, torch.where(mask > 0.5, source, -1.0), sample=False)
        keep = (1 - latent_mask(mask, masked)).expand(-1, masked.shape[1], -1, -1).to(masked.dtype)
        return torch.cat([pack(masked), pack(only), pack(keep)], dim=-1), masked.shape[-2:]

    def _predict(self, noisy: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        batch = noisy.shape[0]
        height, width = size
        img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, noisy.dtype)
        txt_ids = torch.zeros(self.prompt_embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        guidance = torch.full((batch,), self.params.guidance_scale, device=noisy.device, dtype=noisy.dtype)
        return self.transformer(
            hidden_states=torch.cat([noisy, condition], dim=-1), encoder_hidden_states=self.prompt_embeds.expand(batch, -1, -1),
            pooled_projections=self.pooled_prompt_embeds.expand(batch, -1), timestep=timesteps / 1000, img_ids=img_ids, txt_ids=txt_ids,
            guidance=guidance,
        ).sample

    def forward(self, batch, drop_condition=False, generator=None):
        """Flow matching; the prompt is fixed, so there is no condition to drop."""
        with torch.no_grad():
            target = vae_latents(self.vae, batch["target"], generator)
        condition, size = self._condition(batch)
        x0 = pack(target)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        index = (torch.rand(x0.shape[0], generator=generator, device=x0.device) * steps).long().clamp(max=steps - 1).cpu()
        sigma = self.noise_scheduler.sigmas[index].to(x0.device, x0.dtype).view(-1, 1, 1)
        timesteps = self.noise_scheduler.timesteps[index].to(x0.device, x0.dtype)
        prediction = self._predict((1 - sigma) * x0 + sigma * noise, condition, timesteps, size)
        return (prediction.float() - (noise - x0).float()).pow(2).mean(dim=(1, 2))

    @torch.no_grad()
    def erase(self, batch, generator=None):
        condition, size = self._condition(batch)
        height, width = size
        channels = self.vae.config.latent_channels
        latents = torch.randn((condition.shape[0], channels, height, width), generator=generator, device=condition.device, dtype=condition.dtype)
        latents = pack(latents)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        steps = self.params.inference_steps
        config = scheduler.config
        mu = calculate_shift(latents.shape[1], config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu if config.get("use_dynamic_shifting") else None,
                                device=latents.device)
        for t in scheduler.timesteps:
            prediction = self._predict(latents, condition, t.expand(latents.shape[0]).to(latents.dtype), size)
            latents = scheduler.step(prediction, t, latents).prev_sample
        multiple = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unpacked = FluxPipeline._unpack_latents(latents, height * multiple, width * multiple, multiple)
        return vae_images(self.vae, unpacked)
