#!/usr/bin/env python3
"""Tiny SAR-Ship-Dataset fixture: the flat YOLO release folder (run from the repo root; writes next to this file).

ship_dataset_v0/<stem>.jpg + <stem>.txt with lines 'class cx cy w h' (normalised); an empty .txt is a negative.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "ship_dataset_v0"

CHIPS = {
    "Gao_ship_hh_0201608254401010021": ["0 0.5 0.5 0.1 0.2"],
    "Sen_ship_vv_0201701230102": ["0 0.25 0.25 0.125 0.25", "0 0.95 0.8 0.2 0.1"],  # 2nd crosses the edge
    "newship0001": [],
}


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    for seed, (stem, lines) in enumerate(CHIPS.items()):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 100, (32, 32), dtype=np.uint8), mode="L").save(ROOT / f"{stem}.jpg")
        (ROOT / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
