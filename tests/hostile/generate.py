"""Hostile and broken inputs, one writer per case (run ``python tests/hostile/generate.py <folder>`` to get them
all as files; the tests in this folder call the writers into their own ``tmp_path``).

Every file is small on disk. The bombs are small *because* they lie or compress well: they ask for gigabytes
only when a reader trusts a header or inflates before checking. Nothing here is copied from a real dataset.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: a pickle that would run ``open(<marker>, "w")`` if unpickled without ``weights_only``
_PAYLOAD_TEMPLATE = "open({marker!r}, 'w').close()"


class _Exec:
    """Unpickling this object calls ``exec(code)``: the classic pickle payload."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


# ------------------------------------------------------------------------------------------------ pixels
def tiff_bomb(path: Path, side: int = 10240) -> Path:
    """A zlib-tiled float32 TIFF of ``side`` x ``side`` zeros: about 0.4 MB on disk, 0.4 GiB as an array."""
    import tifffile

    tile = 1024
    tiles = (-(-side // tile)) ** 2
    with tifffile.TiffWriter(path) as writer:
        writer.write(shape=(side, side), dtype=np.float32, tile=(tile, tile), compression="zlib",
                     data=(np.zeros((tile, tile), np.float32) for _ in range(tiles)))
    return path


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A 1-bit-compressible 8-bit PNG of ``side`` x ``side`` zeros (400 MB of pixels, about 400 KB on disk)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit grey, no interlace
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def mstar_header_bomb(path: Path, rows: int = 2_000_000_000, cols: int = 2_000_000_000) -> Path:
    """A raw MSTAR Phoenix header claiming ``rows`` x ``cols`` pixels, followed by a few bytes of body."""
    lines = ["", "[PhoenixHeaderVer01.04]", "PhoenixHeaderLength= 00300", "native_header_length= 0",
             f"NumberOfColumns= {cols}", f"NumberOfRows= {rows}", "TargetType= t72", "[EndofPhoenixHeader]"]
    text = "\n".join(lines).encode().ljust(300, b" ")
    path.write_bytes(text + b"\x00" * 64)
    return path


def mat_bomb(path: Path, side: int = 20000) -> Path:
    """A compressed MATLAB v5 file whose one variable is a ``side`` x ``side`` uint8 array of zeros."""
    from scipy.io import savemat

    # savemat needs the array in memory; 20000^2 uint8 is 400 MB, too much for a generator. Write a small one
    # and patch the declared dimensions instead: readers must refuse from the header, before inflating.
    buffer = io.BytesIO()
    savemat(buffer, {"img": np.zeros((7, 9), np.uint8)}, do_compression=False)
    data = bytearray(buffer.getvalue())
    dims = np.array([7, 9], "<i4").tobytes()
    at = data.find(dims)
    data[at:at + 8] = np.array([side, side], "<i4").tobytes()
    path.write_bytes(bytes(data))
    return path


def zip_member_bomb(path: Path, member: str = "chip.tif", inflated: int = (1 << 30) + (1 << 20)) -> Path:
    """A zip whose one member inflates to ``inflated`` bytes (zeros deflate about 1000:1)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open(member, "w", force_zip64=True) as handle:
            block = b"\x00" * (1 << 20)
            for _ in range(inflated // len(block)):
                handle.write(block)
            handle.write(block[: inflated % len(block)])
    return path


def float_tiff(path: Path, values: np.ndarray) -> Path:
    import tifffile

    tifffile.imwrite(path, values)
    return path


def nan_tiff(path: Path, count: int = 1) -> Path:
    """A 32 x 32 amplitude TIFF with ``count`` NaN pixels."""
    values = np.random.default_rng(0).uniform(0.0, 1.0, (32, 32)).astype(np.float32)
    values.flat[:count] = np.nan
    return float_tiff(path, values)


def inf_tiff(path: Path) -> Path:
    values = np.random.default_rng(1).uniform(0.0, 1.0, (32, 32)).astype(np.float32)
    values[5, 5] = np.inf
    values[6, 6] = -np.inf
    return float_tiff(path, values)


def int16_counts_tiff(path: Path) -> Path:
    """int16 counts 0..3000 (a common GDAL export of amplitude): not display integers of their type's range."""
    return float_tiff(path, np.random.default_rng(2).integers(0, 3000, (32, 32)).astype(np.int16))


def negative_int16_tiff(path: Path) -> Path:
    return float_tiff(path, np.random.default_rng(3).integers(-500, 500, (32, 32)).astype(np.int16))


def float_amplitude_tiff(path: Path) -> Path:
    """float32 amplitudes 0..500: clipping them to [0, 1] would give a white image."""
    return float_tiff(path, np.random.default_rng(4).uniform(0.0, 500.0, (32, 32)).astype(np.float32))


def five_band_first_tiff(path: Path) -> Path:
    """A (5, 32, 32) raster written as 5 pages: the file does not say whether the pages are bands."""
    return float_tiff(path, np.random.default_rng(5).uniform(0.0, 1.0, (5, 32, 32)).astype(np.float32))


# ------------------------------------------------------------------------------------------------ checkpoints
def pickled_payload_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint whose pickle would create ``marker`` when loaded unsafely."""
    import torch

    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": _Exec(_PAYLOAD_TEMPLATE.format(
        marker=str(marker)))}, path)
    return path


def text_checkpoint(path: Path) -> Path:
    path.write_text("this is not a checkpoint\n" * 10)
    return path


def truncated_checkpoint(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ------------------------------------------------------------------------------------------------ all of them
def write_all(folder: Path) -> dict[str, Path]:
    """Every pixel and checkpoint case above in ``folder`` (checkpoints need a real one to truncate: skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[Path], Path]] = {
        "tiff_bomb.tif": tiff_bomb, "png_bomb.png": png_bomb, "mstar_header_bomb.015": mstar_header_bomb,
        "mat_bomb.mat": mat_bomb, "zip_member_bomb.zip": zip_member_bomb, "nan.tif": nan_tiff, "inf.tif": inf_tiff,
        "int16_counts.tif": int16_counts_tiff, "negative_int16.tif": negative_int16_tiff,
        "float_amplitude.tif": float_amplitude_tiff, "five_band_first.tif": five_band_first_tiff,
        "text.ckpt": text_checkpoint,
    }
    written = {name: writer(folder / name) for name, writer in writers.items()}
    written["payload.ckpt"] = pickled_payload_checkpoint(folder / "payload.ckpt", folder / "PWNED")
    (folder / "cases.json").write_text(json.dumps(sorted(written), indent=1))
    return written


if __name__ == "__main__":
    for name, path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "hostile_cases")).items():
        print(f"{name:28s} {path.stat().st_size:>12,d} bytes")
