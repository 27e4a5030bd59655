"""Detection records -> image-text pair records: whole images with an object summary, and object chips.

Detection sources (SARDet-100K, SSDD, HRSID, SAR-Ship-Dataset, SAR-AIRcraft-1.0, FAIR-CSAR) yield one record per
image with boxes and no image-level label. CLIP training needs something to caption, which this module provides
in two complementary ways:

**Whole image** (:func:`whole_image_record`). The record is kept, with a summary of its boxes that the caption
templates (:mod:`lightning_sarclip.data.captions`) turn into text. The summary is plain data, stored as
``record.metadata["objects"]``, a list of dicts, one per (class, grid cell) group::

    [
        {"label": "ship", "count": 3, "position": "upper left", "size": "small"},
        {"label": "ship", "count": 1, "position": "right", "size": "medium"},
        {"label": "aircraft", "count": 2, "position": "center", "size": "small"},
    ]

* ``label`` (str): the class name, exactly as in the boxes.
* ``count`` (int >= 1): number of boxes of that class whose centre lies in that cell.
* ``position`` (str): the cell of the image's 3x3 grid, one of :data:`GRID_POSITIONS`
  (``"upper left", "top", "upper right", "left", "center", "right", "lower left", "bottom", "lower right"``).
  Grouping by cell, not by class alone, keeps scattered objects from being described as "in the center".
* ``size`` (str): the size bin of the group's median box, from the box side relative to the image,
  ``sqrt(box area / image area)``; default bins ``< 0.1`` "small", ``< 0.3`` "medium", otherwise "large"
  (:data:`DEFAULT_SIZE_BINS`). Custom ``size_bins`` names must stay within ``captions.SIZES`` when the
  records go on to :class:`~lightning_sarclip.data.captions.Captioner`, which validates them.

Groups are ordered by the class's total count (descending), then class name, then grid reading order; the
per-class total is the sum of its groups' counts. **An empty list means the image has no targets** ("no
targets" captions; negative chips of SAR-Ship-Dataset and SADD are such images). ``labels`` stays empty.

**Object chips** (:func:`object_chips`). One record per box, cropped with context (a square window of side
``max(min_size, margin * longest side of the box's axis-aligned hull)`` around the box centre, clipped to the
image) through ``ImageRef.window``, with ``labels=[box.label]`` like a classification chip. This matches the
zero-shot evaluation on chip datasets (MSTAR, FUSAR, OpenSARShip). Boxes whose longest side is below ``min_box``
pixels are dropped and counted; so are windows that fall outside the image.

:func:`detection_pairs` applies one or both to a stream of records.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import replace
from statistics import median

from lightning_sarclip.data.io import format_of, read_bytes, read_sar
from lightning_sarclip.data.records import GRID_POSITIONS, Box, ObjectGroup, SARRecord

log = logging.getLogger("lightning_sarclip")

#: ``(upper bound of sqrt(box area / image area), name)``, checked in order.
DEFAULT_SIZE_BINS: tuple[tuple[float, str], ...] = ((0.1, "small"), (0.3, "medium"), (math.inf, "large"))
MODES = ("whole", "chips", "both")


def box_hull(box: Box) -> tuple[float, float, float, float]:
    """Axis-aligned ``(x0, y0, x1, y1)`` enclosing the box (rotated boxes: the rotated rectangle's hull)."""
    if not box.angle:
        return box.x0, box.y0, box.x1, box.y1
    theta = math.radians(box.angle)
    half_w = (abs(box.width * math.cos(theta)) + abs(box.height * math.sin(theta))) / 2
    half_h = (abs(box.width * math.sin(theta)) + abs(box.height * math.cos(theta))) / 2
    cx, cy = box.center
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def record_size(record: SARRecord) -> tuple[int, int]:
    """``(width, height)`` of the image as read: ``record.size``, else the image header (Pillow formats),
    else the decoded image (complex ``.mat`` without a size: costly, so sources record sizes when they can)."""
    if record.size is not None:
        return record.size
    ref = record.image
    if ref.window is None and format_of(ref) == "pillow":
        from PIL import Image

        with Image.open(io.BytesIO(read_bytes(ref))) as image:
            return int(image.size[0]), int(image.size[1])
    image = read_sar(ref)
    return image.width, image.height


def grid_position(x: float, y: float, size: tuple[int, int]) -> str:
    """The 3x3-grid cell of the point ``(x, y)``."""
    width, height = size
    col = min(2, max(0, int(3 * x / width)))
    row = min(2, max(0, int(3 * y / height)))
    return GRID_POSITIONS[3 * row + col]


def _bin(relative_side: float, bins: tuple[tuple[float, str], ...]) -> str:
    for bound, name in bins:
        if relative_side < bound:
            return name
    return bins[-1][1]


def summarize_boxes(
    boxes: list[Box], size: tuple[int, int], size_bins: tuple[tuple[float, str], ...] = DEFAULT_SIZE_BINS
) -> list[ObjectGroup]:
    """The ``metadata["objects"]`` summary described in the module docstring."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for box in boxes:
        position = grid_position(*box.center, size)
        groups[(box.label, position)].append(math.sqrt(max(box.width, 0) * max(box.height, 0) / (size[0] * size[1])))
    totals = Counter(box.label for box in boxes)
    order = sorted(groups, key=lambda k: (-totals[k[0]], k[0], GRID_POSITIONS.index(k[1])))
    return [ObjectGroup(label, len(groups[(label, pos)]), pos, _bin(median(groups[(label, pos)]), size_bins))
            for label, pos in order]


def whole_image_record(
    record: SARRecord, size_bins: tuple[tuple[float, str], ...] = DEFAULT_SIZE_BINS
) -> SARRecord:
    """A copy of ``record`` with ``metadata["objects"]`` (and ``size`` filled when the boxes needed it)."""
    size = record_size(record) if record.boxes else record.size
    objects = summarize_boxes(record.boxes, size, size_bins) if record.boxes else []
    return replace(
        record,
        labels=[],
        boxes=list(record.boxes),
        metadata={**record.metadata, "objects": objects},
        captions=list(record.captions),
        size=size,
    )


def object_chips(
    record: SARRecord,
    margin: float = 1.5,
    min_size: int = 32,
    min_box: float = 8,
    dropped: Counter | None = None,
) -> Iterator[SARRecord]:
    """One chip record per box of ``record`` (see the module docstring); ``dropped`` counts what was left out.

    Chip ids are ``f"{parent source_id}#{i}"`` with ``i`` the box's index in the parent, so they stay stable when
    other boxes are dropped. Metadata: the parent's (minus its ``objects`` summary) plus ``parent_id``,
    ``box_index``, ``box_size_px`` ``(w, h)``, ``difficult`` and, for rotated boxes, ``angle_deg``.
    """
    if margin <= 0 or min_size < 1:
        raise ValueError(f"object_chips: margin must be > 0 and min_size >= 1, got {margin}, {min_size}")
    dropped = dropped if dropped is not None else Counter()
    if not record.boxes:
        return
    width, height = record_size(record)
    offset_x, offset_y = (record.image.window[:2]) if record.image.window else (0, 0)
    parent_meta = {k: v for k, v in record.metadata.items() if k != "objects"}
    for i, box in enumerate(record.boxes):
        if max(box.width, box.height) < min_box:
            dropped["box smaller than min_box"] += 1
            continue
        hx0, hy0, hx1, hy1 = box_hull(box)
        side = max(float(min_size), margin * max(hx1 - hx0, hy1 - hy0))
        cx, cy = box.center
        x0, y0 = math.floor(cx - side / 2), math.floor(cy - side / 2)
        x1, y1 = x0 + math.ceil(side), y0 + math.ceil(side)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if x1 <= x0 or y1 <= y0:
            dropped["chip window outside image"] += 1
            continue
        metadata = {**parent_meta, "parent_id": record.source_id, "box_index": i,
                    "box_size_px": (round(box.width, 2), round(box.height, 2)), "difficult": box.difficult}
        if box.angle is not None:
            metadata["angle_deg"] = box.angle
        window = (x0 + offset_x, y0 + offset_y, x1 + offset_x, y1 + offset_y)
        yield SARRecord(
            source=record.source,
            source_id=f"{record.source_id}#{i}",
            split=record.split,
            image=replace(record.image, window=window),
            labels=[box.label],
            metadata=metadata,
            size=(x1 - x0, y1 - y0),
        )


def detection_pairs(
    records: Iterable[SARRecord],
    mode: str = "whole",
    *,
    margin: float = 1.5,
    min_size: int = 32,
    min_box: float = 8,
    size_bins: tuple[tuple[float, str], ...] = DEFAULT_SIZE_BINS,
    dropped: Counter | None = None,
) -> Iterator[SARRecord]:
    """Whole-image records (``"whole"``), object chips (``"chips"``) or both, per input record, lazily.

    With ``"both"`` each image's whole record comes first, then its chips. ``dropped`` (optional) collects the
    counts of boxes left out of chips; they are also logged when the stream ends.
    """
    if mode not in MODES:
        raise ValueError(f"detection_pairs: mode must be one of {MODES}, got {mode!r}")
    return _pairs(records, mode, margin, min_size, min_box, size_bins, dropped if dropped is not None else Counter())


def _pairs(records, mode, margin, min_size, min_box, size_bins, dropped: Counter) -> Iterator[SARRecord]:
    for record in records:
        if mode in ("whole", "both"):
            yield whole_image_record(record, size_bins)
        if mode in ("chips", "both"):
            yield from object_chips(record, margin, min_size, min_box, dropped)
    if dropped:
        log.info("detection_pairs: chips dropped %s", dict(dropped))
