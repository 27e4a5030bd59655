"""SAMPLE (AFRL, Lewis et al. 2019), public release: measured MSTAR chips paired 1:1 with simulated CAD chips.

Tree (as in ``benjaminlewis-afrl/SAMPLE_dataset_public``)::

    SAMPLE_dataset_public/
      mat_files/{real,synth}/<cls>/<stem>.mat
      png_images/{decibel,qpm}/{real,synth}/<cls>/<stem>.png
    <stem> = <cls>_<real|synth>_A_elevDeg_<EEE>_azCenter_<AAA>_<NN>_serial_<SER>

``image="mat"`` (default) reads ``complex_img`` of the ``.mat`` files, ``png_decibel`` / ``png_qpm`` the 8-bit
renderings. Metadata come from the file name and, unless ``read_mat_metadata=False``, from the ``.mat`` scalar
variables (exact angles, frequency, resolution, source MSTAR file) read without touching the image arrays; every
``.mat`` must hold exactly the 15 variables the release's ``verify.py`` checks, so drift is caught. The release has
no split: records are ``all`` and carry ``pair_id`` (the stem without ``real``/``synth``) so that a splitter keeps
a measured chip and its simulation together.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import lightning_sarclip.data.formats  # noqa: F401  (registers the mat format)
from lightning_sarclip.data.matv5 import check_mat_v5
from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._metadata import ANGLE_0_90, ANGLE_0_360, POSITIVE, checked_number
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    register_source,
)

#: Release folder name -> canonical class (MSTAR's spelling where the vehicle is also in MSTAR).
CLASSES = {
    "2s1": "2S1", "bmp2": "BMP2", "btr70": "BTR70", "m1": "M1", "m2": "M2", "m35": "M35", "m548": "M548",
    "m60": "M60", "t72": "T72", "zsu23": "ZSU_23_4",
}
#: The variables every ``.mat`` holds (``verify.py`` ``target_keys``).
MAT_KEYS = frozenset({
    "aligned", "azimuth", "bandwidth", "center_freq", "complex_img", "complex_img_unshifted", "elevation",
    "explanation", "range_pixel_spacing", "range_resolution", "source_mstar_file", "target_name", "taylor_weights",
    "xrange_pixel_spacing", "xrange_resolution",
})
#: ``.mat`` scalar -> metadata key.
MAT_METADATA = {
    "azimuth": "azimuth_deg", "elevation": "depression_deg", "center_freq": "center_frequency_hz",
    "bandwidth": "bandwidth_hz", "range_resolution": "range_resolution_m",
    "xrange_resolution": "cross_range_resolution_m", "range_pixel_spacing": "range_pixel_spacing_m",
    "xrange_pixel_spacing": "cross_range_pixel_spacing_m", "source_mstar_file": "source_mstar_file",
    "target_name": "target_name",
}
#: Valid ranges of the numeric ``.mat`` scalars (angles in degrees, frequencies in Hz, lengths in metres).
MAT_RANGES = {
    "azimuth": ANGLE_0_360, "elevation": ANGLE_0_90, "center_freq": POSITIVE, "bandwidth": POSITIVE,
    "range_resolution": POSITIVE, "xrange_resolution": POSITIVE, "range_pixel_spacing": POSITIVE,
    "xrange_pixel_spacing": POSITIVE,
}
STEM = re.compile(
    r"^(?P<cls>[a-z0-9]+)_(?P<subset>real|synth)_A_elevDeg_(?P<elev>\d{3})_azCenter_(?P<az>\d{3})_(?P<nn>\d{2})"
    r"_serial_(?P<serial>[A-Za-z0-9]+)$"
)
IMAGES = {"mat": ("mat_files", ".mat"), "png_decibel": ("png_images/decibel", ".png"),
          "png_qpm": ("png_images/qpm", ".png")}
SUBSETS = ("real", "synth")


def _scalar(value: np.ndarray) -> Any:
    """A MATLAB 1x1 number (``v[0][0]``) or a char array as ``str``."""
    if value.dtype.kind in "US":
        return str(value[0]) if value.size else ""
    if value.size != 1:
        raise ValueError(f"expected a 1x1 value, found shape {value.shape}")
    number = value.reshape(-1)[0]
    return float(number) if np.issubdtype(value.dtype, np.floating) else int(number)


@register_source("sample")
class SAMPLE(SARSource):
    """SAMPLE measured + simulated chips (see the module docstring for the tree).

    Args:
        root: ``SAMPLE_dataset_public/`` or the folder holding it.
        split: only ``all`` (the release has no split).
        image: ``mat`` (complex ``complex_img``), ``png_decibel`` or ``png_qpm``.
        subsets: ``real`` and/or ``synth``.
        read_mat_metadata: read the ``.mat`` scalars (exact angles, frequency ...) and check its variables.
        allowed_roots: folders outside ``root`` that symlinks may lead to (``SARSource.contained``).
    """

    splits: ClassVar[tuple[str, ...]] = ("all",)
    classnames: ClassVar[list[str]] = list(CLASSES.values())
    default_policy: ClassVar[str | dict] = {"name": "percentile", "low": 1.0, "high": 99.0, "in_db": True}
    caption_fields: ClassVar[tuple[str, ...]] = ("simulated", "serial", "depression_deg", "azimuth_deg")

    def __init__(self, root: str | Path, split: str = "all", image: str = "mat",
                 subsets: tuple[str, ...] = SUBSETS, read_mat_metadata: bool = True, *,
                 allowed_roots: Sequence[str | Path] = ()) -> None:
        super().__init__(root, split, allowed_roots=allowed_roots)
        if image not in IMAGES:
            raise ValueError(f"sample: image must be one of {sorted(IMAGES)}, got {image!r}")
        if not subsets or set(subsets) - set(SUBSETS):
            raise ValueError(f"sample: subsets must be a non-empty selection of {SUBSETS}, got {subsets!r}")
        if (self.root / "SAMPLE_dataset_public").is_dir():
            self.root = self.root / "SAMPLE_dataset_public"
        self.image, self.subsets, self.read_mat_metadata = image, tuple(subsets), read_mat_metadata
        folder = self.root / IMAGES[image][0]
        if not folder.is_dir():
            raise DatasetNotFoundError(f"sample: {folder} not found. {self.expected_layout()}")
        if image != "mat":
            self.default_policy = "integer"

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected SAMPLE_dataset_public/mat_files/{real,synth}/<cls>/<stem>.mat and/or "
            "png_images/{decibel,qpm}/{real,synth}/<cls>/<stem>.png with <cls> in "
            f"{sorted(CLASSES)}. See data_cards/sample.md."
        )

    def _records(self) -> Iterator[SARRecord]:
        folder, suffix = IMAGES[self.image]
        for subset in self.subsets:
            base = self.root / folder / subset
            if not base.is_dir():
                raise DatasetNotFoundError(f"sample: {base} not found. {self.expected_layout()}")
            for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
                if class_dir.name not in CLASSES:
                    raise SourceFormatError(class_dir, "class folder", f"one of {sorted(CLASSES)}", class_dir.name)
                for file in sorted(p for p in class_dir.iterdir() if p.is_file()):
                    if file.suffix.lower() != suffix:
                        self.skip(f"not a {suffix} chip", file)
                        continue
                    yield self._record(self.contained(file), subset, class_dir.name)

    def _record(self, file: Path, subset: str, folder_class: str) -> SARRecord:
        match = STEM.match(file.stem)
        if match is None:
            raise SourceFormatError(file, "file name", f"{STEM.pattern}")
        if match["cls"] != folder_class or match["subset"] != subset:
            raise SourceFormatError(file, "file name", f"class {folder_class!r} and subset {subset!r} of its folders",
                                    f"{match['cls']}/{match['subset']}")
        simulated = subset == "synth"
        metadata: dict[str, Any] = {
            "sensor": "simulated X-band SAR (SAMPLE CAD model)" if simulated else "Sandia X-band airborne SAR",
            "band": "X", "polarization": "HH", "resolution_m": 0.3, "simulated": simulated,
            "serial": match["serial"],
            "depression_deg": checked_number(match["elev"], "file name elevDeg", ANGLE_0_90, file=file, skip=self.skip),
            "azimuth_deg": checked_number(match["az"], "file name azCenter", ANGLE_0_360, file=file, skip=self.skip),
            "pair_id": file.stem.replace(f"_{subset}_", "_", 1),
        }
        mat = self.root / "mat_files" / subset / folder_class / f"{file.stem}.mat"
        size = None
        if self.read_mat_metadata and mat.exists():
            size = self._mat_metadata(self.contained(mat), metadata)
        if self.image == "mat":
            ref = ImageRef(str(file), format="mat", options=(("mat_key", "complex_img"),))
        else:
            ref = ImageRef(str(file))
        return SARRecord(self.name, file.relative_to(self.root).as_posix(), "all", ref,
                         labels=[CLASSES[folder_class]], metadata=metadata, size=size)

    def _mat_metadata(self, mat: Path, metadata: dict[str, Any]) -> tuple[int, int]:
        """Check the variables, read the scalars into ``metadata``, return ``(width, height)`` of complex_img."""
        from scipy.io import loadmat, whosmat

        data = mat.read_bytes()
        try:
            check_mat_v5(data, str(mat))  # before SciPy's C reader, which a malformed file can crash
            variables = {name: shape for name, shape, _ in whosmat(io.BytesIO(data))}
        except Exception as err:  # noqa: BLE001 - any scipy failure means the file is not a v5 .mat
            raise SourceFormatError(mat, "MATLAB file", "a MATLAB v5 .mat readable by scipy.io", str(err)) from err
        if set(variables) != MAT_KEYS:
            extra, missing = sorted(set(variables) - MAT_KEYS), sorted(MAT_KEYS - set(variables))
            raise SourceFormatError(mat, "variables", f"exactly {sorted(MAT_KEYS)}",
                                    f"extra {extra}, missing {missing}")
        shape = variables["complex_img"]
        if len(shape) != 2:
            raise SourceFormatError(mat, "complex_img", "a 2-D array", shape)
        try:
            values = loadmat(io.BytesIO(data), variable_names=list(MAT_METADATA))
        except Exception as err:  # noqa: BLE001 - as above
            raise SourceFormatError(mat, "MATLAB file", "a MATLAB v5 .mat readable by scipy.io", str(err)) from err
        for name, key in MAT_METADATA.items():
            try:
                value = _scalar(values[name])
            except ValueError as err:
                raise SourceFormatError(mat, name, "a 1x1 value or a string", str(err)) from err
            valid = MAT_RANGES.get(name)
            # out of range: counted, and the file name's value (if any) stays in the record
            if valid is None or checked_number(value, f".mat {name}", valid, file=mat, skip=self.skip) is not None:
                metadata[key] = value
        return int(shape[1]), int(shape[0])
