#!/usr/bin/env python3
"""A small copy of the layout of SARVLM's released CSVs (run from the repo root: ``python tests/data/sarvlm_csv/data.py
<folder>``; tests call :func:`generate` with a temporary folder).

What is copied (facts from the SARVLM release, github KlayMa527/SARVLM: script/train_tranferclip.sh, eval/RET/;
see docs/reproducing.md): comma-separated tables with the authors' columns ``imgpath`` and ``caption`` (open_clip_train
``--csv-img-key imgpath --csv-caption-key caption --csv-separator ","``), one row per (image, caption) pair, 5
captions per image for the classification and detection sources and fewer for SARLANG-like images, and a retrieval
sample of unique val images with one caption each named like ``val_uni_image_and_caption_sample_5000.csv``. The
released paths are absolute on the authors' machines; here half of the rows carry absolute paths (into the folder
written, so they exist only where the generator ran: nothing of this is committed but this script) and half relative ones.

UNCONFIRMED and only imitated: the train/val table file names (``train.csv``, ``val.csv`` here), the image folder
tree and formats, the caption wording.

<folder>/train.csv                                   imgpath,caption; TRAIN_IMAGES images
<folder>/val.csv                                     imgpath,caption; VAL_IMAGES images
<folder>/val_uni_image_and_caption_sample_5000.csv SAMPLE_SIZE unique val images, one caption each
<folder>/images/<source>/<split>/<name>.png|jpg      24x24 grey chips (JPEG stored as RGB with equal channels)
"""

from __future__ import annotations

import csv
import os
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

#: (source folder, captions per image, class words) imitating SARVLM-1M's mix of sources.
SOURCES = (
    ("mstar", 5, ("2S1 howitzer", "BMP2 infantry fighting vehicle", "T72 tank")),
    ("opensarship", 5, ("bulk carrier", "container ship", "tanker")),
    ("sardet100k", 5, ("ship", "aircraft", "bridge")),
    ("sarlang", 3, ("urban area", "farmland", "river")),
)
TRAIN_IMAGES = 64
VAL_IMAGES = 48
SAMPLE_SIZE = 40
#: The released file's name (its 5000 is the release's size; this copy holds SAMPLE_SIZE rows).
SAMPLE_NAME = "val_uni_image_and_caption_sample_5000.csv"
COLUMNS = ("imgpath", "caption")
STYLES = (
    "A SAR image of {}.",
    "A radar image of the {} acquired by a SAR sensor.",
    "This is a SAR view that includes 2 {}s.",
    "A SAR image of the {} located in the upper right of the image.",
    "In this SAR image, the {} lies near the center.",
)


def _chip(rng: np.random.Generator, brightness: float) -> np.ndarray:
    """Speckle-like clutter with a bright target whose level depends on the class (something to learn)."""
    image = rng.rayleigh(25.0, (24, 24))
    image[8:16, 8:16] += brightness
    return np.clip(image, 0, 255).astype(np.uint8)


def _images(folder: Path, split: str, count: int, rng: np.random.Generator) -> list[tuple[str, str, list[str]]]:
    """``count`` images of ``split``: (absolute path, relative path, captions), written under ``folder/images``."""
    out = []
    for i in range(count):
        source, n_captions, classes = SOURCES[i % len(SOURCES)]
        label = classes[(i // len(SOURCES)) % len(classes)]
        suffix = ".jpg" if i % 3 == 0 else ".png"
        relative = f"images/{source}/{split}/{split}_{i:04d}{suffix}"
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        chip = _chip(rng, 60.0 + 50.0 * classes.index(label))
        if suffix == ".jpg":  # a grey chip saved as RGB JPEG, as display-scaled mirrors often are
            Image.fromarray(np.repeat(chip[:, :, None], 3, axis=2), mode="RGB").save(path, quality=95)
        else:
            Image.fromarray(chip, mode="L").save(path)
        captions = [STYLES[k].format(label) for k in range(n_captions)]
        out.append((str(path.resolve()), relative, captions))
    return out


def _write(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)  # the released separator: ","
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def _pairs(images: list[tuple[str, str, list[str]]]) -> list[tuple[str, str]]:
    """One row per (image, caption); every other image by its absolute path, as the released tables name them."""
    return [(absolute if i % 2 else relative, caption)
            for i, (absolute, relative, captions) in enumerate(images) for caption in captions]


def generate(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tables and chips into ``folder`` (created); returns it. Absolute paths point into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = _images(folder, "train", TRAIN_IMAGES, rng)
    val = _images(folder, "val", VAL_IMAGES, rng)
    _write(folder / "train.csv", _pairs(train))
    val_rows = _pairs(val)
    _write(folder / "val.csv", val_rows)
    # The sample repeats the val table's imgpath cells as written (absolute or relative), one caption per image.
    by_image: dict[str, list[str]] = {}
    for imgpath, caption in val_rows:
        by_image.setdefault(imgpath, []).append(caption)
    pick = random.Random(seed)
    chosen = sorted(pick.sample(sorted(by_image), SAMPLE_SIZE))
    _write(folder / SAMPLE_NAME, [(imgpath, pick.choice(by_image[imgpath])) for imgpath in chosen])
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} <folder>")
    print(generate(sys.argv[1]))
