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
