#!/usr/bin/env python3
"""Tiny FAIR-CSAR-V1.0 fixture (datasets.md 17.5; run from the repo root; writes next to this file).

FAIR-CSAR/{train,test}/{SLCMats/<stem>.mat (variable 'data', complex64), PNGImages/<stem>.png (uint8),
Annotations/<stem>.txt (imagesize header + DOTA lines), METAXmls/<stem>.xml (flat tags), KeyPoints/<stem>.xml}
"""

import shutil
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "FAIR-CSAR"
STEMS = {
    "train": "GF3_KAS_SL_000001_E0.0_N0.0_20220101_L1A_HH_L10000000001_00000_00000",
    "test": "GF3_KAS_SL_000002_E0.0_N0.0_20220102_L1A_HH_L10000000002_00000_01024",
}
ANNOTATIONS = {
    "train": ["imagesize 16 16", "2.0 2.0 8.0 2.0 8.0 5.0 2.0 5.0 Boeing737 0",
              "10.0 9.0 14.0 13.0 12.0 15.0 8.0 11.0 Oil_Tanker 1"],
    "test": ["imagesize 16 16", "4.0 4.0 12.0 4.0 12.0 12.0 4.0 12.0 Tank 0"],
}
META = {
    "azimuth": 16, "range": 16, "azimuthStart": 0, "rangeStart": 0, "azimuthEnd": 16, "rangeEnd": 16,
    "imgingMode": "SL", "nominalResolution": 1, "polarizationMode": "HH", "velocity": 7553.2,
    "radarCenterFrequency": 5.4, "prf": 3800.0, "lookDirection": "R", "width": 16, "height": 16,
    "majorCategory": "aircraft", "subCategory": "Boeing737", "incidenceAngle": 35.5, "attitudeAngle": 0.1,
    "x1": 139.70, "y1": 35.50, "x2": 139.71, "y2": 35.50, "x3": 139.71, "y3": 35.49, "x4": 139.70, "y4": 35.49,
}


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    for seed, (split, stem) in enumerate(STEMS.items()):
        folder = ROOT / split
        for sub in ("SLCMats", "PNGImages", "Annotations", "METAXmls", "KeyPoints"):
            (folder / sub).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        slc = (rng.rayleigh(300.0, (16, 16)) * np.exp(1j * rng.uniform(0, 2 * np.pi, (16, 16)))).astype(np.complex64)
        mat = folder / "SLCMats" / f"{stem}.mat"
        scipy.io.savemat(mat, {"data": slc})
        # the 116-byte text header holds a creation time; fix it so that reruns give identical bytes
        mat.write_bytes(b"MATLAB 5.0 MAT-file, fixture".ljust(116) + mat.read_bytes()[116:])
        amplitude = np.clip(np.abs(slc) / 4, 0, 255).astype(np.uint8)
        Image.fromarray(amplitude, mode="L").save(folder / "PNGImages" / f"{stem}.png")
        (folder / "Annotations" / f"{stem}.txt").write_text("\n".join(ANNOTATIONS[split]) + "\n")
        tags = "".join(f"  <{k}>{v}</{k}>\n" for k, v in META.items())
        (folder / "METAXmls" / f"{stem}.xml").write_text(f"<root>\n{tags}</root>\n")
        names = [line.split()[8] for line in ANNOTATIONS[split][1:]]
        objects = "".join(f"  <object><name>{n}</name></object>\n" for n in names)
        (folder / "KeyPoints" / f"{stem}.xml").write_text(f"<annotation>\n{objects}</annotation>\n")


if __name__ == "__main__":
    main()
