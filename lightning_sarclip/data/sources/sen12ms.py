"""SEN12MS (Schmitt et al. 2019): Sentinel-1 dual-pol patches labelled by the MODIS IGBP land-cover raster.

Read from the unpacked tarballs ``<root>/ROIs<nnnn>_<season>/{s1,lc}_<scene>/ROIs<nnnn>_<season>_{s1,lc}_<scene>_p<k>
.tif`` (S2 is not needed). Each S1 patch (VV, VH sigma0 in dB, float32) becomes one record whose labels are
the land-cover classes covering at least ``threshold`` of the patch, dominant first (the multi-label scheme of
the authors' classification code, default threshold 0.1), in the simplified 10-class IGBP scheme or the full
17-class one. Labels need the ``lc`` raster's first band, so listing reads that small label raster (never
the S1 pixels).

The official classification split is ``train_list.txt`` / ``test_list.txt`` (S2 file names, from the
schmitt-muc/SEN12MS ``splits/`` folder) placed in the root; without them only ``split="all"`` works and
records are marked ``"all"``. The one S1 patch the authors found damaged (NaN values) is skipped and counted.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from lightning_sarclip.data.io import SARImage, SARReadError, register_format
from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    register_source,
)

#: IGBP legend of the MODIS land-cover product (band 1 of the lc rasters, codes 1-17).
IGBP_FULL = [
    "Evergreen Needleleaf Forests", "Evergreen Broadleaf Forests", "Deciduous Needleleaf Forests",
    "Deciduous Broadleaf Forests", "Mixed Forests", "Closed Shrublands", "Open Shrublands", "Woody Savannas",
    "Savannas", "Grasslands", "Permanent Wetlands", "Croplands", "Urban and Built-up Lands",
    "Cropland/Natural Vegetation Mosaics", "Permanent Snow and Ice", "Barren", "Water Bodies",
]
#: Simplified IGBP scheme (Schmitt & Wu 2021; the DFC2020 classes).
IGBP_SIMPLE = ["Forest", "Shrubland", "Savanna", "Grassland", "Wetlands", "Croplands", "Urban/Built-up",
               "Snow/Ice", "Barren", "Water"]
#: Full code (1-17) -> simplified class index, as in the authors' classification code.
FULL_TO_SIMPLE = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1, 8: 2, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6, 14: 5, 15: 7,
                  16: 8, 17: 9}
#: The S1 patch with NaN values that the authors removed from their lists.
DAMAGED = frozenset({"ROIs1868_summer_s1_146_p202"})
NODATA_DB = -50.0

_NAME_RE = re.compile(r"^(?P<roi>ROIs\d{4})_(?P<season>spring|summer|fall|winter)_(?P<kind>s1|s2|lc)_"
                      r"(?P<scene>\d+)_p(?P<patch>\d+)\.tif$")
_SEASON_RE = re.compile(r"^ROIs\d{4}_(spring|summer|fall|winter)$")


def _read_tiff(data: bytes) -> np.ndarray:
    import tifffile

    array = tifffile.imread(io.BytesIO(data))
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[0] < array.shape[2] and array.shape[0] <= 16:
        return np.moveaxis(array, 0, -1)  # band-first (planar) rasters
    return array


@register_format("sen12ms_s1")
def read_s1(data: bytes, ref: ImageRef) -> SARImage:
    """A SEN12MS S1 patch: 2 float32 bands (VV, VH) in dB; non-finite pixels become ``NODATA_DB``."""
    try:
        array = _read_tiff(data)
    except Exception as err:  # noqa: BLE001 - report any decoder failure with the file's name
        raise SARReadError(f"{ref.name}: not a readable GeoTIFF ({type(err).__name__}: {err})") from err
    if array.ndim != 3 or array.shape[2] != 2 or not np.issubdtype(array.dtype, np.floating):
        raise SARReadError(f"{ref.name}: expected 2 float bands (VV, VH dB), found {array.shape} {array.dtype}")
    array = array.astype(np.float32, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        array = np.where(bad, np.float32(NODATA_DB), array)
    return SARImage(array, "db", {"channels": ("VV", "VH"), "nonfinite_pixels": int(bad.sum())})


def _split_list(path: Path) -> dict[str, str]:
    """``S1 file name -> list file`` for one split list (the lists name S2 files)."""
    names: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        match = _NAME_RE.match(name)
        if match is None:
            raise SourceFormatError(path, f"line {line_no}", "a patch file name like ROIs1158_spring_s2_1_p30.tif",
                                    name)
        parts = name.split("_")
        parts[2] = "s1"
        names["_".join(parts)] = path.name
    return names


@register_source("sen12ms")
class SEN12MS(SARSource):
    """SEN12MS S1 patches with multi-label IGBP land cover.

    Args:
        root: folder with the unpacked ``ROIs*_<season>/`` folders (and ``train_list.txt`` / ``test_list.txt``).
        split: ``"train"``, ``"test"`` (both need the official lists) or ``"all"``.
        scheme: ``"simplified"`` (10 classes, default) or ``"full"`` (17 IGBP classes).
        threshold: least fraction of the patch a class must cover to be listed (the dominant one always is).
        allowed_roots: folders outside ``root`` that symlinks may lead to (``SARSource.contained``).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    classnames: ClassVar[list[str]] = IGBP_SIMPLE
    #: The authors' own S1 normalisation clips dB to [-25, 0]; the same window maps it to [0, 1].
    default_policy: ClassVar[str | dict] = {"name": "db_window", "low_db": -25.0, "high_db": 0.0}
    caption_fields: ClassVar[tuple[str, ...]] = ("season", "sensor", "polarization", "resolution_m")

    def __init__(self, root: str | Path, split: str = "train", scheme: str = "simplified",
                 threshold: float = 0.1, *, allowed_roots: Sequence[str | Path] = ()) -> None:
        if scheme not in ("simplified", "full"):
            raise ValueError(f"sen12ms: scheme must be 'simplified' or 'full', got {scheme!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"sen12ms: threshold must be a fraction in [0, 1], got {threshold}")
        self.scheme, self.threshold = scheme, threshold
        self.classnames = IGBP_SIMPLE if scheme == "simplified" else IGBP_FULL
        super().__init__(root, split, allowed_roots=allowed_roots)

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected <root>/ROIs{1158_spring,1868_summer,1970_fall,2017_winter}/{s1,lc}_<scene>/"
            "ROIs<nnnn>_<season>_{s1,lc}_<scene>_p<k>.tif (unpacked ROIs*_s1.tar.gz and ROIs*_lc.tar.gz) and, for "
            "the official split, train_list.txt and test_list.txt from schmitt-muc/SEN12MS splits/ in the root; "
            "see data_cards/sen12ms.md."
        )

    def _lists(self) -> dict[str, str] | None:
        paths = {split: self.root / f"{split}_list.txt" for split in self.splits}
        present = {split: path for split, path in paths.items() if path.is_file()}
        if len(present) < len(paths):
            if self.split != "all":
                raise DatasetNotFoundError(
                    f"{self.name}: split {self.split!r} needs the official lists {sorted(p.name for p in paths.values())}"
                    f" in {self.root} (missing: {sorted(p.name for s, p in paths.items() if s not in present)}). "
                    f"{self.expected_layout()}")
            return None
        assignment: dict[str, str] = {}
        for split, path in present.items():
            for name in _split_list(self.contained(path)):
                if name in assignment:
                    raise SourceFormatError(path, name, "each patch in one split list only",
                                            f"also in {assignment[name]}_list.txt")
                assignment[name] = split
        return assignment

    def _records(self) -> Iterator[SARRecord]:
        seasons = sorted(p for p in self.root.iterdir() if p.is_dir() and _SEASON_RE.match(p.name)) \
            if self.root.is_dir() else []
        if not seasons:
            raise DatasetNotFoundError(f"{self.name}: no ROIs*_<season>/ folders in {self.root}. "
                                       f"{self.expected_layout()}")
        assignment = self._lists()
        seen: set[str] = set()
        for season in seasons:
            scenes = sorted((p for p in season.iterdir() if p.is_dir() and re.fullmatch(r"s1_\d+", p.name)),
                            key=lambda p: int(p.name[3:]))
            for s1_dir in scenes:
                lc_dir = season / f"lc{s1_dir.name[2:]}"
                if not lc_dir.is_dir():
                    raise DatasetNotFoundError(f"{self.name}: {s1_dir} has no land-cover folder {lc_dir} (unpack "
                                               f"{season.name}_lc.tar.gz). {self.expected_layout()}")
                for s1 in sorted(s1_dir.iterdir(), key=_patch_number):
                    match = _NAME_RE.match(s1.name)
                    if match is None or match["kind"] != "s1":
                        self.skip("file not named ROIs<nnnn>_<season>_s1_<scene>_p<k>.tif", s1)
                        continue
                    seen.add(s1.name)
                    if s1.stem in DAMAGED:
                        self.skip("known damaged S1 patch (NaN values), not in the official lists", s1)
                        continue
                    split = "all" if assignment is None else assignment.get(s1.name)
                    if split is None:
                        self.skip("patch in neither train_list.txt nor test_list.txt", s1)
                        continue
                    if not self.wants(split):
                        continue
                    lc = lc_dir / s1.name.replace("_s1_", "_lc_")
                    if not lc.is_file():
                        self.skip("S1 patch without its lc patch", s1)
                        continue
                    record = self._record(self.contained(s1), self.contained(lc), match, split)
                    if record is not None:
                        yield record
        if assignment is not None:
            for name in sorted(n for n, s in assignment.items() if self.wants(s) and n not in seen):
                self.skip("listed patch has no S1 file", name)

    def _record(self, s1: Path, lc: Path, match: re.Match, split: str) -> SARRecord | None:
        fractions, unlabelled, size = self._land_cover(lc)
        if not fractions:
            self.skip("lc patch has no IGBP class 1-17", lc)
            return None
        ranked = sorted(fractions.items(), key=lambda kv: (-kv[1], self.classnames.index(kv[0])))
        labels = [name for i, (name, share) in enumerate(ranked) if i == 0 or share >= self.threshold]
        return SARRecord(
            source=self.name,
            source_id=s1.relative_to(self.root).as_posix(),
            split=split,
            image=ImageRef(str(s1), format="sen12ms_s1"),
            labels=labels,
            metadata={
                "sensor": "Sentinel-1", "band": "C", "mode": "IW", "product_type": "GRD",
                "polarization": "VV+VH", "channels": ("VV", "VH"), "resolution_m": 10.0,
                "roi": match["roi"], "season": match["season"], "scene": int(match["scene"]),
                "patch": int(match["patch"]), "land_cover_scheme": f"IGBP {self.scheme}",
                "land_cover_fractions": {name: round(share, 4) for name, share in ranked},
                "unlabelled_fraction": round(unlabelled, 4),
                "lc_file": lc.relative_to(self.root).as_posix(),
            },
            size=size,
        )

    def _land_cover(self, lc: Path) -> tuple[dict[str, float], float, tuple[int, int]]:
        """Class fractions of band 1 (IGBP) in the chosen scheme, the fraction outside 1-17, ``(W, H)``."""
        try:
            array = _read_tiff(lc.read_bytes())
        except Exception as err:  # noqa: BLE001 - any decoder failure is a malformed label file
            raise SourceFormatError(lc, "raster", "a readable land-cover GeoTIFF",
                                    f"{type(err).__name__}: {err}") from err
        if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
            raise SourceFormatError(lc, "band 1 (IGBP)", "integer class codes", f"{array.dtype} {array.shape}")
        codes = array[:, :, 0].astype(np.int64).ravel()
        counts = np.bincount(np.clip(codes, 0, 18), minlength=19)
        total = codes.size
        fractions: dict[str, float] = {}
        for code in range(1, 18):
            if counts[code]:
                name = IGBP_SIMPLE[FULL_TO_SIMPLE[code]] if self.scheme == "simplified" else IGBP_FULL[code - 1]
                fractions[name] = fractions.get(name, 0.0) + float(counts[code]) / total
        unlabelled = 1.0 - counts[1:18].sum() / total
        return fractions, float(unlabelled), (int(array.shape[1]), int(array.shape[0]))


def _patch_number(path: Path) -> tuple[int, str]:
    match = re.search(r"_p(\d+)\.tif$", path.name)
    return (int(match.group(1)) if match else -1, path.name)

