"""OpenSARShip 1.0 / 2.0 (SJTU): Sentinel-1 ship chips labelled by AIS, one ``Ship.xml`` per scene.

The dataset ships as one outer zip holding one zip per Sentinel-1 scene; users also unpack either level, so
all three layouts are read (and mixed): the outer zip, a folder of scene zips, and unpacked scene folders.
A scene holds ``Ship.xml`` and one folder per chip product (``Patch``, ``Patch_Cal``, ``Patch_Uint8``); chips
are joined to their ``<ship>`` record by the chip centre that both the file name (``_x<cx>_y<cy>``) and the
record (``Center_x``/``Center_y``) carry, never by order. The label is the AIS ship-type code mapped to the
ITU-R M.1371 groups (:data:`AIS_CLASSES`), because the file-name type text is sometimes truncated
(``Search_x..`` next to ``Search and Rescue vessel_x..``) and ``Other Type`` hides several codes.

Pixels are read through the ``opensarship`` image format registered here, which knows each product's
meaning (8-bit display, calibrated sigma0 intensity, GRD amplitude, SLC complex planes) and can stack the
separate VV and VH files of ``Patch_Uint8`` into one two-channel image.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from xml.etree import ElementTree as ET

import numpy as np

from lightning_sarclip.data.io import (
    SARImage,
    SARReadError,
    open_member,
    read_bytes,
    register_format,
    safe_member,
)
from lightning_sarclip.data.limits import check_member_bytes
from lightning_sarclip.data.records import MEMBER_SEP, ImageRef, SARRecord
from lightning_sarclip.data.sources._metadata import ANGLE_0_90, POSITIVE, NumberRange, SkipFn, checked_number
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    log,
    register_source,
)
from lightning_sarclip.data.transforms import DBWindow, IntegerScale, PercentileStretch

PRODUCTS = ("Patch_Cal", "Patch_Uint8", "Patch")
POLARIZATIONS = ("vv", "vh", "both", "each")

#: Class names: the ITU-R M.1371 ship-type groups that AIS ``Ship_Type`` codes fall in.
AIS_CLASSES = [
    "Cargo", "Tanker", "Passenger", "Fishing", "Tug", "Towing", "Dredging", "Diving", "Military", "Sailing",
    "Pleasure Craft", "High Speed Craft", "Wing in Ground", "Pilot", "Search and Rescue", "Port Tender",
    "Anti-pollution", "Law Enforcement", "Medical Transport", "Other",
]
_SINGLE_CODES = {
    30: "Fishing", 31: "Towing", 32: "Towing", 33: "Dredging", 34: "Diving", 35: "Military", 36: "Sailing",
    37: "Pleasure Craft", 50: "Pilot", 51: "Search and Rescue", 52: "Tug", 53: "Port Tender",
    54: "Anti-pollution", 55: "Law Enforcement", 58: "Medical Transport",
}
_CODE_RANGES = ((20, 29, "Wing in Ground"), (40, 49, "High Speed Craft"), (60, 69, "Passenger"),
                (70, 79, "Cargo"), (80, 89, "Tanker"))
#: File-name type text (lower case, prefix) -> class; only used when the XML code is missing.
_TEXT_CLASSES = (
    ("cargo", "Cargo"), ("tanker", "Tanker"), ("passenger", "Passenger"), ("fishing", "Fishing"),
    ("tug", "Tug"), ("towing", "Towing"), ("dredg", "Dredging"), ("diving", "Diving"), ("military", "Military"),
    ("sailing", "Sailing"), ("pleasure", "Pleasure Craft"), ("high speed", "High Speed Craft"),
    ("wing in", "Wing in Ground"), ("pilot", "Pilot"), ("search", "Search and Rescue"),
    ("port tender", "Port Tender"), ("anti", "Anti-pollution"), ("law", "Law Enforcement"),
    ("medical", "Medical Transport"), ("other", "Other"),
)

_SCENE_RE = re.compile(
    r"S1[AB]_(?P<mode>IW|EW|SM|S[1-6]|WV)_(?P<product>GRD[HMF]|SLC_)_1S(?P<pol>DV|SV|DH|SH)_"
    r"\d{8}T\d{6}_\d{8}T\d{6}_\d{6}_[0-9A-F]{6}_[0-9A-F]{4}"
)
_VERSION_RE = re.compile(r"OpenSARShip[ _-]?([12])(?![0-9])", re.IGNORECASE)
_CHIP_RE = {
    "Patch_Uint8": re.compile(r"^Visual_(?P<type>.+)_x(?P<x>\d+)_y(?P<y>\d+)(?:_(?P<pol>vv|vh|hh|hv))?\.tiff?$",
                              re.IGNORECASE),
    "Patch_Cal": re.compile(r"^(?P<type>.+)_x(?P<x>\d+)_y(?P<y>\d+)(?:_(?P<pol>vv|vh|hh|hv))?\.tiff?$",
                            re.IGNORECASE),
}
_CHIP_RE["Patch"] = _CHIP_RE["Patch_Cal"]
#: The one known Ship.xml defect (four of seven real OS2 scenes): the root is closed with a backslash.
_BAD_CLOSE = re.compile(r"<\\ShipList>\s*$")
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")
#: Sentinel-1 nominal (range, azimuth) resolution in metres per acquisition mode and product (ESA user guide).
_RESOLUTION = {("IW", "GRD"): (20.0, 22.0), ("IW", "SLC"): (5.0, 20.0)}
_PIXEL_SPACING = {("IW", "GRD"): 10.0}
#: Channel order of the multi-channel Patch / Patch_Cal files (official ReadMe; checked on real chips).
_SCENE_CHANNELS = {"DV": ("VH", "VV"), "SV": ("VV",)}


def ais_class(code: int | None) -> str | None:
    """The class of an AIS ``Ship_Type`` code (ITU-R M.1371 table); ``None`` when there is no code."""
    if code is None:
        return None
    if code in _SINGLE_CODES:
        return _SINGLE_CODES[code]
    for low, high, name in _CODE_RANGES:
        if low <= code <= high:
            return name
    return "Other"  # 0 (not available), 1-19/38-39/56-57/59 (reserved/spare), 90-99 (other type), >= 100


def text_class(text: str) -> str | None:
    """The class of a file-name type text such as ``Other Type`` or ``Search`` (``None`` if unknown)."""
    lowered = text.strip().lower()
    for prefix, name in _TEXT_CLASSES:
        if lowered.startswith(prefix):
            return name
    return None


# ---------------------------------------------------------------------------------------------- pixel reader


@register_format("opensarship")
def read_chip(data: bytes, ref: ImageRef) -> SARImage:
    """Decode an OpenSARShip chip (options set by the source): ``values`` says what the pixels are,
    ``channels`` names the polarisations stored in the file, ``extra`` lists further per-polarisation files
    ``(path, member, channels)`` whose channels are appended (separate VV / VH ``Patch_Uint8`` chips)."""
    values = ref.option("values")
    kinds = {"uint8": "uint8", "amplitude": "amplitude", "intensity": "intensity", "slc": "complex"}
    if values not in kinds:
        raise SARReadError(f"{ref.name}: opensarship chip needs option 'values' in {sorted(kinds)}, got {values!r}")
    arrays = [_decode_chip(data, ref.name, values, ref.option("channels", ()))]
    for path, member, channels in ref.option("extra", ()):
        extra = ImageRef(path, member)
        arrays.append(_decode_chip(read_bytes(extra), extra.name, values, channels))
    if len({a.shape[:2] for a in arrays}) > 1:
        raise SARReadError(f"{ref.name}: polarisation files differ in size: {[a.shape[:2] for a in arrays]}")
    return SARImage(np.concatenate(arrays, axis=2), kinds[values], {"channels": _all_channels(ref)})


def _all_channels(ref: ImageRef) -> tuple[str, ...]:
    channels = tuple(ref.option("channels", ()))
    for _, _, extra in ref.option("extra", ()):
        channels += tuple(extra)
    return channels


def _decode_chip(data: bytes, name: str, values: str, channels: tuple[str, ...]) -> np.ndarray:
    import tifffile

    try:
        array = tifffile.imread(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - report any decoder failure with the file's name
        raise SARReadError(f"{name}: not a readable TIFF ({type(err).__name__}: {err})") from err
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3 and array.shape[0] <= 4 and array.shape[0] < array.shape[2]:
        array = np.moveaxis(array, 0, -1)  # band-first
    if array.ndim != 3:
        raise SARReadError(f"{name}: expected a (H, W[, C]) chip, found shape {array.shape}")
    planes = len(channels) * (2 if values == "slc" else 1)
    if array.shape[2] != planes:
        layout = " (re, im per polarisation)" if values == "slc" else ""
        raise SARReadError(f"{name}: expected {planes} planes for {'/'.join(channels)}{layout}, "
                           f"found {array.shape[2]}")
    if values == "uint8":
        if array.dtype != np.uint8:
            raise SARReadError(f"{name}: Patch_Uint8 chip should be uint8, found {array.dtype}")
        return array
    array = array.astype(np.float32, copy=False)
    if values == "slc":
        return (array[:, :, 0::2] + 1j * array[:, :, 1::2]).astype(np.complex64)
    return array


@dataclass(frozen=True)
class ProductPolicy:
    """The default conversion, chosen by what the product's pixels are (the chip's ``kind``), so that one
    class-level policy serves every ``product``: calibrated sigma0 (``Patch_Cal``) through a fixed dB window
    that keeps chips and the VV/VH ratio comparable, 8-bit display chips (``Patch_Uint8``) scaled by 255, and
    the uncalibrated GRD amplitude / SLC complex ``Patch`` chips stretched per chip between dB percentiles."""

    low_db: float = -35.0
    high_db: float = 10.0

    def __call__(self, image: SARImage) -> np.ndarray:
        if image.kind == "intensity":
            return DBWindow(self.low_db, self.high_db)(image)
        if image.kind == "uint8":
            return IntegerScale()(image)
        return PercentileStretch(1.0, 99.0, in_db=True)(image)


# ------------------------------------------------------------------------------------------- scene discovery


@dataclass
class _Scene:
    """One scene wherever it lives: ``names`` lists ``product -> file names``; ``ref`` builds ImageRef parts."""

    scene_id: str
    where: str
    version: str | None
    xml: Callable[[], bytes]
    names: dict[str, list[str]]
    ref: Callable[[str, str], tuple[str, str | None]]


def _version(text: str) -> str | None:
    found = _VERSION_RE.findall(text)
    return f"{found[-1]}.0" if found else None


def _scene_id(text: str, where: str) -> str:
    found = [m.group(0) for m in _SCENE_RE.finditer(text)]
    if not found:
        raise SourceFormatError(where, "scene name",
                                "a Sentinel-1 product name (S1A_IW_GRDH_1SDV_..._XXXXXX_XXXX) in the scene "
                                "folder or scene zip name", Path(text).name)
    return found[-1]


def _safe(name: str, archive: str) -> str:
    try:
        return safe_member(name, archive)
    except SARReadError as err:
        raise SourceFormatError(archive, "member path", "a relative path inside the archive", name) from err


#: ``contained(path, field, referenced_by) -> path``: the reader's path policy (``SARSource.contained``).
Contained = Callable[..., Path]
#: ``walk(top)``: the reader's symlink-aware ``os.walk`` (``SARSource.walk``).
Walk = Callable[[Path], Iterator[tuple[Path, list[str], list[str]]]]


def _dir_scene(folder: Path, root: Path, contained: Contained) -> _Scene:
    rel = folder.relative_to(root.parent).as_posix()  # keeps the root's own name (``OpenSARShip2``)
    xml = folder / "Ship.xml"
    names = {}
    for product in PRODUCTS:
        sub = folder / product
        if sub.is_dir():
            names[product] = sorted(p.name for p in contained(sub).iterdir() if p.is_file())
    return _Scene(
        scene_id=_scene_id(rel, str(folder)),
        where=str(xml),
        version=_version(rel),
        xml=lambda: contained(xml).read_bytes(),
        names=names,
        # checked when a record is made of the chip: chips nobody asks for are never opened
        ref=lambda product, name: (str(contained(folder / product / name, "chip", xml)), None),
    )


#: What ``zipfile``/``zlib`` raise for a damaged archive besides ``BadZipFile``: offsets past the end (``OSError``),
#: truncated or corrupt streams, unknown or encrypted compression, impossible header values.
_ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)
#: Our own errors, raised inside the same ``try`` blocks, pass through unchanged.
_OUR_ERRORS = (SourceFormatError, SARReadError, DatasetNotFoundError)


def _damaged(where: str | Path, expected: str, err: Exception) -> SourceFormatError:
    return SourceFormatError(where, "zip", expected, f"{type(err).__name__}: {err}")


def _member_reader(archive: zipfile.ZipFile, name: str, where: str) -> Callable[[], bytes]:
    """Reads ``name`` (a Ship.xml) when called, its uncompressed size checked against ``max_member_bytes`` first."""

    def read() -> bytes:
        check_member_bytes(f"{where}{MEMBER_SEP}{name}", archive.getinfo(name).file_size)
        try:
            return archive.read(name)
        except _OUR_ERRORS:
            raise
        except _ZIP_DAMAGE as err:
            raise _damaged(f"{where}{MEMBER_SEP}{name}", "a readable archive member", err) from err

    return read


def _zip_scenes(archive: zipfile.ZipFile, path: Path, chain: tuple[str, ...], root: Path) -> Iterator[_Scene]:
    """Scenes inside a zip (``chain``: the nested zip members leading to ``archive``); recurses into zips."""
    where = MEMBER_SEP.join((str(path), *chain))
    names = [n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
    for name in names:
        _safe(name, where)  # an archive with members climbing out (zip-slip) is refused as a whole
    for xml_name in sorted(n for n in names if n.rsplit("/", 1)[-1].lower() == "ship.xml"):
        prefix = xml_name[: -len("Ship.xml")]
        products: dict[str, list[str]] = {}
        for name in names:
            rest = name[len(prefix):] if name.startswith(prefix) else None
            if rest and "/" in rest:
                product, file_name = rest.split("/", 1)
                if product in PRODUCTS and "/" not in file_name:
                    products.setdefault(product, []).append(file_name)
        label = "/".join((path.relative_to(root.parent).as_posix(), *chain, prefix))

        def make_ref(product: str, name: str, prefix: str = prefix) -> tuple[str, str | None]:
            return str(path), MEMBER_SEP.join((*chain, f"{prefix}{product}/{name}"))

        yield _Scene(
            scene_id=_scene_id(label, f"{where}{MEMBER_SEP}{xml_name}"),
            where=f"{where}{MEMBER_SEP}{xml_name}",
            version=_version(label),
            xml=_member_reader(archive, xml_name, where),
            names={k: sorted(v) for k, v in products.items()},
            ref=make_ref,
        )
    if len(chain) >= 2:
        return  # outer zip -> scene zip is the deepest nesting the dataset uses
    for inner in sorted(n for n in names if n.lower().endswith(".zip")):
        yield from _nested_scenes(archive, inner, path, chain, root)


def _nested_scenes(archive: zipfile.ZipFile, inner: str, path: Path, chain: tuple[str, ...],
                   root: Path) -> Iterator[_Scene]:
    """The scenes of the scene zip ``inner``, opened in place or spooled (never inflated whole into memory: a scene
    zip may hold gigabytes), its size checked against ``max_member_bytes`` (``SARReadError`` naming it)."""
    where = MEMBER_SEP.join((str(path), *chain))
    try:
        with open_member(archive, inner, where) as handle, zipfile.ZipFile(handle) as nested:
            yield from _zip_scenes(nested, path, (*chain, inner), root)
    except _OUR_ERRORS:
        raise
    except _ZIP_DAMAGE as err:
        raise _damaged(f"{where}{MEMBER_SEP}{inner}", "a readable scene zip", err) from err


def _scenes(root: Path, contained: Contained, walk: Walk) -> Iterator[_Scene]:
    for here, dirnames, filenames in walk(root):
        if "Ship.xml" in filenames:
            dirnames[:] = []  # a scene folder: its Patch* folders need no walking
            yield _dir_scene(here, root, contained)
            continue
        for name in (f for f in filenames if f.lower().endswith(".zip")):
            try:
                with zipfile.ZipFile(contained(here / name)) as archive:
                    yield from _zip_scenes(archive, here / name, (), root)
            except _OUR_ERRORS:
                raise
            except _ZIP_DAMAGE as err:
                raise _damaged(here / name, "a readable zip archive", err) from err


# ------------------------------------------------------------------------------------------------ Ship.xml


def _number(text: str | None, cast: Callable[[str], Any] = float) -> Any:
    """A finite number from ``text`` (``None`` when empty, not a number, ``inf`` or ``nan``)."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(value) if cast is int else cast(value)


def _text(text: str | None) -> str | None:
    text = (text or "").strip()
    return None if text in ("", "NA", "N/A") else text


def _scaled(factor: float, missing: float | None = None) -> Callable[[str | None], float | None]:
    def convert(text: str | None) -> float | None:
        value = _number(text)
        if value is None or value == missing:
            return None
        return round(value * factor, 6)

    return convert


def _positive(text: str | None) -> float | None:
    value = _number(text)
    return value if value is not None and value > 0 else None  # AIS uses 0 for "not available"


#: XML tag -> (metadata key, converter). AIS raw units: speed 1/10 knot, course 1/10 degree, draught 1/10 m.
_FIELDS: dict[str, tuple[str, Callable[[str | None], Any]]] = {
    "Time_UTC": ("acquired_utc", _text),
    "Center_longitude": ("longitude_deg", _number),
    "Center_latitude": ("latitude_deg", _number),
    "Manual_Length": ("manual_length_m", _positive),
    "North_Direction": ("north_direction_deg", _number),
    "Chip_Direction": ("chip_direction_deg", _number),
    "Elevation": ("elevation_deg", _number),
    "SlantRangeTime": ("slant_range_time", _number),
    "Slant_Range_Time": ("slant_range_time", _number),
    "Time": ("ais_time_unix", lambda t: _number(t, int)),
    "Nav_Status": ("nav_status", lambda t: _number(t, int)),
    "Rot": ("rate_of_turn", _number),
    "Sog": ("speed_knots", _scaled(0.1, missing=1023)),
    "Pos_Acc": ("position_accuracy", lambda t: _number(t, int)),
    "Longitude": ("ais_longitude_deg", _number),
    "Latitude": ("ais_latitude_deg", _number),
    "Projected_Longitude": ("projected_longitude_deg", _number),
    "Projected_Latitude": ("projected_latitude_deg", _number),
    "Cog": ("course_deg", _scaled(0.1, missing=3600)),
    "True_Head": ("heading_deg", lambda t: None if _number(t) in (None, 511) else _number(t)),
    "Name": ("ship_name", _text),
    "IMO": ("imo", lambda t: _number(t, int) or None),
    "Callsign": ("callsign", _text),
    "Draught": ("draught_m", _scaled(0.1, missing=0)),
    "Msgid": ("ais_message_id", lambda t: _number(t, int)),
    "Length_error": ("length_error_m", _number),
    "Length_error_rate": ("length_error_rate", _number),
    "Distance_error": ("distance_error_m", _number),
    "Length_overall": ("length_overall_m", _positive),
    "Breadth_extreme": ("breadth_m", _positive),
    "Elaborated_type": ("elaborated_type", lambda t: None if _text(t) in (None, "Unspecified") else _text(t)),
    "Gross_tonnage": ("gross_tonnage", _positive),
    "Deadweight": ("deadweight_t", _positive),
    "Flag": ("flag", _text),
    "Year_built": ("year_built", lambda t: _number(t, int) or None),
    "Interference": ("chip_interference", lambda t: _number(t, int)),
    "Port": ("chip_port", lambda t: _number(t, int)),
    "Multi_ship": ("chip_multi_ship", lambda t: _number(t, int)),
}
#: Numbers that go into captions: XML tag -> (metadata key, valid range). Out of range: dropped and counted. Length
#: and width 0 is AIS's "not available" (``None``, not counted).
_CAPTION_NUMBERS: dict[str, tuple[str, NumberRange]] = {
    "Length": ("length_m", POSITIVE),
    "Width": ("width_m", POSITIVE),
    "Incidence": ("incidence_deg", ANGLE_0_90),
}
_AIS_NOT_AVAILABLE = {"Length": (0.0,), "Width": (0.0,)}
_POINTS = {"Head": "head_px", "Tail": "tail_px", "UpperLeft": "upper_left_px", "LowerRight": "lower_right_px"}


def parse_ship_xml(data: bytes, where: str, repaired: Counter) -> ET.Element:
    """Parse ``Ship.xml``; repairs (and counts in ``repaired``) only the known defects: a ``<\\ShipList>``
    closing tag and a non-UTF-8 encoding (read as latin-1). Anything else raises :class:`SourceFormatError`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
        repaired["Ship.xml not UTF-8: decoded as latin-1"] += 1
    text = _XML_DECL.sub("", text, count=1)  # the declaration names the encoding we have already applied
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        fixed = _BAD_CLOSE.sub("</ShipList>", text)
        if fixed == text:
            raise SourceFormatError(where, "xml", "well-formed XML <ShipList><ship>...</ship></ShipList>",
                                    str(err)) from err
        try:
            root = ET.fromstring(fixed)
        except ET.ParseError as err2:
            raise SourceFormatError(where, "xml", "well-formed XML after repairing the <\\ShipList> closing tag",
                                    str(err2)) from err2
        repaired["Ship.xml closing tag <\\ShipList> repaired"] += 1
        log.debug("opensarship: repaired the <\\ShipList> closing tag of %s", where)
    if root.tag != "ShipList":
        raise SourceFormatError(where, "root element", "<ShipList>", root.tag)
    return root


def _no_skip(reason: str, file: Any) -> None:
    """``ship_fields`` without a reader: out-of-range numbers are still dropped, just not counted."""


def ship_fields(ship: ET.Element, where: str, skip: SkipFn = _no_skip) -> tuple[tuple[int, int], dict[str, Any]]:
    """``((Center_x, Center_y), metadata)`` of one ``<ship>`` record.

    The centre joins the record to its chip, so a missing or non-finite one is a :class:`SourceFormatError`; the
    numbers captions use (:data:`_CAPTION_NUMBERS`) are dropped and counted through ``skip`` when out of range.
    """
    values: dict[str, str | None] = {}
    for section in ship:
        for field in section:
            values[field.tag] = field.text
    centre = []
    for tag in ("Center_x", "Center_y"):
        value = _number(values.get(tag), int)
        if value is None:
            raise SourceFormatError(where, f"ship/SARShipInformation/{tag}", "a finite integer pixel coordinate",
                                    values.get(tag))
        centre.append(value)
    meta: dict[str, Any] = {"center_x_px": centre[0], "center_y_px": centre[1]}
    for tag, (key, convert) in _FIELDS.items():
        if tag in values:
            meta[key] = convert(values[tag])
    for tag, (key, valid) in _CAPTION_NUMBERS.items():
        if tag in values:
            meta[key] = checked_number(values[tag], f"Ship.xml {tag}", valid, file=where, skip=skip,
                                       missing=_AIS_NOT_AVAILABLE.get(tag, ()))
    for tag, key in _POINTS.items():
        x, y = _number(values.get(f"{tag}_x"), int), _number(values.get(f"{tag}_y"), int)
        if x is not None and y is not None:
            meta[key] = (x, y)
    mmsi = _number(values.get("MMSI"), int)
    meta["mmsi"] = mmsi or None  # 0 or empty: no MMSI
    meta["ais_type"] = _number(values.get("Ship_Type"), int)
    return (centre[0], centre[1]), meta


# ------------------------------------------------------------------------------------------------- source


@register_source("opensarship")
class OpenSARShip(SARSource):
    """OpenSARShip 1.0 / 2.0 ship chips, one record per ship (or per ship and polarisation with ``"each"``).

    Args:
        root: folder holding the outer zip(s) (``OpenSARShip_2.zip`` ...), scene zips, or unpacked scenes.
        split: only ``"all"``: the dataset has no official split.
        product: ``"Patch_Cal"`` (calibrated sigma0, default), ``"Patch_Uint8"`` (8-bit display) or ``"Patch"``
            (GRD amplitude / SLC complex).
        polarization: ``"vv"`` (default), ``"vh"``, ``"both"`` (two channels VV, VH) or ``"each"`` (one
            single-channel record per available polarisation).
        allowed_roots: folders outside ``root`` that symlinks may lead to (``SARSource.contained``).
    """

    splits: ClassVar[tuple[str, ...]] = ("all",)
    classnames: ClassVar[list[str]] = AIS_CLASSES
    caption_nouns: ClassVar[dict[str, str]] = {
        "Cargo": "cargo ship", "Tanker": "tanker", "Passenger": "passenger ship", "Fishing": "fishing vessel",
        "Towing": "towing vessel", "Dredging": "dredger", "Diving": "diving support vessel",
        "Military": "military vessel", "Sailing": "sailing vessel", "Wing in Ground": "wing-in-ground craft",
        "Pilot": "pilot boat", "Search and Rescue": "search and rescue vessel",
        "Anti-pollution": "anti-pollution vessel", "Law Enforcement": "law enforcement vessel", "Medical Transport": "medical transport vessel",
        "Other": "miscellaneous vessel",
    }
    default_policy: ClassVar[str | dict | Callable] = ProductPolicy()
    caption_fields: ClassVar[tuple[str, ...]] = (
        "elaborated_type", "length_m", "width_m", "polarization", "product_type", "incidence_deg", "sensor",
        "band", "resolution_m",
    )

    def __init__(self, root: str | Path, split: str = "all", product: str = "Patch_Cal",
                 polarization: str = "vv", *, allowed_roots: Sequence[str | Path] = ()) -> None:
        if product not in PRODUCTS:
            raise ValueError(f"opensarship: product must be one of {PRODUCTS}, got {product!r}")
        if polarization not in POLARIZATIONS:
            raise ValueError(f"opensarship: polarization must be one of {POLARIZATIONS}, got {polarization!r}")
        self.product, self.polarization = product, polarization
        self.repaired: Counter[str] = Counter()
        super().__init__(root, split, allowed_roots=allowed_roots)

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected any of: the outer zip (OpenSARShip_1.zip / OpenSARShip_2.zip) holding one zip per "
            "Sentinel-1 scene; a folder of scene zips (S1A_IW_GRDH_1SDV_..._XXXXXX_XXXX.zip); or unpacked scene "
            "folders, each with Ship.xml and Patch/, Patch_Cal/, Patch_Uint8/ (optionally inside a <scene>/ "
            "prefix); see data_cards/opensarship.md."
        )

    def records(self) -> Iterator[SARRecord]:
        yield from super().records()
        if self.repaired:
            log.warning("%s: repaired known Ship.xml defects %s", self.name, dict(self.repaired))

    def _records(self) -> Iterator[SARRecord]:
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"{self.name}: {self.root} is not a folder. {self.expected_layout()}")
        seen: set[str] = set()
        found = False
        # absolute: scene ids and versions also come from the root's own name
        for scene in _scenes(self.root.resolve(), self.contained, self.walk):
            found = True
            if scene.scene_id in seen:
                self.skip("scene present twice (e.g. in OpenSARShip 1.0 and 2.0): first copy kept", scene.where)
                continue
            seen.add(scene.scene_id)
            yield from self._scene_records(scene)
        if not found:
            raise DatasetNotFoundError(f"{self.name}: no Ship.xml found under {self.root}. {self.expected_layout()}")

    def _scene_records(self, scene: _Scene) -> Iterator[SARRecord]:
        match = _SCENE_RE.fullmatch(scene.scene_id)
        assert match is not None
        mode, pol_mode = match["mode"], match["pol"]
        product_type = "SLC" if match["product"].startswith("SLC") else "GRD"
        if pol_mode not in _SCENE_CHANNELS:
            raise SourceFormatError(scene.where, "scene polarisation", "a VV/VH scene (1SDV or 1SSV): the channel "
                                    "order of HH/HV chips is unconfirmed", f"1S{pol_mode}")
        if self.product not in scene.names:
            self.skip(f"scene has no {self.product} folder", scene.where)
            return
        root = parse_ship_xml(scene.xml(), scene.where, self.repaired)
        ships: dict[tuple[int, int], dict[str, Any]] = {}
        for ship in root.iter("ship"):
            centre, meta = ship_fields(ship, scene.where, self.skip)
            if centre in ships:
                raise SourceFormatError(scene.where, "ship/SARShipInformation/Center_x,Center_y",
                                        "one <ship> per chip centre", centre)
            ships[centre] = meta
        chips = self._chips(scene, pol_mode)
        for centre in sorted(set(ships) - set(chips)):
            self.skip(f"Ship.xml record without a {self.product} chip", f"{scene.where} centre {centre}")
        values = {"Patch_Uint8": "uint8", "Patch_Cal": "intensity"}.get(
            self.product, "slc" if product_type == "SLC" else "amplitude")
        resolution = _RESOLUTION.get((mode, product_type))
        for centre in sorted(chips):
            if centre not in ships:
                self.skip("chip without a Ship.xml record", f"{scene.where} centre {centre}")
                continue
            type_text, files = chips[centre]
            ship = ships[centre]
            label = ais_class(ship["ais_type"]) or text_class(type_text)
            if label is None:
                raise SourceFormatError(scene.where, "ship/AISShipInformation/Ship_Type",
                                        "an AIS ship-type code (or a known type in the chip file name)", type_text)
            wanted = ([[p] for p in ("VV", "VH") if p in files] if self.polarization == "each"
                      else [["VV", "VH"] if self.polarization == "both" else [self.polarization.upper()]])
            for pols in wanted:
                missing = [p for p in pols if p not in files]
                if missing:
                    self.skip(f"no {'/'.join(missing)} chip ({'single' if pol_mode == 'SV' else 'dual'}-pol scene)",
                              f"{scene.where} centre {centre}")
                    continue
                metadata = {
                    "sensor": "Sentinel-1", "satellite": scene.scene_id[:3], "band": "C", "mode": mode,
                    "product_type": product_type, "product": self.product, "polarization": "+".join(pols),
                    "channels": tuple(pols), "scene_id": scene.scene_id, "version": scene.version,
                    "ais_type_name": type_text, "resolution_m": 20.0 if resolution else None,
                    "resolution_range_m": resolution[0] if resolution else None,
                    "resolution_azimuth_m": resolution[1] if resolution else None,
                    "pixel_spacing_m": _PIXEL_SPACING.get((mode, product_type)),
                    **ship,
                }
                suffix = f"/{pols[0].lower()}" if self.polarization == "each" else ""
                yield SARRecord(
                    source=self.name,
                    source_id=f"{scene.scene_id}/x{centre[0]}_y{centre[1]}{suffix}",
                    split="all",
                    image=self._image(scene, files, pols, values),
                    labels=[label],
                    metadata=metadata,
                )

    def _chips(self, scene: _Scene, pol_mode: str) -> dict[tuple[int, int], tuple[str, dict]]:
        """``centre -> (type text, {polarisation: (file name, channels stored in that file)})``."""
        chips: dict[tuple[int, int], tuple[str, dict]] = {}
        pattern = _CHIP_RE[self.product]
        for name in scene.names[self.product]:
            match = pattern.match(name)
            if match is None:
                self.skip(f"{self.product} file not named <Type>_x<cx>_y<cy>[_pol].tif", f"{scene.where}: {name}")
                continue
            centre = (int(match["x"]), int(match["y"]))
            if match["pol"]:
                channels: tuple[str, ...] = (match["pol"].upper(),)
            elif self.product == "Patch_Uint8" and pol_mode != "SV":
                raise SourceFormatError(f"{scene.where}: {name}", "polarisation suffix",
                                        "_vv or _vh on Patch_Uint8 chips of a dual-pol scene", name)
            else:
                channels = _SCENE_CHANNELS[pol_mode]
            type_text, files = chips.setdefault(centre, (match["type"], {}))
            for pol in channels:
                if pol in files:
                    raise SourceFormatError(f"{scene.where}: {name}", "file name",
                                            f"one {self.product} chip per centre and polarisation", name)
                files[pol] = (name, channels)
        return chips

    def _image(self, scene: _Scene, files: dict, pols: list[str], values: str) -> ImageRef:
        """One ImageRef for ``pols``: the first polarisation's file, plus the other files as ``extra``."""
        order: list[tuple[str, tuple[str, ...]]] = []
        for pol in pols:
            if files[pol] not in order:
                order.append(files[pol])
        stacked = [c for _, channels in order for c in channels]
        bands = tuple(stacked.index(p) for p in pols)
        path, member = scene.ref(self.product, order[0][0])
        extra = tuple((*scene.ref(self.product, name), channels) for name, channels in order[1:])
        options: tuple[tuple[str, Any], ...] = (("values", values), ("channels", order[0][1]))
        if extra:
            options += (("extra", extra),)
        return ImageRef(path, member, format="opensarship",
                        bands=None if bands == tuple(range(len(stacked))) else bands, options=options)
