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
