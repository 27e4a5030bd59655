"""Fuzzing every binary and text reader: mutated files give a valid sample or one of the project's own errors,
never another exception, a hang or a huge allocation.

Binary readers (raw MSTAR, TIFF, PNG/JPEG, MATLAB ``.mat``, the OpenSARShip zip) get byte-level mutations of a
valid file; text readers (OpenSARShip ``Ship.xml``, COCO JSON, VOC XML, caption CSV) get text mutations built
from the tokens that break parsers (quotes, brackets, separators, non-finite numbers) and, for JSON, structural
ones (a value replaced by any JSON value, a key removed).

CI runs ``FUZZ_EXAMPLES`` (default 300) derandomised examples per reader, so a red run is reproducible and never
depends on luck; set ``SARCLIP_FUZZ_RANDOM=1`` (and a larger ``SARCLIP_FUZZ_EXAMPLES``) to explore new inputs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_sarclip.data.image import SARImage, SARReadError
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.limits import set_limits
from lightning_sarclip.data.listing import SourceListing
from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources.base import DatasetNotFoundError, SourceFormatError
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES

FUZZ_EXAMPLES = int(os.environ.get("SARCLIP_FUZZ_EXAMPLES", "300"))
OUR_ERRORS = (SARReadError, SourceFormatError, DatasetNotFoundError)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("SARCLIP_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

#: what breaks text parsers: markup, quotes, separators, numbers that are not numbers
TOKENS = ["<", ">", "</", "/>", '"', "'", "&", "&amp;", "&#0;", ";", ",", "\t", "\n", "\r\n", "-1", "0", "-0",
          "NaN", "nan", "inf", "-inf", "1e309", "-1e309", "99999999999999999999", "{", "}", "[", "]", ":", "null",
          "true", "\x00", "..", "../", "/", "\\", " ", "é", "\ufeff", "<!DOCTYPE x [<!ENTITY a 'b'>]>", "&a;"]


def _run_counted(check, counter: list) -> None:
    """Run a hypothesis test and make sure it really tried (nearly) the configured number of distinct cases."""
    check()
    assert len(counter) >= 0.9 * FUZZ_EXAMPLES, f"only {len(counter)} fuzz cases ran, expected {FUZZ_EXAMPLES}"


# ------------------------------------------------------------------------------------------------ mutations
@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    """``data`` with a few flips, overwrites, deletions, insertions or a truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        kind = draw(st.sampled_from(["flip", "overwrite", "delete", "insert", "truncate", "big_number"]))
        at = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[at:at + len(chunk)] = chunk
        elif kind == "delete":
            del out[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del out[at:]
        else:  # a size/offset field set to a huge value
            out[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\x7f", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x80"]))
    return bytes(out)


@st.composite
def text_mutations(draw, text: str) -> str:
    out = text
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(out) - 1)))
        kind = draw(st.sampled_from(["insert", "replace", "delete", "duplicate"]))
        token = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)))
        span = draw(st.integers(1, 40))
        if kind == "insert":
            out = out[:at] + token + out[at:]
        elif kind == "replace":
            out = out[:at] + token + out[at + span:]
        elif kind == "delete":
            out = out[:at] + out[at + span:]
        else:
            out = out[:at] + out[at:at + span] * 2 + out[at + span:]
    return out


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["../x.jpg", "/etc/passwd", "", "x"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@st.composite
def json_mutations(draw, document):
    """``document`` with one value replaced by any JSON value, or one key/item removed."""
    doc = json.loads(json.dumps(document))
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        parent[path[-1]] = draw(JSON_VALUES)
    else:
        del parent[path[-1]]
    return doc


# ------------------------------------------------------------------------------------------------ binary readers
def _valid_files() -> dict[str, tuple[bytes, dict]]:
    import tifffile
    from PIL import Image
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    files: dict[str, tuple[bytes, dict]] = {}
    files["mstar_raw"] = ((FIXTURES / "mstar" / "raw_folders" / "train" / "T72" / "HB01701.000").read_bytes(),
                          {"format": "mstar_raw"})
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rng.uniform(0, 1, (12, 10, 2)).astype(np.float32), photometric="minisblack",
                     planarconfig="contig")
    files["tiff"] = (buffer.getvalue(), {"format": "tiff"})
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).save(buffer, fmt)
        files[fmt.lower()] = (buffer.getvalue(), {"format": "pillow"})
    for name, compress in (("mat", False), ("mat_compressed", True)):  # SciPy's C reader crashed on these
        buffer = io.BytesIO()
        savemat(buffer, {"img": rng.normal(size=(9, 7)) + 1j * rng.normal(size=(9, 7)), "az": np.array([[1.5]])},
                do_compression=compress)
        files[name] = (buffer.getvalue(), {"format": "mat", "options": (("mat_key", "img"),)})
    return files


VALID = _valid_files()


@pytest.fixture(autouse=True)
def _small_limits():
    """Keep every fuzzed case small: a header that asks for more than 4 Mpx is refused, as bombs are."""
    previous = set_limits(max_image_pixels=1 << 22, max_member_bytes=1 << 24)
    yield
    set_limits(max_image_pixels=previous.max_image_pixels, max_member_bytes=previous.max_member_bytes)


def _read_and_convert(path: Path, ref_kwargs: dict) -> None:
    try:
        image = read_sar(ImageRef(str(path), **ref_kwargs))
    except OUR_ERRORS:
        return
    assert isinstance(image, SARImage) and image.data.ndim == 3 and min(image.data.shape) >= 1
    for policy in ("percentile", {"name": "integer", "out_of_range": "clip"}):
        try:
            out = build_policy(policy)(image)
        except OUR_ERRORS:
            continue
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("fmt", list(VALID))
def test_fuzz_binary_reader(fmt: str, tmp_path: Path) -> None:
    data, ref_kwargs = VALID[fmt]
    path = tmp_path / "chip.bin"

    cases: list[int] = []

    @FUZZ
    @given(mutated=byte_mutations(data))
    def check(mutated: bytes) -> None:
        cases.append(1)
        path.write_bytes(mutated)
        _read_and_convert(path, ref_kwargs)

    path.write_bytes(data)
    image = read_sar(ImageRef(str(path), **ref_kwargs))
    assert image.data.size > 0  # the unmutated file reads
    _run_counted(check, cases)


# ------------------------------------------------------------------------------------------------ whole sources
def _list_and_caption(source: str, root: Path, split: str = "all", **options) -> None:
    """List a source and caption every record: records or our errors, nothing else."""
    try:
        listing = SourceListing(source, root, split, options=options)
        captioner = listing.captioner(n_captions=2)
        for record in listing.records():
            assert isinstance(record, SARRecord)
            assert all(isinstance(c, str) and c for c in captioner.captions(record))
    except OUR_ERRORS:
        return


def _opensarship_zip_root(tmp_path: Path) -> tuple[Path, bytes]:
    root = tmp_path / "opensarship"
    root.mkdir()
    return root, (FIXTURES / "opensarship" / "OpenSARShip_2.zip").read_bytes()


def test_fuzz_opensarship_zip(tmp_path: Path) -> None:
    root, data = _opensarship_zip_root(tmp_path)

    cases: list[int] = []

    @FUZZ
    @given(mutated=byte_mutations(data))
    def check(mutated: bytes) -> None:
        cases.append(1)
        (root / "OpenSARShip_2.zip").write_bytes(mutated)
        _list_and_caption("opensarship", root)

    _run_counted(check, cases)


def _unpacked_opensarship(tmp_path: Path) -> tuple[Path, Path]:
    """One 2.0-style scene unpacked into ``root/<scene>/`` (Ship.xml + Patch*/), as users unpack it."""
    root = tmp_path / "unpacked"
    with zipfile.ZipFile(FIXTURES / "opensarship" / "OpenSARShip_2.zip") as outer:
        name = sorted(n for n in outer.namelist() if "GRDH_1SDV" in n)[0]
        with zipfile.ZipFile(io.BytesIO(outer.read(name))) as scene:
            scene.extractall(root / Path(name).stem)
    return root, root / Path(name).stem / "Ship.xml"


TEXT_CASES: dict[str, Callable[[Path], tuple[str, Path, Path, dict]]] = {}


def _text_case(name: str):
    def register(function):
        TEXT_CASES[name] = function
        return function

    return register


@_text_case("opensarship_ship_xml")
def _ship_xml(tmp_path: Path):
    root, target = _unpacked_opensarship(tmp_path)
    return "opensarship", root, target, {}


@_text_case("ssdd_voc_xml")
def _voc_xml(tmp_path: Path):
    root = tmp_path / "ssdd"
    shutil.copytree(FIXTURES / "ssdd", root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    target = next(root.rglob("Annotations_train/000002.xml"))
    return "ssdd", root, target, {}


@_text_case("image_caption_table_csv")
def _csv(tmp_path: Path):
    root = tmp_path / "table"
    shutil.copytree(FIXTURES / "image_caption_table", root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return "image_caption_table", root, root / "pairs.csv", {"table": "pairs.csv"}


@_text_case("hrsid_coco_json")
def _coco_text(tmp_path: Path):
    root = tmp_path / "hrsid"
    shutil.copytree(FIXTURES / "hrsid", root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return "hrsid", root, root / "HRSID_JPG" / "annotations" / "train2017.json", {}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_fuzz_text_reader(case: str, tmp_path: Path) -> None:
    source, root, target, options = TEXT_CASES[case](tmp_path)
    original = target.read_text(encoding="utf-8")
    _list_and_caption(source, root, **options)  # the unmutated file lists

    cases: list[int] = []

    @FUZZ
    @given(mutated=text_mutations(original))
    def check(mutated: str) -> None:
        cases.append(1)
        target.write_text(mutated, encoding="utf-8", errors="surrogatepass")
        _list_and_caption(source, root, **options)

    _run_counted(check, cases)


def test_fuzz_coco_json_structure(tmp_path: Path) -> None:
    root = tmp_path / "hrsid"
    shutil.copytree(FIXTURES / "hrsid", root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    target = root / "HRSID_JPG" / "annotations" / "train2017.json"
    document = json.loads(target.read_text())

    cases: list[int] = []

    @FUZZ
    @given(mutated=json_mutations(document))
    def check(mutated) -> None:
        cases.append(1)
        target.write_text(json.dumps(mutated, allow_nan=True))
        _list_and_caption("hrsid", root)

    _run_counted(check, cases)
