"""The erasers' configs: which pretrained parts each one starts from and which of its ideas are switched on.

A config is chosen by its ``name`` (the ``eraser`` key of the train config). ``models.py`` checks its
parts before Ray starts and builds its model in a worker; this module imports no torch and no model.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, ValidationError

from ..errors import UserError
from ..operators.params import Params


class EraserParams(Params):
    """What every eraser's config has: its name and its inference settings."""

    name: str
    latent_multiple: ClassVar[int] = 8  # image sides must be multiples of this (the VAE's downsampling)
    paths: ClassVar[tuple[str, ...]] = ()  # the fields that name its parts: local paths or s3:// URIs
    inference_steps: int = Field(50, ge=1, le=1000, description="denoising steps at validation and in `pairmine erase`")
    guidance_scale: float = Field(1.5, ge=1, description="classifier-free guidance at inference (1: no guidance)")

    def object_crop_size(self) -> int:
        """Side of the object crops its batches carry (visual guidance); 0: none."""
        return 0


class SmartEraserParams(EraserParams):
    """SmartEraser: SD-inpainting UNet with masked-region guidance and a visual token of the object (docs/METHODS.md)."""

    name: Literal["smarteraser"] = "smarteraser"
    paths: ClassVar[tuple[str, ...]] = ("base", "clip")
    base: str = Field(
        min_length=1, description="local or s3:// folder of a Stable Diffusion inpainting model in diffusers' layout "
        "(unet/ with in_channels 9, vae/, scheduler/); SmartEraser starts from SD 1.5 inpainting",
    )
    clip: str = Field(
        min_length=1, description="local or s3:// folder of a CLIP model (transformers' save_pretrained: text and vision towers "
        "with projection, and its tokenizer); its text tower is the text encoder (SmartEraser: ViT-L/14)",
    )
    prompt: str = Field("Remove the instance of object", min_length=1, description="the training and inference prompt")
    placeholder: str = Field("object", min_length=1, description="the prompt word whose hidden state the visual token replaces")
    region_guidance: bool = Field(True, description="RG: the UNet sees the whole source image; false: the source with the mask blanked")
    visual_guidance: bool = Field(True, description="VG: a CLIP-image token of the object replaces the placeholder; false: text only")

    def object_crop_size(self) -> int:
        if not self.visual_guidance:
            return 0
        from .weights import part_folder, read_config

        clip = read_config(part_folder(self.clip, "SmartEraser CLIP"), self.clip, "SmartEraser CLIP")
        return int(clip.get("vision_config", {}).get("image_size", 224))


class EraDiffParams(EraserParams):
    """Erase Diffusion: dynamic composition targets, the chain loss, self-rectifying attention (docs/METHODS.md)."""

    name: Literal["eradiff"] = "eradiff"
    paths: ClassVar[tuple[str, ...]] = ("base",)
    base: str = Field(
        min_length=1, description="local or s3:// folder of a Stable Diffusion inpainting model in diffusers' layout (unet/ with "
        "in_channels 9, vae/, scheduler/, text_encoder/, tokenizer/); EraDiff starts from SD 2 inpainting",
    )
    prompt: str = Field("", description="the fixed prompt (encoded once by the base's text encoder; the paper gives none)")
    gamma_max: int = Field(100, ge=1, le=999, description="the chain loss compares the DDIM step from t to t - gamma, gamma ~ U{1..gamma_max}")
    mask_attention: bool = Field(True, description="self-rectifying attention: masked queries attend to unmasked keys only")
    mask_attention_blocks: tuple[Literal["down", "mid", "up"], ...] = Field(
        ("down", "mid", "up"), min_length=1, description="the UNet parts whose self-attention is mask-aware (the paper does not say)",
    )
    guidance_scale: float = Field(1.0, ge=1, description="classifier-free guidance at inference (1: none; the prompt is fixed)")


# The release's LoRA targets (PRIS-CV/Omnieraser, after diffusers' flux-control example)
OMNIERASER_LORA_TARGETS = (
    "x_embedder", "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj",
    "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)


class OmniEraserParams(EraserParams):
    """OmniEraser: LoRA on a FLUX transformer widened to take the masked source, the object and the mask (docs/METHODS.md)."""

    name: Literal["omnieraser"] = "omnieraser"
    latent_multiple: ClassVar[int] = 16  # 8x VAE, then 2x2 packing
    paths: ClassVar[tuple[str, ...]] = ("base", "prompt_embeddings")
    base: str = Field(
        min_length=1, description="local or s3:// folder of FLUX.1-dev in diffusers' layout (transformer/, vae/, scheduler/); "
        "the text encoders are not needed: see prompt_embeddings",
    )
    prompt_embeddings: str = Field(
        min_length=1, description="local or s3:// safetensors file of the fixed prompt's embeddings (prompt_embeds (1, L, D), "
        "pooled_prompt_embeds (1, P)): \"There is nothing here.\" encoded once by FLUX's text encoders",
    )
    lora_rank: int = Field(32, ge=1, le=1024, description="LoRA rank (the release: 32)")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (the release: the rank)")
    lora_target_modules: tuple[str, ...] = Field(OMNIERASER_LORA_TARGETS, min_length=1, description="modules that get a LoRA adapter")
    inference_steps: int = Field(28, ge=1, le=1000, description="flow-matching steps at validation and in `pairmine erase`")
    guidance_scale: float = Field(3.5, ge=0, description="FLUX-dev's guidance embedding (distilled guidance, not classifier-free)")


ERASERS: dict[str, type[EraserParams]] = {"smarteraser": SmartEraserParams, "eradiff": EraDiffParams, "omnieraser": OmniEraserParams}
AnyEraser = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in ERASERS.items())],
    Discriminator(lambda value: value.get("name", "smarteraser") if isinstance(value, dict) else value.name),
]


def eraser_params(data: dict) -> EraserParams:
    """The eraser config of a saved checkpoint (its eraser.json)."""
    cls = ERASERS.get(data.get("name"))
    if cls is None:
        raise UserError(f"unknown eraser {data.get('name')!r} (known: {', '.join(ERASERS)})")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:  # a damaged eraser.json, or an erase override (--steps, --guidance) it refuses
        raise UserError(f"{data['name']}: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
