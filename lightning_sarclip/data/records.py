"""``SARRecord``: the one thing a source reader produces (the contract between readers and everything else).

A record names an image (lazily: an :class:`ImageRef`, never pixels) and what the source knows about it:
image-level labels, boxes, free metadata (sensor, polarisation, serial, azimuth ...), and captions the source
already ships (SARLANG-1M). Captions for label-only sources are written later by
:mod:`lightning_sarclip.data.captions`; pixels are read by :mod:`lightning_sarclip.data.io` and converted to model
input by :mod:`lightning_sarclip.data.transforms`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Separator between nested archive members: ``ImageRef("OpenSARShip_2.zip", "S1A_x.zip!/Patch/a.tif")``.
MEMBER_SEP = "!/"

#: The cells of an image's 3x3 grid in reading order: where detection summaries put objects, how captions and
#: synthetic scenes name positions.
GRID_POSITIONS: tuple[str, ...] = (
    "upper left", "top", "upper right", "left", "center", "right", "lower left", "bottom", "lower right",
)


#: Size bins of an object group (the median box side relative to the image).
OBJECT_SIZES: tuple[str, ...] = ("small", "medium", "large")


@dataclass(frozen=True)
class ObjectGroup:
    """Objects of one class in one cell of the image's 3x3 grid: the typed entries of ``metadata["objects"]``.

    Detection sources summarise their boxes into these (:func:`~lightning_sarclip.data.detection.summarize_boxes`)
    and the captioner writes counts and positions from them. The corpus stores them as plain dicts
    (:meth:`as_dict`); :meth:`parse` reads a dict back and names the record, index and field of a bad value.
    """

    label: str
    count: int
    position: str
    size: str | None = None

    def __post_init__(self) -> None:
        problem = _object_problem(self.label, self.count, self.position, self.size)
        if problem:
            raise ValueError(f"ObjectGroup: {problem}")

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "count": self.count, "position": self.position, "size": self.size}

    @classmethod
    def parse(cls, value: Any, where: str) -> ObjectGroup:
        """An :class:`ObjectGroup` from itself or a dict; ``where`` names the entry in the error."""
        if isinstance(value, ObjectGroup):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a dict, got {type(value).__name__}")
        problem = _object_problem(value.get("label"), value.get("count"), value.get("position"), value.get("size"))
        if problem:
            raise ValueError(f"{where}: {problem}")
        return cls(value["label"], value["count"], value["position"], value.get("size"))


def _object_problem(label: Any, count: Any, position: Any, size: Any) -> str | None:
    if not isinstance(label, str) or not label.strip():
        return f"'label' must be a non-empty string, got {label!r}"
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return f"'count' must be an integer >= 1, got {count!r}"
    if position not in GRID_POSITIONS:
        return f"'position' must be one of {GRID_POSITIONS}, got {position!r}"
    if size is not None and (not isinstance(size, str) or not size.strip()):
        return f"'size' must be a size bin name (e.g. one of {OBJECT_SIZES}) or null, got {size!r}"
    return None


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives.

    Args:
        path: file on disk, or the (outer) zip archive holding it.
        member: path inside the archive; nested archives are joined with ``"!/"``.
        format: reader name (``png``, ``jpeg``, ``bmp``, ``tiff``, ``mstar_raw``, ``mat`` ...); ``None`` = from the
            file suffix.
        bands: band/channel indices to keep, in order (e.g. ``(0, 1)`` for VV, VH); ``None`` keeps all.
        window: crop ``(x0, y0, x1, y1)`` in pixels, applied after reading (object chips).
        options: reader-specific settings as ``(key, value)`` pairs (hashable), e.g. ``(("mat_key", "s"),)``.
    """

    path: str
    member: str | None = None
    format: str | None = None
    bands: tuple[int, ...] | None = None
    window: tuple[int, int, int, int] | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """Human-readable location for error messages: ``archive.zip!/inner.zip!/file.tif`` or the path."""
        return f"{self.path}{MEMBER_SEP}{self.member}" if self.member else self.path

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class Box:
    """An object annotation in pixel coordinates (``x1``/``y1`` exclusive); ``angle`` in degrees for rotated boxes."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float
    angle: float | None = None
    difficult: bool = False

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)


@dataclass
class SARRecord:
    """One image of one source, with everything the source says about it.

    Args:
        source: registry name of the source (``mstar``, ``opensarship`` ...).
        source_id: stable id within the source (relative path or the source's own id); with ``source`` it is the
            key used for de-duplication and leakage checks.
        split: the source's official split (``train``, ``val``, ``test``) or ``all`` when it has none.
        image: where the pixels are.
        labels: image-level class names (classification sources; a detection image's classes go in ``boxes``).
        boxes: object annotations (detection sources).
        metadata: what else the source knows (sensor, band, polarization, resolution_m, serial, azimuth_deg ...).
        captions: captions the source ships (SARLANG-1M, user tables); empty for label-only sources.
        size: ``(width, height)`` when known without reading pixels.
    """

    source: str
    source_id: str
    split: str
    image: ImageRef
    labels: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        return f"{self.source}:{self.source_id}"

    @property
    def label(self) -> str | None:
        """The single image-level label, when there is exactly one."""
        return self.labels[0] if len(self.labels) == 1 else None


def metadata_json_default(value: Any) -> Any:
    """``json.dumps(..., default=metadata_json_default)``: typed metadata values as plain JSON."""
    if isinstance(value, ObjectGroup):
        return value.as_dict()
    return str(value)
