#!/usr/bin/env python3
"""Write a tiny SEN12MS fixture with the distributed names, dtypes and layout (run from the repo root).

Same tree as the torchgeo fixture: for each of the 4 seasons ``<season>/{lc,s1,s2}_1/<season>_{lc,s1,s2}_1_p{1,2}
.tif`` as GeoTIFF (UTM EPSG:32737, 10 m pixels), ``s1`` float32 x 2 bands (VV, VH dB), ``s2`` uint16 x 13,
``lc`` uint16 x 4 (IGBP, LCCS-LC, LCCS-LU, LCCS-SH), but 16x16 pixels, a designed IGBP band (so the tests
know the labels) and *disjoint* official lists: ``train_list.txt`` spring/summer/fall, ``test_list.txt``
winter (S2 names, as in schmitt-muc/SEN12MS). It also has the known damaged patch
``ROIs1868_summer_s1_146_p202`` (NaN in S1), which the official lists leave out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
SIZE = 16
SEASONS = ["ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter"]
COUNT = {"lc": 4, "s1": 2, "s2": 13}
#: GeoTIFF keys: projected model, pixel-is-area, EPSG:32737 (as the torchgeo fixture's CRS).
GEOKEYS = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32737]

#: IGBP layouts (code, number of 16x16 pixels) per patch number; p1 is mostly water, p2 mostly cropland.
IGBP = {
    1: [(17, 160), (13, 64), (10, 32)],  # Water .625, Urban .25, Grassland .125
    2: [(12, 128), (14, 64), (5, 48), (1, 16)],  # Croplands .5 + .25 (simplified .75), Forest .1875 + .0625
}


def geotiff(path: Path, data: np.ndarray) -> None:
    """Write ``(H, W, C)`` pixel-interleaved with the GeoTIFF tags GDAL/rasterio would write."""
    extratags = [
        (33550, "d", 3, (10.0, 10.0, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, 390772.3389928384, 8114182.836060452, 0.0), True),
        (34735, "H", len(GEOKEYS), tuple(GEOKEYS), True),
    ]
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="contig", extratags=extratags)


def land_cover(patch: int, rng: np.random.Generator) -> np.ndarray:
    igbp = np.concatenate([np.full(n, code, np.uint16) for code, n in IGBP[patch]])
    bands = [igbp.reshape(SIZE, SIZE)] + [rng.integers(1, 40, (SIZE, SIZE)).astype(np.uint16) for _ in range(3)]
    return np.stack(bands, axis=-1)


def write_patch(season: str, scene: int, patch: int, rng: np.random.Generator, damaged: bool = False) -> None:
    for source in ("lc", "s1", "s2"):
        folder = HERE / season / f"{source}_{scene}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{season}_{source}_{scene}_p{patch}.tif"
        if source == "lc":
            data = land_cover(1 if damaged else patch, rng)
        elif source == "s1":
            vv = rng.normal(-12.0, 3.0, (SIZE, SIZE))
            vh = rng.normal(-19.0, 3.0, (SIZE, SIZE))
            data = np.stack([vv, vh], axis=-1).astype(np.float32)
            if damaged:
                data[:4, :4, :] = np.nan
        else:
            data = rng.integers(0, 10000, (SIZE, SIZE, COUNT["s2"])).astype(np.uint16)
        geotiff(path, data)


def main() -> None:
    rng = np.random.default_rng(0)
    for season in SEASONS:
        if (HERE / season).exists():
            shutil.rmtree(HERE / season)
        for patch in (1, 2):
            write_patch(season, 1, patch, rng)
    write_patch("ROIs1868_summer", 146, 202, rng, damaged=True)
    train = [f"{s}_s2_1_p{p}.tif" for s in SEASONS[:3] for p in (1, 2)]
    test = [f"{SEASONS[3]}_s2_1_p{p}.tif" for p in (1, 2)]
    (HERE / "train_list.txt").write_text("".join(f"{name}\n" for name in train))
    (HERE / "test_list.txt").write_text("".join(f"{name}\n" for name in test))


if __name__ == "__main__":
    main()
