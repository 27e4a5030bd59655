#!/usr/bin/env python3
"""Tiny fixtures for the ``class_folder`` source (run from the repo root; writes next to this file).

split_layout/{train,val,test}/<class>/...   torchvision ImageFolder under split folders
flat_layout/<class>/...                     ImageFolder without splits (records get split "all")

Images are 16x16 speckle-like chips in every format the io layer reads: 8-bit PNG, 3-equal-channel JPEG, BMP,
16-bit TIFF; one sits in a nested sub-folder (ImageFolder recurses). Decoys that must be skipped: a README.txt
(counted as "not an image file") and a hidden .DS_Store.
"""

import shutil
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

HERE = Path(__file__).resolve().parent


def chip(rng: np.random.Generator, bright: float) -> np.ndarray:
    """Rayleigh clutter with a bright square target (8-bit)."""
    image = rng.rayleigh(40.0, (16, 16))
    image[5:11, 5:11] += bright
    return np.clip(image, 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array.astype(np.uint16) * 257)
    elif suffix in (".jpg", ".jpeg"):
        Image.fromarray(np.repeat(array[:, :, None], 3, axis=2), mode="RGB").save(path, quality=95)
    else:
        Image.fromarray(array, mode="L").save(path)


SPLIT_LAYOUT = {
    "train": {
        "BMP2": ["HB03333.png", "HB03334.jpg", "HB03335.bmp"],
        "bulk_carrier": ["Ship_C01S02N0001.tif", "Ship_C01S02N0002.png", "batch2/Ship_C01S02N0003.png"],
        "Tanker": ["t1.png", "t2.jpeg"],
    },
    "val": {
        "BMP2": ["HB03340.png"],
        "bulk_carrier": ["Ship_C01S02N0010.png"],
        "Tanker": ["t10.png"],
    },
    "test": {
        "BMP2": ["HB03350.png"],
        "bulk_carrier": ["Ship_C01S02N0020.bmp"],
    },
}
FLAT_LAYOUT = {"ship": ["a.png", "b.png"], "oil_tank": ["c.png"]}


def main() -> None:
    for name in ("split_layout", "flat_layout"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    rng = np.random.default_rng(0)
    for split, classes in SPLIT_LAYOUT.items():
        for index, (cls, files) in enumerate(classes.items()):
            for file in files:
                save(HERE / "split_layout" / split / cls / file, chip(rng, 60.0 * (index + 1)))
    (HERE / "split_layout" / "train" / "BMP2" / "README.txt").write_text("not an image\n")
    (HERE / "split_layout" / "train" / "BMP2" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    for index, (cls, files) in enumerate(FLAT_LAYOUT.items()):
        for file in files:
            save(HERE / "flat_layout" / cls / file, chip(rng, 80.0 * (index + 1)))


if __name__ == "__main__":
    main()
