"""Folder prediction: ``ImageFolderPredictDataModule`` + ``ZeroShotPredictionWriter`` through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lightning_sarclip.data.templates import get_templates
from lightning_sarclip.eval.zeroshot import build_zeroshot_classifier, zeroshot_logits
from lightning_sarclip.models.loading import load_model
from lightning_sarclip.training.prediction import (
    ImageFolderDataset,
    ImageFolderPredictDataModule,
    ZeroShotPredictionWriter,
    load_classnames,
    merge_rows,
)
from tests.conftest import REPO_ROOT

CLASSES = ["ship", "tank", "aircraft", "bridge"]
_GEO_TAGS = [  # enough GeoTIFF tags for tifffile to call the file a GeoTIFF
    (33550, "d", 3, (10.0, 10.0, 0.0), True),
    (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
    (34735, "H", 8, (1, 1, 0, 1, 1024, 0, 1, 1), True),
]


def make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "scenes"
    (folder / "tiles").mkdir(parents=True)
    Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(folder / "chip_a.png")
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(folder / "chip_b.PNG")
    tifffile.imwrite(folder / "tiles" / "s1_db.tif", rng.normal(-15, 4, (64, 64)).astype(np.float32),
                     extratags=_GEO_TAGS)
    tifffile.imwrite(folder / "tiles" / "s1_u8.tiff", (rng.random((36, 36)) * 255).astype(np.uint8),
                     extratags=_GEO_TAGS)
    (folder / "tiles" / "broken.tif").write_bytes(b"II*\x00 this is not a TIFF")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_dataset_reads_formats_and_reports_corrupt_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    assert tifffile.TiffFile(folder / "tiles" / "s1_db.tif").is_geotiff
    dataset = ImageFolderDataset(folder, image_size=32, in_chans=1)
    names = [Path(p).name for p in dataset.paths]
    assert names == ["chip_a.png", "chip_b.PNG", "broken.tif", "s1_db.tif", "s1_u8.tiff"]
    items = [dataset[i] for i in range(len(dataset))]
    for item in items:
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    broken = items[2]
    assert "broken.tif" in broken["error"] and torch.count_nonzero(broken["image"]) == 0
    assert all(not item["error"] for i, item in enumerate(items) if i != 2)
    assert torch.allclose(items[1]["image"], torch.full((1, 32, 32), 200 / 255))  # uint8 -> integer scale
    db = ImageFolderDataset(folder, image_size=64).load(3)  # float dB, native size: 1..99 percentile stretch
    assert float(db.min()) == 0.0 and float(db.max()) == 1.0
    assert 0.005 < float((db == 0).float().mean()) < 0.02  # about 1 % clipped at each end
    assert len(ImageFolderDataset(folder, image_size=32, recursive=False)) == 2


def test_cli_predict_writes_every_file(ckpt: Path, tmp_path: Path) -> None:
    from lightning_sarclip.commands import main

    folder = make_folder(tmp_path)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(CLASSES))
    out = tmp_path / "out" / "predictions.csv"
    main([
        "predict", "--config", str(REPO_ROOT / "experiments" / "predict.yaml"),
        "--data.init_args.folder", str(folder), "--data.init_args.num_workers", "0",
        "--data.init_args.batch_size", "2",
        "--trainer.callbacks.init_args.classnames", str(classes),
        "--trainer.callbacks.init_args.output_csv", str(out),
        "--trainer.callbacks.init_args.topk", "3",
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        "--run_root", str(tmp_path / "runs"), "--ckpt_path", str(ckpt),
    ])
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "top1", "score1", "top2", "score2", "top3", "score3", "error"]
    dataset = ImageFolderDataset(folder, image_size=32, in_chans=1)
    assert [r["path"] for r in rows] == dataset.paths
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "broken.tif" in by_name["broken.tif"]["error"] and by_name["broken.tif"]["top1"] == ""

    # Independent recomputation with the evaluation loader: same labels and probabilities.
    loaded = load_model(pretrained=str(ckpt))
    classifier = build_zeroshot_classifier(loaded.encode_text, loaded.tokenizer, CLASSES, get_templates("sar"))
    for index, row in enumerate(rows):
        if row["error"]:
            continue
        probs = zeroshot_logits(loaded.encode_image(dataset[index]["image"][None]), classifier).softmax(-1)[0]
        scores, labels = probs.topk(3)
        assert [row[f"top{i}"] for i in (1, 2, 3)] == [CLASSES[j] for j in labels.tolist()]
        assert np.allclose([float(row[f"score{i}"]) for i in (1, 2, 3)], scores.tolist(), atol=2e-6)
        assert float(row["score1"]) >= float(row["score2"]) >= float(row["score3"])


def test_cli_refuses_data_settings_that_contradict_the_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    from lightning_sarclip.commands import main

    folder = make_folder(tmp_path)
    with pytest.raises(ValueError, match="in_chans"):
        main([
            "predict", "--config", str(REPO_ROOT / "experiments" / "predict.yaml"),
            "--data.init_args.folder", str(folder), "--data.init_args.num_workers", "0",
            "--data.init_args.in_chans", "2",
            "--trainer.callbacks.init_args.classnames", json.dumps(CLASSES),
            "--trainer.callbacks.init_args.output_csv", str(tmp_path / "p.csv"),
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
            "--run_root", str(tmp_path / "runs"), "--ckpt_path", str(ckpt),
        ])
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------------------------------- planted answers
class _BrightnessModel(pl.LightningModule):
    """Text tower: one-hot of the class named in the prompt. Image tower: a fixed feature per brightness band,
    so every image's label and softmax probabilities are known in advance."""

    FEATURES = {  # mean brightness band -> feature over (dark, grey, bright)
        "dark": torch.tensor([3.0, 1.0, 0.0]),
        "grey": torch.tensor([0.0, 2.0, 1.0]),
        "bright": torch.tensor([0.0, 0.5, 4.0]),
    }
    NAMES = ["dark", "grey", "bright"]

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def tokenizer(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([next(i for i, n in enumerate(self.NAMES) if f" {n} " in f" {p} ".replace(".", " "))
                             for p in prompts])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(tokens.to(self.device), 3).float()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        means = batch["image"].mean(dim=(1, 2, 3))
        bands = ["dark" if m < 0.3 else "grey" if m < 0.7 else "bright" for m in means.tolist()]
        return {"image_features": torch.stack([self.FEATURES[b] for b in bands]), "index": batch["index"]}


def test_planted_answers(tmp_path: Path) -> None:
    folder = tmp_path / "planted"
    folder.mkdir()
    values = {"a_dark.png": 20, "b_bright.png": 240, "c_grey.png": 128, "d_dark.tif": 10}
    for name, value in values.items():
        image = np.full((16, 16), value, np.uint8)
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, image)
        else:
            Image.fromarray(image).save(folder / name)
    (folder / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "planted.csv"
    writer = ZeroShotPredictionWriter(output_csv=str(out), classnames=_BrightnessModel.NAMES,
                                      templates=["a SAR image of {}.", "{} radar scene"], topk=5)
    datamodule = ImageFolderPredictDataModule(str(folder), image_size=8, batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.predict(_BrightnessModel(), datamodule=datamodule, return_predictions=False)
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "top1", "score1", "top2", "score2", "top3", "score3", "error"]  # k capped
    assert [Path(r["path"]).name for r in rows] == [*values, "e_corrupt.png"]
    for row in rows[:-1]:
        band = Path(row["path"]).stem.split("_")[1]
        feature = _BrightnessModel.FEATURES[band]
        expected = torch.softmax(100 * feature / feature.norm(), dim=0)
        order = expected.argsort(descending=True).tolist()
        assert [row[f"top{i + 1}"] for i in range(3)] == [_BrightnessModel.NAMES[j] for j in order]
        assert np.allclose([float(row[f"score{i + 1}"]) for i in range(3)], expected[order].tolist(), atol=1e-6)
        assert row["error"] == ""
    assert "e_corrupt.png" in rows[-1]["error"] and rows[-1]["top1"] == rows[-1]["score1"] == ""


def test_classnames_and_merge(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("# classes\nship\n\ntank\n")
    assert load_classnames(names) == ["ship", "tank"]
    (tmp_path / "names.json").write_text(json.dumps({"classnames": ["a", "b"]}))
    assert load_classnames(tmp_path / "names.json") == ["a", "b"]
    with pytest.raises(ValueError, match="duplicate"):
        load_classnames(["a", "a"])
    with pytest.raises(ValueError, match="classnames is required"):  # when predicting starts
        ZeroShotPredictionWriter(output_csv="x.csv").on_predict_start(None, None)
    # A DistributedSampler pads the last rank with repeats: the merge keeps one row per index, in order.
    rows = [{"dataloader": 0, "index": i, "path": f"p{i}"} for i in (2, 0, 3, 1, 0)]
    assert [r["index"] for r in merge_rows(rows)] == [0, 1, 2, 3]
