"""Image decoding that validates its input, and the encoders used for every output file.

Decoding checks the declared size before allocating (decompression bombs) and the end marker
before decoding (truncated files), so bad inputs fail with a reason instead of a crash or a
half-grey image. Pixels stay in OpenCV's BGR order end to end.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..dataset import Reject

_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND"
_TAIL = 4096  # where the end marker sits (trailing padding tolerated); a JPEG without one there has its markers walked
# a marker after entropy-coded data: FF, then neither a stuffed 00, a restart marker RSTn nor another fill FF
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class BadInput(ValueError):
    """Raised where decoding or parsing an input has to stop; ``reject`` says why (placed by the caller)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reject = Reject.because(reason, detail)

    @property
    def reason(self) -> str:
        return self.reject.reason

    @property
    def detail(self) -> str:
        return self.reject.detail


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    format: str  # PIL's format name: "JPEG", "PNG", ...
    mode: str  # PIL's mode: "RGB", "L", "CMYK", ...
    orientation: int = 1  # EXIF orientation tag (1: as stored); decoding ignores it, see `orient`
    rgb_profile: bytes | None = None  # an embedded ICC profile of the RGB colour space (a phone's Display P3)
    frames: int = 1  # an animation's (GIF, WebP, APNG, a multi-page TIFF); decoders read the first


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Parse the image header only; reject unknown formats and absurd declared sizes."""
    if not data:
        raise BadInput("empty_file", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                profile = im.info.get("icc_profile")
                rgb = profile if isinstance(profile, bytes) and profile[16:20] == b"RGB " else None  # not CMYK or grey
                # a PNG's EXIF may follow its pixels: Pillow decodes the whole image to look (8 ms for a 2250x1500 mask)
                exif_free = im.format == "PNG" and b"eXIf" not in data and b"Raw profile type exif" not in data
                turned = 1 if exif_free else _orientation(im)
                # a multi-picture JPEG (a phone's HDR gain map, a camera's preview) is a JPEG whose first picture is the photo
                multi = im.format == "MPO"
                header = ImageHeader(im.width, im.height, "JPEG" if multi else im.format or "?", im.mode, turned, rgb,
                                     1 if multi else getattr(im, "n_frames", 1))
    except Image.DecompressionBombError as exc:
        raise BadInput("image_too_large", str(exc)) from None
    except Exception as exc:  # PIL raises many types for garbage
        raise BadInput("not_an_image", f"{type(exc).__name__}: {exc}") from None
    pixels = header.width * header.height
    if header.width <= 0 or header.height <= 0 or pixels > max_pixels:
        raise BadInput(
            "image_too_large",
            f"declared {header.width}x{header.height} ({pixels} px) exceeds max_image_pixels={max_pixels}",
        )
    return header


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels are still usable, as stored
        return 1
    return value if value in _TURNS else 1


# EXIF orientation -> the turn that shows the stored pixels upright (what PIL's ImageOps.exif_transpose does)
_EXIF_ORIENTATION = 0x0112
_TURNS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
    8: lambda a: np.swapaxes(a, 0, 1)[::-1],
}


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned as EXIF `orientation` asks viewers to show them."""
    return image if orientation == 1 else np.ascontiguousarray(_TURNS[orientation](image))


def orient(image: np.ndarray, orientation: int, declared: tuple[int, int] | None, stored: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """The image in the orientation its annotations were made in, and whether it was turned.

    Annotations refer to the stored pixel grid (what pycocotools and every PIL-based loader read);
    only when their declared (height, width) fits the EXIF-turned grid and not the `stored` one (the
    header's size: the array may be a reduced decode) is the image turned. A square image, or a flip
    that keeps the size, stays as stored: sizes cannot tell.
    """
    if orientation == 1 or declared is None:
        return image, False
    turned_size = stored[::-1] if orientation >= 5 else tuple(stored)
    if tuple(declared) == turned_size != tuple(stored):
        return upright(image, orientation), True
    return image, False


_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def reduction(header: ImageHeader, min_short_side: int | None) -> int:
    """The largest JPEG DCT scale-down (1, 2, 4 or 8) that keeps the short side at or above `min_short_side`.

    libjpeg scales in the DCT domain while decoding, so a 2x reduced decode costs less than half a full
    one and skips the full-size resize after it; other formats decode at full size.
    """
    if not min_short_side or header.format != "JPEG":
        return 1
    short = min(header.width, header.height)
    return next((f for f in (8, 4, 2) if -(-short // f) >= min_short_side), 1)


def jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's own stream reaches its end-of-image marker, whatever follows it (a phone's motion photo
    appends an MP4, other writers pad): segments are skipped by their lengths (an EXIF thumbnail's EOI is not
    the image's), each scan's entropy-coded data up to the next marker."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, RSTn, TEM: no length
            pos += 1 if marker == 0xFF else 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _MARKER_AFTER_SCAN.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return data[pos : pos + 2] == _JPEG_EOI


def decode_image(data: bytes, max_pixels: int, min_short_side: int | None = None) -> tuple[np.ndarray, ImageHeader]:
    """Decode to a BGR uint8 array as stored (EXIF orientation not applied) after header, size and truncation
    checks; with `min_short_side`, a JPEG is decoded at the smallest DCT scale keeping that short side
    (``reduction``: the array is then ceil(size / f), the header keeps the stored size)."""
    header = read_header(data, max_pixels)
    tail = data[-_TAIL:]
    # the end marker in the last bytes (an EXIF thumbnail's lies at the start), else the markers walked (~1 ms a MB):
    # a motion photo's appended MP4
    if header.format == "JPEG" and _JPEG_EOI not in tail and not jpeg_complete(data):
        raise BadInput("truncated_image", "JPEG data ends before its end-of-image marker")
    if header.format == "PNG" and _PNG_IEND not in tail:
        raise BadInput("truncated_image", "PNG data ends before its IEND chunk")
    f = reduction(header, min_short_side)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[f] | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.shape[:2] != (-(-header.height // f), -(-header.width // f)):
        raise BadInput("corrupt_image", f"{header.format} data did not decode to {header.width}x{header.height}" + (f" / {f}" if f > 1 else ""))
    return image, header


def resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` resized to `size` (width, height): area-averaged when it shrinks by more than 2x on a side,
    bilinear otherwise. Within 2x bilinear's taps still reach every input pixel; OpenCV's INTER_AREA at a
    non-integer ratio costs ~6x as much (7 ms for a 1125x750 -> 768x512 background, what a 2x reduced
    decode leaves for the 512-px config) for the same error against a full-resolution area resize
    (within 0.8 dB PSNR on the sample photos)."""
    width, height = size
    shrink = min(width / image.shape[1], height / image.shape[0])
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink < 0.5 else cv2.INTER_LINEAR)


def mask_foreground(mask: np.ndarray) -> np.ndarray:
    """The object of a mask: the upper half of its range (over 127, or 32767 for a 16-bit one), or the 1s of a
    mask saved as 0/1 (label masks often are; read as 0-255 it would be empty). A colour mask (H, W, C) counts
    its brightest channel: a red object on black is the object, not a dark grey; one with an alpha channel that
    varies is that alpha (the object drawn in transparency, whatever its colours). Read masks with
    ``cv2.IMREAD_UNCHANGED``: a grey read turns a colour object into a dark grey and a 16-bit 0/1 mask into 0s."""
    if mask.ndim == 3 and mask.shape[2] == 4:
        alpha = mask[..., 3]
        mask = alpha if alpha.min() != alpha.max() else mask[..., :3]
    plane = mask.max(axis=2) if mask.ndim == 3 else mask
    top = plane.max(initial=0)
    if plane.dtype.kind == "f":  # a float matte: 0-1, or 0-255
        return plane > (0.5 if top <= 1 else 127.5)
    return plane > (0 if top <= 1 else np.iinfo(plane.dtype).max // 2)


def decode_panoptic_ids(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode a COCO panoptic PNG to its int32 segment-id map (id = R + 256 G + 256^2 B)."""
    bgr, header = decode_image(data, max_pixels)
    if header.format != "PNG":
        raise BadInput("corrupt_panoptic_png", f"panoptic segmentation is {header.format}, expected PNG")
    bgr = bgr.astype(np.int32)
    return bgr[..., 2] + (bgr[..., 1] << 8) + (bgr[..., 0] << 16)


_MCU = 16  # 4:2:0 chroma: a colour JPEG is coded in 16x16-px units, row by row


def encode_jpeg(image: np.ndarray, quality: int, row_restarts: bool = False) -> bytes:
    """Baseline 4:2:0 JPEG of a BGR image; with `row_restarts`, each 16-px row of blocks is its own restart
    interval (a few bytes per row), so rows can be re-encoded alone and spliced in (``splice_jpeg_rows``)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    if row_restarts:
        params += [cv2.IMWRITE_JPEG_RST_INTERVAL, -(-image.shape[1] // _MCU)]
    ok, buf = cv2.imencode(".jpg", image, params)
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


_RESTART = re.compile(rb"\xff[\xd0-\xd7]")  # RST0-7; a 0xff byte of coded data is followed by 0x00


def _restart_intervals(data: bytes) -> tuple[int, list[bytes]]:
    """Where a baseline JPEG's scan data starts (after its headers), and that data cut at its restart markers."""
    position = 2  # after SOI
    while data[position + 1] != 0xDA:  # each header segment: ff, kind, 2-byte length counting itself
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    start = position + 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    return start, _RESTART.split(data[start:data.rindex(_JPEG_EOI)])


def splice_jpeg_rows(base: bytes, image: np.ndarray, rows: tuple[int, int], quality: int) -> bytes:
    """The JPEG of `image` when it equals the image `base` encodes (``encode_jpeg(..., row_restarts=True)``,
    same quality) outside rows [first, stop): only the 16-px block rows covering them are encoded, and their
    restart intervals replace base's. Byte-identical to encoding `image` whole (blocks are coded on their
    own, and a restart resets the DC predictions, the only state carried from block to block), at the cost
    of the changed rows only: a paste's source from its target's JPEG."""
    height = image.shape[0]
    block_rows = -(-height // _MCU)
    first, stop = max(rows[0], 0) // _MCU, min(-(-rows[1] // _MCU), block_rows)
    if first >= stop:
        return base
    start, intervals = _restart_intervals(base)
    _, replacement = _restart_intervals(encode_jpeg(image[first * _MCU:stop * _MCU], quality, row_restarts=True))
    if len(intervals) != block_rows or len(replacement) != stop - first:
        raise ValueError(f"expected one restart interval per {_MCU}-px row: {len(intervals)} for {height} rows")
    intervals[first:stop] = replacement
    markers = [bytes((0xFF, 0xD0 + i % 8)) for i in range(8)]
    pieces = [base[:start], intervals[0]]
    for i, interval in enumerate(intervals[1:]):
        pieces += (markers[i % 8], interval)
    return b"".join(pieces) + _JPEG_EOI


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


_ZERO_CHUNK, _DEFLATE_WINDOW = 1 << 16, 1 << 15
_ADLER_MOD = 65521


def _deflated(data: bytes | memoryview, after: bytes | None = None) -> bytes:
    """Raw deflate blocks of `data` (RLE strategy), byte-aligned and not final, so that such pieces concatenate
    into one stream; they refer back only into `after`, the output known to precede them."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_RLE, **({"zdict": after} if after else {}))
    return deflate.compress(data) + deflate.flush(zlib.Z_FULL_FLUSH)


@functools.lru_cache(maxsize=1)
def _zero_chunk() -> bytes:
    return _deflated(bytes(_ZERO_CHUNK), bytes(_DEFLATE_WINDOW))


def _deflated_zeros(count: int) -> bytes:
    """Raw deflate blocks of `count` zero bytes: the first 32 KB (one window) deflated afresh, the rest as
    copies of one cached 64 KB piece that refers back only into zeros."""
    head = min(count, _DEFLATE_WINDOW)
    repeats, rest = divmod(count - head, _ZERO_CHUNK)
    tail = _deflated(bytes(rest), bytes(_DEFLATE_WINDOW)) if rest else b""
    return _deflated(bytes(head)) + _zero_chunk() * repeats + tail


def encode_png_gray(image: np.ndarray) -> bytes:
    """Encode a single-channel uint8 image as PNG.

    Masks and alpha maps are mostly zero rows: unfiltered rows deflated with the RLE strategy are ~3x
    faster than OpenCV's encoder at a similar size, and the all-zero rows above and below the content
    are not deflated at all but spliced in as cached deflate pieces (a 2250x1500 mask: 8 -> 3 ms).
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got {image.dtype} {image.shape}")
    height, width = image.shape
    filled = np.flatnonzero(image.any(axis=1))
    top, bottom = (int(filled[0]), int(filled[-1]) + 1) if filled.size else (0, 0)
    rows = np.zeros((bottom - top, width + 1), np.uint8)  # leading 0 per row = PNG filter type "None"
    rows[:, 1:] = image[top:bottom]
    above, below = top * (width + 1), (height - bottom) * (width + 1)
    pieces = [_deflated_zeros(above) if above else b"", _deflated(rows.data) if rows.size else b"",
              _deflated_zeros(below) if below else b"", b"\x03\x00"]  # the last: an empty final block
    # Adler-32 of the whole: zero bytes leave its sum A as is and add A to B once each
    adler = zlib.adler32(rows.data, (above % _ADLER_MOD) << 16 | 1)
    total, low = adler >> 16, adler & 0xFFFF
    adler = (total + below * low) % _ADLER_MOD << 16 | low
    idat = b"\x78\x01" + b"".join(pieces) + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
