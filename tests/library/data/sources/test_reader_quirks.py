"""Small hostile-input quirks (issue #11): COCO ids that are not integers and file names listed twice, a CSV
with an unbalanced quote, and an empty MSTAR class folder. Each must fail naming the file and what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.sources._detection_common import integer_id, parse_coco
from tests.conftest import FIXTURES

SARDET = FIXTURES / "sardet100k" / "SARDet_100K"


@pytest.fixture
def sardet(tmp_path: Path) -> Path:
    shutil.copytree(SARDET, tmp_path / "SARDet_100K")
    return tmp_path / "SARDet_100K"


def _rewrite(path: Path, change) -> None:
    data: dict[str, Any] = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _list(root: Path, source: str = "sardet100k", split: str = "train", **options: Any) -> list:
    return list(get_source(source)(root, split, **options).records())


# ------------------------------------------------------------------------------------------------------ COCO
def test_integer_id_accepts_integers_in_any_spelling():
    assert integer_id(7, "a.json", "id") == 7 and integer_id("7", "a.json", "id") == 7
    assert integer_id(7.0, "a.json", "id") == 7 and integer_id(" 12 ", "a.json", "id") == 12


@pytest.mark.parametrize("value", ["x", 1.5, None, True, [1], "inf", "nan"])
def test_integer_id_refuses_the_rest(value: Any):
    with pytest.raises(SourceFormatError, match=r"a\.json: field 'images\[0\]\.id': expected an integer id"):
        integer_id(value, "a.json", "images[0].id")


@pytest.mark.parametrize(("where", "field"), [
    (lambda d: d["annotations"][0].__setitem__("image_id", "x"), r"annotations\[0\]\.image_id"),
    (lambda d: d["annotations"][1].__setitem__("category_id", "ship"), r"annotations\[1\]\.category_id"),
    (lambda d: d["annotations"][1].__setitem__("category_id", 0.5), r"annotations\[1\]\.category_id"),
    (lambda d: d["images"][2].__setitem__("id", "three"), r"images\[2\]\.id"),
    (lambda d: d["categories"][0].__setitem__("id", "zero"), r"categories\[0\]\.id"),
])
def test_coco_ids_that_are_not_integers_name_file_and_field(sardet: Path, where, field: str):
    ann = sardet / "Annotations" / "train.json"
    _rewrite(ann, where)
    with pytest.raises(SourceFormatError, match=rf"train\.json: field '{field}': expected an integer id"):
        _list(sardet)


def test_coco_numeric_text_ids_still_work(sardet: Path):
    expected = _list(sardet)
    ann = sardet / "Annotations" / "train.json"
    _rewrite(ann, lambda d: [a.__setitem__("image_id", str(a["image_id"])) for a in d["annotations"]])
    assert _list(sardet) == expected


def test_coco_file_name_under_two_ids_is_refused(sardet: Path):
    ann = sardet / "Annotations" / "train.json"
    _rewrite(ann, lambda d: d["images"][2].__setitem__("file_name", d["images"][0]["file_name"]))
    with pytest.raises(SourceFormatError, match=r"train\.json: field 'images\[2\]\.file_name'") as caught:
        _list(sardet)
    message = str(caught.value)
    assert "0000001.jpg" in message and "image ids 1 and 3" in message


def test_parse_coco_refuses_a_duplicate_file_name_spelled_with_backslashes(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "sub/x.jpg"}, {"id": 2, "file_name": "sub\\x.jpg"}],
        "annotations": [], "categories": [{"id": 0, "name": "ship"}],
    }))
    with pytest.raises(SourceFormatError, match="image ids 1 and 2"):
        parse_coco(path, ["ship"], lambda reason, file: None)


# ----------------------------------------------------------------------------------------- CSV quoting
TABLE = FIXTURES / "image_caption_table"


@pytest.fixture
def table(tmp_path: Path) -> Path:
    shutil.copytree(TABLE / "images", tmp_path / "table" / "images")
    return tmp_path / "table"


def test_unbalanced_quote_is_refused_naming_file_and_row(table: Path):
    (table / "train.csv").write_text(
        "imgpath,caption\n"
        "images/ship_001.png,A ship.\n"
        'images/tank_001.png,"A tank on grass.\n'
        "images/ship_002.jpg,A ship at a pier.\n"
    )
    with pytest.raises(SourceFormatError, match=r"train\.csv: field 'caption \(row 3\)'") as caught:
        _list(table, "image_caption_table", "all")
    assert "unbalanced quote" in str(caught.value)


def test_quote_swallowing_a_path_cell_is_refused(table: Path):
    (table / "train.tsv").write_text('imgpath\tcaption\n"images/ship_001.png\tA ship.\nimages/x.png\tB"\tC\n')
    with pytest.raises(SourceFormatError, match=r"train\.tsv: field 'imgpath \(row 2\)'"):
        _list(table, "image_caption_table", "all")


def test_row_numbers_count_physical_lines(table: Path):
    """Blank lines are skipped but counted, so the row named in errors is the line an editor shows."""
    (table / "train.csv").write_text("imgpath,caption\n\nimages/ship_001.png,ok\n\nimages/gone.png,lost\n")
    with pytest.raises(SourceFormatError, match=r"row 5"):
        _list(table, "image_caption_table", "all")


def test_sarlang_captions_with_an_unbalanced_quote_are_refused(tmp_path: Path):
    root = tmp_path / "SARLANG-1M"
    shutil.copytree(FIXTURES / "sarlang" / "SARLANG-1M", root)
    csv_file = root / "Text" / "caption" / "Caption-training.csv"
    lines = csv_file.read_text().splitlines()
    lines[1] = lines[1].replace(",", ',"', 1)
    csv_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match=r"Caption-training\.csv: field 'caption \(row 2\)'"):
        _list(root, "sarlang", "train")


# ----------------------------------------------------------------------------------------------------- MSTAR
@pytest.mark.parametrize("layout", ["jpeg_folders", "raw_folders"])
def test_empty_mstar_class_folder_names_the_folder(tmp_path: Path, layout: str):
    root = tmp_path / layout
    shutil.copytree(FIXTURES / "mstar" / layout, root)
    empty = root / "train" / "2"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(DatasetNotFoundError, match=rf"class folder {empty}.*holds no"):
        _list(root, "mstar", "train", layout=layout)
    assert _list(root, "mstar", "test", layout=layout)  # the other split is unaffected
