"""Writes the tiny SAMPLE fixtures next to this file (run from the repo root: ``python tests/data/sample/data.py``).

``SAMPLE_dataset_public/`` with two measured/simulated pairs (t72 and 2s1): ``mat_files/{real,synth}/<cls>/`` MATLAB
v5 files holding exactly the 15 variables of the release's ``verify.py`` (8x8 complex64 images), and the 8-bit
renderings under ``png_images/{decibel,qpm}/{real,synth}/<cls>/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "SAMPLE_dataset_public"
SIZE = 8
CHIPS = [  # class, elevation, azimuth (exact), NN, serial
    ("t72", 16, 13.2, "77", "812"),
    ("2s1", 17, 45.6, "22", "b01"),
]


def stem(cls: str, subset: str, elevation: int, azimuth: float, nn: str, serial: str) -> str:
    return f"{cls}_{subset}_A_elevDeg_{elevation:03d}_azCenter_{int(azimuth):03d}_{nn}_serial_{serial}"


def mat_variables(cls: str, elevation: int, azimuth: float, image: np.ndarray) -> dict[str, object]:
    return {
        "complex_img": image, "complex_img_unshifted": np.fft.ifftshift(image).astype(np.complex64),
        "azimuth": np.array([[azimuth]]), "elevation": np.array([[float(elevation)]]),
        "center_freq": np.array([[9.6e9]]), "bandwidth": np.array([[5.9e8]]), "taylor_weights": np.array([[35.0]]),
        "range_resolution": np.array([[0.3]]), "xrange_resolution": np.array([[0.3]]),
        "range_pixel_spacing": np.array([[0.3]]), "xrange_pixel_spacing": np.array([[0.3]]),
        "aligned": np.array([[1]], np.uint8), "target_name": cls, "source_mstar_file": "HB00000.000",
        "explanation": "fixture: complex_img is the chip, complex_img_unshifted its ifftshift",
    }


def savemat_fixed(path: Path, variables: dict[str, object]) -> None:
    """``scipy.io.savemat`` with the creation date in the 116-byte text header replaced, so reruns are identical."""
    scipy.io.savemat(path, variables)
    data = bytearray(path.read_bytes())
    data[:116] = b"MATLAB 5.0 MAT-file, written by tests/data fixture generator".ljust(116, b" ")
    path.write_bytes(bytes(data))


def main() -> None:
    rng = np.random.default_rng(7)
    shutil.rmtree(ROOT, ignore_errors=True)
    for cls, elevation, azimuth, nn, serial in CHIPS:
        for subset in ("real", "synth"):
            name = stem(cls, subset, elevation, azimuth, nn, serial)
            shape = (SIZE, SIZE)
            image = (rng.rayleigh(0.05, shape) * np.exp(1j * rng.uniform(0, 2 * np.pi, shape))).astype(np.complex64)
            image[3:5, 3:5] = 1.0 + 0.5j
            mat = ROOT / "mat_files" / subset / cls / f"{name}.mat"
            mat.parent.mkdir(parents=True, exist_ok=True)
            savemat_fixed(mat, mat_variables(cls, elevation, azimuth, image))
            db = 20 * np.log10(np.abs(image) + 1e-6)
            for norm, pixels in (("decibel", (db - db.min()) / (db.max() - db.min())),
                                 ("qpm", np.sqrt(np.abs(image)) / np.sqrt(np.abs(image)).max())):
                png = ROOT / "png_images" / norm / subset / cls / f"{name}.png"
                png.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((pixels * 255).round().astype(np.uint8), mode="L").save(png)


if __name__ == "__main__":
    main()
