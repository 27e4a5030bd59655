#!/usr/bin/env python3
"""Tiny SARLANG-1M caption fixture (datasets.md 13 and 16; run from the repo root; writes next to this file).

SARLANG-1M/SARimages/{France_Alpes-Maritimes_Nice_3.png, SV_Darwin_-12.4278_130.8688.png, 0009787.jpg,
                      0009790.jpg}
SARLANG-1M/Text/caption/{Caption-training.csv, Caption_test.csv, Caption_test1.csv}   columns image,caption

The column names are UNCONFIRMED (no real download inspected); the fixture follows the project's notes.
One training row names a SARDet-100K image (0000001.jpg) that is absent from SARimages/, the documented quirk
(users copy SARDet-100K images themselves) that the reader skips and counts.
"""

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "SARLANG-1M"
IMAGES = ["France_Alpes-Maritimes_Nice_3.png", "SV_Darwin_-12.4278_130.8688.png", "0009787.jpg", "0009790.jpg"]
TRAIN = [
    ("France_Alpes-Maritimes_Nice_3.png", "An aerial view of a city with a lot of buildings."),
    ("France_Alpes-Maritimes_Nice_3.png",
     "Dense urban blocks along the coast, with roads, parking lots and, to the south, open sea."),
    ("SV_Darwin_-12.4278_130.8688.png", "Urban area with multiple buildings, parking lots, and surrounding grass field."),
    ("0009787.jpg", "Several ships are docked in a harbor."),
    ("0000001.jpg", "An aircraft parked on an apron."),
]
TEST_COMPLEX = [("0009790.jpg", "Two bridges cross a river, with small boats moored near the left bank.")]
TEST_CONCISE = [("0009790.jpg", "Bridges over a river.")]


def write(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    (ROOT / "SARimages").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in IMAGES:
        image = np.clip(rng.rayleigh(50.0, (16, 16)), 0, 255).astype(np.uint8)
        if name.endswith(".jpg"):
            Image.fromarray(np.repeat(image[:, :, None], 3, axis=2), mode="RGB").save(ROOT / "SARimages" / name)
        else:
            Image.fromarray(image, mode="L").save(ROOT / "SARimages" / name)
    write(ROOT / "Text" / "caption" / "Caption-training.csv", TRAIN)
    write(ROOT / "Text" / "caption" / "Caption_test.csv", TEST_COMPLEX)
    write(ROOT / "Text" / "caption" / "Caption_test1.csv", TEST_CONCISE)


if __name__ == "__main__":
    main()
