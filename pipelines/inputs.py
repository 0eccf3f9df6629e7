"""Turn ``--input`` arguments into input units, and plan the groups of image records to read.

A unit is one SA-1B tar, one folder of loose SA-1B jpg+json, one split of a COCO/COCONut panoptic
root, or one split of an Open Images v7 instance-segmentation root. Units are named after their file or folder; every input id is ``<unit>/<record>``. Records of
a unit are cut into groups of ``group_size`` consecutive records (the last group takes the rest),
after dropping records an earlier run already committed, so a resumed run rebuilds the very groups
an uninterrupted run would have made.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import posixpath
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, TypeVar

import pyarrow.fs as pafs

from ..dataset import Reject
from .. import storage
from ..errors import UserError

log = logging.getLogger(__name__)

KINDS = ("sa1b-tar", "sa1b-dir", "panoptic", "openimages")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # SA-1B tars; compressed ones are read through the decompressor
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")  # what a loose folder's image beside its json may be
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".3gp", ".flv", ".wmv")
_KIND_PREFIX = re.compile(r"^(sa1b-tar|sa1b-dir|panoptic|openimages):(.+)$")
_CATEGORY_FILES = ("categories.json", "panoptic_coco_categories.json")
_OI_CSV = re.compile(r"(.+)-annotations-object-segmentation\.csv")
_OI_CLASS_FILES = ("oidv7-class-descriptions-boxable.csv", "class-descriptions-boxable.csv", "oidv7-class-descriptions.csv")
OI_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax", "PredictedIoU")
_OI_MASK, _OI_IMAGE, _OI_LABEL = 0, 1, 2  # their places in OI_COLUMNS
T = TypeVar("T")


class InputError(UserError, ValueError):
    """A bad --input argument; the message is one line for the user."""


@dataclass(frozen=True)
class Unit:
    kind: str  # one of KINDS, or "video"
    name: str  # prefixes every input id of the unit
    uri: str  # the tar, the folder, (panoptic) the annotation json or the per-image json folder, (openimages) the csv
    png_dir: str | None = None  # panoptic: the segmentation PNGs; openimages: the root (masks loose or in zips)
    image_dir: str | None = None  # panoptic, openimages: the images
    categories_uri: str | None = None  # panoptic per-image layout, openimages: where category names come from
    problem: str | None = None  # why the unit cannot be read at all (its file name): it becomes one reject
    size: int = 0  # bytes, where the listing gives them (tars, videos): a run starts the largest first

    @property
    def file_size(self) -> int | None:
        """The size that tells a file rewritten since a run read it (tars, videos; 0 is an empty file), or None
        for folders and splits, which grow by design."""
        return self.size if self.kind in ("sa1b-tar", "video") else None


VANISHED = "input_vanished"  # the reject of a unit gone since the run listed it: not done, a rerun reads it if it is back


def vanished_detail(uri: str) -> str:
    return f"{uri} was gone when it was read (moved or deleted after the run listed it); a rerun reads it if it is back"


def unreadable_unit(unit: Unit, reason: str, uri: str, exc: BaseException) -> list[tuple[None, Reject]]:
    """The reject of a unit whose annotation file (`uri`) could not be read: `reason`, or input_vanished when
    the file is gone since the listing."""
    if isinstance(exc, FileNotFoundError):
        return [(None, Reject(unit.name, "read", VANISHED, vanished_detail(uri)))]
    return [(None, Reject(unit.name, "read", reason, f"{uri}: {storage.first_line(exc)}"))]

UNREADABLE = (pafs.FileType.Unknown, pafs.FileType.NotFound)  # storage.list_dir: a name not UTF-8, a link to nothing


def unreadable_reason(entry: pafs.FileInfo) -> str:
    return "a link to nothing" if entry.type == pafs.FileType.NotFound else "its name is not valid UTF-8"


def groups_of(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of `size`; the last group also takes a remainder shorter than `size`."""
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) == 2 * size:
            yield buffer[:size]
            buffer = buffer[size:]
    if buffer:
        yield buffer


def _names(entries: list[pafs.FileInfo]) -> dict[str, pafs.FileInfo]:
    return {storage.basename(e.path): e for e in entries}


def _split_kind(arg: str) -> tuple[str | None, str]:
    match = _KIND_PREFIX.match(arg)
    if match:
        return match.group(1), match.group(2)
    unknown = re.match(r"([A-Za-z][\w-]*):(?!//)", arg)
    if unknown and not storage.exists(arg):  # a mistyped kind, not a local name with a colon in it
        raise InputError(f"unknown input kind {unknown.group(1)!r} in {arg} (known: {', '.join(k + ':' for k in KINDS)})")
    return None, arg


def _panoptic_units(root: str, entries: dict[str, pafs.FileInfo]) -> list[Unit]:
    """Splits of a panoptic root: ``annotations/panoptic_<split>.json`` or per-image json folders."""
    units = []
    annotations = _names(storage.list_dir(storage.join(root, "annotations"))) if "annotations" in entries else {}
    for name in sorted(annotations):
        match = re.fullmatch(r"panoptic_(.+)\.json", name)
        if not match:
            continue
        split = match.group(1)
        png_dir = storage.join(root, "annotations", f"panoptic_{split}")
        if f"panoptic_{split}" not in annotations:
            png_dir = storage.join(root, f"panoptic_{split}")
        image_dir = storage.join(root, split) if split in entries else storage.join(root, "images", split)
        units.append(Unit("panoptic", split, storage.join(root, "annotations", name), png_dir=png_dir, image_dir=image_dir))
    done = {u.name for u in units}
    for name in sorted(entries):  # per-image layout: panoptic_<split>/<stem>.png + <stem>.json, no global json
        match = re.fullmatch(r"panoptic_(.+)", name)
        if not match or match.group(1) in done or entries[name].type != pafs.FileType.Directory:
            continue
        split = match.group(1)
        categories = next((storage.join(d, f) for d in (root, _parent(root)) for f in _CATEGORY_FILES if _exists(storage.join(d, f))), None)
        if categories is None:
            raise InputError(f"panoptic split {split!r} in {root} has per-image annotations but no {' or '.join(_CATEGORY_FILES)}")
        image_dir = storage.join(root, split) if split in entries else storage.join(root, "images", split)
        units.append(Unit("panoptic", split, storage.join(root, name), png_dir=storage.join(root, name), image_dir=image_dir, categories_uri=categories))
    return units


def _openimages_units(root: str, entries: dict[str, pafs.FileInfo]) -> list[Unit]:
    """Splits of an Open Images root: ``<split>-annotations-object-segmentation.csv`` + class names + images."""
    splits = [m.group(1) for name in sorted(entries) if (m := _OI_CSV.fullmatch(name))]
    if not splits:
        return []
    names = next((storage.join(root, f) for f in _OI_CLASS_FILES if f in entries), None)
    if names is None:
        raise InputError(f"Open Images root {root} has segmentation csvs but no {' or '.join(_OI_CLASS_FILES)}")
    return [Unit("openimages", split, storage.join(root, f"{split}-annotations-object-segmentation.csv"), png_dir=root,
                 image_dir=storage.join(root, split), categories_uri=names) for split in splits]


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def _exists(uri: str) -> bool:
    return storage.info(uri).type == pafs.FileType.File


def discover(arg: str) -> list[Unit]:
    """The units of one ``--input`` (``[kind:]PATH``); raises InputError when it cannot be read."""
    kind, uri = _split_kind(arg)
    uri = storage.normalize(uri)  # the same tar given as a relative and an absolute path is one unit
    try:
        found = storage.check_readable(uri)
    except storage.StorageError as exc:
        raise InputError(str(exc)) from None
    if found.type == pafs.FileType.File:
        if kind not in (None, "sa1b-tar") or not uri.lower().endswith(TAR_SUFFIXES):
            raise InputError(f"input {uri} is a file: only SA-1B tars ({', '.join(TAR_SUFFIXES)}) can be given directly")
        return [Unit("sa1b-tar", storage.basename(uri), uri, size=found.size or 0)]
    entries = _names(storage.list_dir(uri))
    tars = [storage.join(uri, n) for n, e in entries.items() if n.lower().endswith(TAR_SUFFIXES) and e.type in (pafs.FileType.File, *UNREADABLE)]
    images = {_stem(n) for n in entries if "." in n and n.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS}
    loose = bool(images & {_stem(n) for n in entries if n.lower().endswith(".json")})  # an image beside its json (not a stray one)
    panoptic = _panoptic_units(uri, entries) if kind in (None, "panoptic") else []
    openimages = _openimages_units(uri, entries) if kind in (None, "openimages") else []
    candidates = {"sa1b-tar": bool(tars), "sa1b-dir": loose, "panoptic": bool(panoptic), "openimages": bool(openimages)}
    if kind is None:
        present = [k for k, v in candidates.items() if v]
        if not present:
            raise InputError(f"no SA-1B tars, loose SA-1B jpg+json, panoptic annotations or Open Images segmentation csvs found in {uri}")
        if len(present) > 1:
            raise InputError(f"{uri} holds several input kinds ({', '.join(present)}): say which with KIND:{uri}")
        kind = present[0]
    if not candidates[kind]:
        raise InputError(f"{uri} holds no {kind} input")
    folders = sorted(n for n, e in entries.items() if e.type == pafs.FileType.Directory)
    if kind in ("sa1b-tar", "sa1b-dir") and folders:  # not searched: say so rather than leave them out silently
        log.warning("%s: %d subfolder(s) not searched (%s); give each as its own --input", uri, len(folders), ", ".join(folders[:5]))
    if kind == "sa1b-tar":
        listed = {t: entries[storage.basename(t)] for t in sorted(tars)}
        return [Unit("sa1b-tar", storage.basename(t), t, problem=unreadable_reason(e) if e.type in UNREADABLE else None, size=e.size or 0)
                for t, e in listed.items()]
    if kind == "sa1b-dir":
        return [Unit("sa1b-dir", storage.basename(uri), uri)]
    split_units = panoptic if kind == "panoptic" else openimages
    return [Unit(u.kind, f"{storage.basename(uri)}/{u.name}", u.uri, u.png_dir, u.image_dir, u.categories_uri) for u in split_units]


def discover_videos(arg: str) -> list[Unit]:
    """One unit per video: a video file, or every video below a folder (named by its relative path)."""
    arg = storage.normalize(arg)
    try:
        found = storage.check_readable(arg)
    except storage.StorageError as exc:
        raise InputError(str(exc)) from None
    if found.type == pafs.FileType.File:
        if not arg.lower().endswith(VIDEO_EXTENSIONS):
            raise InputError(f"input {arg} is not a video ({', '.join(VIDEO_EXTENSIONS)}) or a folder of videos")
        return [Unit("video", storage.basename(arg), arg, size=found.size or 0)]
    root = arg.rstrip("/")
    root_path = storage.resolve(root)[1]
    videos = [  # a URI in its one spelling (a link resolved), as a video given by its own path has
        Unit("video", e.path[len(root_path) + 1 :], storage.normalize(storage.uri_of(root, e)),
             problem=unreadable_reason(e) if e.type in UNREADABLE else None, size=e.size or 0)
        for e in storage.list_dir(root, recursive=True)
        if e.type in (pafs.FileType.File, *UNREADABLE) and e.path.lower().endswith(VIDEO_EXTENSIONS)
    ]
    if not videos:
        raise InputError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) found below {arg}")
    return videos


def _tagged(name: str, *parts: object) -> str:
    """`name` (without a tag it has) with a digest of `parts` (a unit's URI, and size) added: unique where a
    bare name clashes."""
    return f"{re.sub(r'~[0-9a-f]{8}$', '', name)}~{hashlib.blake2b('@'.join(map(str, parts)).encode(), digest_size=4).hexdigest()}"


def discover_all(args: list[str], discover_one=discover) -> list[Unit]:
    """Units of every input, with unit names made unique (a digest of the URI is added on a clash)."""
    names: set[str] = set()
    uris: set[str] = set()
    unique = []
    for unit in (u for arg in args for u in discover_one(arg)):
        if unit.uri in uris:
            continue  # the same unit given twice
        name = _tagged(unit.name, unit.uri) if unit.name in names else unit.name
        names.add(name)
        uris.add(unit.uri)
        unique.append(replace(unit, name=name))
    return unique


def reconcile(units: list[Unit], sources: dict[str, tuple[str | None, int | None]], say: bool = True) -> list[Unit]:
    """Name units as the output's earlier runs committed them (`sources`: unit -> (uri, size)), so that an
    input keeps one identity whatever ``--input`` root finds it. A unit at a URI a run committed takes that
    run's name (found from a parent folder, it is not mined twice); a name a run used for another URI gets a
    digest of this one (another day's ``cam1.mp4`` is not skipped as done); a file whose size changed since
    (a half-uploaded video, a replaced tar) is mined again under a name tagged with its size (`say`: with a warning)."""
    by_uri: dict[str, list[tuple[str, int | None]]] = {}
    for name, (uri, size) in sources.items():
        if uri is not None:
            by_uri.setdefault(uri, []).append((name, size))
    assigned: set[str] = set()
    named = []
    for unit in units:
        versions = by_uri.get(unit.uri, [])
        same = [name for name, size in versions if size is None or size == unit.file_size]
        if same:
            name = same[0]
        elif versions:
            name = _tagged(unit.name, unit.uri, unit.file_size)
            if say:
                log.warning("%s changed since an earlier run read it (%s bytes, now %s): it is read again, as unit %s",
                            unit.uri, " / ".join(str(size) for _, size in versions), unit.file_size, name)
        elif sources.get(unit.name, (None, None))[0] is not None or unit.name in assigned:  # a name used for another file
            name = _tagged(unit.name, unit.uri)
        else:  # new, or committed by an older version that recorded no URI: known by its name
            name = unit.name
        assigned.add(name)
        named.append(replace(unit, name=name))
    return named


def unit_groups(
    unit: str,
    kind: str,
    categories: str,
    items: Iterable[tuple[str | None, object]],
    group_size: int,
    skip: set[str],
    immutable: bool,
) -> Iterator[dict]:
    """Reader rows of one unit from its (id, member-or-Reject) items, in order.

    Members are opaque (URIs for planned units, bytes for tar members). Ids in `skip` were committed
    by an earlier run. Rejects found while reading travel with the unit's last row; one about the unit
    itself or a line of its listing (id None) takes its input as its id, so it is said once, not again by
    every run that lists a folder. Every id is accounted for once: the first item of an id decides it, a
    later one is only a reject. For an immutable unit (a tar) the last row also carries ``unit_total``, the
    number of distinct ids in the unit, so that a later run can skip the whole unit unread; folders
    may grow, so they are listed again by every run.
    """
    ids: set[str] = set()
    rejects: list[Reject] = []
    rejected_ids: list[str] = []

    def members():
        for item_id, item in items:
            if item_id is None:
                item_id = item.input
            again = item_id in ids
            ids.add(item_id)
            if item_id in skip:
                continue
            if again and not isinstance(item, Reject):
                item = Reject(f"{unit}/{item_id}", "read", "duplicate_record", "an earlier member already gave this record")
            if isinstance(item, Reject):
                rejects.append(item)
                if not again:
                    rejected_ids.append(item_id)
                continue
            yield item_id, item

    def row(group, last: bool) -> dict:
        return {
            "unit": unit,
            "kind": kind,
            "categories": categories,
            "records": [member for _, member in group],
            "rejects": [r.to_dict() for r in rejects] if last else [],
            "consumed": [i for i, _ in group] + (rejected_ids if last else []),
            "unit_total": len(ids) if last and immutable else -1,
        }

    pending = None
    for group in groups_of(members(), group_size):
        if pending is not None:
            yield row(pending, last=False)
        pending = group
    if pending or rejects or immutable:
        yield row(pending or [], last=True)


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _sa1b_dir_items(unit: Unit) -> list[tuple[str, object]]:
    files: dict[str, dict[str, str]] = {}
    items: list[tuple[str | None, object]] = []
    for entry in storage.list_dir(unit.uri):
        name = storage.basename(entry.path)
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if (ext == "json" or ext in IMAGE_EXTENSIONS) and entry.type in UNREADABLE:
            items.append((name, Reject(f"{unit.name}/{name}", "read", "unreadable_name", f"{name}: {unreadable_reason(entry)}")))
            continue
        if entry.type != pafs.FileType.File or not (ext == "json" or ext in IMAGE_EXTENSIONS):
            continue
        kind = "json" if ext == "json" else "image"
        found = files.setdefault(_stem(name), {})
        if kind in found:  # x.jpg and x.png (or X.JPG) beside one x.json: the first by name is used, the others said
            items.append((name, Reject(f"{unit.name}/{name}", "read", "duplicate_image",
                                       f"{storage.basename(found[kind])} is the image of {_stem(name)}; this one is not used")))
            continue
        found[kind] = storage.uri_of(unit.uri, entry)
    for stem in sorted(files):
        found = files[stem]
        input_id = f"{unit.name}/{stem}"
        if "image" not in found:
            items.append((stem, Reject(input_id, "read", "missing_image", f"{found['json']} has no image beside it")))
        elif "json" not in found:
            items.append((stem, Reject(input_id, "read", "missing_annotations", f"{found['image']} has no json beside it")))
        else:
            items.append((stem, {"id": stem, "image": found["image"], "annotation": found["json"]}))
    return items


def _panoptic_images(unit: Unit, folders: set[str]) -> tuple[dict[str, dict[str, str]], list[tuple[str, Reject]]]:
    """stem -> {image file name under image_dir: URI}, by name, for the images in image_dir and in the subfolders
    the split's json names (``images[].file_name`` such as ``train2017/x.jpg``); and the unreadable names' rejects."""
    listed = [("", entry) for entry in storage.list_dir(unit.image_dir)]
    for folder in sorted(folders - {""}):
        if not storage.escapes(folder) and storage.info(storage.join(unit.image_dir, folder)).type == pafs.FileType.Directory:
            listed += [(folder, entry) for entry in storage.list_dir(storage.join(unit.image_dir, folder))]
    candidates: dict[str, dict[str, str]] = {}
    rejects = []
    for folder, entry in sorted(listed, key=lambda fe: fe[1].path):
        name = storage.basename(entry.path)
        path = posixpath.join(folder, name)
        if entry.type in UNREADABLE:
            rejects.append((path, Reject(f"{unit.name}/{path}", "read", "unreadable_name", unreadable_reason(entry))))
        elif entry.type == pafs.FileType.File and not name.startswith(".") and name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
            candidates.setdefault(_stem(name), {})[path] = storage.uri_of(unit.image_dir, entry)
    return candidates, rejects  # .DS_Store, x.jpg.bak and other files are no images


def _panoptic_items(unit: Unit) -> tuple[str, list[tuple[str | None, object]]]:
    """Categories (JSON text) and the items of a panoptic split, in either annotation layout."""
    items: list[tuple[str | None, object]] = []
    named: dict[str, str] = {}  # stem -> the image file the split's json names (its `images` list), under image_dir
    if unit.categories_uri is None:  # one json for the split
        try:
            doc = json.loads(storage.read_bytes(unit.uri))
            categories, annotations = doc["categories"], doc["annotations"]
            if not isinstance(categories, list) or not isinstance(annotations, list):
                raise TypeError("'categories' and 'annotations' must be lists")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return "[]", unreadable_unit(unit, "malformed_json", unit.uri, exc)
        listed_images = doc.get("images") if isinstance(doc.get("images"), list) else []
        for image in listed_images:  # a name leaving image_dir is not looked for: the image is found there by stem, or missing
            name = image.get("file_name") if isinstance(image, dict) else None
            if isinstance(name, str) and not storage.escapes(name):
                named[_stem(posixpath.basename(name))] = posixpath.normpath(name)  # ./x.jpg, sub/../x.jpg: x.jpg
        per_image = {}
        for ann in annotations:
            name = ann.get("file_name") if isinstance(ann, dict) else None
            if not isinstance(name, str) or storage.escapes(name):
                why = "annotation entry without file_name" if not isinstance(name, str) else f"file_name {name!r} is outside {unit.png_dir}"
                items.append((None, Reject(unit.name, "read", "malformed_annotation", why)))
            elif (stem := _stem(posixpath.basename(name))) in per_image:
                items.append((None, Reject(f"{unit.name}/{name}", "read", "duplicate_annotation", f"an earlier annotation is the one of {stem}")))
            else:
                per_image[stem] = (storage.join(unit.png_dir, name), json.dumps(ann).encode())
    else:  # per-image json files beside the PNGs
        try:
            categories = json.loads(storage.read_bytes(unit.categories_uri))
        except (ValueError, OSError) as exc:
            return "[]", unreadable_unit(unit, "malformed_json", unit.categories_uri, exc)
        categories = categories.get("categories", categories) if isinstance(categories, dict) else categories
        files: dict[str, dict[str, str]] = {}
        for entry in storage.list_dir(unit.png_dir):
            name = storage.basename(entry.path)
            files.setdefault(_stem(name), {})[name.rsplit(".", 1)[-1].lower()] = storage.uri_of(unit.png_dir, entry)
        per_image = {stem: (f["png"], f["json"]) for stem, f in files.items() if "png" in f and "json" in f}
    candidates, unreadable = _panoptic_images(unit, {posixpath.dirname(name) for name in named.values()})
    items += unreadable
    images = {}
    for stem, names in candidates.items():  # x.jpg and x.png for one annotation: the json's, else the first by name
        chosen = named[stem] if named.get(stem) in names else next(iter(names))
        images[stem] = names[chosen]
        items += [(name, Reject(f"{unit.name}/{name}", "read", "duplicate_image", f"{chosen} is the image of {stem}; this one is not used"))
                  for name in names if name != chosen]
    for stem in sorted(set(per_image) | set(images)):
        input_id = f"{unit.name}/{stem}"
        if stem not in per_image:
            items.append((stem, Reject(input_id, "read", "missing_annotations", "image has no panoptic annotation")))
        elif stem not in images:
            items.append((stem, Reject(input_id, "read", "missing_image", f"no image for {stem} in {unit.image_dir}")))
        else:
            png, annotation = per_image[stem]
            items.append((stem, {"id": stem, "image": images[stem], "annotation": annotation, "segmentation": png}))
    return json.dumps(categories), items


@contextmanager
def _csv_rows(uri: str) -> Iterator[Iterator[list[str]]]:
    """The rows of a csv, streamed: a split's segmentation csv runs to hundreds of MB and is never held whole.
    Read in 8 MiB blocks: unbuffered, each of the text reader's 8 KiB reads would be one S3 GET."""
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path, buffer_size=8 << 20) as raw:
        yield csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))


def _openimages_names(uri: str) -> dict[str, str]:
    """Label id -> display name from a class-descriptions csv (with or without its header)."""
    with _csv_rows(uri) as rows:
        names = {r[0]: r[1] for r in rows if len(r) >= 2}
    if names.get("LabelName") == "DisplayName":
        del names["LabelName"]
    return names


def _split_tag(unit: Unit) -> str:
    return unit.uri.rsplit("/", 1)[-1].removesuffix("-annotations-object-segmentation.csv")


def _openimages_masks(unit: Unit) -> tuple[dict[str, str], dict[str, str]]:
    """Where the masks of a split are: loose PNGs by name, and zip archives by the hex digit they hold."""
    split, loose, zips = _split_tag(unit), {}, {}
    folder = storage.join(unit.png_dir, f"{split}-masks")
    listed = [(unit.png_dir, e) for e in storage.list_dir(unit.png_dir)]
    if storage.info(folder).type == pafs.FileType.Directory:
        listed += [(folder, e) for e in storage.list_dir(folder)]
    for parent, entry in listed:
        name = storage.basename(entry.path)
        if entry.type != pafs.FileType.File:
            continue
        if match := re.fullmatch(rf"{re.escape(split)}-masks-([0-9a-fA-F])\.zip", name):
            zips[match.group(1).lower()] = storage.uri_of(parent, entry)
        elif parent == folder and name.lower().endswith(".png"):
            loose[name] = storage.uri_of(parent, entry)
    return loose, zips


def _openimages_items(unit: Unit) -> tuple[str, list[tuple[str | None, object]]]:
    """Categories (JSON: label id -> name and rows in the split) and the items of an Open Images split:
    one record per image, its csv rows as the annotation and one mask locator per row (None: not found)."""
    per_image: dict[str, list[tuple[str, ...]]] = {}  # each image's rows as tuples of OI_COLUMNS: a train split has ~2.7M
    items: list[tuple[str | None, object]] = []
    try:
        names = _openimages_names(unit.categories_uri)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return "{}", unreadable_unit(unit, "malformed_csv", unit.categories_uri, exc)
    try:
        with _csv_rows(unit.uri) as rows:
            header = next(rows, [])
            missing = [c for c in OI_COLUMNS if c not in header]
            if missing:
                return "{}", [(None, Reject(unit.name, "read", "malformed_csv", f"{unit.uri}: no column {', '.join(missing)}"))]
            columns = [header.index(c) for c in OI_COLUMNS]
            repeated = {columns[_OI_IMAGE], columns[_OI_LABEL]}
            for line, row in enumerate(rows, start=2):
                if not row:  # a blank line (a trailing newline too many): no record
                    continue
                if len(row) != len(header):
                    items.append((None, Reject(f"{unit.name}:{line}", "read", "malformed_annotation", f"{len(row)} fields, header has {len(header)}")))
                    continue
                values = tuple(sys.intern(row[i]) if i in repeated else row[i] for i in columns)  # one string per id / label
                per_image.setdefault(values[_OI_IMAGE], []).append(values)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return "{}", unreadable_unit(unit, "malformed_csv", unit.uri, exc)
    repeats: dict[str, list[tuple[str, ...]]] = {}  # an image's rows that repeat an earlier row's mask
    for image_id, image_rows in per_image.items():
        distinct = {r[_OI_MASK]: r for r in reversed(image_rows)}  # the first row of each mask wins
        if len(distinct) < len(image_rows):
            per_image[image_id] = [r for r in image_rows if distinct[r[_OI_MASK]] is r]
            repeats[image_id] = [r for r in image_rows if distinct[r[_OI_MASK]] is not r]
    labels = Counter(r[_OI_LABEL] for image_rows in per_image.values() for r in image_rows)
    categories = {label: {"name": names[label], "count": n} for label, n in labels.items() if label in names}
    listed = storage.list_dir(unit.image_dir) if storage.info(unit.image_dir).type == pafs.FileType.Directory else []
    images = {_stem(storage.basename(e.path)): storage.uri_of(unit.image_dir, e) for e in listed if e.type == pafs.FileType.File}
    loose, zips = _openimages_masks(unit)

    def locate(mask_path: str) -> str | None:
        if mask_path in loose:
            return loose[mask_path]
        archive = zips.get(mask_path[:1].lower())
        return f"zip://{mask_path}::{archive}" if archive else None

    for image_id in sorted(per_image):
        if image_id not in images:
            items.append((image_id, Reject(f"{unit.name}/{image_id}", "read", "missing_image", f"no {image_id}.jpg in {unit.image_dir}")))
            continue
        image_rows = per_image.pop(image_id)
        annotation = json.dumps([dict(zip(OI_COLUMNS, r)) for r in image_rows]).encode()
        items.append((image_id, {"id": image_id, "image": images[image_id], "annotation": annotation, "masks": [locate(r[_OI_MASK]) for r in image_rows]}))
        items += [(image_id, Reject(f"{unit.name}/{image_id}/{r[_OI_MASK]}", "read", "duplicate_annotation", "a csv row repeats an earlier row's mask"))
                  for r in repeats.get(image_id, ())]  # after the record: said, and skipped with it once it is committed
    return json.dumps(categories), items


def plan_groups(unit: Unit, group_size: int, skip: set[str]) -> list[dict]:
    """Reader rows (members as URIs) of a loose SA-1B folder or a panoptic split; one reject row for a
    unit that cannot be read at all (marked complete, so later runs skip it)."""
    if unit.problem:
        items = [(unit.name, Reject(unit.name, "read", "unreadable_name", unit.problem))]
        return list(unit_groups(unit.name, "sa1b", "", items, group_size, skip, immutable=True))
    if unit.kind == "sa1b-dir":
        return list(unit_groups(unit.name, "sa1b", "", _sa1b_dir_items(unit), group_size, skip, immutable=False))
    categories, items = _openimages_items(unit) if unit.kind == "openimages" else _panoptic_items(unit)
    return list(unit_groups(unit.name, unit.kind, categories, items, group_size, skip, immutable=False))
