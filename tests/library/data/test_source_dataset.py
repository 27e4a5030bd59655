"""``SourceDataset`` and ``SourceDataModule``: any registered source as batches, and through the real CLI."""

from __future__ import annotations

import logging
import pickle
import random
import re
import shutil

import pytest
import torch

from lightning_sarclip.data.io import SARReadError
from lightning_sarclip.data.source_dataset import SourceDataset
from lightning_sarclip.training import SourceDataModule
from tests.conftest import FIXTURES, REPO_ROOT, TEST_ARCH

DATA = FIXTURES
CLASS_FOLDER = DATA / "class_folder" / "split_layout"
FLAT = DATA / "class_folder" / "flat_layout"
TABLE = DATA / "image_caption_table"
SARLANG = DATA / "sarlang" / "SARLANG-1M"
CONTEXT = 16  # context length of SARCLIP-ViT-Test-32


def test_items_have_the_collate_layout():
    ds = SourceDataset("class_folder", str(CLASS_FOLDER), "train", image_size=32, n_captions=4)
    assert len(ds) == 8 and ds.classnames == ["BMP2", "Tanker", "bulk_carrier"]
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"image", "captions", "label", "index"} and item["index"] == i
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert len(item["captions"]) == 4 and all(isinstance(c, str) and c for c in item["captions"])
        name = ds.classnames[item["label"]]
        assert name == ds.records[i].labels[0]
        assert any(name.replace("_", " ").lower() in c.lower() for c in item["captions"])
    assert ds[0]["captions"] == SourceDataset("class_folder", str(CLASS_FOLDER), image_size=32,
                                              n_captions=4)[0]["captions"]  # deterministic
    assert pickle.loads(pickle.dumps(ds))[3]["captions"] == ds[3]["captions"]  # ships to workers


def test_shipped_captions_are_padded_or_topped_up():
    ds = SourceDataset("image_caption_table", str(TABLE), "train", image_size=16, n_captions=3)
    bridge = ds[[r.source_id for r in ds.records].index("images/sub/bridge_001.png")]
    assert bridge["captions"] == ["A bridge crossing a river."] * 3 and bridge["label"] == -1
    labelled = SourceDataset("image_caption_table", str(TABLE), "train", image_size=16, n_captions=4,
                             source_options={"table": "pairs.csv", "split_column": "split",
                                             "label_column": "label"})
    assert labelled.classnames == ["ship", "tank"]  # sorted labels seen
    ship = labelled[0]
    assert ship["captions"][:2] == ["A ship, small and bright, in open water.", "A single vessel at sea."]
    assert len(set(ship["captions"])) == 4 and ship["label"] == 0  # topped up from the label
    one = SourceDataset("image_caption_table", str(TABLE / "pairs.tsv"), "all", image_size=16, n_captions=2)
    assert one[0]["captions"] == ["A ship in open water.", "A vessel with a wake."]  # cut to n_captions


def test_policy_override_and_errors(tmp_path):
    default = SourceDataset("sarlang", str(SARLANG), "train", image_size=16)
    stretched = SourceDataset("sarlang", str(SARLANG), "train", image_size=16,
                              policy={"name": "percentile", "low": 1, "high": 99})
    assert not torch.allclose(default[0]["image"], stretched[0]["image"])
    assert stretched[0]["image"].max() == 1.0 and default[0]["image"].max() < 1.0
    with pytest.raises(ValueError, match="no records for split 'train'"):
        SourceDataset("class_folder", str(FLAT), "train")
    with pytest.raises(ValueError, match="unknown SAR source"):
        SourceDataset("imagenet", str(FLAT))
    root = tmp_path / "flat"
    shutil.copytree(FLAT, root)
    (root / "ship" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = SourceDataset("class_folder", str(root), "all", image_size=16)
    broken = [r.source_id for r in ds.records].index("ship/zz_broken.png")
    with pytest.raises(SARReadError, match="zz_broken.png"):
        ds[broken]


def _dm(**kwargs) -> SourceDataModule:
    defaults = {"source": "class_folder", "root": str(CLASS_FOLDER), "tokenizer": TEST_ARCH, "image_size": 32,
                "batch_size": 2, "eval_batch_size": 3, "n_captions": 5}
    return SourceDataModule(**{**defaults, **kwargs})


def test_datamodule_train_and_val_batches():
    dm = _dm()
    dm.setup("fit")
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 8, "val": 3}
    assert dm.classnames == ["BMP2", "Tanker", "bulk_carrier"]
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (2, 1, 32, 32) and train["text"].shape == (2, CONTEXT)
    assert ((train["label"] >= 0) & (train["label"] < 3)).all()
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (3, 1, 32, 32) and val["text"].shape == (3, 5, CONTEXT)
    assert sorted(val["label"].tolist()) == [0, 1, 2]
    dm.setup("test")  # test lacks "Tanker" but shares the class list, so indices agree with train
    test_labels = [dm.datasets["test"][i]["label"] for i in range(2)]
    assert test_labels == [0, 2]


def test_datamodule_maps_missing_splits(caplog):
    dm = _dm(source="sarlang", root=str(SARLANG), n_captions=2)
    with caplog.at_level(logging.WARNING, logger="lightning_sarclip"):
        dm.setup("fit")
    assert "no 'val' split; using its 'test' split" in caplog.text
    assert len(dm.datasets["val"]) == 1 and dm.classnames == []
    val = next(iter(dm.val_dataloader()))
    assert val["text"].shape == (1, 2, CONTEXT) and val["label"].tolist() == [-1]
    flat = _dm(root=str(FLAT))  # 3 images of 2 classes: each class keeps a train image, 10% of 3 rounds to 0
    with pytest.raises(ValueError, match="left both val and test empty"):
        flat.setup("fit")
    flat = _dm(root=str(FLAT), split_fractions={"train": 0.5, "val": 0.5})  # split on the fly (test_source_split)
    flat.setup("fit")
    train, val = ({r.source_id for r in flat.datasets[s].records} for s in ("train", "val"))
    assert len(train) + len(val) == 3 and not train & val and flat.classnames == ["oil_tank", "ship"]
    with pytest.raises(ValueError, match="unknown SAR source"):
        _dm(source="nope")


def test_datamodule_passes_source_options_and_styles():
    dm = _dm(source="image_caption_table", root=str(TABLE), n_captions=3, caption_styles=("general",),
             source_options={"table": "pairs.csv", "split_column": "split", "label_column": "label"})
    dm.setup("test")
    item = dm.datasets["test"][0]
    assert item["captions"][0] == "A tank next to a road." and dm.classnames == ["ship", "tank"]
    assert item["label"] == 1 and dm.hparams["source_options"]["table"] == "pairs.csv"


def test_cli_fast_dev_run_on_a_class_folder(tmp_path, capsys, caplog):
    from lightning_sarclip.commands import main

    main(["fit", "--config", str(REPO_ROOT / "experiments" / "quickstart.yaml"),
          "--model.init_args.model_name", TEST_ARCH,
          "--data", "lightning_sarclip.training.SourceDataModule",
          "--data.init_args.source", "class_folder", "--data.init_args.root", str(CLASS_FOLDER),
          "--data.init_args.image_size", "32", "--data.init_args.batch_size", "2",
          "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false"])
    printed = capsys.readouterr().out
    rows = {line.split()[0] for line in printed.splitlines() if line.strip()}
    assert re.search(r"^metric +val$", printed, re.M)  # one column per logged prefix
    assert {"loss", "i2t_R@1", "zeroshot_top1"} <= rows
    assert "class_folder (all): skipped" in caplog.text  # the source was listed, not the synthetic data


def test_cached_images_and_captions_give_the_same_items_and_are_never_handed_out(monkeypatch):
    """``cache_images`` reads each chip once; items equal the uncached ones (with and without augmentation), and an
    item's tensor never shares memory with the cache."""
    from lightning_sarclip.training import SourceDataModule

    root = str(REPO_ROOT / "tests" / "data" / "mstar" / "jpeg_folders")
    common = {"source": "mstar", "root": root, "image_size": 16, "n_captions": 2, "augment": {"crop_scale": [0.5, 1]}}
    plain, cached = SourceDataModule(**common), SourceDataModule(**common, cache_images=True)
    plain.setup("fit")
    cached.setup("fit")
    reads = []
    listing = cached.datasets["train"].listing
    original = listing.load_array
    monkeypatch.setattr(listing, "load_array", lambda record, in_chans: reads.append(record) or original(record,
                                                                                                          in_chans))
    for split in ("train", "val"):
        a, b = plain.datasets[split], cached.datasets[split]
        for epoch in range(2):
            for index in range(len(a)):
                random.seed(epoch * 100 + index)
                first = a[index]
                random.seed(epoch * 100 + index)
                second = b[index]
                assert torch.equal(first["image"], second["image"]) and first["captions"] == second["captions"]
                second["image"].add_(1.0)  # a consumer writing into its batch must not reach the cache
    assert len(reads) == len(cached.datasets["train"]) + len(cached.datasets["val"])  # once each, over two epochs
