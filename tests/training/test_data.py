"""The training data path without Ray: the stream plan, reading planned passes, decoding and augmenting rows."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import cv2
import numpy as np
import pytest

from pairmine import dataset
from pairmine.operators.mask_enhance import MaskEnhanceParams
from pairmine.training.data import (
    REASONS,
    Preparation,
    decode_rows,
    is_validation,
    object_crop,
    plan_stream,
    prepare_sample,
    read_passes,
    validation_samples,
)

EXACT = MaskEnhanceParams()
LOOSE = MaskEnhanceParams(modes=("dilate", "hull", "ellipse", "bbox"))


def fake_shards(source: str, sizes: list[int], pipeline: str = "syn4removal") -> list[dataset.Shard]:
    return [dataset.Shard(f"/{source}/s{i}.tar", pipeline, "c", n, 1, "x", tuple(f"{source}-{i}-{k}" for k in range(n)))
            for i, n in enumerate(sizes)]


# --- the plan ----------------------------------------------------------------------------------------


def test_the_validation_split_depends_on_the_key_alone():
    keys = [f"k{i}" for i in range(20000)]
    held = [k for k in keys if is_validation(k, 0.05)]
    assert 0.04 < len(held) / len(keys) < 0.06
    assert held == [k for k in keys if is_validation(k, 0.05)]  # stable
    assert not any(is_validation(k, 0.0) for k in keys)


def test_a_plan_covers_the_stream_with_contiguous_positions_and_no_held_out_key():
    shards = fake_shards("a", [100, 50, 80])
    stream = plan_stream([(1.0, shards)], seed=0, val_fraction=0.1, needed=500)
    positions = [(p.start, p.start + p.count) for p in stream.passes]
    assert positions[0][0] == 0 and all(a[1] == b[0] for a, b in zip(positions, positions[1:]))
    assert stream.stop >= 500 and stream.epoch_samples == sum(not is_validation(k, 0.1) for s in shards for k in s.keys)
    assert all(p.keep == 1.0 and p.shard.keys == () for p in stream.passes), "a single source is passed whole each epoch"
    epochs = Counter(p.epoch for p in stream.passes)
    assert len(epochs) >= 3 and all(count == 3 for count in epochs.values())
    orders = [[p.shard.uri for p in stream.passes if p.epoch == e] for e in range(3)]
    assert len({tuple(o) for o in orders}) > 1, "each epoch shuffles its passes"
    assert plan_stream([(1.0, shards)], 0, 0.1, 500) == stream and plan_stream([(1.0, shards)], 1, 0.1, 500) != stream


def test_mixing_weights_set_each_sources_share_of_an_epoch():
    big, small = fake_shards("big", [400, 400]), fake_shards("small", [50])
    stream = plan_stream([(0.8, big), (0.2, small)], seed=3, val_fraction=0.0, needed=5000)
    first = [p for p in stream.passes if p.epoch == 0]
    drawn = Counter("big" if "/big/" in p.shard.uri else "small" for p in first for _ in range(p.count))
    total = drawn["big"] + drawn["small"]
    assert stream.epoch_samples == 850 and abs(total - 850) < 20, "a fractional pass draws by hash: about its share"
    assert abs(drawn["small"] / total - 0.2) < 0.02 and abs(drawn["big"] / total - 0.8) < 0.02
    small_passes = [p for p in first if "/small/" in p.shard.uri]
    assert len(small_passes) == 4 and sorted(p.keep for p in small_passes)[0] < 1.0, "50 samples drawn 170 times: 3 whole passes + a part"
    for p in first:  # the planned count is what the selection rule yields
        keys = next(s for s in big + small if s.uri == p.shard.uri).keys
        assert p.count == sum(p.selects(k, 3, 0.0) for k in keys)


def test_a_resumed_plan_starts_at_its_position_mid_pass():
    shards = fake_shards("a", [30, 30])
    whole = plan_stream([(1.0, shards)], seed=0, val_fraction=0.0, needed=100)
    resumed = plan_stream([(1.0, shards)], seed=0, val_fraction=0.0, needed=40, start=45)
    assert resumed.start == 45 and resumed.passes[0].start <= 45 < resumed.passes[0].start + resumed.passes[0].count
    assert resumed.passes[0].skip == 45 - resumed.passes[0].start
    same = [(p.shard.uri, p.epoch, p.start) for p in whole.passes if p.start + p.count > 45][: len(resumed.passes)]
    assert same == [(p.shard.uri, p.epoch, p.start) for p in resumed.passes], "the same stream, cut at the position"


def test_a_plan_without_training_samples_is_refused():
    with pytest.raises(ValueError, match="no training samples"):
        plan_stream([(1.0, fake_shards("a", [0]))], 0, 0.0, 10)


# --- reading and decoding real shards ----------------------------------------------------------------


def _stream_rows(output, start=0, needed=40, val_fraction=0.1, seed=0):
    shards = dataset.committed_shards(str(output))
    stream = plan_stream([(1.0, shards)], seed, val_fraction, needed, start=start)
    tables = list(read_passes(stream.passes, seed, val_fraction))
    return stream, [row for t in tables for row in t.to_pylist()]


def test_read_passes_yields_every_planned_position_once(training_outputs):
    stream, rows = _stream_rows(training_outputs["syn"], needed=100)
    assert [r["position"] for r in rows] == list(range(stream.start, stream.stop))
    assert all(r["reason"] == "" and r["source.jpg"] and r["alpha.png"] for r in rows)
    assert not any(is_validation(r["key"], 0.1) for r in rows)
    resumed, again = _stream_rows(training_outputs["syn"], start=37, needed=20)
    assert again[0]["position"] == 37 and {r["key"] for r in again[:10]} <= {r["key"] for r in rows}


def _prep(train=True, clip=32, enhance=EXACT):
    return Preparation(resolution=64, clip_size=clip, max_zoom=1.25, enhance=enhance, seed=0, train=train)


def _batch(rows):
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_decoded_rows_keep_source_target_and_mask_aligned(training_outputs):
    _, rows = _stream_rows(training_outputs["syn"], needed=12)
    out = decode_rows(_batch(rows), _prep())
    assert out["valid"].all() and (out["reason"] == 0).all()
    assert out["source"].shape == (len(rows), 64, 64, 3) and out["mask"].shape == (len(rows), 64, 64) and out["clip"].shape[1:] == (32, 32, 3)
    for i in range(len(rows)):
        mask = out["mask"][i] > 0
        assert 0 < mask.sum() < mask.size
        # a Syn4Removal pair differs only where its alpha is: the crop and resize moved all of them alike
        around = cv2.dilate((out["alpha"][i] > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        diff = np.abs(out["source"][i].astype(int) - out["target"][i].astype(int)).max(axis=2)
        assert diff[~around].max() <= 8 and (not (~around).any() or diff[~around].mean() < 1.0)
        clip = out["clip"][i]
        assert (clip == 255).all(axis=2).any(), "the object crop is on white"


@pytest.mark.parametrize("resolution", [64, 128, 256])
def test_a_large_photo_is_decoded_only_as_large_as_its_crop_needs_and_stays_on_the_mask_s_grid(resolution):
    """A 2250x1500 JPEG was decoded whole for a 64-px crop; it is now decoded at a DCT scale-down (1/8 to 1/4
    here) and resized on the mask's grid. The crop equals a full decode's area resize (a half-pixel shift of
    the sharp-edged object costs ~10 dB) at the offset where the mask equals the full mask's resize. That mask
    is resized centre to centre: OpenCV's plain nearest resize took each pixel's top-left source pixel, half a
    pixel off the photo's grid."""
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 255, (1500, 2250, 3), dtype=np.uint8), (0, 0), 4)
    mask = np.zeros((1500, 2250), np.uint8)
    mask[613:1077, 1091:1733] = 255  # off every 8-px block edge
    photo[mask > 0] = (20, 30, 240)
    row = {"source.jpg": cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(),
           "mask.png": cv2.imencode(".png", mask)[1].tobytes(), "alpha.png": None, "position": 3}
    row["target.jpg"] = row["source.jpg"]
    out = prepare_sample(row, Preparation(resolution=resolution, clip_size=0, max_zoom=1.0, enhance=EXACT, seed=0, train=False))
    size = (round(2250 * resolution / 1500), resolution)
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(row["source.jpg"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    photos, masks = cv2.resize(decoded, size, interpolation=cv2.INTER_AREA), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST_EXACT)
    found = [x for x in range(size[0] - resolution + 1) if np.array_equal(masks[:, x : x + resolution] > 0, out["mask"] > 0)]
    assert found, "the mask is not the full mask's resize (centre to centre) at any offset"
    x = found[0]
    psnr = 10 * np.log10(255**2 / ((photos[:, x : x + resolution].astype(float) - out["source"]) ** 2).mean())
    assert psnr > 34, f"{psnr:.1f} dB against a full decode's area resize"


def test_the_same_position_gets_the_same_augmentation(training_outputs):
    _, rows = _stream_rows(training_outputs["syn"], needed=4)
    a, b = decode_rows(_batch(rows), _prep(enhance=LOOSE)), decode_rows(_batch(rows), _prep(enhance=LOOSE))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    shifted = [r | {"position": r["position"] + 1000} for r in rows]
    c = decode_rows(_batch(shifted), _prep(enhance=LOOSE))
    assert any(not np.array_equal(a["mask"][i], c["mask"][i]) for i in range(len(rows))), "another position, another draw"


def test_mask_enhancement_loosens_the_training_mask(training_outputs):
    _, rows = _stream_rows(training_outputs["syn"], needed=12)
    exact, loose = decode_rows(_batch(rows), _prep()), decode_rows(_batch(rows), _prep(enhance=LOOSE))
    grown = [(loose["mask"][i] >= exact["mask"][i]).all() and loose["mask"][i].sum() > exact["mask"][i].sum() for i in range(len(rows))]
    assert sum(grown) >= len(rows) // 2, "dilate / hull / ellipse / bbox cover the exact mask and more"


def test_video_pairs_use_their_mask_as_alpha(training_outputs):
    _, rows = _stream_rows(training_outputs["video"], needed=2, val_fraction=0.0)
    assert all(r["alpha.png"] is None for r in rows)
    out = decode_rows(_batch(rows), _prep(train=False))
    assert out["valid"].all()
    assert np.array_equal(out["alpha"] > 0, out["mask"] > 0) and set(np.unique(out["alpha"])) <= {0, 255}


def test_a_corrupt_sample_becomes_an_invalid_row_with_its_reason(training_outputs):
    _, rows = _stream_rows(training_outputs["syn"], needed=3)
    rows = rows[:3]
    rows[1] = rows[1] | {"source.jpg": rows[1]["source.jpg"][:300]}
    rows[2] = rows[2] | {"mask.png": None}
    out = decode_rows(_batch(rows), _prep())
    assert out["valid"].tolist() == [1, 0, 0]
    assert [REASONS[c] for c in out["reason"]] == ["", "corrupt_sample", "missing_file"]
    assert not out["source"][1].any() and out["position"].tolist() == [r["position"] for r in rows]


def _rewrite_shard(output, transform) -> dataset.Shard:
    """Apply `transform` to the first shard's bytes and keep its manifest row as it was."""
    shard = dataset.committed_shards(str(output))[0]
    with open(shard.uri, "rb") as f:
        data = f.read()
    with open(shard.uri, "wb") as f:
        f.write(transform(data))
    return shard


def test_a_truncated_shard_fills_its_positions_with_invalid_rows(outputs_copy):
    shard = _rewrite_shard(outputs_copy["syn"], lambda data: data[: len(data) // 2])
    stream, rows = _stream_rows(outputs_copy["syn"], needed=200)
    assert [r["position"] for r in rows] == list(range(stream.start, stream.stop)), "the stream keeps its planned length"
    lost = [p for p in stream.passes if p.shard.uri == shard.uri]
    bad = [r for r in rows if r["reason"]]
    assert lost and len(bad) == sum(p.count for p in lost) and {r["reason"] for r in bad} == {"unreadable_shard"}
    out = decode_rows(_batch(bad[:4]), _prep())
    assert not out["valid"].any() and {REASONS[c] for c in out["reason"]} == {"unreadable_shard"}


def test_a_shard_whose_bytes_changed_is_not_trained_on_and_is_counted(outputs_copy):
    """A shard of the right size whose sha256 differs from its manifest row had all its samples trained on: the
    checksum was known only after they had been passed on."""

    def flip(data):  # change a byte of the first member's payload, keeping the size
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            offset = tar.getmembers()[0].offset_data
        return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]

    shard = _rewrite_shard(outputs_copy["syn"], flip)
    stream = plan_stream([(1.0, [shard])], 0, 0.0, needed=1)
    rows = [r for t in read_passes(stream.passes[:1], 0, 0.0) for r in t.to_pylist()]
    assert len(rows) == stream.passes[0].count and {r["reason"] for r in rows} == {"checksum_mismatch"}
    assert not any(r.get("target.jpg") for r in rows)


def test_object_crop_is_the_object_on_white_in_a_square():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:] = (10, 20, 30)
    mask = np.zeros((100, 200), np.uint8)
    mask[20:60, 50:150] = 1
    mask[35:45, 95:105] = 0  # a hole in the middle: white inside the box
    crop = object_crop(image, mask, 32)
    assert crop.shape == (32, 32, 3)
    assert (crop == (10, 20, 30)).all(axis=2).mean() > 0.8 and (crop == 255).all(axis=2).any()


def test_validation_samples_are_held_out_and_prepared_without_randomness(training_outputs):
    shards = dataset.committed_shards(str(training_outputs["syn"]))
    picked = validation_samples(shards, 0.1, 3, _prep(enhance=LOOSE))
    again = validation_samples(shards, 0.1, 3, _prep(enhance=LOOSE))
    assert len(picked) == 3 and all(is_validation(p["key"], 0.1) for p in picked)
    assert all(np.array_equal(a["mask"], b["mask"]) and np.array_equal(a["source"], b["source"]) for a, b in zip(picked, again))
    meta = {json.loads(s["json"])["key"]: s for s in dataset.iter_samples(str(training_outputs["syn"]))}
    assert {p["key"] for p in picked} <= set(meta)
