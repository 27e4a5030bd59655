"""Detection records -> pairs: the whole-image object summary, object chips and the detection_pairs stream."""

from __future__ import annotations

from collections import Counter

import pytest

from lightning_sarclip.data.detection import (
    GRID_POSITIONS,
    box_hull,
    detection_pairs,
    grid_position,
    object_chips,
    whole_image_record,
)
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.records import Box, ImageRef, ObjectGroup, SARRecord
from lightning_sarclip.data.sources import get_source
from tests.conftest import FIXTURES

DATA = FIXTURES


def _record(boxes: list[Box], size: tuple[int, int] | None = (96, 96), path: str = "scene.png") -> SARRecord:
    return SARRecord("demo", "scenes/a.png", "train", ImageRef(path), boxes=boxes,
                     metadata={"sensor": "Gaofen-3"}, size=size)


def test_grid_positions() -> None:
    size = (90, 60)
    points = [(5, 5), (45, 5), (85, 5), (5, 30), (45, 30), (85, 30), (5, 55), (45, 55), (85, 55)]
    assert [grid_position(x, y, size) for x, y in points] == list(GRID_POSITIONS)
    assert grid_position(90, 60, size) == "lower right" and grid_position(-1, -1, size) == "upper left"


def test_whole_image_summary() -> None:
    boxes = [
        Box("ship", 2, 2, 6, 6), Box("ship", 20, 10, 24, 14),        # both upper left, 4/96 -> small
        Box("ship", 70, 40, 90, 56),                                  # right, 20x16 -> medium
        Box("aircraft", 30, 30, 66, 66),                              # center, 36/96 -> large
    ]
    record = _record(boxes)
    out = whole_image_record(record)
    assert all(isinstance(g, ObjectGroup) for g in out.metadata["objects"])  # a typed value, not free dicts
    assert [g.as_dict() for g in out.metadata["objects"]] == [
        {"label": "ship", "count": 2, "position": "upper left", "size": "small"},
        {"label": "ship", "count": 1, "position": "right", "size": "medium"},
        {"label": "aircraft", "count": 1, "position": "center", "size": "large"},
    ]
    assert out.labels == [] and out.boxes == boxes and out.metadata["sensor"] == "Gaofen-3"
    assert "objects" not in record.metadata  # the input record is not modified
    custom = whole_image_record(record, size_bins=((0.5, "any"),))
    assert {g.size for g in custom.metadata["objects"]} == {"any"}


def test_whole_image_without_targets() -> None:
    out = whole_image_record(_record([], size=None))
    assert out.metadata["objects"] == [] and out.size is None


def test_whole_image_size_from_header_when_unknown() -> None:
    path = DATA / "sar_aircraft" / "SAR-AIRcraft-1.0" / "JPEGImages" / "1.jpg"  # 32x32
    out = whole_image_record(_record([Box("A220", 28, 28, 30, 30)], size=None, path=str(path)))
    assert out.size == (32, 32) and out.metadata["objects"][0].position == "lower right"


def test_rotated_hull() -> None:
    hull = box_hull(Box("ship", 5, 9, 15, 11, angle=90.0))  # 10x2 box stood upright around (10, 10)
    assert hull == pytest.approx((9, 5, 11, 15))
    assert box_hull(Box("ship", 1, 2, 3, 4)) == (1, 2, 3, 4)


def test_object_chip_windows_ids_and_metadata() -> None:
    boxes = [
        Box("ship", 8, 8, 18, 18),                       # near the corner: 32 px window clipped at 0
        Box("ship", 30, 30, 50, 40),                     # 20 px -> 1.5*20 = 30 < 32: 32 px window
        Box("aircraft", 40, 40, 80, 60),                 # 40 px -> 60 px window
        Box("ship", 60, 10, 65, 12),                     # longest side 5 < 8: dropped
        Box("ship", 70, 70, 80, 72, angle=90.0),         # rotated: hull 2x10
    ]
    dropped: Counter = Counter()
    chips = list(object_chips(_record(boxes), dropped=dropped))
    assert [c.source_id for c in chips] == ["scenes/a.png#0", "scenes/a.png#1", "scenes/a.png#2", "scenes/a.png#4"]
    assert [c.image.window for c in chips] == [(0, 0, 29, 29), (24, 19, 56, 51), (30, 20, 90, 80), (59, 55, 91, 87)]
    assert [c.size for c in chips] == [(29, 29), (32, 32), (60, 60), (32, 32)]
    assert [c.labels for c in chips] == [["ship"], ["ship"], ["aircraft"], ["ship"]]
    assert dropped == {"box smaller than min_box": 1}
    chip = chips[1]
    assert chip.metadata == {"sensor": "Gaofen-3", "parent_id": "scenes/a.png", "box_index": 1,
                             "box_size_px": (20, 10), "difficult": False}
    assert chips[3].metadata["angle_deg"] == 90.0 and chip.boxes == [] and chip.split == "train"
    assert chip.image.path == "scene.png"


def test_object_chip_options() -> None:
    box = Box("ship", 40, 40, 60, 60)
    (wide,) = object_chips(_record([box]), margin=3.0, min_size=8)
    assert wide.image.window == (20, 20, 80, 80)
    (tight,) = object_chips(_record([box]), margin=1.0, min_size=8)
    assert tight.image.window == (40, 40, 60, 60)
    assert list(object_chips(_record([box]), min_box=25)) == []
    with pytest.raises(ValueError, match="margin"):
        list(object_chips(_record([box]), margin=0))


def test_chip_windows_read_the_right_pixels() -> None:
    source = get_source("sar_aircraft")(DATA / "sar_aircraft", "train")
    parent = next(iter(source.records()))
    full = read_sar(parent.image).data
    for chip in object_chips(parent, min_size=8):
        x0, y0, x1, y1 = chip.image.window
        data = read_sar(chip.image).data
        assert (data == full[y0:y1, x0:x1]).all() and (data.shape[1], data.shape[0]) == chip.size


def test_detection_pairs_modes() -> None:
    records = list(get_source("sardet100k")(DATA / "sardet100k", "train").records())
    whole = list(detection_pairs(records))
    assert [r.source_id for r in whole] == [r.source_id for r in records]
    assert whole[2].metadata["objects"] == []  # the negative bmp
    chips = list(detection_pairs(records, "chips", min_box=0))
    assert len(chips) == sum(len(r.boxes) for r in records) == 4
    both = list(detection_pairs(records, "both", min_box=0))
    assert [r.source_id for r in both] == [
        "JPEGImages/train/0000001.jpg", "JPEGImages/train/0000001.jpg#0", "JPEGImages/train/0000001.jpg#1",
        "JPEGImages/train/0000002.png", "JPEGImages/train/0000002.png#0", "JPEGImages/train/0000002.png#1",
        "JPEGImages/train/0000003.bmp",
    ]
    dropped: Counter = Counter()
    assert len(list(detection_pairs(records, "chips", min_box=8, dropped=dropped))) == 3
    assert dropped == {"box smaller than min_box": 1}  # the clipped 6x6 car goes
    with pytest.raises(ValueError, match="mode"):
        detection_pairs(records, "boxes")  # refused before iterating


def test_detection_pairs_on_rotated_source() -> None:
    records = get_source("fair_csar")(DATA / "fair_csar", "train").records()
    chips = list(detection_pairs(records, "chips", min_size=4, min_box=0))
    assert [c.labels for c in chips] == [["Boeing737"], ["Oil_Tanker"]]
    assert all(c.image.format == "mat" and c.image.option("mat_key") == "data" for c in chips)
    assert read_sar(chips[1].image).data.shape[:2] == (chips[1].size[1], chips[1].size[0])


def test_object_groups_are_checked_and_round_trip_through_json() -> None:
    import json

    from lightning_sarclip.data.records import metadata_json_default

    group = ObjectGroup("ship", 2, "upper left", "small")
    assert ObjectGroup.parse(json.loads(json.dumps(group, default=metadata_json_default)), "x") == group
    with pytest.raises(ValueError, match=r"rec: 'count' must be an integer >= 1, got 0"):
        ObjectGroup.parse({"label": "ship", "count": 0, "position": "top"}, "rec")
    with pytest.raises(ValueError, match="'position' must be one of"):
        ObjectGroup("ship", 1, "middle")
