"""Which stored images of a corpus are the same image: the near-duplicate rule of ``build-corpus``.

A 64-bit DCT perceptual hash is a good *index* and a poor *judge* on SAR chips: a centred target on dark clutter
has the same low-frequency pattern whatever the vehicle, so two distinct acquisitions of one MSTAR vehicle a few
degrees of azimuth apart (or a 17 deg train chip and its 15 deg test chip, which the MSTAR protocol keeps apart on
purpose) often share their hash, and so do an MSTAR chip and a Sentinel-1 ship chip (measured in
``docs/data.md#near-duplicates``). The rule is therefore:

1. **Identical pixels** (``image_hash``, BLAKE2b of the stored pixels) are one image, within and across sources.
2. **Candidates**: pairs whose perceptual hashes differ by at most ``max_distance`` bits (a multi-index search:
   with ``max_distance + 1`` bands, two hashes that close share at least one band exactly).
3. **Verified** (when a pixel loader and ``min_correlation > 0`` are given): a candidate pair is a copy only if
   its stored pixels agree, once aligned (:func:`pixel_agreement`): the larger image resized to the smaller, or the
   smaller slid inside the larger (a crop of a few pixels), the Pearson correlation of the pixels at least
   ``min_correlation`` *and* that of their fine detail (pixel minus its 3x3 mean: speckle, which a re-encoded,
   resized or cropped copy keeps and a distinct acquisition does not) at least :data:`MIN_DETAIL_CORRELATION`
   (stricter for images under :data:`SMALL_SIDE` pixels, whose few pixels agree by chance more often).

Groups are the connected components of those pairs (union-find). ``min_correlation = 0`` is the rule of earlier
releases: every candidate is a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

__all__ = [
    "MAX_CROP",
    "MIN_DETAIL_CORRELATION",
    "PixelLoader",
    "SMALL_MIN_CORRELATION",
    "SMALL_MIN_DETAIL_CORRELATION",
    "SMALL_SIDE",
    "candidate_pairs",
    "hamming",
    "near_duplicate_groups",
    "pixel_agreement",
]

#: Sizes that differ by at most twice this per axis are also compared as a crop (every offset is tried).
MAX_CROP = 8
#: Fine-detail correlation a copy keeps: 0.58 for JPEG quality 30, at most 0.28 between distinct MSTAR chips.
MIN_DETAIL_CORRELATION = 0.5
#: Below this side (of the smaller image) a chip is a few dozen pixels of ship on sea: distinct OpenSARShip
#: chips of 17-73 px agree up to 0.95 (detail 0.86), so small images must agree almost exactly.
SMALL_SIDE = 48
SMALL_MIN_CORRELATION = 0.97
SMALL_MIN_DETAIL_CORRELATION = 0.9

#: ``index -> uint8 (C, H, W)``: an image's stored pixels, by its position in the corpus.
PixelLoader = Callable[[int], np.ndarray]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def hamming(a: int, b: int) -> int:
    """Bits in which two 64-bit hashes differ."""
    return bin(int(a) ^ int(b)).count("1")


def candidate_pairs(phashes: np.ndarray, max_distance: int) -> Iterator[tuple[int, int]]:
    """Each pair ``(i, j)``, ``i < j``, whose hashes differ by at most ``max_distance`` bits, once."""
    n = len(phashes)
    if max_distance < 0 or n < 2:
        return
    bands = max_distance + 1
    width = 64 // bands
    values = phashes.astype(np.uint64)
    seen: set[tuple[int, int]] = set()
    for b in range(bands):
        bits = width if b < bands - 1 else 64 - b * width
        keys = (values >> np.uint64(b * width)) & np.uint64((1 << bits) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # Runs of equal band value (sorted, not a dict of lists: memory stays a few arrays per band).
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for lo, hi in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True):
            members = sorted(order[lo:hi].tolist())
            for x_pos, x in enumerate(members):
                for y in members[x_pos + 1:]:
                    if (x, y) not in seen and hamming(values[x], values[y]) <= max_distance:
                        seen.add((x, y))
                        yield x, y


def near_duplicate_groups(phashes: np.ndarray, image_hashes: list[str], max_distance: int,
                          pixels: PixelLoader | None = None, min_correlation: float = 0.0) -> np.ndarray:
    """Group id of each image (the smallest index of its group) under the rule of the module docstring.

    Args:
        phashes: 64-bit perceptual hashes.
        image_hashes: exact pixel digests.
        max_distance: candidate threshold in bits.
        pixels: ``index -> uint8 (C, H, W)`` stored pixels; ``None`` (or ``min_correlation <= 0``) accepts every
            candidate.
        min_correlation: the pixel correlation a candidate needs to be a copy.
    """
    n = len(phashes)
    uf = _UnionFind(n)
    first_of: dict[str, int] = {}
    for i, h in enumerate(image_hashes):
        if h in first_of:
            uf.union(first_of[h], i)
        else:
            first_of[h] = i
    verify = pixels is not None and min_correlation > 0
    for x, y in candidate_pairs(phashes, max_distance):
        if uf.find(x) == uf.find(y):
            continue
        if not verify or _is_copy(pixels(x), pixels(y), min_correlation):  # type: ignore[misc]
            uf.union(x, y)
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64)


def _is_copy(a: np.ndarray, b: np.ndarray, min_correlation: float) -> bool:
    whole, detail = pixel_agreement(a, b)
    if min(*a.shape[-2:], *b.shape[-2:]) < SMALL_SIDE:
        return whole >= max(min_correlation, SMALL_MIN_CORRELATION) and detail >= SMALL_MIN_DETAIL_CORRELATION
    return whole >= min_correlation and detail >= MIN_DETAIL_CORRELATION


# ---------------------------------------------------------------------------------------------- pixels
def _grey(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    return array.mean(axis=0) if array.ndim == 3 else array


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    scale = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if scale == 0.0:  # a flat image: only an equally flat one agrees with it
        return 1.0 if not x.any() and not y.any() else 0.0
    return float((x * y).sum()) / scale


def _detail(image: np.ndarray) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return image - uniform_filter(image, 3, mode="nearest")


def _alignments(large: np.ndarray, small: np.ndarray, max_crop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(part of large, small)`` views of the same shape: every crop offset when the sizes differ by at most
    ``2 * max_crop`` per axis, then ``large`` resized to ``small`` and shifted by at most one pixel."""
    (big_h, big_w), (h, w) = large.shape, small.shape
    if 0 <= big_h - h <= 2 * max_crop and 0 <= big_w - w <= 2 * max_crop:
        for dy in range(big_h - h + 1):
            for dx in range(big_w - w + 1):
                yield large[dy:dy + h, dx:dx + w], small
    resized = large if large.shape == small.shape else np.asarray(
        Image.fromarray(large).resize((w, h), Image.BILINEAR), np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            part = resized[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
            if part.size > 1:
                yield part, small[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]


def pixel_agreement(a: np.ndarray, b: np.ndarray, max_crop: int = MAX_CROP) -> tuple[float, float]:
    """How well two stored images agree at their best alignment: the correlation of their pixels, and that of
    their fine detail at the same alignment. Channels are averaged (grey)."""
    x, y = _grey(a), _grey(b)
    large, small = (x, y) if x.size >= y.size else (y, x)
    best, best_pair = -1.0, None
    for part, other in _alignments(large, small, max_crop):
        value = _correlation(part, other)
        if value > best:
            best, best_pair = value, (part, other)
    if best_pair is None:
        return 0.0, 0.0
    return best, _correlation(_detail(best_pair[0]), _detail(best_pair[1]))
