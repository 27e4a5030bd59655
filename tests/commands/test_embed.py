"""``embed``: parquet embeddings of images and texts equal ``load_model(...).encode_image / encode_text``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import torch
from PIL import Image

from lightning_sarclip.commands.embed import errors_path, main, read_embeddings
from lightning_sarclip.models.loading import load_model
from lightning_sarclip.training.prediction import ImageFolderDataset
from tests.conftest import TEST_ARCH


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def make_images(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    (folder / "nested").mkdir(parents=True)
    for i in range(5):
        Image.fromarray((rng.random((24 + i, 30)) * 255).astype(np.uint8)).save(folder / f"img_{i}.png")
    tifffile.imwrite(folder / "nested" / "amp.tif", rng.gamma(1.0, 0.1, (40, 40)).astype(np.float32))
    (folder / "nested" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def test_image_embeddings_match_encode_image(ckpt: Path, tmp_path: Path) -> None:
    folder = make_images(tmp_path / "images")
    out = tmp_path / "emb" / "images.parquet"
    main(["--ckpt", str(ckpt), "--images", str(folder), "--out", str(out), "--batch-size", "3"])

    schema = pq.read_schema(out)
    assert schema.field("path").type == pa.string()
    assert schema.field("embedding").type == pa.list_(pa.float32())
    paths, embeddings, meta = read_embeddings(out)
    loaded = load_model(pretrained=str(ckpt))
    assert meta["checkpoint_hash"] == loaded.checkpoint_hash and meta["model"] == TEST_ARCH
    assert meta["skipped"] == 1 and meta["dim"] == embeddings.shape[1] == 32

    dataset = ImageFolderDataset(folder, image_size=loaded.image_size, in_chans=loaded.in_chans)
    readable = [p for p in dataset.paths if not p.endswith("truncated.jpg")]
    assert paths == readable  # the unreadable file is skipped, the rest kept in listing order
    expected = loaded.encode_image(torch.stack([dataset.load(dataset.paths.index(p)) for p in paths]))
    assert np.allclose(embeddings, expected.numpy(), atol=1e-6)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    with open(errors_path(out), newline="") as handle:
        errors = list(csv.DictReader(handle))
    assert [Path(e["path"]).name for e in errors] == ["truncated.jpg"] and "truncated.jpg" in errors[0]["error"]

    # A clean re-run removes the stale side file.
    (folder / "nested" / "truncated.jpg").unlink()
    main(["--ckpt", str(ckpt), "--images", str(folder), "--out", str(out)])
    assert not errors_path(out).exists() and len(read_embeddings(out)[0]) == 6


def test_text_embeddings_match_encode_text(ckpt: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("a SAR image of a ship.\n\n  a radar image of a T72 tank.  \nan airport seen by Sentinel-1\n")
    out = tmp_path / "texts.parquet"
    main(["--ckpt", str(ckpt), "--texts", str(texts), "--out", str(out), "--batch-size", "2"])
    values, embeddings, meta = read_embeddings(out)
    assert values == ["a SAR image of a ship.", "a radar image of a T72 tank.", "an airport seen by Sentinel-1"]
    assert pq.read_schema(out).names == ["text", "embedding"]
    loaded = load_model(pretrained=str(ckpt))
    expected = loaded.encode_text(loaded.tokenizer(values))
    assert np.allclose(embeddings, expected.numpy(), atol=1e-6)
    assert meta["kind"] == "text" and meta["checkpoint"] == str(ckpt)


def test_model_name_and_pretrained_file(ckpt: Path, tmp_path: Path) -> None:
    # Any checkpoint file works with an explicit architecture (here the open_clip weights inside our .ckpt).
    texts = tmp_path / "t.txt"
    texts.write_text("a SAR image of a bridge.\n")
    out = tmp_path / "t.parquet"
    main(["--model-name", TEST_ARCH, "--pretrained", str(ckpt), "--texts", str(texts), "--out", str(out)])
    _, embeddings, _ = read_embeddings(out)
    loaded = load_model(pretrained=str(ckpt))
    assert np.allclose(embeddings, loaded.encode_text(loaded.tokenizer(["a SAR image of a bridge."])).numpy(),
                       atol=1e-6)
    with pytest.raises(SystemExit):
        main(["--texts", str(texts), "--out", str(out)])  # no model given
