"""Tiny randomly initialised models for tests: real architectures at toy sizes, built offline."""

from __future__ import annotations

import json
from pathlib import Path

import pairmine  # noqa: F401  (arms the torchvision CPU shim before open_clip imports torchvision)


def tiny_clip(tmp_dir, name: str = "pairmine-tiny-clip", width: int = 32, seed: int = 0) -> tuple[str, str]:
    """An open_clip model config JSON and a checkpoint of random weights for it: (config path, checkpoint path).

    Vision: one 32-px ViT block (patch 8); text: one block with CLIP's real vocabulary and context length,
    which the bundled tokenizer needs. The same arguments give the same weights.
    """
    import open_clip
    import torch

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": width, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 1},
    }
    directory = Path(tmp_dir)
    directory.mkdir(parents=True, exist_ok=True)
    config_path, checkpoint_path = directory / f"{name}.json", directory / f"{name}.pt"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), checkpoint_path)
    return str(config_path), str(checkpoint_path)


# GroundingDINO's SwinT config, shrunk where the shapes allow (hidden_dim stays 256: its text position
# embedding is 256 wide); the Swin-T backbone has no smaller variant.
_TINY_GDINO = {"enc_layers": 1, "dec_layers": 1, "num_queries": 30, "dim_feedforward": 64}
# Special tokens at bert-base-uncased's ids: GroundingDINO splits the caption at [CLS]/[SEP]/./? and HF's
# GroundingDINO hard-codes these ids; the words make the default prompts tokenizable.
_BERT_SPECIAL = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
_BERT_WORDS = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "dog", "cat", "bird", "horse", "ball")
# SAM2.1 hiera-t with one Hiera block per stage (two in the last, with global attention) and one memory
# layer; image_size stays 1024 (the predictors assume it).
_TINY_SAM2 = [
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.stages=[1,1,1,2]",
    "++model.image_encoder.trunk.global_att_blocks=[4]",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.dim_feedforward=64",
    "++model.memory_encoder.fuser.num_layers=1",
]


def tiny_bert(directory, seed: int = 0) -> str:
    """A one-layer random BERT (hidden 32) with a small vocabulary, saved as a Hugging Face folder; its path."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = [_BERT_SPECIAL.get(i, f"[unused{i}]") for i in range(max(_BERT_SPECIAL) + 1)] + list(_BERT_WORDS)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)  # transformers 4.57: vocab_file=
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(directory)
    return str(directory)


def tiny_gdino(tmp_dir, seed: int = 0) -> dict[str, str]:
    """A small GroundingDINO (SwinT config, one encoder and decoder layer, tiny BERT) with random weights:
    the gdino_config, gdino_checkpoint and text_encoder values of GdinoSam2MaskerParams."""
    from importlib.util import find_spec

    import torch
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    directory = Path(tmp_dir)
    text_encoder = tiny_bert(directory / "tiny-bert", seed)
    shipped = Path(find_spec("groundingdino").submodule_search_locations[0]) / "config" / "GroundingDINO_SwinT_OGC.py"
    config = directory / "tiny_gdino_cfg.py"
    config.write_text(shipped.read_text() + "".join(f"{key} = {value!r}\n" for key, value in _TINY_GDINO.items()))
    args = SLConfig.fromfile(str(config))
    args.text_encoder_type, args.device = text_encoder, "cpu"
    torch.manual_seed(seed)
    checkpoint = directory / "tiny_gdino.pth"
    torch.save({"model": build_model(args).state_dict()}, checkpoint)
    return {"gdino_config": str(config), "gdino_checkpoint": str(checkpoint), "text_encoder": text_encoder}


def tiny_sam2(tmp_dir, seed: int = 0) -> dict[str, str]:
    """A small SAM2.1 (hiera-t config, shrunk) with random weights: its YAML config and checkpoint, the
    sam2_config and sam2_checkpoint values of GdinoSam2MaskerParams."""
    import sam2  # noqa: F401  (registers sam2's configs with hydra)
    import torch
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    directory = Path(tmp_dir)
    directory.mkdir(parents=True, exist_ok=True)
    config, checkpoint = directory / "tiny_sam2.yaml", directory / "tiny_sam2.pt"
    cfg = compose(config_name="configs/sam2.1/sam2.1_hiera_t.yaml", overrides=_TINY_SAM2)
    OmegaConf.save(cfg, config)
    OmegaConf.resolve(cfg)
    torch.manual_seed(seed)
    torch.save({"model": instantiate(cfg.model, _recursive_=True).state_dict()}, checkpoint)
    return {"sam2_config": str(config), "sam2_checkpoint": str(checkpoint)}


def clip_tokenizer_files(directory) -> str:
    """vocab.json + merges.txt of CLIP's BPE, built from the file open_clip ships (no hub): transformers'
    CLIPTokenizer loads them and gives open_clip's ids."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(directory)


def tiny_clip_hf(directory, seed: int = 0, width: int = 32, image_size: int = 32) -> str:
    """A one-layer random transformers CLIPModel (text and vision towers with projections) and its
    tokenizer, saved in one folder: SmartEraser's `clip`."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory = Path(directory)
    files = clip_tokenizer_files(directory)
    CLIPTokenizer(vocab_file=f"{files}/vocab.json", merges_file=f"{files}/merges.txt", model_max_length=77).save_pretrained(directory)
    tower = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**tower, "image_size": image_size, "patch_size": 8},
        projection_dim=width,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    return str(directory)


TINY_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "prediction_type": "epsilon", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}


def tiny_sd_inpainting(
    directory, seed: int = 0, cross_attention_dim: int = 32, in_channels: int = 9, blocks: tuple[int, int] = (32, 64),
) -> str:
    """A random Stable Diffusion inpainting folder in diffusers' layout (unet/, vae/, scheduler/) at toy size:
    UNet blocks (32, 64), one layer each (~0.8 M parameters); VAE blocks (8, 16, 16, 16) (81 k)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    directory = Path(directory)
    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=blocks, layers_per_block=1,
        norm_num_groups=32, cross_attention_dim=cross_attention_dim, attention_head_dim=8,
    ).save_pretrained(directory / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64,
    ).save_pretrained(directory / "vae")
    DDIMScheduler(**TINY_SCHEDULER).save_pretrained(directory / "scheduler")
    return str(directory)


def tiny_smarteraser(directory, seed: int = 0, width: int = 32, blocks: tuple[int, int] = (32, 64)) -> dict[str, str]:
    """The `base` and `clip` folders of a small random SmartEraser (`width`: CLIP's, = the UNet's cross-attention)."""
    directory = Path(directory)
    return {"base": tiny_sd_inpainting(directory / "sd-inpainting", seed, cross_attention_dim=width, blocks=blocks),
            "clip": tiny_clip_hf(directory / "clip", seed, width=width)}


def tiny_eradiff(directory, seed: int = 0) -> dict[str, str]:
    """EraDiff's `base`: a tiny SD inpainting folder with its own text encoder and tokenizer (diffusers' layout)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    base = Path(tiny_sd_inpainting(directory / "sd-inpainting", seed))
    files = clip_tokenizer_files(directory / "bpe")
    CLIPTokenizer(vocab_file=f"{files}/vocab.json", merges_file=f"{files}/merges.txt", model_max_length=77).save_pretrained(base / "tokenizer")
    torch.manual_seed(seed)
    CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=49408,
                                 max_position_embeddings=77)).save_pretrained(base / "text_encoder")
    return {"base": str(base)}


def tiny_omnieraser(directory, seed: int = 0) -> dict[str, str]:
    """OmniEraser's `base` (a FLUX folder: transformer/, vae/, scheduler/ at toy size: 78 k transformer parameters)
    and its `prompt_embeddings` file (random embeddings of the transformer's widths)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from pairmine.training.omnieraser import save_embeddings

    directory = Path(directory)
    base = directory / "flux"
    torch.manual_seed(seed)
    FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                           joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8)).save_pretrained(base / "transformer")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64,
                  scaling_factor=0.3611, shift_factor=0.1159).save_pretrained(base / "vae")
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).save_pretrained(base / "scheduler")
    embeddings = directory / "nothing-here.safetensors"
    save_embeddings(str(embeddings), torch.randn(1, 8, 32), torch.randn(1, 32))
    return {"base": str(base), "prompt_embeddings": str(embeddings)}
