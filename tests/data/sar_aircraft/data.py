#!/usr/bin/env python3
"""Tiny SAR-AIRcraft-1.0 fixture in the VOC release layout (run from the repo root; writes next to this file).

SAR-AIRcraft-1.0/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{train,val,test}.txt}
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "SAR-AIRcraft-1.0"

# id -> (split, [(name, xmin, ymin, xmax, ymax, difficult)]); all images 32x32
IMAGES = {
    "1": ("train", [("A320/321", 2, 2, 12, 12, 0), ("Boeing737", 18, 4, 28, 14, 0)]),
    "2": ("train", [("other", 20, 20, 30, 30, 1)]),
    "3": ("val", [("A220", 10, 10, 20, 18, 0), ("ARJ21", 24, 26, 34, 33, 0)]),  # 2nd crosses the edge
    "4": ("test", [("Boeing787", 4, 18, 16, 30, 0), ("A330", 16, 2, 30, 16, 0)]),
}


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (ROOT / sub).mkdir(parents=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for image_id, (split, objects) in IMAGES.items():
        splits[split].append(image_id)
        grey = np.random.default_rng(int(image_id)).integers(0, 90, (32, 32), dtype=np.uint8)
        Image.fromarray(grey, mode="L").save(ROOT / "JPEGImages" / f"{image_id}.jpg")
        body = "".join(
            f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
            f"    <difficult>{difficult}</difficult>\n    <bndbox>\n      <xmin>{x0}</xmin>\n      <ymin>{y0}</ymin>\n"
            f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n"
            for name, x0, y0, x1, y1, difficult in objects
        )
        (ROOT / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{image_id}.jpg</filename>\n"
            f"  <size>\n    <width>32</width>\n    <height>32</height>\n    <depth>1</depth>\n  </size>\n"
            f"  <segmented>0</segmented>\n{body}</annotation>\n"
        )
    for split, ids in splits.items():
        (ROOT / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


if __name__ == "__main__":
    main()
