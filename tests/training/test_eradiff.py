"""EraDiff on tiny random parts: the λ path and the chain target against direct computations, self-rectifying
attention on its outputs, the object layer of pairs with and without alpha, and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from models import TINY_SCHEDULER
from training_inputs import overfit_losses

from pairmine.training import models
from pairmine.training.eradiff import MaskAwareAttention, chain_target, ddim_step, mask_bias, mix_latents, object_layer
from pairmine.training.erasers import EraDiffParams

torch.set_num_threads(1)
ALPHAS = DDPMScheduler(**{k: v for k, v in TINY_SCHEDULER.items() if k != "set_alpha_to_one"}).alphas_cumprod


def test_the_mixed_target_moves_from_the_clean_image_to_the_object_image():
    g = torch.Generator().manual_seed(0)
    z_ori, z_obj = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    mixed = mix_latents(z_ori, z_obj, ALPHAS, t)
    for i, step in enumerate(t.tolist()):
        lam = 1 - float(ALPHAS[step])  # the paper's λ_t = 1 - ᾱ_t, computed here directly
        assert torch.allclose(mixed[i], (1 - lam) * z_ori[i] + lam * z_obj[i], atol=1e-6)
    assert torch.allclose(mixed[0], z_ori[0], atol=1e-2) and torch.allclose(mixed[2], z_obj[2], atol=5e-2), "t=0: clean; t=T: the object"
    lams = [1 - float(ALPHAS[s]) for s in range(0, 1000, 50)]
    assert lams == sorted(lams), "λ grows with t"


def test_the_chain_target_is_the_mixed_latent_at_t_minus_gamma_with_the_same_noise():
    g = torch.Generator().manual_seed(1)
    z_ori, z_obj, eps = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    t, s = torch.tensor([700, 90]), torch.tensor([650, 1])
    a_s = ALPHAS[s].view(-1, 1, 1, 1)
    lam_s = (1 - ALPHAS[s]).view(-1, 1, 1, 1)
    direct = a_s.sqrt() * ((1 - lam_s) * z_ori + lam_s * z_obj) + (1 - a_s).sqrt() * eps
    assert torch.allclose(chain_target(z_ori, z_obj, eps, ALPHAS, s), direct, atol=1e-6)
    # a DDIM step with the true noise from a point on the path lands on the same path, shifted only by the mixing
    x_t = ALPHAS[t].sqrt().view(-1, 1, 1, 1) * mix_latents(z_ori, z_obj, ALPHAS, t) + (1 - ALPHAS[t]).sqrt().view(-1, 1, 1, 1) * eps
    stepped = ddim_step(x_t, eps, ALPHAS[t], ALPHAS[s])
    lam_t = (1 - ALPHAS[t]).view(-1, 1, 1, 1)
    expected = direct + a_s.sqrt() * (lam_t - lam_s) * (z_obj - z_ori)
    assert torch.allclose(stepped, expected, atol=1e-4)
    same = ddim_step(x_t, eps, ALPHAS[t], ALPHAS[s])
    assert torch.allclose(chain_target(z_ori, z_ori, eps, ALPHAS, s), ddim_step(
        ALPHAS[t].sqrt().view(-1, 1, 1, 1) * z_ori + (1 - ALPHAS[t]).sqrt().view(-1, 1, 1, 1) * eps, eps, ALPHAS[t], ALPHAS[s]), atol=1e-4)
    assert torch.equal(same, stepped)


def test_the_object_layer_comes_from_the_alpha_and_a_binary_mask_stands_in_for_it():
    source, target = torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4)
    alpha = torch.zeros(1, 1, 4, 4)
    alpha[..., 1:3, 1:3] = 0.5  # a soft object
    layer = object_layer({"source": source, "target": target, "alpha": alpha})
    assert torch.equal(layer[..., 1:3, 1:3], source[..., 1:3, 1:3]) and torch.equal(layer[..., 0, :], target[..., 0, :])
    # a video pair differs outside its mask too (noise, light): only the masked object enters the path
    noisy = target + 0.1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    layer = object_layer({"source": noisy, "target": target, "alpha": mask})
    assert torch.equal(layer[..., 2:, 2:], target[..., 2:, 2:]) and torch.equal(layer[..., :2, :2], noisy[..., :2, :2])


def _attention():
    torch.manual_seed(0)
    return Attention(query_dim=8, heads=2, dim_head=4).eval()


def test_mask_aware_attention_keeps_masked_queries_off_masked_keys():
    attn, hidden = _attention(), torch.randn(1, 16, 8)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    inside = mask.flatten() > 0
    processor = MaskAwareAttention()
    processor.mask = mask
    with torch.no_grad():
        plain, rectified = AttnProcessor2_0()(attn, hidden), processor(attn, hidden)
        assert torch.allclose(rectified[0, ~inside], plain[0, ~inside], atol=1e-6), "queries outside the mask are unchanged"
        assert not torch.allclose(rectified[0, inside], plain[0, inside])
        # masked queries: attention over the unmasked keys only, computed directly
        q, k, v = (f(hidden).view(16, 2, 4).transpose(0, 1) for f in (attn.to_q, attn.to_k, attn.to_v))
        weights = torch.softmax(q[:, inside] @ k[:, ~inside].transpose(1, 2) / 2.0, dim=-1)
        direct = attn.to_out[0]((weights @ v[:, ~inside]).transpose(0, 1).reshape(int(inside.sum()), 8))
        assert torch.allclose(rectified[0, inside], direct, atol=1e-5)
        # and nothing a masked key holds reaches a masked query
        changed = hidden.clone()
        changed[0, inside] += 5.0
        again = processor(attn, changed)
        q2 = attn.to_q(changed).view(16, 2, 4).transpose(0, 1)
        weights2 = torch.softmax(q2[:, inside] @ k[:, ~inside].transpose(1, 2) / 2.0, dim=-1)
        assert torch.allclose(again[0, inside], attn.to_out[0]((weights2 @ v[:, ~inside]).transpose(0, 1).reshape(-1, 8)), atol=1e-5)


def test_rows_with_every_key_masked_are_guarded():
    full = torch.ones(2, 1, 4, 4)
    full[1] = 0
    bias = mask_bias(full, 16, torch.float32)
    assert bias.shape == (2, 1, 16, 16) and torch.isfinite(bias).all(), "no row of only -inf (softmax would give NaN)"
    attn, hidden = _attention(), torch.randn(2, 16, 8)
    processor = MaskAwareAttention()
    processor.mask = full
    with torch.no_grad():
        assert torch.allclose(processor(attn, hidden), AttnProcessor2_0()(attn, hidden), atol=1e-6)
    half = torch.zeros(1, 1, 8, 8)
    half[..., :4, :] = 1
    coarse = mask_bias(half, 16, torch.float32)  # a 4x4 layer of an 8x8 mask: the mask is resized to the layer
    assert torch.isinf(coarse).sum() == 8 * 8


def test_the_switches_choose_the_self_attention_layers(eradiff_parts):
    model = models.build(EraDiffParams(**eradiff_parts, mask_attention_blocks=("up",)), torch.device("cpu"))
    processors = model.unet.attn_processors
    rectified = {name for name, p in processors.items() if isinstance(p, MaskAwareAttention)}
    assert rectified and all(name.startswith("up_blocks") and "attn1" in name for name in rectified)
    assert all(not isinstance(p, MaskAwareAttention) for name, p in processors.items() if "attn2" in name or name.startswith("down"))
    off = models.build(EraDiffParams(**eradiff_parts, mask_attention=False), torch.device("cpu"))
    assert not any(isinstance(p, MaskAwareAttention) for p in off.unet.attn_processors.values())


def test_the_chain_loss_falls_on_a_tiny_overfit_set(eradiff_parts):
    torch.manual_seed(0)
    model = models.build(EraDiffParams(**eradiff_parts, inference_steps=2), torch.device("cpu"))
    assert set(model.trainable()) == {"unet"} and not any(p.requires_grad for p in model.vae.parameters())
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:40, 16:48] = 1
    batch = {"source": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, "target": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1,
             "mask": mask, "alpha": mask}
    losses = overfit_losses(model, batch, lr=3e-3)
    assert np.isfinite(losses).all() and np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses
    prediction = model.erase(batch, torch.Generator().manual_seed(0))
    assert prediction.shape == (2, 3, 64, 64) and model.attention.mask is None, "the mask is cleared after each call"


def test_a_missing_text_encoder_is_one_line(eradiff_parts, tmp_path):
    import shutil

    from pairmine.operators.checkpoints import CheckpointError

    base = shutil.copytree(eradiff_parts["base"], tmp_path / "sd")
    shutil.rmtree(base / "text_encoder")
    with pytest.raises(CheckpointError, match="EraDiff text encoder not found"):
        models.check(EraDiffParams(base=str(base)))
