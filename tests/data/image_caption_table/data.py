#!/usr/bin/env python3
"""Tiny fixtures for the ``image_caption_table`` source (run from the repo root; writes next to this file).

images/*.png|jpg|tif          16x16 chips
train.csv, val.csv            per-split open_clip/SARVLM tables: imgpath,caption (repeated rows = more captions)
pairs.csv                     imgpath,caption,split,label with repeated rows and quoted commas
pairs.tsv                     tab-separated, several captions in one cell joined by "|"
pairs.parquet                 caption column as a list<string>, with a split column
"""

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
from PIL import Image

HERE = Path(__file__).resolve().parent
IMAGES = {
    "images/ship_001.png": "ship", "images/ship_002.jpg": "ship", "images/tank_001.png": "tank",
    "images/tank_002.tif": "tank", "images/sub/bridge_001.png": "bridge",
}


def write_images() -> None:
    rng = np.random.default_rng(0)
    for i, name in enumerate(IMAGES):
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = np.clip(rng.rayleigh(40.0, (16, 16)) + 30 * i, 0, 255).astype(np.uint8)
        if path.suffix == ".tif":
            tifffile.imwrite(path, image)
        elif path.suffix == ".jpg":
            Image.fromarray(np.repeat(image[:, :, None], 3, axis=2), mode="RGB").save(path, quality=95)
        else:
            Image.fromarray(image, mode="L").save(path)


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def main() -> None:
    shutil.rmtree(HERE / "images", ignore_errors=True)
    for name in ("train.csv", "val.csv", "pairs.csv", "pairs.tsv", "pairs.parquet"):
        (HERE / name).unlink(missing_ok=True)
    write_images()
    write_csv(HERE / "train.csv", ["imgpath", "caption"], [
        ["images/ship_001.png", "A ship sailing in open water."],
        ["images/ship_001.png", "One bright vessel on dark sea clutter."],
        ["images/tank_001.png", "A tank parked on a field."],
        ["images/sub/bridge_001.png", "A bridge crossing a river."],
    ])
    write_csv(HERE / "val.csv", ["imgpath", "caption"], [
        ["images/ship_002.jpg", "A vessel near the harbour."],
        ["images/tank_002.tif", "An armoured vehicle, seen from above."],
    ])
    write_csv(HERE / "pairs.csv", ["imgpath", "caption", "split", "label"], [
        ["images/ship_001.png", "A ship, small and bright, in open water.", "train", "ship"],
        ["images/ship_001.png", "A single vessel at sea.", "train", "ship"],
        ["images/tank_001.png", "A tank on grass.", "train", "tank"],
        ["images/ship_002.jpg", "A ship moored at a pier.", "valid", "ship"],
        ["images/tank_002.tif", "A tank next to a road.", "test", "tank"],
    ])
    write_csv(HERE / "pairs.tsv", ["imgpath", "caption"], [
        ["images/ship_001.png", "A ship in open water.|A vessel with a wake.|Bright target on dark sea."],
        ["images/sub/bridge_001.png", "A bridge over a river."],
    ], delimiter="\t")
    table = pa.table({
        "imgpath": ["images/ship_002.jpg", "images/tank_001.png"],
        "caption": [["A ship near the coast.", "A moored vessel."], ["A tank on a dirt track."]],
        "split": ["train", "val"],
    })
    pq.write_table(table, HERE / "pairs.parquet")


if __name__ == "__main__":
    main()
