"""Radiologists' boxes from Pascal VOC XML or COCO JSON, scaled to the image actually read.

Annotation files come from strangers, so they are parsed without entities or DTDs, refused
above a size cap, and every box is checked against the frame it was drawn in: a box outside
its image is an error that names the file, not a silently empty mask.

Coordinates are continuous pixel edges (a pixel i covers [i, i+1)): VOC's 1-based inclusive
``xmin..xmax`` becomes ``[xmin - 1, xmax]``; COCO's ``[x, y, w, h]`` is ``[x, x + w]``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from tbclf.data.records import Record
from tbclf.errors import ConfigError, DataError

MAX_XML_BYTES = 1_000_000
MAX_JSON_BYTES = 200_000_000
# Annotation tools round: a box may overhang its frame by this many pixels before it is refused
# (the overhang is clipped).
EDGE_TOLERANCE = 1.0
UNMATCHED = ("error", "skip")


@dataclass(frozen=True)
class Box:
    """One box in continuous pixel coordinates of the frame it is given in."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


@dataclass(frozen=True)
class BoxSet:
    """The boxes of one image as annotated: in a ``width`` x ``height`` frame."""

    key: str
    source: str
    width: int
    height: int
    boxes: tuple[Box, ...]

    def scaled_to(self, width: int, height: int) -> tuple[Box, ...]:
        """The boxes in the frame of the image read (e.g. TBX11K's 512x512 re-saves of
        1756x2022 originals: x scaled by 512/1756, y by 512/2022)."""
        sx, sy = width / self.width, height / self.height
        return tuple(Box(b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy, b.label) for b in self.boxes)


def _check_box(box: Box, width: int, height: int, where: str) -> Box:
    """Refuse empty, non-finite or outside boxes; clip a rounding overhang."""
    values = (box.x0, box.y0, box.x1, box.y1)
    text = f"({box.x0:g}, {box.y0:g})-({box.x1:g}, {box.y1:g})"
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{where}: box {text} has a non-finite coordinate; fix the annotation.")
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        raise DataError(f"{where}: box {text} is empty (max <= min); fix the annotation.")
    tol = EDGE_TOLERANCE
    if box.x0 < -tol or box.y0 < -tol or box.x1 > width + tol or box.y1 > height + tol:
        raise DataError(
            f"{where}: box {text} lies outside its {width}x{height} image; check that the "
            "annotation belongs to this image and that its size is the original image's."
        )
    return Box(
        max(0.0, box.x0), max(0.0, box.y0), min(width, box.x1), min(height, box.y1), box.label
    )


def _read_capped(path: Path, cap: int, kind: str) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise DataError(f"{kind} {path} is not a regular file.")
        if size > cap:
            raise DataError(
                f"{kind} {path} is {size} bytes, more than the {cap}-byte limit for one "
                "annotation file; is it really an annotation?"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{kind} {path} does not exist.") from None
    except OSError as exc:
        raise DataError(f"{kind} {path} cannot be read: {exc.strerror or exc}") from None


def _image_key(name: str) -> str:
    """The stem of a file name given in an annotation, whatever its separators."""
    path = PureWindowsPath(name) if "\\" in name else PurePosixPath(name)
    return Path(path.name).stem if "." in path.name else path.name


# --------------------------------------------------------------------------- Pascal VOC


def _xml_number(node: ET.Element, tag: str, where: str) -> float:
    child = node.find(tag)
    text = None if child is None else (child.text or "").strip()
    if not text:
        raise DataError(f"{where}: <{tag}> is missing; fix the annotation.")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is {text!r}, not a number.") from None


def read_voc(path: str | Path) -> BoxSet:
    """One Pascal VOC file: its image (``<filename>``, else the file's stem), ``<size>``, boxes."""
    path = Path(path)
    data = _read_capped(path, MAX_XML_BYTES, "VOC file")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DataError(f"VOC file {path} declares a DTD or entities; tbclf refuses those.")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"VOC file {path} is not valid XML: {exc}") from None
    if root.tag != "annotation":
        raise DataError(f"VOC file {path}: the root element is <{root.tag}>, not <annotation>.")
    name = (root.findtext("filename") or "").strip()
    key = _image_key(name) if name else path.stem
    size = root.find("size")
    if size is None:
        raise DataError(
            f"VOC file {path} has no <size>: its boxes cannot be scaled to the image read. "
            "Add <size><width>..</width><height>..</height></size> of the annotated image."
        )
    width = _xml_number(size, "width", f"VOC file {path}")
    height = _xml_number(size, "height", f"VOC file {path}")
    if not (width >= 1 and height >= 1 and width.is_integer() and height.is_integer()):
        raise DataError(f"VOC file {path}: <size> {width:g}x{height:g} is not an image size.")
    boxes = []
    for k, obj in enumerate(root.iter("object"), start=1):
        where = f"VOC file {path}, object {k}"
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{where}: no <bndbox>; fix the annotation.")
        x0, y0, x1, y1 = (_xml_number(bnd, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        label = (obj.findtext("name") or "").strip()
        box = Box(x0 - 1.0, y0 - 1.0, x1, y1, label)  # 1-based inclusive -> pixel edges
        boxes.append(_check_box(box, int(width), int(height), where))
    return BoxSet(key, str(path), int(width), int(height), tuple(boxes))


# --------------------------------------------------------------------------- COCO JSON


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: {key!r} is missing or not a {getattr(kind, '__name__', kind)}.")
    return value


def read_coco(path: str | Path) -> dict[str, BoxSet]:
    """A COCO detection file (TBX11K's ``annotations/json``): image key -> its boxes.

    Images listed without annotations get an empty BoxSet (reported as "no boxes").
    """
    path = Path(path)
    data = _read_capped(path, MAX_JSON_BYTES, "COCO file")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"COCO file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"COCO file {path} has no 'images' list; is it a COCO annotation file?")
    categories = {}
    for cat in doc.get("categories") or []:
        if isinstance(cat, Mapping) and "id" in cat:
            categories[cat["id"]] = str(cat.get("name", cat["id"]))
    images: dict[Any, tuple[str, int, int]] = {}
    keys: dict[str, str] = {}
    for i, img in enumerate(doc["images"]):
        where = f"COCO file {path}, images[{i}]"
        name = _field(img, "file_name", str, where)
        width = _field(img, "width", int, where)
        height = _field(img, "height", int, where)
        if width < 1 or height < 1:
            raise DataError(f"{where}: size {width}x{height} is not an image size.")
        key = _image_key(name)
        if key in keys:
            raise DataError(
                f"COCO file {path}: two images have the name {key!r} ({keys[key]} and {name}); "
                "boxes are matched to images by file name, so rename one."
            )
        keys[key] = name
        images[img.get("id")] = (key, width, height)
    boxes: dict[str, list[Box]] = {key: [] for key, _, _ in images.values()}
    for i, ann in enumerate(doc.get("annotations") or []):
        where = f"COCO file {path}, annotations[{i}]"
        image_id = ann.get("image_id") if isinstance(ann, Mapping) else None
        if image_id not in images:
            raise DataError(f"{where}: image_id {image_id!r} is not in the file's 'images'.")
        key, width, height = images[image_id]
        bbox = _field(ann, "bbox", list, where)
        if len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
        ):
            raise DataError(f"{where}: 'bbox' must be [x, y, width, height] numbers.")
        x, y, w, h = (float(v) for v in bbox)
        label = categories.get(ann.get("category_id"), str(ann.get("category_id", "")))
        boxes[key].append(_check_box(Box(x, y, x + w, y + h, label), width, height, where))
    return {
        key: BoxSet(key, str(path), width, height, tuple(boxes[key]))
        for key, width, height in images.values()
    }


# --------------------------------------------------------------------------- either


def read_boxes(path: str | Path) -> dict[str, BoxSet]:
    """Image key (file stem) -> boxes, from a folder of VOC ``.xml`` files or a COCO ``.json``."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return read_coco(path)
        if path.suffix.lower() == ".xml":
            found = read_voc(path)
            return {found.key: found}
        raise DataError(f"--boxes {path}: not a folder of VOC .xml files or a COCO .json file.")
    if not path.is_dir():
        raise DataError(f"--boxes {path} does not exist; give a folder of VOC .xml or a .json.")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        jsons = sorted(p.name for p in path.iterdir() if p.suffix.lower() == ".json")
        hint = f" It holds {', '.join(jsons[:3])}: pass that file instead." if jsons else ""
        raise DataError(f"--boxes {path} holds no Pascal VOC .xml files.{hint}")
    out: dict[str, BoxSet] = {}
    for file in files:
        found = read_voc(file)
        if found.key in out:
            raise DataError(
                f"{file} and {out[found.key].source} both annotate image {found.key!r}; "
                "keep one annotation file per image."
            )
        out[found.key] = found
    return out


@dataclass(frozen=True)
class Matched:
    """Images paired with their boxes, and what could not be paired."""

    pairs: list[tuple[Record, BoxSet]]
    without_boxes: list[str]
    without_image: list[str]


def _listing(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def match_boxes(
    records: Iterable[Record], boxes: Mapping[str, BoxSet], unmatched: str = "error"
) -> Matched:
    """Pair images with boxes by file stem. An image without boxes (no file, or a file with no
    object) and a box file without its image are errors unless ``unmatched="skip"``."""
    if unmatched not in UNMATCHED:
        raise ConfigError(f"--unmatched={unmatched!r} is not one of {UNMATCHED}.")
    records = list(records)
    stems: dict[str, Record] = {}
    for rec in records:
        stem = Path(rec.path).stem
        if stem in stems:
            raise DataError(
                f"Images {stems[stem].path} and {rec.path} share the file name {stem!r}; "
                "boxes are matched by file name, so rename one."
            )
        stems[stem] = rec
    pairs = [(rec, boxes[s]) for s, rec in stems.items() if s in boxes and boxes[s].boxes]
    without_boxes = sorted(s for s in stems if s not in boxes or not boxes[s].boxes)
    without_image = sorted(k for k in boxes if k not in stems)
    if unmatched == "error":
        if without_boxes:
            raise DataError(
                f"{len(without_boxes)} image(s) have no boxes: {_listing(without_boxes)}. Every "
                "image needs at least one box to score its saliency; add the annotations, "
                "remove those images, or pass --unmatched skip to leave them out."
            )
        if without_image:
            where = boxes[without_image[0]].source
            raise DataError(
                f"{len(without_image)} annotated image(s) are not in the image folder: "
                f"{_listing(without_image)} (e.g. in {where}). Check --images, or pass "
                "--unmatched skip to leave them out."
            )
    if not pairs:
        raise DataError("No image has boxes: check that --images and --boxes belong together.")
    return Matched(pairs, without_boxes, without_image)


def box_mask(boxes: Sequence[Box], height: int, width: int) -> np.ndarray:
    """(height, width) bool: the pixels whose centre lies inside any box."""
    ys = np.arange(height) + 0.5
    xs = np.arange(width) + 0.5
    mask = np.zeros((height, width), dtype=bool)
    for b in boxes:
        rows = (ys >= b.y0) & (ys <= b.y1)
        cols = (xs >= b.x0) & (xs <= b.x1)
        mask |= rows[:, None] & cols[None, :]
    return mask
