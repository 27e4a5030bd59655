#!/usr/bin/env python3
"""Tiny HRSID fixture in the HRSID_JPG layout (run from the repo root; writes next to this file).

HRSID_JPG/annotations/{train2017,test2017}.json (COCO, category ship id 1, polygon segmentation)
HRSID_JPG/JPEGImages/P<scene>_<a>_<b>_<c>_<d>.jpg and P0137_<n>.jpg
"""

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "HRSID_JPG"

# split -> [(file_name, [polygon or (polygon, use_bbox)])], all images 32x32
IMAGES = {
    "train2017": [
        ("P0001_0_800_7200_8000.jpg", [([4, 4, 12, 4, 12, 8, 4, 8], True), ([20, 18, 28, 22, 26, 26, 18, 22], True)]),
        ("P0002_800_1600_0_800.jpg", [([10, 10, 16, 10, 16, 20, 10, 20], False)]),  # bbox left empty
    ],
    "test2017": [("P0137_109.jpg", [([2, 24, 8, 24, 8, 30, 2, 30], True)])],
}


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    (ROOT / "annotations").mkdir(parents=True)
    (ROOT / "JPEGImages").mkdir()
    image_id, ann_id = 0, 0
    for split, entries in IMAGES.items():
        coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "ship", "supercategory": "ship"}]}
        for name, polygons in entries:
            image_id += 1
            rng = np.random.default_rng(image_id)
            Image.fromarray(rng.integers(0, 80, (32, 32), dtype=np.uint8), mode="L").save(ROOT / "JPEGImages" / name)
            coco["images"].append({"file_name": name, "height": 32, "width": 32, "id": image_id})
            for polygon, use_bbox in polygons:
                ann_id += 1
                xs, ys = polygon[0::2], polygon[1::2]
                bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)] if use_bbox else []
                coco["annotations"].append({"segmentation": [polygon], "area": 0, "iscrowd": 0,
                                            "image_id": image_id, "bbox": bbox, "category_id": 1, "id": ann_id})
        (ROOT / "annotations" / f"{split}.json").write_text(json.dumps(coco, indent=1))


if __name__ == "__main__":
    main()
