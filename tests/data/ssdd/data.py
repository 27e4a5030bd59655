#!/usr/bin/env python3
"""Tiny SSDD fixture in the Official-SSDD-OPEN layout (run from the repo root; writes next to this file).

Official-SSDD-OPEN/{BBox_SSDD,RBox_SSDD}/voc_style/{JPEGImages,Annotations}_{train,test}[_inshore|_offshore]/
<6-digit>.{jpg,xml}: VOC <bndbox> in BBox_SSDD, <rotated_bndbox> (cx, cy, w, h, theta, x1..y4) in RBox_SSDD.
"""

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "Official-SSDD-OPEN"

# stem -> (split, subset, (w, h), [(cx, cy, w, h, theta_deg)])
IMAGES = {
    "000002": ("train", None, (32, 24), [(8.0, 6.0, 8.0, 4.0, 0.0), (22.0, 16.0, 10.0, 4.0, 30.0)]),
    "000003": ("train", None, (24, 24), [(12.0, 12.0, 6.0, 3.0, -45.0)]),
    "000001": ("test", "inshore", (24, 32), [(5.0, 28.0, 6.0, 4.0, 90.0)]),
    "000009": ("test", "offshore", (24, 24), [(16.0, 6.0, 4.0, 2.0, 10.0), (6.0, 18.0, 4.0, 4.0, 0.0)]),
}


def corners(cx, cy, w, h, theta):
    t = math.radians(theta)
    c, s = math.cos(t), math.sin(t)
    return [(cx + dx * c - dy * s, cy + dx * s + dy * c) for dx, dy in
            ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


def xml(stem, size, boxes, rotated):
    objects = []
    for cx, cy, w, h, theta in boxes:
        pts = corners(cx, cy, w, h, theta)
        if rotated:
            pts_xml = "".join(f"<x{i}>{x:.1f}</x{i}><y{i}>{y:.1f}</y{i}>" for i, (x, y) in enumerate(pts, 1))
            geometry = (f"<rotated_bndbox><rotated_bbox_cx>{cx}</rotated_bbox_cx><rotated_bbox_cy>{cy}</rotated_bbox_cy>"
                        f"<rotated_bbox_w>{w}</rotated_bbox_w><rotated_bbox_h>{h}</rotated_bbox_h>"
                        f"<rotated_bbox_theta>{theta}</rotated_bbox_theta>{pts_xml}</rotated_bndbox>")
        else:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            geometry = (f"<bndbox><xmin>{round(min(xs))}</xmin><ymin>{round(min(ys))}</ymin>"
                        f"<xmax>{round(max(xs))}</xmax><ymax>{round(max(ys))}</ymax></bndbox>")
        objects.append(f"  <object><name>ship</name><pose>Unspecified</pose><truncated>0</truncated>"
                       f"<difficult>0</difficult>{geometry}</object>\n")
    return (f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{stem}.jpg</filename>\n"
            f"  <source><database>SSDD</database></source>\n"
            f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>\n"
            f"  <segmented>0</segmented>\n{''.join(objects)}</annotation>\n")


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    for kind in ("BBox_SSDD", "RBox_SSDD"):
        voc = ROOT / kind / "voc_style"
        for seed, (stem, (split, subset, size, boxes)) in enumerate(sorted(IMAGES.items())):
            grey = np.random.default_rng(seed).integers(0, 90, (size[1], size[0]), dtype=np.uint8)
            picture = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
            text = xml(stem, size, boxes, rotated=kind == "RBox_SSDD")
            for suffix in (f"_{split}", *((f"_{split}_{subset}",) if subset else ())):
                (voc / f"JPEGImages{suffix}").mkdir(parents=True, exist_ok=True)
                (voc / f"Annotations{suffix}").mkdir(parents=True, exist_ok=True)
                picture.save(voc / f"JPEGImages{suffix}" / f"{stem}.jpg", quality=90)
                (voc / f"Annotations{suffix}" / f"{stem}.xml").write_text(text)


if __name__ == "__main__":
    main()
