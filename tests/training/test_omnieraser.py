"""OmniEraser on a tiny random FLUX: the widened embedder, LoRA-only checkpoints, the flow-matching loss."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors import safe_open
from training_inputs import overfit_losses

from pairmine.operators.checkpoints import CheckpointError
from pairmine.training import models
from pairmine.training.erasers import OmniEraserParams
from pairmine.training.omnieraser import PARTS, save_embeddings, widen_x_embedder

torch.set_num_threads(1)


def params(parts, **extra):
    return OmniEraserParams(**parts, lora_rank=4, lora_alpha=4, inference_steps=2, **extra)


def batch(size=2, side=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, 1, side, side)
    mask[..., 16:40, 16:48] = 1
    return {"source": torch.rand(size, 3, side, side, generator=g) * 2 - 1, "target": torch.rand(size, 3, side, side, generator=g) * 2 - 1,
            "mask": mask, "alpha": mask}


def test_the_widened_embedder_starts_as_the_base_one(omnieraser_parts):
    base = FluxTransformer2DModel.from_pretrained(f"{omnieraser_parts['base']}/transformer")
    wide = FluxTransformer2DModel.from_pretrained(f"{omnieraser_parts['base']}/transformer")
    widen_x_embedder(wide, PARTS)
    old, new = base.x_embedder, wide.x_embedder
    assert new.in_features == PARTS * old.in_features and wide.config.in_channels == PARTS * old.in_features
    assert wide.config.out_channels == old.in_features
    assert torch.equal(new.weight[:, : old.in_features], old.weight) and not new.weight[:, old.in_features :].any()
    assert torch.equal(new.bias, old.bias)
    x = torch.randn(1, 16, old.in_features)
    conditions = torch.randn(1, 16, (PARTS - 1) * old.in_features)
    assert torch.allclose(new(torch.cat([x, conditions], -1)), old(x), atol=1e-6), "the conditions start with no effect"


def test_only_lora_weights_train_and_the_model_starts_as_the_base(omnieraser_parts):
    model = models.build(params(omnieraser_parts), torch.device("cpu"))
    trained = {n for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert any(n.startswith("x_embedder.lora_") for n in trained), "the widened columns learn through the embedder's LoRA"
    assert {m.split(".")[-4] for m in trained if "transformer_blocks" in m} >= {"to_q", "to_k", "to_v"}
    assert not any(p.requires_grad for p in model.vae.parameters())


def test_the_flow_matching_loss_falls_on_a_tiny_overfit_set(omnieraser_parts):
    torch.manual_seed(0)
    model = models.build(params(omnieraser_parts), torch.device("cpu"))
    data = batch()
    losses = overfit_losses(model, data, lr=1e-2)
    assert np.isfinite(losses).all() and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    prediction = model.erase(data, torch.Generator().manual_seed(0))
    assert prediction.shape == (2, 3, 64, 64) and 0 <= prediction.min() and prediction.max() <= 1


def test_a_checkpoint_holds_the_lora_weights_only_and_round_trips(omnieraser_parts, tmp_path):
    model = models.build(params(omnieraser_parts), torch.device("cpu"))
    for p in model.trainable_parameters():  # as if trained: LoRA B starts at zero
        torch.nn.init.normal_(p)
    model.save(str(tmp_path))
    with safe_open(str(tmp_path / "lora.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)
    assert sum(np.prod(f.get_slice(k).get_shape()) for f in [safe_open(str(tmp_path / "lora.safetensors"), "pt")] for k in keys) == sum(
        p.numel() for p in model.trainable_parameters())
    loaded, _ = models.load(str(tmp_path), torch.device("cpu"))
    for a, b in zip(model.checkpoint_state()["lora"].values(), loaded.checkpoint_state()["lora"].values()):
        assert torch.equal(a, b)
    assert torch.equal(loaded.transformer.x_embedder.base_layer.weight, model.transformer.x_embedder.base_layer.weight), "rebuilt from the base"
    other = models.build(params(omnieraser_parts) .model_copy(update={"lora_rank": 8}), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="does not fit the omnieraser lora"):
        other.load_trainable(str(tmp_path))


def test_prompt_embeddings_of_another_width_are_refused(omnieraser_parts, tmp_path):
    save_embeddings(str(tmp_path / "wide.safetensors"), torch.zeros(1, 8, 64), torch.zeros(1, 32))
    with pytest.raises(CheckpointError, match=r"are \(1, 8, 64\) / \(1, 32\); the transformer takes \(1, L, 32\)"):
        models.check(OmniEraserParams(base=omnieraser_parts["base"], prompt_embeddings=str(tmp_path / "wide.safetensors")))


def test_a_widened_transformer_is_not_a_base(omnieraser_parts, tmp_path):
    base = shutil.copytree(omnieraser_parts["base"], tmp_path / "flux")
    model = FluxTransformer2DModel.from_pretrained(str(base / "transformer"))
    widen_x_embedder(model, PARTS)
    model.save_pretrained(str(base / "transformer"))
    with pytest.raises(CheckpointError, match="takes 64 features; this VAE's packed latents have 16"):
        models.check(OmniEraserParams(base=str(base), prompt_embeddings=omnieraser_parts["prompt_embeddings"]))
