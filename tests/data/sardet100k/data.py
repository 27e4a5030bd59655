#!/usr/bin/env python3
"""Tiny SARDet-100K fixture in the released layout (run from the repo root; writes next to this file).

SARDet_100K/Annotations/{train,val,test}.json (COCO: 0-based category_id, ignore, segmentation: [])
SARDet_100K/JPEGImages/{train,val,test}/<7-digit>.{jpg,png,bmp}
"""

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "SARDet_100K"
CATEGORIES = ["ship", "aircraft", "car", "tank", "bridge", "harbor"]

# split -> [(file_name, (w, h), [(category_id, [x, y, w, h], ignore)])]
IMAGES = {
    "train": [
        ("0000001.jpg", (32, 32), [(0, [2, 3, 6, 10], 0), (0, [20, 20, 8, 8], 0), (3, [10, 12, 4, 4], 1)]),
        ("0000002.png", (32, 24), [(1, [16, 4, 12, 10], 0), (2, [26, 18, 10, 10], 0)]),  # 2nd crosses the edge
        ("0000003.bmp", (16, 16), []),
    ],
    "val": [("0000004.jpg", (24, 24), [(4, [0, 8, 24, 6], 0)])],
    "test": [("0000005.png", (24, 24), [(5, [4, 4, 12, 12], 0), (0, [14, 16, 4, 3], 0)])],
}


def image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 90, (size[1], size[0]), dtype=np.uint8), mode="L")


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    (ROOT / "Annotations").mkdir(parents=True)
    image_id, ann_id = 0, 0
    for split, entries in IMAGES.items():
        folder = ROOT / "JPEGImages" / split
        folder.mkdir(parents=True)
        coco = {"images": [], "annotations": [],
                "categories": [{"id": i, "name": n} for i, n in enumerate(CATEGORIES)]}
        for name, size, anns in entries:
            image_id += 1
            image(size, image_id).save(folder / name)
            coco["images"].append({"file_name": name, "height": size[1], "width": size[0], "id": image_id})
            for category, bbox, ignore in anns:
                ann_id += 1
                coco["annotations"].append({"area": bbox[2] * bbox[3], "iscrowd": 0, "image_id": image_id,
                                            "bbox": bbox, "category_id": category, "id": ann_id,
                                            "ignore": ignore, "segmentation": []})
        (ROOT / "Annotations" / f"{split}.json").write_text(json.dumps(coco, indent=1))


if __name__ == "__main__":
    main()
