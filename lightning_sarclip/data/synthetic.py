"""Procedural synthetic SAR scenes with captions: the quickstart data set and the test-suite workhorse.

Real SAR archives are large and licence-bound, so the framework ships a generator that produces small,
deterministic, *learnable* scenes whose captions are written from the scene itself. The rendering follows
the imaging physics just closely enough that the signatures a SAR model has to learn are the right ones:

* **Geometry.** The radar looks from the left (near range at ``x = 0``, range increases with ``x``), so
  radar shadows fall to the right of elevated objects (towards far range) and building layover falls
  to the left (towards the sensor). Backscatter also falls off slightly with range (incidence angle).
* **Reflectivity.** Scenes are composed in linear intensity (sigma0): dark sea clutter with wind streaks,
  brighter land with field patches, roads and correlated texture, and bright man-made targets whose
  strong scatterers are drawn as point responses with the separable ``sinc^2`` side-lobe cross of a
  focused SAR impulse response. A thermal noise floor (NESZ) is added everywhere, so shadows are not
  exactly zero.
* **Speckle.** Fully developed multilook speckle is multiplicative: intensity times Gamma(L, 1/L) noise,
  i.e. unit mean and coefficient of variation ``1 / sqrt(L)``.
* **Display.** Intensity is converted to dB and mapped to ``[0, 1]`` through a *fixed* window
  :data:`DB_WINDOW` (``[-25, +5]`` dB). A fixed window (instead of per-image min/max stretching) keeps
  pixel values comparable across scenes and keeps the VV/VH ratio visible in dual-pol images; -25 dB sits
  just above the noise floor and +5 dB saturates only man-made scatterers.
* **Dual-pol.** Channel 2 (VH) is the same scene scaled by a per-scatterer cross-pol ratio (volume
  scattering depolarises more than sea or double-bounce returns) with independent speckle.

Each scene holds one target class (:data:`SYNTHETIC_CLASSES`, the class index is the label) with one to
four non-overlapping instances. Layout, captions and speckle draw from independent random streams spawned
from the seed, so the same seed gives the same scene and captions for any ``in_chans`` or ``looks``.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_sarclip.data.records import GRID_POSITIONS

SYNTHETIC_CLASSES: tuple[str, ...] = ("ship", "vehicle", "aircraft", "building", "bridge")
"""Target classes; the position in this tuple is the class index used as label."""

SPLITS: tuple[str, ...] = ("train", "val", "test")

DB_WINDOW: tuple[float, float] = (-25.0, 5.0)
"""dB range mapped linearly onto [0, 1]; values outside are clipped."""

NESZ_DB: float = -30.0
"""Noise-equivalent sigma zero: the thermal noise floor added to every pixel (what a shadow shows)."""

MAX_INSTANCES: int = 4

_PLURALS = {"ship": "ships", "vehicle": "vehicles", "aircraft": "aircraft", "building": "buildings",
            "bridge": "bridges"}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
# Reading order of the 3x3 grid, with the preposition each cell takes in English.
_GRID_PREPOSITIONS = ("in the", "at the", "in the", "on the", "at the", "on the", "in the", "at the", "in the")
# (min, max) instance counts per class; bridges are mostly single, see _instance_count.
_COUNT_RANGE = {"ship": (1, 4), "vehicle": (1, 4), "aircraft": (1, 3), "building": (1, 4), "bridge": (1, 2)}


def _db(value_db: float | np.ndarray) -> float | np.ndarray:
    """dB to linear intensity."""
    return 10.0 ** (value_db / 10.0)


# ----------------------------------------------------------------------------------------------------------
# Sensor model: speckle and display window (public so tests and notebooks can check the statistics).
# ----------------------------------------------------------------------------------------------------------


def apply_speckle(intensity: np.ndarray, looks: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply a noiseless intensity image by L-look speckle, Gamma(shape=L, scale=1/L).

    The Gamma law is the intensity distribution of an L-look average of fully developed speckle; it has
    unit mean (the reflectivity is preserved on average) and coefficient of variation ``1 / sqrt(L)``.
    """
    if looks < 1:
        raise ValueError(f"looks must be >= 1, got {looks}")
    noise = rng.gamma(shape=float(looks), scale=1.0 / float(looks), size=intensity.shape)
    return (intensity * noise).astype(np.float32)


def intensity_to_unit(intensity: np.ndarray, db_window: tuple[float, float] = DB_WINDOW) -> np.ndarray:
    """Map linear intensity to float32 in [0, 1] through a fixed dB window (see module docstring)."""
    lo, hi = db_window
    db = 10.0 * np.log10(np.maximum(intensity, 1e-12, dtype=np.float32))
    return np.clip((db - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Geometry helpers. Pixel (row r, col c) covers [c, c+1) x [r, r+1); its centre is (c + 0.5, r + 0.5).
# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _centers(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float32) + 0.5


@functools.lru_cache(maxsize=16)
def _freqs(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(size)[:, None].astype(np.float32), np.fft.rfftfreq(size)[None, :].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, sigma_along: float, sigma_across: float,
                  angle: float = 0.0) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field, correlated by an (anisotropic) Gaussian kernel.

    Filtering in the Fourier domain costs the same for any correlation length, which keeps scene
    generation in the sub-millisecond range. ``angle`` is the direction of the long correlation axis.
    """
    fy, fx = _freqs(size)
    c, s = math.cos(angle), math.sin(angle)
    f_along = fx * c + fy * s
    f_across = -fx * s + fy * c
    transfer = np.exp(-2.0 * math.pi ** 2 * (sigma_along ** 2 * f_along ** 2 + sigma_across ** 2 * f_across ** 2))
    white = rng.standard_normal((size, size), dtype=np.float32)
    field_ = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(size, size)).astype(np.float32)
    field_ -= field_.mean()
    return field_ / (field_.std() + 1e-8)


@dataclass(frozen=True)
class _Rect:
    """Oriented rectangle primitive of a target template, relative to the instance centre.

    ``mode`` says how it composes with what is below: ``paint`` replaces, ``add`` adds power (layover),
    ``scale`` multiplies (a dark ship wake). ``body`` rects count for the bounding box, ``occluder`` rects
    cast the radar shadow.
    """

    dx: float
    dy: float
    half_len: float
    half_wid: float
    angle: float
    value: float
    xpol_db: float
    mode: str = "paint"
    body: bool = True
    occluder: bool = True

    def extent(self) -> tuple[float, float, float, float]:
        c, s = abs(math.cos(self.angle)), abs(math.sin(self.angle))
        ex = self.half_len * c + self.half_wid * s + 0.5
        ey = self.half_len * s + self.half_wid * c + 0.5
        return self.dx - ex, self.dy - ey, self.dx + ex, self.dy + ey


@dataclass(frozen=True)
class _Point:
    """Strong point scatterer (corner, engine, superstructure) relative to the instance centre."""

    dx: float
    dy: float
    value: float
    xpol_db: float


@dataclass
class _Template:
    rects: list[_Rect]
    points: list[_Point]
    shadow_px: int
    attrs: dict = field(default_factory=dict)

    def extent(self, body_only: bool) -> tuple[float, float, float, float]:
        boxes = [r.extent() for r in self.rects if r.body or not body_only]
        return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes))


def _rect_mask(size: int, cx: float, cy: float, half_len: float, half_wid: float, angle: float) -> np.ndarray:
    """Anti-aliased (1-pixel soft edge) mask of an oriented rectangle, computed only on its window."""
    mask = np.zeros((size, size), dtype=np.float32)
    c, s = math.cos(angle), math.sin(angle)
    ex = half_len * abs(c) + half_wid * abs(s) + 1.0
    ey = half_len * abs(s) + half_wid * abs(c) + 1.0
    c0, c1 = max(0, int(cx - ex)), min(size, int(math.ceil(cx + ex)) + 1)
    r0, r1 = max(0, int(cy - ey)), min(size, int(math.ceil(cy + ey)) + 1)
    if c0 >= c1 or r0 >= r1:
        return mask
    centers = _centers(size)
    dx = centers[None, c0:c1] - cx
    dy = centers[r0:r1, None] - cy
    u = np.abs(dx * c + dy * s)
    v = np.abs(dy * c - dx * s)
    mask[r0:r1, c0:c1] = np.clip(half_len + 0.5 - u, 0.0, 1.0) * np.clip(half_wid + 0.5 - v, 0.0, 1.0)
    return mask


class _Canvas:
    """Noiseless co-pol (VV) and, for dual-pol, cross-pol (VH) reflectivity being composed."""

    def __init__(self, vv: np.ndarray, xpol_db: float | None) -> None:
        self.vv = vv.astype(np.float32)
        self.size = vv.shape[0]
        self.vh = None if xpol_db is None else self.vv * np.float32(_db(xpol_db))

    def paint(self, mask: np.ndarray, value: float, xpol_db: float) -> None:
        self.vv += mask * (np.float32(value) - self.vv)
        if self.vh is not None:
            self.vh += mask * (np.float32(value * _db(xpol_db)) - self.vh)

    def add(self, power: np.ndarray, xpol_db: float) -> None:
        self.vv += power
        if self.vh is not None:
            self.vh += power * np.float32(_db(xpol_db))

    def scale(self, mask: np.ndarray, factor: float) -> None:
        gain = 1.0 - mask * np.float32(1.0 - factor)
        self.vv *= gain
        if self.vh is not None:
            self.vh *= gain

    def rect(self, r: _Rect, cx: float, cy: float) -> np.ndarray:
        mask = _rect_mask(self.size, cx + r.dx, cy + r.dy, r.half_len, r.half_wid, r.angle)
        if r.mode == "paint":
            self.paint(mask, r.value, r.xpol_db)
        elif r.mode == "add":
            self.add(mask * np.float32(r.value), r.xpol_db)
        else:
            self.scale(mask, r.value)
        return mask

    def point(self, x: float, y: float, value: float, xpol_db: float, reach: int = 4) -> None:
        """Add a focused point response: separable sinc^2 with its -13 dB side-lobe cross, truncated."""
        c0, c1 = max(0, int(x) - reach), min(self.size, int(x) + reach + 1)
        r0, r1 = max(0, int(y) - reach), min(self.size, int(y) + reach + 1)
        if c0 >= c1 or r0 >= r1:
            return
        centers = _centers(self.size)
        px = np.sinc(centers[c0:c1] - x) ** 2
        py = np.sinc(centers[r0:r1] - y) ** 2
        power = np.zeros((self.size, self.size), dtype=np.float32)
        power[r0:r1, c0:c1] = value * np.outer(py, px)
        self.add(power, xpol_db)

    def shadow(self, occluder: np.ndarray, length: int) -> None:
        """Blank the ground behind ``occluder`` along range (+x) for ``length`` pixels."""
        if length <= 0:
            return
        cast = np.zeros_like(occluder)
        for shift in range(1, length + 1):
            np.maximum(cast[:, shift:], occluder[:, :-shift], out=cast[:, shift:])
        cast *= 1.0 - np.minimum(occluder, 1.0)
        self.scale(cast, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Backgrounds.
# ----------------------------------------------------------------------------------------------------------


def _range_ramp(size: int, slope_db: float) -> np.ndarray:
    """Incidence-angle fall-off: +slope/2 dB at near range (left) to -slope/2 dB at far range (right)."""
    return (slope_db * (0.5 - _centers(size) / size))[None, :].astype(np.float32)


def _sea_db(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sea clutter: dark, smooth, with wind streaks elongated along a random wind direction."""
    scale = size / 64.0
    base = rng.uniform(-21.0, -17.0)
    wind = _smooth_noise(rng, size, 6.0 * scale, 1.2 * scale, rng.uniform(0.0, math.pi))
    swell = _smooth_noise(rng, size, 1.0, 1.0)
    return base + _range_ramp(size, rng.uniform(1.0, 3.0)) + rng.uniform(0.5, 1.2) * wind + 0.4 * swell


def _land_db(rng: np.random.Generator, size: int) -> np.ndarray:
    """Land clutter: brighter, agricultural field patches (Voronoi cells), correlated texture, dark roads."""
    scale = size / 64.0
    base = rng.uniform(-10.0, -7.0)
    n_fields = int(rng.integers(4, 11))
    seeds = rng.uniform(0.0, size, size=(n_fields, 2)).astype(np.float32)
    centers = _centers(size)
    d2 = (centers[None, None, :] - seeds[:, 0, None, None]) ** 2 + (centers[None, :, None] - seeds[:, 1, None, None]) ** 2
    offsets = rng.normal(0.0, 2.0, size=n_fields).astype(np.float32)
    out = base + offsets[np.argmin(d2, axis=0)]
    texture = _smooth_noise(rng, size, rng.uniform(1.0, 3.0) * scale, rng.uniform(1.0, 3.0) * scale)
    out = out + rng.uniform(0.8, 1.6) * texture + _range_ramp(size, rng.uniform(0.0, 1.5))
    if rng.random() < 0.35:  # a road: smooth asphalt, specular, hence dark
        mask = _rect_mask(size, rng.uniform(0, size), rng.uniform(0, size), 2.0 * size, 0.6 * max(scale, 1.0),
                          rng.uniform(0.0, math.pi))
        out = out + mask * (rng.uniform(-20.0, -17.0) - out)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Target templates, one per class (bridges are built with their river, see _bridge_scene).
# ----------------------------------------------------------------------------------------------------------


def _ship(rng: np.random.Generator, scale: float) -> _Template:
    """Elongated bright hull, bright superstructure near the stern, strong bow/stern points, optional wake."""
    size_class = rng.choice(["small", "medium", "large"])
    length = {"small": rng.uniform(5.0, 8.0), "medium": rng.uniform(8.0, 12.0),
              "large": rng.uniform(12.0, 18.0)}[size_class] * scale
    width = max(1.0, length * rng.uniform(0.14, 0.2))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ax, ay = math.cos(angle), math.sin(angle)
    hull = rng.uniform(1.0, 3.0)
    rects = [_Rect(0.0, 0.0, length / 2, width / 2, angle, hull, -8.0)]
    rects.append(_Rect(-0.3 * length * ax, -0.3 * length * ay, 0.12 * length, 0.4 * width, angle,
                       hull * rng.uniform(2.0, 4.0), -7.0))
    if rng.random() < 0.4:  # turbulent wake behind the stern damps the Bragg waves: a dark trail
        wake = length * rng.uniform(0.8, 1.6)
        back = length / 2 + wake / 2
        rects.append(_Rect(-back * ax, -back * ay, wake / 2, 0.6 * width, angle, 0.35, 0.0, mode="scale",
                           body=False, occluder=False))
    points = [_Point(0.45 * length * ax, 0.45 * length * ay, _db(rng.uniform(12.0, 17.0)), -9.0),
              _Point(-0.4 * length * ax, -0.4 * length * ay, _db(rng.uniform(13.0, 18.0)), -9.0)]
    shadow = max(1, round(length / 8))
    return _Template(rects, points, shadow, {"length_px": round(length, 1), "size": str(size_class),
                                             "angle_deg": round(math.degrees(angle) % 360.0, 1)})


def _vehicle(rng: np.random.Generator, scale: float) -> _Template:
    """Small compact bright blob with two or three strong point scatterers (cab edges, corners)."""
    length = max(2.0, rng.uniform(3.0, 5.0) * scale)
    width = max(1.5, rng.uniform(1.8, 2.6) * scale)
    angle = rng.uniform(0.0, math.pi)
    ax, ay = math.cos(angle), math.sin(angle)
    rects = [_Rect(0.0, 0.0, length / 2, width / 2, angle, _db(rng.uniform(3.0, 7.0)), -6.0)]
    points = []
    for _ in range(int(rng.integers(2, 4))):
        t, w = rng.uniform(-0.4, 0.4) * length, rng.uniform(-0.35, 0.35) * width
        points.append(_Point(t * ax - w * ay, t * ay + w * ax, _db(rng.uniform(10.0, 16.0)), -8.0))
    return _Template(rects, points, max(1, round(1.5 * scale)), {"length_px": round(length, 1),
                                                                 "angle_deg": round(math.degrees(angle), 1)})


def _aircraft(rng: np.random.Generator, scale: float) -> _Template:
    """Cross / T shape: fuselage, swept-less wings a little forward of centre, small tailplane, engines."""
    length = rng.uniform(11.0, 17.0) * scale
    span = length * rng.uniform(0.8, 1.05)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ax, ay = math.cos(angle), math.sin(angle)
    px, py = -ay, ax  # unit vector along the wings
    value = _db(rng.uniform(2.0, 6.0))
    fus_w = max(1.0, 0.09 * length)
    chord = max(1.2, 0.14 * length)
    wing_at = 0.05 * length
    tail_at = -0.42 * length
    rects = [
        _Rect(0.0, 0.0, length / 2, fus_w / 2, angle, value, -6.0),
        _Rect(wing_at * ax, wing_at * ay, span / 2, chord / 2, angle + math.pi / 2, value, -6.0),
        _Rect(tail_at * ax, tail_at * ay, 0.18 * span, max(0.8, 0.05 * length), angle + math.pi / 2, value,
              -6.0),
    ]
    engine = _db(rng.uniform(10.0, 14.0))
    points = [_Point(wing_at * ax + k * 0.25 * span * px, wing_at * ay + k * 0.25 * span * py, engine, -8.0)
              for k in (-1.0, 1.0)]
    points.append(_Point(0.48 * length * ax, 0.48 * length * ay, engine, -8.0))
    return _Template(rects, points, max(1, round(2.5 * scale)), {"length_px": round(length, 1),
                                                                 "angle_deg": round(math.degrees(angle), 1)})


def _building(rng: np.random.Generator, scale: float) -> _Template:
    """Roof, layover towards the sensor, bright L of double-bounce wall/ground edges, trihedral corner.

    The two walls that face the radar (outward normal pointing to -x) form dihedrals with the ground and
    return strongly at the wall foot: that is the bright L. Orientation is kept 15-75 degrees off the range
    axis so both walls of the L are visible; their brightness grows as they turn to face the sensor.
    """
    half_u = rng.uniform(3.0, 6.5) * scale
    half_v = rng.uniform(2.5, 5.0) * scale
    angle = rng.uniform(math.radians(15.0), math.radians(75.0)) * rng.choice([-1.0, 1.0])
    height = rng.uniform(2.0, 6.0) * scale
    layover = 0.6 * height
    roof = _db(rng.uniform(-9.0, -5.0))
    rects = [
        _Rect(-layover, 0.0, half_u, half_v, angle, _db(rng.uniform(-7.0, -4.0)), -7.0, mode="add", occluder=False),
        _Rect(0.0, 0.0, half_u, half_v, angle, roof, -7.0),
    ]
    c, s = math.cos(angle), math.sin(angle)
    edges = [((c, s), half_u, half_v), ((-c, -s), half_u, half_v), ((-s, c), half_v, half_u), ((s, -c), half_v, half_u)]
    bright = _db(rng.uniform(8.0, 12.0))
    corner = [0.0, 0.0]
    for (nx, ny), offset, half_len in edges:
        if nx >= 0.0:  # wall faces away from the sensor: no double bounce
            continue
        along = math.atan2(nx, -ny)  # edge direction, perpendicular to its normal
        rects.append(_Rect(nx * offset, ny * offset, half_len, 0.6, along, bright * (0.35 + 0.65 * abs(nx)), -12.0,
                           occluder=False))
        corner[0] += nx * offset
        corner[1] += ny * offset
    points = [_Point(corner[0], corner[1], _db(rng.uniform(12.0, 16.0)), -12.0)]
    return _Template(rects, points, max(2, round(height)), {"height_px": round(height, 1),
                                                            "angle_deg": round(math.degrees(angle), 1)})


_TEMPLATES = {"ship": _ship, "vehicle": _vehicle, "aircraft": _aircraft, "building": _building}


# ----------------------------------------------------------------------------------------------------------
# Placement.
# ----------------------------------------------------------------------------------------------------------


def _instance_count(rng: np.random.Generator, cls: str) -> int:
    if cls == "bridge":
        return 2 if rng.random() < 0.15 else 1
    lo, hi = _COUNT_RANGE[cls]
    return int(rng.integers(lo, hi + 1))


def _place(rng: np.random.Generator, templates: list[_Template], size: int) -> list[tuple[_Template, float, float]]:
    """Put instances around a random anchor without overlap (footprints include shadows and wakes).

    Instances cluster (convoys, parking, harbours, airfields), so their centroid, which the captions
    describe, is spread over the whole 3x3 grid. The first instance always fits; a later one that finds no
    free spot after a few tries is dropped, and the captions count what was actually placed.
    """
    placed: list[tuple[_Template, float, float]] = []
    boxes: list[tuple[float, float, float, float]] = []
    anchor = rng.uniform(0.12 * size, 0.88 * size, size=2)
    spread = 0.18 * size
    for k, tpl in enumerate(templates):
        x0, y0, x1, y1 = tpl.extent(body_only=False)
        x1 += tpl.shadow_px
        for _ in range(1 if k == 0 else 25):
            cx, cy = anchor if k == 0 else anchor + rng.normal(0.0, spread, size=2)
            cx = float(np.clip(cx, 1.0 - x0, size - 1.0 - x1)) if x1 - x0 < size - 2 else size / 2 - (x0 + x1) / 2
            cy = float(np.clip(cy, 1.0 - y0, size - 1.0 - y1)) if y1 - y0 < size - 2 else size / 2 - (y0 + y1) / 2
            box = (cx + x0 - 1.0, cy + y0 - 1.0, cx + x1 + 1.0, cy + y1 + 1.0)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                placed.append((tpl, cx, cy))
                boxes.append(box)
                break
    return placed


def _pixel_bbox(extent: tuple[float, float, float, float], cx: float, cy: float, size: int) -> tuple[int, ...]:
    x0, y0, x1, y1 = extent
    return (max(0, int(math.floor(cx + x0 + 0.5))), max(0, int(math.floor(cy + y0 + 0.5))),
            min(size, int(math.ceil(cx + x1 - 0.5))), min(size, int(math.ceil(cy + y1 - 0.5))))


def _render_instances(canvas: _Canvas, placed: list[tuple[_Template, float, float]], cls: str) -> list[dict]:
    objects = []
    for tpl, cx, cy in placed:
        occluder = np.zeros((canvas.size, canvas.size), dtype=np.float32)
        for r in tpl.rects:
            if r.occluder:
                np.maximum(occluder, _rect_mask(canvas.size, cx + r.dx, cy + r.dy, r.half_len, r.half_wid,
                                                r.angle), out=occluder)
        canvas.shadow(occluder, tpl.shadow_px)
        for r in tpl.rects:
            canvas.rect(r, cx, cy)
        for p in tpl.points:
            canvas.point(cx + p.dx, cy + p.dy, p.value, p.xpol_db)
        objects.append({"class": cls, "bbox": _pixel_bbox(tpl.extent(body_only=True), cx, cy, canvas.size),
                        "center": (round(cx, 2), round(cy, 2)), "shadow_px": tpl.shadow_px, **tpl.attrs})
    return objects


def _bridge_scene(rng: np.random.Generator, canvas: _Canvas, count: int) -> list[dict]:
    """A river (dark, calm water) crossing the scene, spanned by ``count`` bridges.

    A bridge over water shows several parallel bright lines shifted towards far range: the direct deck
    return, then the deck-water double bounce (the brightest, a dihedral) and a weaker triple bounce. The
    multipath lines only exist over the water.
    """
    size = canvas.size
    scale = size / 64.0
    axis = rng.uniform(0.0, math.pi)
    ux, uy = math.cos(axis), math.sin(axis)
    width = rng.uniform(7.0, 13.0) * scale
    origin = size / 2 + rng.uniform(-size / 6, size / 6, size=2)
    river = _rect_mask(size, float(origin[0]), float(origin[1]), 2.0 * size, width / 2, axis)
    canvas.paint(river, _db(rng.uniform(-23.0, -20.0)), -12.0)
    objects: list[dict] = []
    taken: list[float] = []
    # Candidate positions along the river; the last one (the river's middle) always fits.
    candidates = [*rng.uniform(-0.5 * size, 0.5 * size, size=24), 0.0]
    deck_value = _db(rng.uniform(2.0, 5.0))
    for t in candidates:
        if len(objects) == count:
            break
        if any(abs(t - other) < 12.0 * scale for other in taken):
            continue
        cx, cy = float(origin[0] + t * ux), float(origin[1] + t * uy)
        skew = rng.uniform(-0.35, 0.35)
        angle = axis + math.pi / 2 + skew
        half_len = width / (2 * math.cos(skew)) + rng.uniform(2.0, 4.0) * scale
        half_wid = max(0.8, rng.uniform(0.8, 1.3) * scale)
        shift = rng.uniform(1.5, 3.0) * scale
        deck = _Rect(0.0, 0.0, half_len, half_wid, angle, deck_value, -7.0)
        x0, y0, x1, y1 = deck.extent()
        if t != 0.0 and (cx + x0 < 1 or cy + y0 < 1 or cx + x1 + 2 * shift > size - 1 or cy + y1 > size - 1):
            continue
        _render_instances(canvas, [(_Template([deck], [], max(1, round(1.5 * scale))), cx, cy)], "bridge")
        for k, gain in ((1, 2.0), (2, 0.5)):  # double and triple bounce, over water only
            mask = _rect_mask(size, cx + k * shift, cy, half_len, half_wid * 0.6, angle) * river
            canvas.add(mask * np.float32(deck_value * gain), -12.0)
        taken.append(t)
        objects.append({"class": "bridge", "bbox": _pixel_bbox((x0, y0, x1 + 2 * shift, y1), cx, cy, size),
                        "center": (round(cx, 2), round(cy, 2)), "length_px": round(2 * half_len, 1),
                        "angle_deg": round(math.degrees(angle) % 180.0, 1)})
    return objects


def _apron(rng: np.random.Generator, canvas: _Canvas, placed: list[tuple[_Template, float, float]]) -> None:
    """Dark smooth tarmac under the aircraft (specular asphalt), with a brighter taxiway line."""
    margin = rng.uniform(2.0, 5.0) * canvas.size / 64.0
    boxes = []
    for tpl, cx, cy in placed:
        x0, y0, x1, y1 = tpl.extent(body_only=False)
        boxes.append((cx + x0, cy + y0, cx + x1 + tpl.shadow_px, cy + y1))
    x0, y0 = min(b[0] for b in boxes) - margin, min(b[1] for b in boxes) - margin
    x1, y1 = max(b[2] for b in boxes) + margin, max(b[3] for b in boxes) + margin
    mask = _rect_mask(canvas.size, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2, 0.0)
    canvas.paint(mask, _db(rng.uniform(-20.0, -17.0)), -10.0)


# ----------------------------------------------------------------------------------------------------------
# Captions.
# ----------------------------------------------------------------------------------------------------------


def _grid_cell(objects: list[dict], size: int) -> int:
    cx = float(np.mean([o["center"][0] for o in objects]))
    cy = float(np.mean([o["center"][1] for o in objects]))
    col = min(2, max(0, int(3 * cx / size)))
    row = min(2, max(0, int(3 * cy / size)))
    return 3 * row + col


def _noun(cls: str, count: int) -> str:
    return cls if count == 1 else _PLURALS[cls]


def _count_phrase(cls: str, count: int, style: str) -> str:
    """'3 ships' / 'three ships' / 'a ship' / 'a single aircraft' depending on ``style``."""
    if count == 1 and style == "article":
        return f"{'an' if cls[0] in 'aeiou' else 'a'} {cls}"
    if count == 1 and style == "single":
        return f"a single {cls}"
    number = str(count) if style == "digit" else _NUMBER_WORDS[count]
    return f"{number} {_noun(cls, count)}"


_CONTEXT = {
    "ship": ("at sea", "on the sea surface", "in open water"),
    "vehicle": ("on land", "on the ground"),
    "aircraft": ("on an airfield", "parked on the apron", "on land"),
    "building": ("on land", "in a built-up area"),
    "bridge": ("crossing water", "over a river", "spanning a river"),
}

_SIGNATURES = {
    "ship": "bright elongated {n} with strong bow and stern returns",
    "vehicle": "small bright {n} with strong point scatterers",
    "aircraft": "cross-shaped bright {n} with wings and fuselage",
    "building": "{n} with bright L-shaped double-bounce edges and radar shadows",
    "bridge": "bright linear {n} over dark water",
}


def _captions(rng: np.random.Generator, cls: str, objects: list[dict], size: int, n_captions: int) -> list[str]:
    """Captions written from the scene; the first is the most informative (class, count and position)."""
    count = len(objects)
    cell = _grid_cell(objects, size)
    pos = f"{_GRID_PREPOSITIONS[cell]} {GRID_POSITIONS[cell]}"
    noun = _noun(cls, count)
    ctx = str(rng.choice(_CONTEXT[cls]))

    def np_(styles: tuple[str, ...] = ("digit", "word", "article")) -> str:
        style = str(rng.choice(styles))
        return _count_phrase(cls, count, style if count == 1 or style != "article" else "word")

    exact = ("digit", "word") if count > 1 else ("word", "single", "digit")
    first_bank = (
        lambda: f"A SAR image of {np_(exact)} {pos} of the image.",
        lambda: f"A radar image showing {np_(exact)} {pos}.",
        lambda: f"Synthetic aperture radar view of {np_(exact)} located {pos} of the image.",
        lambda: f"This SAR image contains {np_(exact)} {ctx}, {pos}.",
    )
    is_are = "is" if count == 1 else "are"
    initial = ("word", "article")  # a sentence does not start with a digit
    bank = (
        lambda: f"A SAR image of {_count_phrase(cls, 1, 'article') if count == 1 else _PLURALS[cls]}.",
        lambda: f"A radar image of {np_()}.",
        lambda: f"{np_(initial)} {ctx} seen by a synthetic aperture radar.",
        lambda: f"A SAR scene with {np_()} {pos}.",
        lambda: f"An overhead radar image with {np_()} {ctx}.",
        lambda: f"Speckled SAR intensity image of {np_()}.",
        lambda: f"{np_(('word',))} {pos} of a radar image.",
        lambda: f"There {is_are} {np_()} in this radar image.",
        lambda: f"{np_(initial)} {ctx}, {pos} of the SAR image.",
        lambda: f"Satellite SAR image: {np_()} {ctx}.",
        lambda: f"A SAR image showing {_SIGNATURES[cls].format(n=noun)}.",
        lambda: f"The {noun} {is_are} {pos} of this synthetic aperture radar image.",
    )
    first = first_bank[int(rng.integers(len(first_bank)))]()
    extra = n_captions - 1
    order = rng.choice(len(bank), size=extra, replace=extra > len(bank)) if extra > 0 else []
    captions = [first] + [bank[int(i)]() for i in order]
    return [c[0].upper() + c[1:] for c in captions]


# ----------------------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SyntheticScene:
    """One rendered scene.

    ``image`` is float32 ``(C, H, W)`` in [0, 1] (channel 0 VV, channel 1 VH when dual-pol); ``objects``
    lists each instance as a dict with at least ``class``, ``bbox`` ``(x0, y0, x1, y1)`` in pixels (x1, y1
    exclusive, target body without its shadow) and ``center`` ``(x, y)``; ``background`` is ``"sea"`` or
    ``"land"`` (a bridge scene is land with a river).
    """

    image: np.ndarray
    label: int
    objects: list[dict]
    background: str
    captions: list[str]


def _validate(image_size: int, in_chans: int, looks: float, n_captions: int) -> None:
    if int(image_size) != image_size or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    if in_chans not in (1, 2):
        raise ValueError(f"in_chans must be 1 (VV) or 2 (VV+VH), got {in_chans!r}")
    if not looks >= 1:
        raise ValueError(f"looks must be >= 1, got {looks!r}")
    if int(n_captions) != n_captions or n_captions < 1:
        raise ValueError(f"n_captions must be an integer >= 1, got {n_captions!r}")


def generate_scene(seed: int, image_size: int = 64, in_chans: int = 1, looks: int = 4, n_captions: int = 5,
                   label: int | None = None) -> SyntheticScene:
    """Render one deterministic scene of class ``label`` (random when None) from ``seed``.

    Layout, speckle and captions use three independent streams spawned from ``seed``: the layout and
    captions are therefore identical for every ``in_chans`` / ``looks`` setting, only the noise changes.
    """
    _validate(image_size, in_chans, looks, n_captions)
    if label is not None and not 0 <= label < len(SYNTHETIC_CLASSES):
        raise ValueError(f"label must be in [0, {len(SYNTHETIC_CLASSES)}), got {label!r}")
    size = int(image_size)
    layout_ss, speckle_ss, caption_ss = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(layout_ss)
    if label is None:
        label = int(rng.integers(len(SYNTHETIC_CLASSES)))
    cls = SYNTHETIC_CLASSES[label]
    count = _instance_count(rng, cls)
    background = "sea" if cls == "ship" else "land"
    clutter_db = _sea_db(rng, size) if background == "sea" else _land_db(rng, size)
    canvas = _Canvas(_db(clutter_db).astype(np.float32), (-12.0 if background == "sea" else -7.0)
                     if in_chans == 2 else None)

    if cls == "bridge":
        objects = _bridge_scene(rng, canvas, count)
    else:
        scale = size / 64.0
        placed = _place(rng, [_TEMPLATES[cls](rng, scale) for _ in range(count)], size)
        if cls == "aircraft":
            _apron(rng, canvas, placed)
        objects = _render_instances(canvas, placed, cls)

    noise_floor = np.float32(_db(NESZ_DB))
    speckle_rng = np.random.default_rng(speckle_ss)
    channels = [canvas.vv] if canvas.vh is None else [canvas.vv, canvas.vh]
    image = np.stack([intensity_to_unit(apply_speckle(ch + noise_floor, looks, speckle_rng)) for ch in channels])
    captions = _captions(np.random.default_rng(caption_ss), cls, objects, size, int(n_captions))
    return SyntheticScene(image=image, label=int(label), objects=objects, background=background, captions=captions)


class SyntheticSARDataset(Dataset):
    """Map-style dataset of synthetic SAR scenes, rendered on the fly (about a millisecond each).

    Item ``i`` of a split is seeded with ``SeedSequence(seed, spawn_key=(split, 0, i))``: items do not
    depend on worker, order or split size, and the splits are disjoint streams. Labels are a seeded
    permutation of ``0, 1, 2, 3, 4, 0, 1, ...`` so every class holds ``num_samples / 5`` (+-1) items.
    """

    def __init__(self, split: str = "train", num_samples: int = 1000, image_size: int = 64, in_chans: int = 1,
                 n_captions: int = 5, looks: int = 4, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        _validate(image_size, in_chans, looks, n_captions)
        self.split = split
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.in_chans = int(in_chans)
        self.n_captions = int(n_captions)
        self.looks = looks
        self.seed = int(seed)
        self.classnames: list[str] = list(SYNTHETIC_CLASSES)
        self._split_code = SPLITS.index(split)
        label_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self._split_code, 1)))
        self.labels: np.ndarray = label_rng.permutation(np.arange(self.num_samples) % len(SYNTHETIC_CLASSES))

    def __len__(self) -> int:
        return self.num_samples

    def caption_counts(self) -> np.ndarray:
        """``n_captions`` for every scene (``epoch_unit: pairs`` samples each (scene, caption) pair once)."""
        return np.full(self.num_samples, self.n_captions, dtype=np.int64)

    def item_seed(self, index: int) -> int:
        """64-bit seed of item ``index`` (what :func:`generate_scene` receives)."""
        ss = np.random.SeedSequence(self.seed, spawn_key=(self._split_code, 0, index))
        return int(ss.generate_state(1, dtype=np.uint64)[0])

    def scene(self, index: int) -> SyntheticScene:
        """The full scene of item ``index``, objects and all (``__getitem__`` returns tensors only)."""
        index = operator.index(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.split} split of {self.num_samples} samples")
        return generate_scene(self.item_seed(index), image_size=self.image_size, in_chans=self.in_chans,
                              looks=self.looks, n_captions=self.n_captions, label=int(self.labels[index]))

    def __getitem__(self, index: int) -> dict:
        index = operator.index(index)
        scene = self.scene(index)
        return {"image": torch.from_numpy(scene.image), "captions": scene.captions, "label": scene.label,
                "index": index % self.num_samples}
