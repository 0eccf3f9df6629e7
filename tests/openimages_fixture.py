"""An Open Images v7 instance-segmentation root made from the shared photos (the real layout, small).

    .venv/bin/python tests/openimages_fixture.py OUT_DIR [--loose]

Writes ``validation-annotations-object-segmentation.csv`` (the release's header), the class
descriptions (``oidv7-class-descriptions-boxable.csv``), ``validation/<ImageID>.jpg`` and the mask PNGs,
named ``<ImageID>_<label without slashes>_<BoxID>.png`` and stored at 3/4 of their image's size (as the
release's masks differ in size from their images), in ``validation-masks-<hex>.zip`` archives by the
image id's first hex digit, or with ``--loose`` unpacked in ``validation-masks/``.

The object masks are GrabCut (seeded, deterministic) in a box drawn by hand around each photo's main
object. Bad rows, one of each: a mask that is in no archive, a mask of another image's size (another
aspect ratio), a label missing from the class descriptions; and a row whose image is missing.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import zipfile
from pathlib import Path

import cv2
import numpy as np

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "photos"
SPLIT = "validation"
HEADER = ["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax", "PredictedIoU", "Clicks"]
# photo, label id, class name, the object's box (x, y, w, h) for GrabCut
OBJECTS = [
    ("astronaut.png", "/m/01g317", "Person", (150, 30, 300, 482)),
    ("chelsea.png", "/m/01yrx", "Cat", (90, 20, 300, 280)),
    ("coffee.png", "/m/02p5f1q", "Coffee cup", (100, 40, 400, 290)),
    ("motorcycle_left.png", "/m/04_sv", "Motorcycle", (40, 70, 660, 410)),
    ("rocket.jpg", "/m/09rvcxw", "Rocket", (260, 10, 140, 400)),
]
UNKNOWN_LABEL = "/m/0zzzzz"


def image_id(name: str) -> str:
    """A 16-hex-digit id like the release's, stable per photo."""
    return hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


def object_mask(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """GrabCut's foreground in `box` (seeded: the same mask every time), as 0/255."""
    cv2.setRNGSeed(0)
    mask = np.zeros(image.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(image, mask, box, bgd, fgd, 5, cv2.GC_INIT_WITH_RECT)
    return np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)


@functools.cache
def photo_and_mask(photo: str, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A photo and its object's mask, read-only: GrabCut takes seconds a photo, so once per process."""
    image = cv2.imread(str(PHOTOS / photo), cv2.IMREAD_COLOR)
    mask = object_mask(image, box)
    image.setflags(write=False)
    mask.setflags(write=False)
    return image, mask


def png(mask: np.ndarray) -> bytes:
    return cv2.imencode(".png", mask)[1].tobytes()


def write_openimages(root: Path, loose: bool = False) -> dict[str, str]:
    """Write the fixture under `root`; returns {photo name: image id} of the good images."""
    (root / SPLIT).mkdir(parents=True, exist_ok=True)
    rows, masks, ids = [], {}, {}
    for n, (photo, label, _, box) in enumerate(OBJECTS):
        image, mask = photo_and_mask(photo, box)
        ids[photo] = iid = image_id(photo)
        cv2.imwrite(str(root / SPLIT / f"{iid}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        height, width = image.shape[:2]
        small = cv2.resize(mask, (width * 3 // 4, height * 3 // 4), interpolation=cv2.INTER_AREA)
        ys, xs = np.nonzero(mask)
        name = f"{iid}_{label.replace('/', '')}_{n:08x}.png"
        masks[name] = png(small)
        rows.append([name, iid, label, f"{n:08x}", xs.min() / width, (xs.max() + 1) / width, ys.min() / height,
                     (ys.max() + 1) / height, "0.9", ""])
    first, second = ids[OBJECTS[0][0]], ids[OBJECTS[1][0]]
    rows.append([f"{first}_m01g317_deadbeef.png", first, "/m/01g317", "deadbeef", "0.1", "0.3", "0.1", "0.3", "0.8", ""])  # no mask
    wrong = f"{second}_m01yrx_0badsize.png"  # another image's mask: a square one for a 3:2 image
    masks[wrong] = png(np.pad(np.full((100, 100), 255, np.uint8), 50))
    rows.append([wrong, second, "/m/01yrx", "0badsize", "0.2", "0.5", "0.2", "0.5", "0.8", ""])
    odd = f"{second}_{UNKNOWN_LABEL.replace('/', '')}_00000001.png"
    masks[odd] = masks[rows[1][0]]
    rows.append([odd, second, UNKNOWN_LABEL, "00000001", "0.2", "0.9", "0.1", "0.9", "0.8", ""])
    absent = "f" * 16  # annotated, but its image is not in validation/
    masks[f"{absent}_m01g317_00000002.png"] = masks[rows[0][0]]
    rows.append([f"{absent}_m01g317_00000002.png", absent, "/m/01g317", "00000002", "0.1", "0.5", "0.1", "0.5", "0.8", ""])
    with open(root / f"{SPLIT}-annotations-object-segmentation.csv", "w", newline="") as f:
        csv.writer(f).writerows([HEADER, *rows])
    with open(root / "oidv7-class-descriptions-boxable.csv", "w", newline="") as f:
        csv.writer(f).writerows([["LabelName", "DisplayName"], *[[label, name] for _, label, name, _ in OBJECTS]])
    if loose:
        (root / f"{SPLIT}-masks").mkdir(exist_ok=True)
        for name, data in masks.items():
            (root / f"{SPLIT}-masks" / name).write_bytes(data)
    else:
        for digit in sorted({name[0] for name in masks}):
            with zipfile.ZipFile(root / f"{SPLIT}-masks-{digit}.zip", "w") as archive:
                for name in sorted(n for n in masks if n[0] == digit):
                    archive.writestr(name, data=masks[name])
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--loose", action="store_true", help="masks unpacked in validation-masks/ instead of zips")
    args = parser.parse_args()
    ids = write_openimages(args.out, args.loose)
    print(f"wrote {len(ids)} images with masks and 4 bad rows to {args.out}")


if __name__ == "__main__":
    main()
