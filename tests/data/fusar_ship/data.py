#!/usr/bin/env python3
"""Write a tiny FUSAR-Ship 1.0 fixture in the distributed layout (run from the repo root; writes next to itself).

``FUSAR_Ship1.0/<Category>/<SubCategory>/Ship_CxxSyyNzzzz.tiff`` (16x16 single-channel TIFF instead of
512x512; uint8, one uint16 chip since the real bit depth is unconfirmed) and a tab-separated ``meta.csv``
with the 9 documented columns and backslash paths. One chip has no ``meta.csv`` row and one row has no chip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
TOP = HERE / "FUSAR_Ship1.0"

# (id, category, subcategory, mmsi, length, width, polarMode, centerLookAngle, heightspace, widthspace, dtype)
CHIPS = [
    ("Ship_C01S01N0001", "Cargo", "AggregatesCarrier", "477939300", "138", "26", "DH", "42.51", "1.702183",
     "1.124222", np.uint8),
    ("Ship_C01S02N0001", "Cargo", "BulkCarrier", "413000001", "225", "32", "DH", "38.20", "1.701000",
     "1.124000", np.uint8),
    ("Ship_C01S02N0002", "Cargo", "BulkCarrier", "0", "190", "", "DH", "38.21", "1.701000", "1.124000", np.uint8),
    ("Ship_C12S03N0001", "Tanker", "CrudeOilTanker", "636000002", "330", "60", "DV", "30.05", "1.698000",
     "1.123000", np.uint16),
    ("Ship_C04S01N0001", "Fishing", "Fishing", "412000003", "35", "7", "DH", "44.90", "1.705000", "1.125000",
     np.uint8),
]
NO_ROW = {"Ship_C04S01N0001"}  # chip present, no meta.csv row
ROW_ONLY = [("Ship_C01S02N0009", "Cargo", "BulkCarrier", "413000009", "200", "30", "DH", "40.00", "1.7", "1.1")]


def main() -> None:
    if TOP.exists():
        shutil.rmtree(TOP)
    rng = np.random.default_rng(0)
    for chip_id, category, subcategory, *_, dtype in CHIPS:
        folder = TOP / category / subcategory
        folder.mkdir(parents=True, exist_ok=True)
        top = np.iinfo(dtype).max if dtype == np.uint8 else 4000
        image = rng.integers(0, top // 4, size=(16, 16)).astype(dtype)
        image[6:10, 4:12] = top  # the ship at the centre
        tifffile.imwrite(folder / f"{chip_id}.tiff", image, photometric="minisblack")
    header = "id\tmmsi\tlength\twidth\tpolarMode\tcenterLookAngle\theightspace\twidthspace\tpath"
    rows = [header]
    for chip_id, category, subcategory, *values, _dtype in CHIPS:
        if chip_id not in NO_ROW:
            rows.append("\t".join([chip_id, *values, f"{category}\\{subcategory}"]))
    for chip_id, category, subcategory, *values in ROW_ONLY:
        rows.append("\t".join([chip_id, *values, f"{category}\\{subcategory}"]))
    (TOP / "meta.csv").write_text("\r\n".join(rows) + "\r\n", encoding="utf-8", newline="")


if __name__ == "__main__":
    main()
