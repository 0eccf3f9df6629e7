"""codecs: validated decoding (reasons for bad bytes) and the PNG/JPEG encoders, checked against PIL."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pairmine.operators.codecs import (
    BadInput,
    decode_image,
    decode_panoptic_ids,
    encode_jpeg,
    encode_png_gray,
    mask_foreground,
    orient,
    read_header,
    resample,
    splice_jpeg_rows,
)

BIG = 10**8  # a max_pixels that admits every test image
PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "photos"


def _rgb(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth RGB test picture (gradients plus a little noise), JPEG-friendly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    return np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)


def _pil_bytes(array: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR declares `width` x `height` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _bomb_jpeg(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 frame header patched to declare `width` x `height`."""
    data = bytearray(_pil_bytes(_rgb(), "JPEG"))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _corrupt_png_idat() -> bytes:
    """A PNG whose IDAT payload is zeroed (CRC no longer matches) but which still ends with IEND."""
    data = bytearray(cv2.imencode(".png", _rgb(64, 64))[1].tobytes())
    i = data.find(b"IDAT")
    data[i + 20 : i + 200] = bytes(180)
    return bytes(data)


def _jpeg() -> bytes:
    return _pil_bytes(_rgb(), "JPEG", quality=90)


def _png() -> bytes:
    return _pil_bytes(_rgb(), "PNG")


BAD_INPUTS = {
    "zero_bytes": (lambda: b"", "empty_file"),
    "garbage": (lambda: bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)), "not_an_image"),
    "text": (lambda: b'{"not": "an image"}', "not_an_image"),
    "truncated_jpeg": (lambda: _jpeg()[: len(_jpeg()) // 2], "truncated_image"),
    "jpeg_without_eoi": (lambda: _jpeg()[:-2], "truncated_image"),
    "truncated_png": (lambda: _png()[: len(_png()) // 2], "truncated_image"),
    "png_without_iend": (lambda: _png()[:-12], "truncated_image"),
    "jpeg_bomb_header": (lambda: _bomb_jpeg(65000, 65000), "image_too_large"),
    "png_bomb_header": (lambda: _bomb_png(65000, 65000), "image_too_large"),
    "corrupt_png_data": (_corrupt_png_idat, "corrupt_image"),
    "png_padding_past_tail": (lambda: _png() + bytes(5000), "truncated_image"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_bytes_raise_badinput_with_reason(name):
    make, reason = BAD_INPUTS[name]
    with pytest.raises(BadInput) as info:
        decode_image(make(), BIG)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError) and info.value.detail


def _with_exif_thumbnail(jpeg: bytes) -> bytes:
    """`jpeg` with an APP1 segment holding a JPEG thumbnail (its own end-of-image marker) after SOI."""
    thumbnail = _pil_bytes(_rgb(16, 12), "JPEG")
    payload = b"Exif\x00\x00" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_a_jpeg_is_complete_at_its_own_end_marker_whatever_follows_it():
    """A phone's motion photo appends an MP4 after the JPEG (it was `truncated_image`); padding is harmless.
    A truncated JPEG stays truncated, also when an EXIF thumbnail's end marker lies before the cut."""
    rng = np.random.default_rng(0)
    motion_video = b"\x00\x00\x00\x18ftypmp42" + rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    picture = _rgb(240, 320)
    baseline = _pil_bytes(picture, "JPEG", quality=90)
    for jpeg in (baseline, _pil_bytes(picture, "JPEG", quality=90, progressive=True), _with_exif_thumbnail(baseline)):
        alone = decode_image(jpeg, BIG)[0]
        for trailer in (motion_video, bytes(5000)):
            assert np.array_equal(decode_image(jpeg + trailer, BIG)[0], alone)
        for cut in (len(jpeg) * 3 // 4, len(jpeg) - 2):
            with pytest.raises(BadInput) as info:
                decode_image(jpeg[:cut], BIG)
            assert info.value.reason == "truncated_image"


def test_header_over_max_pixels_is_too_large_before_decoding():
    """A declared size over the caller's limit (far below PIL's own bomb limit) is refused."""
    data = _png()  # 64 x 48 = 3072 px
    assert read_header(data, 3072).width == 64
    with pytest.raises(BadInput) as info:
        decode_image(data, 3071)
    assert info.value.reason == "image_too_large"


def test_sample_bomb_jpeg_from_tar_is_too_large(sa1b_members):
    with pytest.raises(BadInput) as info:
        read_header(sa1b_members["sa_900004.jpg"], 50_000_000)
    assert info.value.reason == "image_too_large"


def test_sample_truncated_jpeg_from_tar_is_truncated(sa1b_members):
    with pytest.raises(BadInput) as info:
        decode_image(sa1b_members["sa_900001.jpg"], 50_000_000)
    assert info.value.reason == "truncated_image"


def test_small_trailing_padding_is_tolerated():
    image, header = decode_image(_jpeg() + bytes(100), BIG)
    assert image.shape == (48, 64, 3) and header.format == "JPEG"


def test_png_decodes_exactly_to_bgr():
    rgb = _rgb(37, 53, seed=3)
    image, header = decode_image(_pil_bytes(rgb, "PNG"), BIG)
    assert (header.width, header.height, header.format, header.mode) == (53, 37, "PNG", "RGB")
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgb[..., ::-1])


def test_grayscale_png_decodes_to_three_channels():
    gray = _rgb()[..., 0]
    image, header = decode_image(_pil_bytes(gray, "PNG"), BIG)
    assert header.mode == "L" and image.shape == gray.shape + (3,)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_jpeg_decode_matches_pil_within_idct_rounding():
    data = _jpeg()
    image, header = decode_image(data, BIG)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., ::-1]
    assert image.shape == reference.shape
    assert np.abs(image.astype(int) - reference).max() <= 3


def test_exif_orientation_is_ignored():
    """A rotated-by-EXIF JPEG keeps its stored size, so it matches its header instead of failing as corrupt."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" on display
    data = _pil_bytes(_rgb(40, 70), "JPEG", exif=exif.tobytes())
    image, header = decode_image(data, BIG)
    assert image.shape[:2] == (40, 70) == (header.height, header.width)


def test_a_png_s_exif_orientation_is_read_before_or_after_its_pixels():
    """Pillow decodes a whole PNG to look for an eXIf chunk after its pixels (8 ms for a 2250x1500 mask, on every
    mask read); a PNG without one is now not decoded for it, one with it still gives its orientation."""
    exif = Image.Exif()
    exif[0x0112] = 6
    before = _pil_bytes(_rgb(40, 70), "PNG", exif=exif.tobytes())
    start = before.index(b"eXIf") - 4
    length = struct.unpack(">I", before[start : start + 4])[0]
    chunk = before[start : start + 12 + length]
    without = before.replace(chunk, b"")
    end = without.index(b"IEND") - 4
    after = without[:end] + chunk + without[end:]  # legal too: some writers put it after IDAT
    from PIL import PngImagePlugin

    raw = PngImagePlugin.PngInfo()  # ImageMagick's way: the EXIF in hex in a text chunk
    raw.add_text("Raw profile type exif", f"\nexif\n{len(exif.tobytes()):8d}\n" + exif.tobytes().hex())
    magick = io.BytesIO()
    Image.fromarray(_rgb(40, 70)).save(magick, "PNG", pnginfo=raw)
    for data, orientation in ((before, 6), (after, 6), (without, 1), (magick.getvalue(), 6)):
        assert read_header(data, BIG).orientation == orientation


def test_a_multi_picture_jpeg_is_a_jpeg_of_its_first_picture():
    """Pillow opens a phone's JPEG with an HDR gain map (MPO) as an animation of 2 frames in format MPO: it was
    decoded without the JPEG checks and scale-downs, and erase called it an animation."""
    first = Image.fromarray(_rgb(48, 64))
    data = io.BytesIO()
    first.save(data, "MPO", save_all=True, append_images=[Image.fromarray(_rgb(24, 32))])
    header = read_header(data.getvalue(), BIG)
    assert (header.format, header.frames, header.width, header.height) == ("JPEG", 1, 64, 48)
    image, _ = decode_image(data.getvalue(), BIG, min_short_side=24)
    assert image.shape[:2] == (24, 32), "a 2x DCT scale-down, as for any JPEG"


def test_real_sample_jpeg_decodes(sa1b_members):
    data = sa1b_members["sa_100.jpg"]
    image, header = decode_image(data, 50_000_000)
    with Image.open(io.BytesIO(data)) as im:
        assert image.shape == (im.height, im.width, 3)
        assert (header.width, header.height, header.format, header.mode) == (im.width, im.height, "JPEG", "RGB")


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (97, 131), (256, 256)])
def test_png_gray_encoder_roundtrips_through_pil_and_opencv(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image[: shape[0] // 2] = 255  # mask-like constant rows too
    data = encode_png_gray(image)
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # verifies CRCs and the zlib stream
        assert (im.format, im.mode, im.size) == ("PNG", "L", (shape[1], shape[0]))
        np.testing.assert_array_equal(np.asarray(im), image)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), image)


@pytest.mark.parametrize("rows", [None, (0, 1), (699, 700), (0, 700), (250, 420), (37, 38)])
def test_png_gray_encoder_splices_the_zero_rows_into_one_valid_stream(rows):
    """A 700x333 mask whose content fills `rows` (None: all zero): the zero rows above and below (up to 233 KB,
    several cached 64 KB deflate pieces and a remainder) decode back exactly, and the one zlib stream's
    Adler-32 checks out (zlib.decompress verifies it)."""
    image = np.zeros((700, 333), np.uint8)
    if rows:
        rng = np.random.default_rng(rows[0])
        image[rows[0]:rows[1]] = rng.integers(0, 256, (rows[1] - rows[0], 333)) * (rng.random((rows[1] - rows[0], 333)) < 0.3)
    data = encode_png_gray(image)
    idat = data[8 + 25 + 8 : -12 - 4]  # after the signature, IHDR and IDAT's header; before IDAT's CRC and IEND
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(700, 334)
    assert not raw[:, 0].any()  # every row unfiltered
    np.testing.assert_array_equal(raw[:, 1:], image)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), image)
    with Image.open(io.BytesIO(data)) as im:
        np.testing.assert_array_equal(np.asarray(im), image)


def test_png_gray_encoder_accepts_non_contiguous_views():
    base = np.arange(40 * 60, dtype=np.uint32).reshape(40, 60).astype(np.uint8)
    view = base[::2, ::3]
    with Image.open(io.BytesIO(encode_png_gray(view))) as im:
        np.testing.assert_array_equal(np.asarray(im), view)


def test_png_gray_encoder_output_passes_our_own_decoder():
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 10:30] = 255
    image, header = decode_image(encode_png_gray(mask), BIG)
    assert header.format == "PNG" and header.mode == "L"
    np.testing.assert_array_equal(image[..., 0], mask)


@pytest.mark.parametrize(
    "array", [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint16), np.zeros((4, 4), bool), np.zeros(4, np.uint8)]
)
def test_png_gray_encoder_rejects_non_2d_uint8(array):
    with pytest.raises(ValueError):
        encode_png_gray(array)


def _jpeg_error(data: bytes, image_bgr: np.ndarray) -> float:
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., ::-1]
    assert decoded.shape == image_bgr.shape
    return float(np.abs(decoded.astype(int) - image_bgr).mean())


@pytest.mark.parametrize("quality", [60, 95])
def test_jpeg_encoder_error_is_that_of_a_reference_encoder(quality):
    """Our bytes decode to the image with about the error of PIL's encoder at the same quality."""
    image = _rgb(64, 80)[..., ::-1].copy()
    data = encode_jpeg(image, quality)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    reference = _jpeg_error(_pil_bytes(image[..., ::-1], "JPEG", quality=quality), image)
    assert _jpeg_error(data, image) <= 1.25 * reference + 0.25


def test_jpeg_encoder_quality_orders_size_and_error():
    image = _rgb(64, 80)
    low, high = encode_jpeg(image, 60), encode_jpeg(image, 95)
    assert len(low) < len(high)
    assert _jpeg_error(high, image) < _jpeg_error(low, image)


@pytest.mark.parametrize("size", [(96, 128), (101, 77), (16, 40)])
@pytest.mark.parametrize("rows", [(0, 5), (40, 60), (31, 33), (-3, 200), (90, 101)])
def test_spliced_rows_give_the_bytes_of_a_whole_encode(size, rows):
    """Re-encoding only the changed 16-px rows of an image and splicing them into its base's JPEG gives the
    same file as encoding the changed image whole, whatever the sizes and where the rows fall."""
    image = _rgb(*size)
    changed = image.copy()
    top, bottom = max(rows[0], 0), min(rows[1], size[0])
    changed[top:bottom, size[1] // 4:] = _rgb(*size, seed=1)[top:bottom, size[1] // 4:]
    base = encode_jpeg(image, 90, row_restarts=True)
    spliced = splice_jpeg_rows(base, changed, rows, 90)
    assert spliced == encode_jpeg(changed, 90, row_restarts=True)
    decoded = cv2.imdecode(np.frombuffer(spliced, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == changed.shape
    if bottom > top and size[0] > 32:  # the splice changed something, and left what is outside its rows alone
        assert spliced != base
        before = cv2.imdecode(np.frombuffer(base, np.uint8), cv2.IMREAD_COLOR)
        outside = np.ones(size[0], bool)  # a decoder's chroma upsampling reaches one pixel row further
        outside[max(top // 16 * 16 - 1, 0):-(-bottom // 16) * 16 + 1] = False
        assert np.array_equal(decoded[outside], before[outside])


def test_row_restarts_cost_a_few_bytes_and_decode_alike():
    image = _rgb(160, 240)
    plain, restarted = encode_jpeg(image, 90), encode_jpeg(image, 90, row_restarts=True)
    assert b"\xff\xdd\x00\x04\x00\x0f" in restarted[:1000]  # DRI: 15 blocks of 16 px, one row
    assert abs(len(restarted) - len(plain)) < 3 * 10
    decode = lambda data: np.asarray(Image.open(io.BytesIO(data)))  # noqa: E731 (an independent decoder)
    assert np.array_equal(decode(plain), decode(restarted))


def test_a_splice_refuses_a_base_without_row_restarts():
    image = _rgb(64, 64)
    with pytest.raises(ValueError, match="restart interval"):
        splice_jpeg_rows(encode_jpeg(image, 90), image, (20, 30), 90)


def _id_png(ids: np.ndarray) -> bytes:
    """Independent COCO panoptic encoding: R = id % 256, G = id // 256 % 256, B = id // 256**2."""
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    return _pil_bytes(rgb, "PNG")


def test_panoptic_ids_decode_random_map():
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 256**3, (33, 47))
    np.testing.assert_array_equal(decode_panoptic_ids(_id_png(ids), BIG), ids)


def test_panoptic_ids_of_the_sample_are_its_segments(panoptic):
    ids = decode_panoptic_ids(panoptic["png"], BIG)
    declared = {s["id"]: s["area"] for s in panoptic["annotation"]["segments_info"]}
    assert ids.shape == (panoptic["image_info"]["height"], panoptic["image_info"]["width"])
    assert set(np.unique(ids).tolist()) <= set(declared) | {0}
    for seg_id, area in declared.items():
        assert int((ids == seg_id).sum()) == area


def test_panoptic_ids_refuse_a_jpeg():
    with pytest.raises(BadInput) as info:
        decode_panoptic_ids(_jpeg(), BIG)
    assert info.value.reason == "corrupt_panoptic_png"


@pytest.mark.parametrize("data, reason", [(b"", "empty_file"), (_bomb_png(65000, 65000), "image_too_large")])
def test_panoptic_ids_bad_bytes(data, reason):
    with pytest.raises(BadInput) as info:
        decode_panoptic_ids(data, BIG)
    assert info.value.reason == reason


# --- reduced (DCT-scaled) decoding ------------------------------------------------------------------


@pytest.mark.parametrize(("min_short_side", "factor"), [(None, 1), (100, 4), (200, 2), (202, 1), (50, 8)])
def test_a_reduced_decode_keeps_the_short_side_and_looks_like_a_resize(min_short_side, factor):
    """A 637x401 JPEG: the largest DCT scale keeping the short side (ceil(401 / f) >= min) is used; the
    pixels match an area resize of the full decode, the header keeps the stored size."""
    data = _pil_bytes(_rgb(401, 637), "JPEG", quality=95)
    image, header = decode_image(data, BIG, min_short_side)
    assert (header.height, header.width) == (401, 637)
    assert image.shape[:2] == (-(-401 // factor), -(-637 // factor))
    full, _ = decode_image(data, BIG)
    resized = cv2.resize(full, image.shape[1::-1], interpolation=cv2.INTER_AREA)
    error = np.abs(image.astype(int) - resized)
    assert np.median(error) <= 2 and error.mean() < 5  # the picture's hard wrap edges differ most at 1/8


def test_a_png_is_never_reduced():
    image, _ = decode_image(_pil_bytes(_rgb(400, 600), "PNG"), BIG, 100)
    assert image.shape[:2] == (400, 600)


def test_orient_compares_the_stored_size_not_the_reduced_array():
    """A sideways photo (orientation 6, stored 400x600) decoded at half size is turned when its
    annotations were made upright (600x400), and kept when they fit the stored grid."""
    array = np.zeros((200, 300, 3), np.uint8)
    array[0, 0] = 255
    turned, was = orient(array, 6, (600, 400), (400, 600))
    assert was and turned.shape[:2] == (300, 200) and turned[0, -1].all()
    kept, was = orient(array, 6, (400, 600), (400, 600))
    assert not was and kept is array


@pytest.mark.parametrize("photo", ["astronaut.png", "coffee.png", "motorcycle_left.png"])
def test_resample_within_2x_is_as_close_to_the_full_resolution_picture_as_an_area_resize(photo):
    """What a 2x reduced decode leaves (the picture area-halved) brought to 0.68 of that: bilinear's
    error against an area resize of the full picture is no worse than INTER_AREA's own (+1 dB); past
    2x, resample is the area average itself."""
    full = cv2.imread(str(PHOTOS / photo))
    h, w = full.shape[:2]
    half = cv2.resize(full, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    size = (round(w / 2 * 0.68), round(h / 2 * 0.68))
    reference = cv2.resize(full, size, interpolation=cv2.INTER_AREA).astype(float)

    def psnr(image: np.ndarray) -> float:
        return 10 * np.log10(255**2 / np.mean((image - reference) ** 2))

    assert resample(half, size).shape == (size[1], size[0], 3)
    assert psnr(resample(half, size)) >= psnr(cv2.resize(half, size, interpolation=cv2.INTER_AREA)) - 1
    assert psnr(resample(half, size)) > 30
    quarter = (w // 5, h // 5)
    np.testing.assert_array_equal(resample(full, quarter), cv2.resize(full, quarter, interpolation=cv2.INTER_AREA))


def test_a_mask_is_its_white_half_or_the_ones_of_a_0_1_mask():
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 1
    assert np.array_equal(mask_foreground(mask), mask == 1), "a 0/1 mask: its 1s"
    assert np.array_equal(mask_foreground(mask * 255), mask == 1), "a 0/255 mask: its white"
    soft = mask * 200 + 100 * (mask == 0)  # a soft or JPEG-noisy mask: its white half
    assert np.array_equal(mask_foreground(soft.astype(np.uint8)), mask == 1)
    assert not mask_foreground(np.zeros_like(mask)).any()
    matte = mask * 0.8 + 0.3 * (mask == 0)  # a float matte (a TIFF from a compositing tool): over half is the object
    assert np.array_equal(mask_foreground(matte.astype(np.float32)), mask == 1), "not every pixel above 0"
    assert np.array_equal(mask_foreground((matte * 255).astype(np.float32)), mask == 1)
