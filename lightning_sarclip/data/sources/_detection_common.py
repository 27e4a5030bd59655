"""Annotation parsers shared by the detection sources: COCO JSON, PASCAL-VOC XML, YOLO txt and DOTA txt.

Every detection reader turns its files into :class:`~lightning_sarclip.data.records.Box` objects here, so that
the box conventions and the handling of bad annotations are the same for all of them:

* Axis-aligned boxes are ``Box(label, x0, y0, x1, y1)`` in pixels with ``x1``/``y1`` exclusive. VOC corner
  values are taken as given (no 1-based shift): the tools that wrote these datasets disagree on the VOC
  convention and one pixel does not matter for captions or chips.
* Rotated boxes keep their own frame: ``x0..x1`` / ``y0..y1`` are ``cx -+ w/2`` / ``cy -+ h/2`` of the box
  *before* rotation and ``angle`` is the rotation in degrees, from the image +x axis towards +y. The sign
  convention of the source is kept as is; the axis-aligned hull used for chips does not depend on it.
* Out-of-image boxes: axis-aligned boxes are clipped to the image when its size is known and counted
  (``"box clipped to image"``); a box left empty by clipping, or a zero-area box, is dropped and counted.
  A rotated box is not clipped; it is dropped and counted only when its centre lies outside the image.
  Negative widths/heights (``xmax < xmin``) are malformed and raise :class:`SourceFormatError`.
* Paths read from annotation files must stay inside the dataset root (no ``..``, not absolute).
* Unknown class names/ids raise :class:`SourceFormatError` naming the file and the id.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lightning_sarclip.data.io import SARReadError
from lightning_sarclip.data.records import Box
from lightning_sarclip.data.sources.base import SourceFormatError

#: ``skip(reason, file)``: a source's counter of known, non-fatal problems (``SARSource.skip``).
SkipFn = Callable[[str, Any], None]


# Paths and files.
# ----------------------------------------------------------------------------------------------------------


def inside(root: Path, relative: str, file: str | Path, field_name: str) -> Path:
    """``root / relative`` for a path read from an annotation file, refusing absolute paths and ``..``."""
    text = str(relative).replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts or (len(text) > 1 and text[1] == ":"):
        raise SourceFormatError(file, field_name, "a path relative to the dataset root without '..'", relative)
    return root.joinpath(*path.parts)


def require_image(image: Path, annotation: str | Path, field_name: str = "image") -> Path:
    """The image an annotation belongs to must exist: a missing one is an error naming the annotation."""
    if not image.is_file():
        raise SourceFormatError(annotation, field_name, "an existing image file", str(image))
    return image


def find_root(root: Path, marker: str, wrappers: Iterable[str]) -> Path | None:
    """``root`` when it holds ``marker``, else the first ``root/<wrapper>`` that does (the archive's top folder)."""
    for candidate in (root, *(root / name for name in wrappers)):
        if (candidate / marker).exists():
            return candidate
    return None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header only (Pillow does not decode pixels on open)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.size[0]), int(image.size[1])
    except Exception as err:  # noqa: BLE001 - any header failure is reported with the file's name
        raise SARReadError(f"{path}: cannot read the image header ({type(err).__name__}: {err})") from err


def read_list(path: Path) -> list[str]:
    """Ids of an ``ImageSets``-style split file: one per line, blank lines ignored."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def integer_id(value: Any, file: str | Path, field_name: str) -> int:
    """A COCO id: an integer, or text/float holding one (``"7"``, ``7.0``); anything else names file and field."""
    if isinstance(value, bool):
        raise SourceFormatError(file, field_name, "an integer id", value)
    if isinstance(value, int):
        return value
    try:
        number_value = float(str(value).strip())
    except (TypeError, ValueError):
        raise SourceFormatError(file, field_name, "an integer id", value) from None
    if not number_value.is_integer():
        raise SourceFormatError(file, field_name, "an integer id", value)
    return int(number_value)


def number(text: Any, file: str | Path, field_name: str) -> float:
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        raise SourceFormatError(file, field_name, "a number", text) from None
    if not math.isfinite(value):
        raise SourceFormatError(file, field_name, "a finite number", text)
    return value


# Boxes.
# ----------------------------------------------------------------------------------------------------------


def axis_box(
    label: str,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    *,
    size: tuple[int, int] | None,
    file: str | Path,
    skip: SkipFn,
    difficult: bool = False,
) -> Box | None:
    """An axis-aligned box, clipped to the image (counted); ``None`` (counted) when nothing is left."""
    if x1 < x0 or y1 < y0:
        raise SourceFormatError(file, "box", "x0 <= x1 and y0 <= y1", (x0, y0, x1, y1))
    if size is not None:
        w, h = size
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            skip("box clipped to image", file)
        x0, y0, x1, y1 = cx0, cy0, cx1, cy1
    if x1 <= x0 or y1 <= y0:
        skip("empty box dropped", file)
        return None
    return Box(label, float(x0), float(y0), float(x1), float(y1), difficult=difficult)


def rotated_box(
    label: str,
    cx: float,
    cy: float,
    w: float,
    h: float,
    angle: float,
    *,
    size: tuple[int, int] | None,
    file: str | Path,
    skip: SkipFn,
    difficult: bool = False,
) -> Box | None:
    """A rotated box in its own frame (see the module docstring); dropped (counted) when empty or off-image."""
    if w < 0 or h < 0:
        raise SourceFormatError(file, "rotated box", "non-negative width and height", (w, h))
    if w == 0 or h == 0:
        skip("empty box dropped", file)
        return None
    if size is not None and not (0 <= cx <= size[0] and 0 <= cy <= size[1]):
        skip("rotated box centre outside image", file)
        return None
    return Box(label, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, angle=float(angle), difficult=difficult)


def quad_to_rotated(points: list[tuple[float, float]]) -> tuple[float, float, float, float, float]:
    """``(cx, cy, w, h, angle_deg)`` of the quadrilateral ``p1..p4`` (DOTA order): width along p1->p2,
    height along p2->p3, angle of p1->p2 from +x towards +y."""
    (x1, y1), (x2, y2), (x3, y3), _ = points
    cx = sum(p[0] for p in points) / 4
    cy = sum(p[1] for p in points) / 4
    w = math.hypot(x2 - x1, y2 - y1)
    h = math.hypot(x3 - x2, y3 - y2)
    angle = math.degrees(math.atan2(y2 - y1, x2 - x1))
    return cx, cy, w, h, angle


# COCO JSON (SARDet-100K, HRSID).
# ----------------------------------------------------------------------------------------------------------

_COCO_IMAGE_KEYS = {"id", "file_name", "width", "height"}


@dataclass
class CocoImage:
    """One ``images`` entry with its (kept) boxes and any extra scalar fields the file carries."""

    id: int
    file_name: str
    width: int | None
    height: int | None
    boxes: list[Box] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int] | None:
        return (self.width, self.height) if self.width and self.height else None


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceFormatError(path, "json", "a well-formed JSON file", str(err)) from None


def parse_coco(path: Path, classnames: Iterable[str], skip: SkipFn) -> list[CocoImage]:
    """Images of a COCO detection file, in file order, with their boxes.

    Category ids are mapped through the file's own ``categories`` (0-based in SARDet-100K, [U] 1 in HRSID), and
    every category name must be one of ``classnames``. Annotations flagged ``ignore`` or ``iscrowd`` are left
    out (counted), as mmdetection leaves them out of the ground truth. ``bbox`` is ``[x, y, w, h]``; when it is
    missing or empty the polygon ``segmentation`` gives the box.
    """
    data = load_json(path)
    if not isinstance(data, dict):
        raise SourceFormatError(path, "json", "a COCO object with images/annotations/categories", type(data).__name__)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SourceFormatError(path, key, "a list")
    known = set(classnames)
    names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            raise SourceFormatError(path, f"categories[{i}]", "an object with 'id' and a 'name' text", cat)
        if cat["name"] not in known:
            raise SourceFormatError(path, f"categories[{i}].name", f"one of {sorted(known)}", cat["name"])
        names[integer_id(cat["id"], path, f"categories[{i}].id")] = str(cat["name"])
    images = _coco_images(path, data["images"])
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise SourceFormatError(path, where, "an object", ann)
        if "image_id" not in ann:
            raise SourceFormatError(path, f"{where}.image_id", "the id of an entry in 'images'")
        image = images.get(integer_id(ann["image_id"], path, f"{where}.image_id"))
        if image is None:
            raise SourceFormatError(path, f"{where}.image_id", "the id of an entry in 'images'", ann.get("image_id"))
        category = ann.get("category_id")
        if category is None or integer_id(category, path, f"{where}.category_id") not in names:
            raise SourceFormatError(path, f"{where}.category_id", f"one of the category ids {sorted(names)}", category)
        if ann.get("ignore") or ann.get("iscrowd"):
            skip("ignored annotation left out", path)
            continue
        x0, y0, x1, y1 = _coco_extent(ann, path, where)
        label = names[integer_id(category, path, f"{where}.category_id")]
        box = axis_box(label, x0, y0, x1, y1, size=image.size, file=path, skip=skip)
        if box is not None:
            image.boxes.append(box)
    return list(images.values())


def _coco_images(path: Path, entries: list) -> dict[int, CocoImage]:
    """``id -> image`` of the ``images`` list. Ids and file names must be unique: one file under two ids would give
    two records that each hold part of its boxes (no released dataset is known to do this, so it is refused)."""
    images: dict[int, CocoImage] = {}
    by_name: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or not entry.get("file_name"):
            raise SourceFormatError(path, f"images[{i}]", "an object with 'id' and 'file_name'", entry)
        width = int(number(entry["width"], path, f"images[{i}].width")) if "width" in entry else None
        height = int(number(entry["height"], path, f"images[{i}].height")) if "height" in entry else None
        extra = {k: v for k, v in entry.items() if k not in _COCO_IMAGE_KEYS and isinstance(v, (str, int, float))}
        image = CocoImage(integer_id(entry["id"], path, f"images[{i}].id"), str(entry["file_name"]), width, height,
                          extra=extra)
        if image.id in images:
            raise SourceFormatError(path, f"images[{i}].id", "unique image ids", image.id)
        name = image.file_name.replace("\\", "/")
        if name in by_name:
            raise SourceFormatError(path, f"images[{i}].file_name",
                                    f"each file_name once (also the file of image id {by_name[name]})",
                                    f"{image.file_name!r} under image ids {by_name[name]} and {image.id}")
        by_name[name] = image.id
        images[image.id] = image
    return images


def _coco_extent(ann: dict, path: Path, where: str) -> tuple[float, float, float, float]:
    bbox = ann.get("bbox")
    if bbox:
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise SourceFormatError(path, f"{where}.bbox", "[x, y, w, h]", bbox)
        x, y, w, h = (number(v, path, f"{where}.bbox") for v in bbox)
        if w < 0 or h < 0:
            raise SourceFormatError(path, f"{where}.bbox", "non-negative w and h", bbox)
        return x, y, x + w, y + h
    polygons = ann.get("segmentation")
    if isinstance(polygons, list) and polygons and all(isinstance(p, list) and len(p) >= 6 for p in polygons):
        xs = [number(v, path, f"{where}.segmentation") for p in polygons for v in p[0::2]]
        ys = [number(v, path, f"{where}.segmentation") for p in polygons for v in p[1::2]]
        return min(xs), min(ys), max(xs), max(ys)
    raise SourceFormatError(path, f"{where}.bbox", "[x, y, w, h] or a polygon segmentation", bbox)


# PASCAL-VOC XML (SSDD, SAR-AIRcraft-1.0, SAR-Ship-Dataset's older release).
# ----------------------------------------------------------------------------------------------------------


@dataclass
class VocAnnotation:
    """The fields of a VOC file that the readers use."""

    file: Path
    filename: str | None
    size: tuple[int, int] | None
    objects: list[ET.Element]


def _child(element: ET.Element, tag: str) -> ET.Element | None:
    """Case-insensitive child lookup (``<difficult>`` and ``<Difficult>`` both occur)."""
    for child in element:
        if child.tag.lower() == tag.lower():
            return child
    return None


def _text(element: ET.Element, tag: str) -> str | None:
    child = _child(element, tag)
    return None if child is None or child.text is None else child.text.strip()


def parse_voc(path: Path) -> VocAnnotation:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise SourceFormatError(path, "xml", "well-formed XML", str(err)) from None
    if root.tag != "annotation":
        raise SourceFormatError(path, "root element", "<annotation>", root.tag)
    size = None
    size_el = _child(root, "size")
    if size_el is not None and _text(size_el, "width") and _text(size_el, "height"):
        w = int(number(_text(size_el, "width"), path, "size/width"))
        h = int(number(_text(size_el, "height"), path, "size/height"))
        size = (w, h) if w > 0 and h > 0 else None
    objects = [child for child in root if child.tag == "object"]
    return VocAnnotation(path, _text(root, "filename"), size, objects)


def voc_boxes(
    ann: VocAnnotation,
    classnames: Iterable[str],
    skip: SkipFn,
    *,
    rotated: bool = False,
    size: tuple[int, int] | None = None,
) -> list[Box]:
    """Boxes of a VOC file: ``<bndbox>`` corners, or with ``rotated`` the SSDD ``<rotated_bndbox>``
    (``rotated_bbox_cx/cy/w/h/theta``, degrees)."""
    known = set(classnames)
    size = size or ann.size
    boxes: list[Box] = []
    for i, obj in enumerate(ann.objects):
        name = _text(obj, "name")
        if name not in known:
            raise SourceFormatError(ann.file, f"object[{i}]/name", f"one of {sorted(known)}", name)
        difficult = _text(obj, "difficult") not in (None, "", "0")
        tag = "rotated_bndbox" if rotated else "bndbox"
        node = _child(obj, tag)
        if node is None:
            raise SourceFormatError(ann.file, f"object[{i}]/{tag}", f"a <{tag}> element")

        def value(key: str, node: ET.Element = node, where: str = f"object[{i}]/{tag}") -> float:
            return number(_text(node, key), ann.file, f"{where}/{key}")

        if rotated:
            box = rotated_box(
                name,
                value("rotated_bbox_cx"),
                value("rotated_bbox_cy"),
                value("rotated_bbox_w"),
                value("rotated_bbox_h"),
                value("rotated_bbox_theta"),
                size=size,
                file=ann.file,
                skip=skip,
                difficult=difficult,
            )
        else:
            box = axis_box(
                name, value("xmin"), value("ymin"), value("xmax"), value("ymax"),
                size=size, file=ann.file, skip=skip, difficult=difficult,
            )  # fmt: skip
        if box is not None:
            boxes.append(box)
    return boxes


# YOLO txt (SAR-Ship-Dataset, SADD).
# ----------------------------------------------------------------------------------------------------------


def parse_yolo(path: Path, size: tuple[int, int], names: dict[int, str], skip: SkipFn) -> list[Box]:
    """Lines ``class cx cy w h`` normalised to the image; converted to pixels with ``size = (W, H)``."""
    width, height = size
    boxes: list[Box] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"line {n}"
        if len(tokens) != 5:
            raise SourceFormatError(path, where, "5 values 'class cx cy w h'", line)
        cls_value = number(tokens[0], path, f"{where} class")
        if cls_value != int(cls_value) or int(cls_value) not in names:
            raise SourceFormatError(path, f"{where} class", f"one of the class ids {sorted(names)}", tokens[0])
        cx, cy, w, h = (number(t, path, where) for t in tokens[1:])
        if w < 0 or h < 0:
            raise SourceFormatError(path, where, "non-negative normalised w and h", line)
        x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
        y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
        box = axis_box(names[int(cls_value)], x0, y0, x1, y1, size=size, file=path, skip=skip)
        if box is not None:
            boxes.append(box)
    return boxes


# DOTA txt (FAIR-CSAR).
# ----------------------------------------------------------------------------------------------------------


def parse_dota(path: Path, classnames: Iterable[str], skip: SkipFn, size: tuple[int, int] | None = None) -> list[Box]:
    """Lines ``x1 y1 x2 y2 x3 y3 x4 y4 class [difficulty]``; header lines (``imagesize``, ``imagesource:``,
    ``gsd:``) are recognised by a non-numeric first token and skipped."""
    known = set(classnames)
    boxes: list[Box] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        tokens = line.split()
        if not tokens or not _is_number(tokens[0]):
            continue
        where = f"line {n}"
        if len(tokens) not in (9, 10):
            raise SourceFormatError(path, where, "'x1 y1 x2 y2 x3 y3 x4 y4 class [difficulty]'", line)
        coords = [number(t, path, where) for t in tokens[:8]]
        label = tokens[8]
        if label not in known:
            raise SourceFormatError(path, f"{where} class", f"one of {sorted(known)}", label)
        difficult = len(tokens) == 10 and number(tokens[9], path, f"{where} difficulty") != 0
        points = list(zip(coords[0::2], coords[1::2], strict=True))
        cx, cy, w, h, angle = quad_to_rotated(points)
        box = rotated_box(label, cx, cy, w, h, angle, size=size, file=path, skip=skip, difficult=difficult)
        if box is not None:
            boxes.append(box)
    return boxes


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
