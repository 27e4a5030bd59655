"""Writes the tiny MSTAR fixtures next to this file (run from the repo root: ``python tests/data/mstar/data.py``).

Three trees, in the formats the MSTAR reader accepts:

* ``sdms/``: SDMS CD folders with raw Phoenix chips (ASCII header, big-endian float32 magnitude then phase blocks),
  6 rows x 8 columns, at 17, 15 and 30 deg, an off-protocol BMP2 serial, a SLICY chip and .JPG/.HTM side files;
* ``jpeg_folders/``: 16x16 8-bit chips in ``{train,val}/<class index>/`` (the hunterlew redistribution style);
* ``raw_folders/``: raw chips in ``{train,test}/<class name>/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROWS, COLS = 6, 8


def phoenix_bytes(fields: dict[str, object], magnitude: np.ndarray, phase: np.ndarray) -> bytes:
    """A Phoenix file: newline, version tag, ``Key= value`` lines with zero-padded lengths, end tag, blocks."""
    body = magnitude.astype(">f4").tobytes() + phase.astype(">f4").tobytes()

    def header(length: int, total: int) -> bytes:
        lines = ["", "[PhoenixHeaderVer01.04]", f"PhoenixHeaderLength= {length:05d}", f"PhoenixSigSize= {total:010d}",
                 "PhoenixSigNum= 0001", "native_header_length= 0"]
        lines += [f"{key}= {value}" for key, value in fields.items()]
        lines += ["[EndofPhoenixHeader]", ""]
        return "\n".join(lines).encode("ascii")

    length = len(header(0, 0))
    return header(length, length + len(body)) + body


def chip_fields(target_type: str, serial: str, azimuth: float, depression: int) -> dict[str, object]:
    return {
        "NumberOfColumns": COLS, "NumberOfRows": ROWS, "TargetType": target_type, "TargetSerNum": serial,
        "TargetAz": f"{azimuth:.6f}", "DesiredDepression": depression,
        "MeasuredDepression": f"{depression + 0.13:.6f}", "Polarization": "HH", "CenterFrequency": "9.599000 GHz",
        "RangeResolution": "0.304700", "CrossRangeResolution": "0.304700", "CollectionDate": "19950905",
    }


def write_chip(path: Path, rng: np.random.Generator, **kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    magnitude = rng.rayleigh(0.05, (ROWS, COLS)).astype(np.float32)
    magnitude[2:4, 3:5] = 1.5  # a bright "target"
    phase = rng.uniform(0, 2 * np.pi, (ROWS, COLS)).astype(np.float32)
    path.write_bytes(phoenix_bytes(chip_fields(**kwargs), magnitude, phase))  # type: ignore[arg-type]


def write_jpeg(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 80, (16, 16), dtype=np.uint8)
    pixels[6:10, 6:10] = 230
    Image.fromarray(pixels, mode="L").save(path, quality=90)


def main() -> None:
    rng = np.random.default_rng(20240601)
    for tree in ("sdms", "jpeg_folders", "raw_folders"):
        shutil.rmtree(HERE / tree, ignore_errors=True)
    sdms = HERE / "sdms"
    mixed1, mixed2 = sdms / "MSTAR_PUBLIC_MIXED_TARGETS_CD1", sdms / "MSTAR_PUBLIC_MIXED_TARGETS_CD2"
    targets = sdms / "MSTAR_PUBLIC_TARGETS_CHIPS_T72_BMP2_BTR70_SLICY" / "TARGETS"
    write_chip(mixed2 / "17_DEG/COL2/SCENE1/2S1/HB14931.000", rng, target_type="2s1_gun", serial="b01",
               azimuth=10.5, depression=17)
    write_chip(mixed2 / "17_DEG/COL2/SCENE1/ZSU_23_4/HB14990.026", rng, target_type="zsu23-4_gun", serial="d08",
               azimuth=200.25, depression=17)
    write_chip(mixed2 / "30_DEG/COL2/SCENE1/2S1/HB15000.000", rng, target_type="2s1_gun", serial="b01",
               azimuth=45.0, depression=30)
    write_chip(mixed1 / "15_DEG/COL2/SCENE1/2S1/HB14932.000", rng, target_type="2s1_gun", serial="b01",
               azimuth=11.0, depression=15)
    write_chip(targets / "TRAIN/17_DEG/BMP2/SN_9563/HB03333.000", rng, target_type="bmp2_tank", serial="9563",
               azimuth=123.45, depression=17)
    write_chip(targets / "TEST/15_DEG/BMP2/SN_9563/HB03400.000", rng, target_type="bmp2_tank", serial="9563",
               azimuth=124.0, depression=15)
    write_chip(targets / "TEST/15_DEG/BMP2/SN_9566/HB03500.001", rng, target_type="bmp2_tank", serial="9566",
               azimuth=300.0, depression=15)
    write_chip(targets / "TEST/15_DEG/SLICY/HB03787.015", rng, target_type="slicey", serial="1",
               azimuth=162.95, depression=15)
    (mixed2 / "17_DEG/COL2/SCENE1/2S1/HB14931.JPG").write_bytes(b"\xff\xd8\xff\xe0 not a chip")
    (targets / "TRAIN/17_DEG/BMP2/SN_9563/HB03333.HTM").write_text("<html>side file</html>")
    for split, index in (("train", 1), ("train", 9), ("val", 1), ("val", 9)):
        for n in range(2):
            write_jpeg(HERE / "jpeg_folders" / split / str(index) / f"{index}{n:04d}.jpeg", rng)
    for split, depression in (("train", 17), ("test", 15)):
        write_chip(HERE / "raw_folders" / split / "T72" / f"HB0{depression}01.000", rng, target_type="t72_tank",
                   serial="132", azimuth=90.0, depression=depression)


if __name__ == "__main__":
    main()
