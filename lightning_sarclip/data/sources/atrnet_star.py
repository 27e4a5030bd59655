"""ATRNet-STAR (NUDT, Liu et al.): 128x128 vehicle chips, X/Ku band, 40 vehicle types, one XML per chip.

Tree (the release's "hierarchical structure")::

    <root>/<Setting>/<split>/<Type>/<BAND>_<POL>_<DEP>_<AZI>_<ID>.tif   (ground range, uint8)   + same-stem .xml
    <root>/<Setting>/<split>/<Type>/<stem>.mat   (slant range, data_hh/hv/vh/vv complex)        + same-stem .xml

``Setting`` is ``SOC_40classes`` (the default; the union of its train and test is the whole release) or one of the
EOC re-slicings; ``SOC_50classes`` is refused because its 10 extra classes are MSTAR, read by the ``mstar`` source.
Split folders are ``train``, ``test`` and ``test_<subset>`` (EOC: ``test_30``, ``test_VV``, ``test_urban`` ...),
the latter read as ``test`` with ``metadata["test_subset"]``.

Labels come from each XML's ``object/type`` (kept verbatim, spaces and apostrophes included), never from a list
order: the published type list is not in ``target_id`` order. Both known object schemas are read:
``{class, subclass, type}`` (ground range) and ``{category, class, type}`` (slant range).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lightning_sarclip.data.formats import read_mat  # noqa: F401  (importing it registers the mat format)
from lightning_sarclip.data.records import Box, ImageRef, SARRecord
from lightning_sarclip.data.sources._metadata import (
    ANGLE_0_90,
    ANGLE_0_360,
    POSITIVE,
    NumberRange,
    checked_number,
)
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    register_source,
)

#: The 40 vehicle types (spelling as published, including ``"Chery_Arrizo 5"``); the order carries no meaning.
TYPES = (
    "Great_Wall_Voleex_C50", "Hongqi_h5", "Hongqi_CA7180A3E", "Chang'an_CS75_Plus", "Chevrolet_Blazer_1998",
    "Changfeng_Cheetah_CFA6473C", "Jeep_Patriot", "Mitsubishi_Outlander_2003", "Lincoln_MKC", "Hawtai_EV160B",
    "Chery_qq3", "Buick_Excelle_GT", "Chery_Arrizo 5", "Lveco_Proud_2009", "JINBEI_SY5033XJH", "Changlin_8228-5",
    "SDLG_ZL40F", "Foton_BJ1045V9JB5-54", "FAW_Jiabao_T51", "WAW_Aochi_1800", "Huanghai_N1", "Great_Wall_poer",
    "CNHTC_HOWO", "Dongfeng_Tianjin_DFH2200B", "WAW_Aochi_Hongrui", "Dongfeng_Duolika", "JAC_Junling", "FAW_J6P",
    "SHACMAN_DeLong_M3000", "Hyundai_HLF25_II", "Dongfeng_Tianjin_KR230", "SHACMAN_DeLong_X3000",
    "Wuling_Rongguang_V", "Buick_GL8", "Chang'an_Starlight_4500", "Dongfeng_Forthing_Lingzhi", "Yangzi_YZK6590XCA",
    "Dongfeng_EQ6608LTV", "MAXUS_V80", "Yutong_ZK6120HY1",
)
SETTINGS = ("SOC_40classes", "EOC_scene", "EOC_depression", "EOC_azimuth", "EOC_band", "EOC_pol")
PRODUCTS = {"ground_range": (".tif", ".tiff"), "slant_range": (".mat",)}
SLANT_KEYS = ("data_hh", "data_hv", "data_vh", "data_vv")
_SPLIT = re.compile(r"^(train|test)(?:_(.+))?$")
_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:m|°|deg)?\s*$")
#: Sensor fields of the XML -> (metadata key, valid range; ``None`` for text). Numbers out of range are left out.
_SENSOR_FIELDS: dict[str, tuple[str, NumberRange | None]] = {
    "platform": ("platform", None), "imaging_mode": ("imaging_mode", None), "band": ("band", None),
    "polarization": ("polarization", None), "range_resolution": ("range_resolution_m", POSITIVE),
    "cross_range_resolution": ("cross_range_resolution_m", POSITIVE), "depression_angle": ("depression_deg", ANGLE_0_90),
    "target_azimuth_angle": ("azimuth_deg", ANGLE_0_360),
}
_SIZE_FIELDS = {"length": "length_m", "width": "width_m", "height": "height_m"}


def _number(xml: Path, field: str, text: str | None) -> float:
    """``"4.8m"`` / ``"15°"`` / ``"25"`` -> float; anything else is a format error naming the field."""
    match = _NUMBER.match(text or "")
    if match is None:
        raise SourceFormatError(xml, field, "a number, optionally followed by 'm' or '°'", text)
    return float(match.group(1))


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


@register_source("atrnet_star")
class ATRNetSTAR(SARSource):
    """ATRNet-STAR chips of one setting (see the module docstring for the tree).

    Args:
        root: the folder holding the setting folders (``SOC_40classes/`` ...) or the setting folder itself.
        split: ``train``, ``test`` or ``all``.
        setting: which re-slicing to read; ``SOC_40classes`` covers every chip once.
        product: ``ground_range`` (uint8 ``.tif``), ``slant_range`` (complex ``.mat``) or ``None`` to detect it.
        allowed_roots: folders outside ``root`` that symlinks may lead to (``SARSource.contained``).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    classnames: ClassVar[list[str]] = sorted(TYPES)
    default_policy: ClassVar[str | dict] = "integer"
    caption_fields: ClassVar[tuple[str, ...]] = (
        "subclass", "category", "length_m", "width_m", "height_m", "scene", "band", "polarization",
        "depression_deg", "azimuth_deg",
    )

    def __init__(self, root: str | Path, split: str = "train", setting: str = "SOC_40classes",
                 product: str | None = None, *, allowed_roots: Sequence[str | Path] = ()) -> None:
        super().__init__(root, split, allowed_roots=allowed_roots)
        if setting == "SOC_50classes":
            raise ValueError("atrnet_star: SOC_50classes adds the 10 MSTAR classes; read MSTAR with the 'mstar' "
                             "source and ATRNet-STAR with setting='SOC_40classes'")
        if setting not in SETTINGS:
            raise ValueError(f"atrnet_star: setting must be one of {SETTINGS}, got {setting!r}")
        if product is not None and product not in PRODUCTS:
            raise ValueError(f"atrnet_star: product must be one of {sorted(PRODUCTS)} or None, got {product!r}")
        self.setting = setting
        self.base = self.root if self.root.name == setting else self.root / setting
        if not self.base.is_dir():
            raise DatasetNotFoundError(f"atrnet_star: {self.base} not found. {self.expected_layout()}")
        self.product = product or self._detect_product()
        if self.product == "slant_range":
            self.default_policy = {"name": "percentile", "low": 1.0, "high": 99.0, "in_db": True}

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected <root>/<Setting>/<train|test|test_*>/<Type>/<BAND>_<POL>_<DEP>_<AZI>_<ID>.tif with a same-stem "
            ".xml (slant range: .mat + .xml), Setting one of " + ", ".join(SETTINGS) + ". See data_cards/atrnet_star.md."
        )

    def _detect_product(self) -> str:
        suffixes: set[str] = set()
        for split_dir in sorted(p for p in self.base.iterdir() if p.is_dir()):
            for type_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                suffixes |= {p.suffix.lower() for p in type_dir.iterdir() if p.is_file()}
                if suffixes & {".tif", ".tiff", ".mat"}:
                    break
        found = [name for name, ext in PRODUCTS.items() if suffixes & set(ext)]
        if len(found) != 1:
            raise DatasetNotFoundError(
                f"atrnet_star: cannot tell the product under {self.base}: found "
                f"{'both .tif and .mat chips' if found else 'no .tif or .mat chips'}; pass product='ground_range' "
                f"or 'slant_range'. {self.expected_layout()}"
            )
        return found[0]

    def _records(self) -> Iterator[SARRecord]:
        for split_dir in sorted(p for p in self.base.iterdir() if p.is_dir()):
            match = _SPLIT.match(split_dir.name)
            if match is None:
                raise SourceFormatError(split_dir, "split folder", "train, test or test_<subset>", split_dir.name)
            split, subset = match.group(1), match.group(2)
            if subset is not None and split == "train":
                raise SourceFormatError(split_dir, "split folder", "train, test or test_<subset>", split_dir.name)
            if not self.wants(split):
                continue
            for type_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                yield from self._type_records(type_dir, split, subset)

    def _type_records(self, type_dir: Path, split: str, subset: str | None) -> Iterator[SARRecord]:
        image_suffixes = PRODUCTS[self.product]
        xmls: dict[str, Path] = {}
        images: dict[str, Path] = {}
        for file in type_dir.iterdir():
            suffix = file.suffix.lower()
            if suffix == ".xml":
                xmls[file.stem] = file
            elif suffix in image_suffixes:
                images[file.stem] = file
            else:
                self.skip(f"not a {self.product} chip or annotation", file)
        for stem in sorted(set(xmls) | set(images)):
            if stem not in images:
                raise SourceFormatError(xmls[stem], "image", f"a same-stem {'/'.join(image_suffixes)} chip next to it")
            if stem not in xmls:
                raise SourceFormatError(images[stem], "annotation", "a same-stem .xml next to it")
            yield self._record(self.contained(images[stem]), self.contained(xmls[stem]), split, subset)

    def _record(self, image: Path, xml: Path, split: str, subset: str | None) -> SARRecord:
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as err:
            raise SourceFormatError(xml, "XML", "well-formed XML", str(err)) from err
        objects = list(tree.iter("object"))
        if not objects:
            raise SourceFormatError(xml, "object", "at least one <object> element")
        metadata: dict[str, Any] = {"sensor": "NUDT airborne SAR (ATRNet-STAR)", "setting": self.setting,
                                    "product": self.product}
        if subset is not None:
            metadata["test_subset"] = subset
        boxes, labels = [], []
        for index, obj in enumerate(objects):
            label, object_meta, box = self._object(xml, obj)
            labels.append(label)
            if box is not None:
                boxes.append(box)
            if index == 0:
                metadata.update(object_meta)
        self._sensor(xml, tree, metadata)
        size = None
        image_node = tree.find("image")
        if image_node is not None and _text(image_node, "width") and _text(image_node, "height"):
            size = (int(_number(xml, "image/width", _text(image_node, "width"))),
                    int(_number(xml, "image/height", _text(image_node, "height"))))
            if (fmt := _text(image_node, "format")) is not None:
                metadata["image_format"] = fmt
        if self.product == "slant_range":
            ref = ImageRef(str(image), format="mat", options=(("mat_key", SLANT_KEYS),))
            metadata["channels"] = "HH,HV,VH,VV"
        else:
            ref = ImageRef(str(image))
        return SARRecord(self.name, image.relative_to(self.base.parent).as_posix(), split, ref,
                         labels=list(dict.fromkeys(labels)), boxes=boxes, metadata=metadata, size=size)

    def _object(self, xml: Path, obj: ET.Element) -> tuple[str, dict[str, Any], Box | None]:
        label = _text(obj, "type")
        if label not in TYPES:
            raise SourceFormatError(xml, "object/type", "one of the 40 ATRNet-STAR vehicle types", label)
        meta: dict[str, Any] = {}
        if obj.find("subclass") is not None:  # ground-range schema: class = category, subclass
            meta["category"], meta["subclass"] = _text(obj, "class"), _text(obj, "subclass")
        elif obj.find("category") is not None:  # slant-range schema: category, class = subclass
            meta["category"], meta["subclass"] = _text(obj, "category"), _text(obj, "class")
        else:
            raise SourceFormatError(xml, "object", "either {class, subclass, type} or {category, class, type}")
        if (target_id := _text(obj, "target_id")) is not None:
            meta["target_id"] = int(_number(xml, "object/target_id", target_id))
        for tag, key in _SIZE_FIELDS.items():
            if (value := _text(obj, tag)) is not None:
                self._describing(meta, key, xml, f"object/{tag}", _number(xml, f"object/{tag}", value), POSITIVE)
        corners = {tag: _text(obj, tag) for tag in ("xmin", "ymin", "xmax", "ymax")}
        box = None
        if any(value is not None for value in corners.values()):
            x0, y0, x1, y1 = (_number(xml, f"object/{tag}", value) for tag, value in corners.items())
            if x1 <= x0 or y1 <= y0:
                raise SourceFormatError(xml, "object/xmin..ymax", "xmin < xmax and ymin < ymax", (x0, y0, x1, y1))
            box = Box(label, x0, y0, x1, y1)
        return label, meta, box

    def _sensor(self, xml: Path, tree: ET.Element, metadata: dict[str, Any]) -> None:
        if (scene := _text(tree.find("scene"), "scene_name")) is not None:
            metadata["scene"] = scene
        sensor = tree.find("sensor")
        for tag, (key, valid) in _SENSOR_FIELDS.items():
            value = _text(sensor, tag)
            if value is None:
                continue
            if valid is None:
                metadata[key] = value
            else:
                self._describing(metadata, key, xml, f"sensor/{tag}", _number(xml, f"sensor/{tag}", value), valid)
        if "band" in metadata:
            metadata["band"] = {"KU": "Ku", "X": "X"}.get(metadata["band"].upper(), metadata["band"])
        if "range_resolution_m" in metadata:
            metadata["resolution_m"] = metadata["range_resolution_m"]

    def _describing(self, metadata: dict[str, Any], key: str, xml: Path, field: str, value: float,
                    valid: NumberRange) -> None:
        """Put a caption number into ``metadata`` when it lies in ``valid``; otherwise leave it out (counted)."""
        checked = checked_number(value, field, valid, file=xml, skip=self.skip)
        if checked is not None:
            metadata[key] = checked
