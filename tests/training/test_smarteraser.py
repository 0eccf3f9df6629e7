"""SmartEraser on tiny random parts built from the libraries' own configs: checks, conditions, loss, erase, checkpoints."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from helpers import cli_in_process
from models import tiny_sd_inpainting
from safetensors.torch import load_file, save_file
from training_inputs import overfit_losses

from pairmine import storage
from pairmine.operators.checkpoints import CheckpointError
from pairmine.training import models
from pairmine.training.eraser import read_eraser_file
from pairmine.training.erasers import SmartEraserParams
from pairmine.training.metrics import paste_back, scores

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def eraser(smarteraser_parts):
    torch.manual_seed(0)
    return models.build(SmartEraserParams(**smarteraser_parts, inference_steps=3), torch.device("cpu"))


def batch(size=2, side=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, 1, side, side)
    mask[:, :, side // 4 : side // 2, side // 4 : 3 * side // 4] = 1
    return {"source": torch.rand(size, 3, side, side, generator=g) * 2 - 1, "target": torch.rand(size, 3, side, side, generator=g) * 2 - 1,
            "mask": mask, "alpha": mask.clone(), "clip": torch.randint(0, 256, (size, 3, 32, 32), generator=g, dtype=torch.uint8)}


# --- checks before Ray -------------------------------------------------------------------------------


def test_the_parts_check_passes_on_fitting_parts(smarteraser_parts):
    models.check(SmartEraserParams(**smarteraser_parts))


def test_a_missing_part_is_one_line(smarteraser_parts, tmp_path):
    with pytest.raises(CheckpointError, match=r"SmartEraser UNet not found: .*nowhere/unet"):
        models.check(SmartEraserParams(base=str(tmp_path / "nowhere"), clip=smarteraser_parts["clip"]))


def test_a_text_to_image_unet_is_refused(smarteraser_parts, tmp_path):
    base = tiny_sd_inpainting(tmp_path / "sd", in_channels=4)
    with pytest.raises(CheckpointError, match="takes 4 channels; an inpainting UNet for this VAE takes 9"):
        models.check(SmartEraserParams(base=base, clip=smarteraser_parts["clip"]))


def test_weights_of_another_shape_are_refused_before_loading(smarteraser_parts, tmp_path):
    base = shutil.copytree(smarteraser_parts["base"], tmp_path / "sd")
    weights = base / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = next(k for k in state if k.endswith("conv_in.weight"))
    state[name] = torch.zeros(32, 5, 3, 3)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"does not fit its config \(UNet2DConditionModel\): 1 of another shape \(conv_in.weight"):
        models.check(SmartEraserParams(base=str(base), clip=smarteraser_parts["clip"]))


def test_a_placeholder_must_be_one_word_of_the_prompt(smarteraser_parts):
    with pytest.raises(CheckpointError, match="is not a word of eraser.prompt"):
        models.check(SmartEraserParams(**smarteraser_parts, placeholder="thing"))


# --- the model -----------------------------------------------------------------------------------------


def test_the_condition_puts_the_visual_token_where_the_release_does(eraser):
    clip = batch()["clip"]
    text = eraser.text_encoder(eraser.prompt_ids.expand(2, -1)).last_hidden_state
    cond = eraser.condition(clip, 2, drop=False)
    k = eraser.placeholder_index
    assert cond.shape == text.shape and k == 5, "'Remove the instance of object': the 7 tokens, 'object' at 5"
    assert torch.equal(cond[:, :k], text[:, :k]) and torch.equal(cond[:, k + 1 :], text[:, k + 1 :])
    assert not torch.allclose(cond[0, k], text[0, k]) and not torch.allclose(cond[0, k], cond[1, k]), "a token per object"
    empty = eraser.text_encoder(eraser.empty_ids.expand(2, -1)).last_hidden_state
    uncond = eraser.condition(clip, 2, drop=True)
    assert torch.equal(uncond[:, 0], empty[:, 0]) and torch.equal(uncond[:, 2:], empty[:, 1:-1])
    assert torch.allclose(uncond[0, 1], uncond[1, 1]), "the dropped condition ignores the object: a zero image's token"


def test_train_mode_reaches_the_trained_parts_only(eraser):
    eraser.train()
    assert eraser.training and eraser.unet.training and eraser.text_encoder.training
    assert not eraser.vae.training and not eraser.image_encoder.training, "frozen parts stay in eval mode"
    eraser.eval()
    assert not eraser.training and not eraser.unet.training


def test_losses_are_per_sample_and_gradients_reach_only_the_trained_parts(eraser):
    eraser.zero_grad(set_to_none=True)
    losses = eraser(batch(), generator=torch.Generator().manual_seed(0))
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    losses.mean().backward()
    for name, module in eraser.trainable().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert all(p.grad is None for p in eraser.vae.parameters()) and all(p.grad is None for p in eraser.image_encoder.parameters())
    eraser.zero_grad(set_to_none=True)


@pytest.mark.parametrize("switch", ["region_guidance", "visual_guidance"])
def test_each_idea_switches_off(smarteraser_parts, switch):
    params = SmartEraserParams(**smarteraser_parts, inference_steps=2, **{switch: False})
    model = models.build(params, torch.device("cpu"))
    assert ("token_mlp" in model.trainable()) == (switch != "visual_guidance")
    data = batch()
    assert torch.isfinite(model(data, generator=torch.Generator().manual_seed(0))).all()
    if switch == "region_guidance":  # the UNet then sees the source with the object blanked out
        assert torch.equal(model._guide(data)[data["mask"].expand(-1, 3, -1, -1) > 0], torch.zeros(int(data["mask"].sum()) * 3))


def test_the_loss_falls_on_a_tiny_overfit_set(smarteraser_parts):
    torch.manual_seed(0)
    model = models.build(SmartEraserParams(**smarteraser_parts), torch.device("cpu"))
    losses = overfit_losses(model, batch(size=2))
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.7 * first, f"loss {first:.3f} -> {last:.3f}"


def test_erase_predicts_images_and_a_paste_back_changes_nothing_outside(eraser):
    data = batch(size=1)
    prediction = eraser.erase(data, torch.Generator().manual_seed(0))
    assert prediction.shape == (1, 3, 64, 64) and 0 <= prediction.min() and prediction.max() <= 1
    again = eraser.erase(data, torch.Generator().manual_seed(0))
    assert torch.equal(prediction, again), "seeded: the same prediction"
    source = ((data["source"][0].permute(1, 2, 0) + 1) / 2).numpy()
    mask = data["mask"][0, 0].numpy() > 0
    pasted = paste_back(prediction[0].permute(1, 2, 0).numpy(), source, mask)
    assert np.array_equal(pasted[~mask], source[~mask]) and not np.array_equal(pasted[mask], source[mask])


def test_a_checkpoint_round_trips_its_trained_parts(eraser, tmp_path):
    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    saved = {p.name for p in (tmp_path / "eraser").iterdir()}
    assert saved == {"eraser.json", "unet.safetensors", "text_encoder.safetensors", "token_mlp.safetensors"}, "frozen parts are not copied"
    loaded, meta = models.load(str(tmp_path), torch.device("cpu"))
    assert meta["resolution"] == 64 and loaded.params == eraser.params and not loaded.training
    for name, module in eraser.trainable().items():
        assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), loaded.trainable()[name].state_dict().values())), name


@pytest.mark.parametrize("where", ["local", "s3"])
def test_erase_on_folders_matches_masks_by_stem_and_reports_what_it_cannot_read(eraser, tmp_path, request, where):
    """Folders local or on S3: a 0/255, a 0/1, a red-on-black and a 16-bit 0/1 mask each erase their object, only
    inside it (the last two were "empty"); an image without a mask and a second image of one stem are named,
    the others done."""
    root = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}"
    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    images, masks, out = (storage.join(root, name) for name in ("images", "masks", "out"))
    rng = np.random.default_rng(0)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 20:50] = 1
    pictures = {stem: (rng.random((50, 70, 3)) * 255).astype(np.uint8) for stem in "abcde"}
    red = np.zeros((50, 70, 3), np.uint8)
    red[mask == 1] = (0, 0, 255)
    for stem, written in (("a", mask * 255), ("b", mask), ("c", None), ("d", red), ("e", mask.astype(np.uint16))):
        storage.write_bytes(storage.join(images, f"{stem}.png"), cv2.imencode(".png", pictures[stem])[1].tobytes())
        if written is not None:
            storage.write_bytes(storage.join(masks, f"{stem}.png"), cv2.imencode(".png", written)[1].tobytes())
    storage.write_bytes(storage.join(images, "a.webp"), cv2.imencode(".webp", pictures["b"])[1].tobytes())  # a's output too
    done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", images, "--mask", masks, "--out", out, "--steps", "1")
    assert done.returncode == 1 and "4 erased" in done.stdout and "2 failed" in done.stdout, done.stdout + done.stderr
    assert f"{storage.join(images, 'c.png')}: no mask c.* in {masks} (masks are matched by file stem)" in done.stderr
    assert f"{storage.join(images, 'a.webp')}: a.png has the same stem and is erased to a.png; rename one" in done.stderr
    for stem in ("a", "b", "d", "e"):
        erased = cv2.imdecode(np.frombuffer(storage.read_bytes(storage.join(out, f"{stem}.png")), np.uint8), cv2.IMREAD_COLOR)
        image = pictures[stem]
        assert np.array_equal(erased[mask == 0], image[mask == 0]) and not np.array_equal(erased[mask == 1], image[mask == 1]), stem
    assert not storage.exists(storage.join(out, "c.png"))
    storage.write_bytes(storage.join(masks, "z_mask.png"), cv2.imencode(".png", mask)[1].tobytes())
    again = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", images, "--mask", masks, "--out", out, "--steps", "1")
    assert "1 mask(s) in" in again.stderr and "match no image by file stem, and are not used: z_mask" in again.stderr
    storage.write_bytes(storage.join(root, "other", "a_mask.png"), b"x")  # masks named apart from their images
    named_apart = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", images, "--mask", storage.join(root, "other"),
                                 "--out", out, "--steps", "1")
    assert named_apart.returncode == 2 and "no mask in" in named_apart.stderr and "masks there: a_mask" in named_apart.stderr


def test_erase_keeps_a_png_s_alpha_channel(eraser, tmp_path):
    """A transparent PNG came out opaque: the hidden colour of its transparent pixels showed. A format without alpha
    (JPEG) writes it flat, and says so."""
    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    rng = np.random.default_rng(0)
    bgra = np.dstack([(rng.random((40, 60, 3)) * 255).astype(np.uint8), np.full((40, 60), 255, np.uint8)])
    bgra[:, :15, 3] = 0  # transparent left edge
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 25:45] = 255
    cv2.imwrite(str(tmp_path / "cut.png"), bgra)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    for out in ("erased.png", "erased.webp", "erased.jpg"):
        done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / "cut.png"),
                              "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / out), "--steps", "1")
        assert done.returncode == 0, done.stderr
        assert ("transparency is not kept in .jpg" in done.stderr) == out.endswith(".jpg"), done.stderr  # said, not silently flat
    for out in ("erased.png", "erased.webp"):  # WebP too keeps the colours under its transparent pixels
        erased = cv2.imread(str(tmp_path / out), cv2.IMREAD_UNCHANGED)
        assert erased.shape == (40, 60, 4) and np.array_equal(erased[..., 3], bgra[..., 3]), out
        assert np.array_equal(erased[mask == 0], bgra[mask == 0]) and not np.array_equal(erased[mask > 0], bgra[mask > 0]), out
    assert cv2.imread(str(tmp_path / "erased.jpg"), cv2.IMREAD_UNCHANGED).shape == (40, 60, 3), "JPEG has no alpha"
    from PIL import Image

    Image.fromarray(bgra[..., :3]).convert("P").save(tmp_path / "palette.png", transparency=0)  # transparency by tRNS, mode P
    done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / "palette.png"),
                          "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "flat.jpg"), "--steps", "1")
    assert done.returncode == 0 and "transparency is not kept in .jpg" in done.stderr, done.stderr


def test_erase_says_an_animation_has_its_first_frame_erased(eraser, tmp_path):
    """An animated WebP or APNG was erased as its first frame without a word."""
    from PIL import Image

    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 25:45] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    frames = [Image.fromarray(np.full((40, 60, 3), level, np.uint8)) for level in (50, 150, 250)]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    frames[0].save(tmp_path / "still.webp", lossless=True)
    for name, said in (("anim.webp", True), ("still.webp", False)):
        done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / name),
                              "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / f"out-{name}.png"), "--steps", "1")
        assert done.returncode == 0, done.stderr
        assert ("an animation of 3 frames; its first is erased" in done.stderr) == said, done.stderr
        assert cv2.imread(str(tmp_path / f"out-{name}.png"))[0, 0].tolist() == [50, 50, 50]  # the first frame's pixels


def test_a_jpeg_output_keeps_the_input_s_chroma_resolution(eraser, tmp_path):
    """JPEG outputs were 4:2:0 whatever the input: a 4:4:4 JPEG's or a PNG's fine colour (red text) was halved."""
    from PIL import Image, JpegImagePlugin

    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 25:45] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    picture.save(tmp_path / "full.jpg", quality=95, subsampling=0)
    picture.save(tmp_path / "half.jpg", quality=95, subsampling=2)
    picture.save(tmp_path / "lossless.png")
    picture.save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[picture.resize((30, 20))], subsampling=2)  # a gain map
    for name, sampling in (("full.jpg", 0), ("half.jpg", 2), ("lossless.png", 0), ("phone.jpg", 2)):
        done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / name),
                              "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / f"out-{name}.jpg"), "--steps", "1")
        assert done.returncode == 0 and "animation" not in done.stderr, done.stderr
        with Image.open(tmp_path / f"out-{name}.jpg") as out:
            assert JpegImagePlugin.get_sampling(out) == sampling, name


def test_erase_keeps_the_input_s_rgb_colour_profile(eraser, tmp_path):
    """A phone photo's Display P3 profile was dropped: colour-managed viewers showed the result as sRGB, duller.
    A profile of another colour space (CMYK, grey) does not describe the decoded RGB pixels and is not kept."""
    import io

    from PIL import Image, ImageCms

    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    rgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    grey_profile = rgb_profile[:16] + b"GRAY" + rgb_profile[20:]
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 25:45] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    for profile, kept in ((rgb_profile, rgb_profile), (grey_profile, None)):
        picture.save(tmp_path / "photo.jpg", quality=95, icc_profile=profile)
        for out in ("erased.jpg", "erased.png", "erased.webp"):
            done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / "photo.jpg"),
                                  "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / out), "--steps", "1")
            assert done.returncode == 0, done.stderr
            with Image.open(io.BytesIO((tmp_path / out).read_bytes())) as erased:
                assert erased.info.get("icc_profile") == kept and erased.size == (60, 40), out


def _with_orientation(picture: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    """An image file holding `picture` (RGB, grey or RGBA) as stored, with an EXIF orientation tag."""
    import io

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format=fmt, exif=exif.tobytes())
    return out.getvalue()


def test_erase_turns_the_image_its_alpha_and_the_mask_each_by_its_own_exif_orientation(eraser, tmp_path):
    """An editor's export keeps its EXIF tag: the mask was used as stored (a 180° one erased the wrong place, a
    sideways one was refused), and a sideways RGBA image lost its alpha or got it unturned."""
    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    rng = np.random.default_rng(0)
    shown = np.dstack([rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), np.full((60, 80), 255, np.uint8)])
    shown[:, :10, 3] = 0  # transparent left edge, as displayed
    object_ = np.zeros((60, 80), np.uint8)
    object_[10:30, 40:70] = 255  # as displayed
    stored = {3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, 1)}  # what a viewer turns back by the tag
    for orientation, turn in stored.items():
        (tmp_path / "photo.png").write_bytes(_with_orientation(np.ascontiguousarray(turn(shown)), orientation))
        (tmp_path / "mask.png").write_bytes(_with_orientation(np.ascontiguousarray(turn(object_)), orientation))
        done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / "photo.png"),
                              "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "erased.png"), "--steps", "1")
        assert done.returncode == 0, done.stderr
        erased = cv2.cvtColor(cv2.imread(str(tmp_path / "erased.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
        assert erased.shape == (60, 80, 4) and np.array_equal(erased[..., 3], shown[..., 3]), orientation
        outside = object_ == 0
        assert np.array_equal(erased[outside], shown[outside]) and not np.array_equal(erased[~outside], shown[~outside]), orientation


def test_erase_masks_every_working_pixel_the_mask_touches(eraser, monkeypatch):
    """A 1-px wire shrunk by area to under half a working pixel was left to the model as context, then pasted
    back as its prediction of the wire: redrawn, not erased."""
    from pairmine.training import erase

    seen, real = [], erase.predict
    monkeypatch.setattr(erase, "predict", lambda model, samples, seed: seen.append(samples[0]["mask"]) or real(model, samples, seed))
    image = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    mask = np.zeros((600, 800), bool)
    mask[100:200, 100:200] = True
    mask[300, 50:750] = True  # the wire: 1 px of a 9.4x shrink
    erase.erase_image(eraser, image, mask, 64)
    (small,) = seen
    row, (first, last) = int(300 * small.shape[0] / 600), (int(x * small.shape[1] / 800) for x in (50, 750))
    assert small[row, first + 1 : last - 1].all()


def test_an_empty_or_broken_file_is_that_pair_s_failure_and_the_folder_goes_on(eraser, tmp_path):
    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "images" / "b.png"), np.full((40, 60, 3), 90, np.uint8))
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 10:20] = 255
    for stem in "ab":
        cv2.imwrite(str(tmp_path / "masks" / f"{stem}.png"), mask)
    done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / "images"),
                          "--mask", str(tmp_path / "masks"), "--out", str(tmp_path / "out"), "--steps", "1")
    assert done.returncode == 1 and "1 erased" in done.stdout and "1 failed" in done.stdout, done.stdout + done.stderr
    assert "a.jpg (empty_file: zero bytes)" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "out" / "b.png").exists()


def test_an_output_its_format_cannot_hold_is_a_failed_pair_not_a_crash(eraser, tmp_path):
    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    cv2.imwrite(str(tmp_path / "wide.png"), np.full((8, 17000, 3), 90, np.uint8))  # WebP holds at most 16,383 px a side
    mask = np.zeros((8, 17000), np.uint8)
    mask[2:6, 100:200] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / "wide.png"),
                          "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "wide.webp"), "--steps", "1")
    assert done.returncode == 1 and "1 failed" in done.stdout, done.stdout + done.stderr
    assert "wide.webp as .webp: encoding error" in done.stderr and "Traceback" not in done.stderr


def test_erase_works_on_a_long_strip_at_a_bounded_size(eraser, monkeypatch):
    """A 17x5000 strip worked at 64x18,800 with the tiny model (at 512 px it would have been 512x150,000)."""
    from pairmine.training import erase

    sizes, real = [], erase.predict
    monkeypatch.setattr(erase, "predict", lambda model, samples, seed: sizes.append(samples[0]["source"].shape[:2]) or real(model, samples, seed))
    strip = np.random.default_rng(0).integers(0, 256, (8, 600, 3), dtype=np.uint8)
    mask = np.zeros((8, 600), bool)
    mask[2:6, 100:200] = True
    erased = erase.erase_image(eraser, strip, mask, 64)
    assert erased.shape == strip.shape and np.array_equal(erased[~mask], strip[~mask])
    assert max(sizes[0]) <= erase.MAX_ASPECT * 64


def test_erase_refuses_an_output_extension_it_cannot_write_before_loading_anything(tmp_path):
    for name in ("x.png", "m.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8), np.uint8))
    done = cli_in_process("erase", "--checkpoint", str(tmp_path / "nowhere"), "--image", str(tmp_path / "x.png"), "--mask",
                          str(tmp_path / "m.png"), "--out", "x.xyz")
    assert done.returncode == 2 and done.stderr.strip() == "pairmine: error: --out x.xyz: the extension picks the format, one of .jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff"


def test_a_checkpoint_of_another_eraser_is_refused(eraser, tmp_path, smarteraser_parts):
    text_only = models.build(SmartEraserParams(**smarteraser_parts, visual_guidance=False), torch.device("cpu"))
    text_only.save(str(tmp_path / "text-only"))
    assert json.loads((tmp_path / "text-only" / "eraser.json").read_text())["eraser"]["visual_guidance"] is False
    with pytest.raises(CheckpointError, match="lacks token_mlp.safetensors"):
        eraser.load_trainable(str(tmp_path / "text-only"))
    swapped = tmp_path / "text-only" / "unet.safetensors"
    swapped.write_bytes((tmp_path / "text-only" / "text_encoder.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit the smarteraser unet"):
        text_only.load_trainable(str(tmp_path / "text-only"))
    with pytest.raises(CheckpointError, match="not a saved eraser"):
        read_eraser_file(str(tmp_path))


def test_a_damaged_weights_file_is_a_one_line_error(eraser, tmp_path):
    """A truncated or overwritten .safetensors gave safetensors' traceback and exit 1; erase promises exit 2."""
    eraser.save(str(tmp_path / "eraser"), {"resolution": 64})
    weights = tmp_path / "eraser" / "unet.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((16, 16, 3), np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    done = cli_in_process("erase", "--checkpoint", str(tmp_path / "eraser"), "--image", str(tmp_path / "x.png"), "--mask",
                          str(tmp_path / "m.png"), "--out", str(tmp_path / "out.png"))
    assert done.returncode == 2 and "unet.safetensors is not a readable safetensors file" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_scores_measure_inside_and_outside_the_mask():
    rng = np.random.default_rng(0)
    source, target = rng.random((32, 32, 3)), rng.random((32, 32, 3))
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    perfect = paste_back(target, source, mask)
    good, bad = scores(perfect, source, target, mask), scores(source, source, target, mask)
    assert good["psnr_mask"] == 100.0 and good["ssim_mask"] > bad["ssim_mask"] and good["change_outside"] == 0.0
    shifted = scores(np.clip(perfect + 0.1, 0, 1), source, target, mask)
    assert shifted["change_outside"] > 0.05 and shifted["psnr_mask"] < 25


def test_the_shipped_training_config_is_valid_and_states_the_release_defaults():
    from pathlib import Path

    from pairmine.pipelines.config import load_config
    from pairmine.training.config import TrainParams

    config = load_config(TrainParams, str(Path(__file__).resolve().parents[2] / "configs" / "train_smarteraser.yaml"))
    defaults = TrainParams.model_validate({"eraser": config.eraser.model_dump(), "data": {"sources": [s.model_dump() for s in config.data.sources]},
                                           "storage": config.storage})
    assert config == defaults, "the YAML states every default (only the paths are examples)"
    assert (config.data.resolution, config.optim.learning_rate, config.condition_dropout, config.eraser.guidance_scale) == (512, 1.6e-5, 0.1, 1.5)


def test_a_broken_image_is_one_message_without_opencvs_own_lines(tmp_path, capfd):
    """OpenCV printed "[ERROR:0@...] ... IHDR chunk shall be first" (or "PNG input buffer is incomplete", for a
    file cut short after its header) next to pairmine's one line."""
    from pairmine.errors import UserError
    from pairmine.training.erase import _decode, _opened

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(UserError, match=r"broken.png \(not_an_image"):
        _opened(str(broken), "image")
    cut = tmp_path / "cut.png"
    cut.write_bytes(cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8))[1].tobytes()[:200])
    data, _ = _opened(str(cut), "image")  # its header is whole
    for flags in (cv2.IMREAD_COLOR, cv2.IMREAD_UNCHANGED):
        with pytest.raises(UserError, match=r"cut.png \(not an image\)"):
            _decode(str(cut), "image", data, flags)
    printed = capfd.readouterr().err
    assert "IHDR" not in printed and "incomplete" not in printed
