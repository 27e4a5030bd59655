"""Datamodules: splits per stage, batch layout, tokenisation in (picklable) collate, worker processes."""

from __future__ import annotations

import pickle

import pytest
import torch
from lightning.pytorch import seed_everything

from lightning_sarclip.data.synthetic import SYNTHETIC_CLASSES, SyntheticSARDataset
from lightning_sarclip.training.datamodules import (
    CaptionCollate,
    SARDataModule,
    SyntheticSARDataModule,
    build_tokenizer,
)

TOKENIZER = "SARCLIP-ViT-Test-32"
CONTEXT = 16  # context_length of SARCLIP-ViT-Test-32


def _datamodule(**kwargs) -> SyntheticSARDataModule:
    defaults = {"num_train": 16, "num_val": 8, "num_test": 6, "image_size": 32, "batch_size": 4,
                "tokenizer": TOKENIZER}
    return SyntheticSARDataModule(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TOKENIZER)


def _check_train_batch(batch: dict, batch_size: int, in_chans: int = 1, size: int = 32) -> None:
    assert set(batch) == {"image", "text", "label", "index"}
    assert batch["image"].shape == (batch_size, in_chans, size, size) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["text"].shape == (batch_size, CONTEXT) and batch["text"].dtype == torch.long
    assert batch["label"].shape == (batch_size,) and batch["label"].dtype == torch.long
    assert batch["index"].shape == (batch_size,) and batch["index"].dtype == torch.long
    assert ((batch["label"] >= 0) & (batch["label"] < len(SYNTHETIC_CLASSES))).all()


def _check_eval_batch(batch: dict, batch_size: int, captions: int = 5) -> None:
    assert set(batch) == {"image", "text", "label", "index"}
    assert batch["image"].shape == (batch_size, 1, 32, 32)
    assert batch["text"].shape == (batch_size, captions, CONTEXT) and batch["text"].dtype == torch.long
    assert batch["label"].dtype == torch.long and batch["index"].dtype == torch.long


def test_fit_batches_in_main_process() -> None:
    dm = _datamodule()
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}
    assert len(dm.datasets["train"]) == 16 and len(dm.datasets["val"]) == 8
    assert dm.classnames == list(SYNTHETIC_CLASSES)
    _check_train_batch(next(iter(dm.train_dataloader())), 4)
    val = next(iter(dm.val_dataloader()))
    _check_eval_batch(val, 4)
    # Eval batches hold the dataset's captions in order: the first token rows equal tokenizing caption 0.
    first = dm.datasets["val"][int(val["index"][0])]["captions"][0]
    assert torch.equal(val["text"][0, 0], dm.tokenizer([first])[0])


def test_fit_batches_in_worker_processes() -> None:
    dm = _datamodule(num_workers=2, eval_batch_size=3)
    dm.setup("fit")
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    assert train_loader.persistent_workers and val_loader.persistent_workers
    _check_train_batch(next(iter(train_loader)), 4)
    _check_eval_batch(next(iter(val_loader)), 3)


def test_collate_is_picklable(tokenizer) -> None:
    ds = SyntheticSARDataset("val", num_samples=4, image_size=32, n_captions=2)
    samples = [ds[i] for i in range(4)]
    collate = pickle.loads(pickle.dumps(CaptionCollate(tokenizer, all_captions=True)))
    assert torch.equal(collate(samples)["text"], CaptionCollate(tokenizer, all_captions=True)(samples)["text"])


def test_eval_collate_rejects_varying_caption_counts(tokenizer) -> None:
    samples = [{"image": torch.zeros(1, 32, 32), "captions": ["a ship."] * k, "label": 0, "index": k} for k in (1, 2)]
    with pytest.raises(ValueError, match="same number of captions"):
        CaptionCollate(tokenizer, all_captions=True)(samples)
    assert CaptionCollate(tokenizer, all_captions=False)(samples)["text"].shape == (2, CONTEXT)


def _first_train_batch(dm: SyntheticSARDataModule, seed: int, epoch: int) -> dict:
    seed_everything(seed, workers=True, verbose=False)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    batch = next(iter(loader))
    order = batch["index"].argsort()
    return {"index": batch["index"], "text": batch["text"][order]}  # text sorted by image, to compare draws


def test_train_order_and_captions_are_functions_of_seed_and_epoch() -> None:
    dm = _datamodule(num_train=8, batch_size=8)
    dm.setup("fit")
    first = _first_train_batch(dm, seed=0, epoch=0)
    again = _first_train_batch(dm, seed=0, epoch=0)
    assert torch.equal(first["index"], again["index"]) and torch.equal(first["text"], again["text"])
    # Another epoch: another order and other caption draws for the same 8 images (5 captions each).
    next_epoch = _first_train_batch(dm, seed=0, epoch=1)
    assert not torch.equal(first["index"], next_epoch["index"])
    assert not torch.equal(first["text"], next_epoch["text"])
    # Another seed (seed_everything's): likewise.
    other_seed = _first_train_batch(dm, seed=1, epoch=0)
    assert not torch.equal(first["index"], other_seed["index"])
    assert not torch.equal(first["text"], other_seed["text"])


def test_missing_tokenizer_is_a_clear_error() -> None:
    dm = _datamodule(tokenizer=None)
    dm.setup("fit")  # datasets alone do not need a tokenizer
    assert dm.classnames == list(SYNTHETIC_CLASSES)
    with pytest.raises(ValueError, match="no tokenizer configured"):
        dm.train_dataloader()


def test_unknown_tokenizer_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a known open_clip architecture"):
        _datamodule(tokenizer="SARCLIP-ViT-Nope").setup("fit")


def test_stages_set_up_the_right_splits() -> None:
    for stage, splits in [("validate", {"val"}), ("test", {"test"}), ("predict", {"test"})]:
        dm = _datamodule()
        dm.setup(stage)
        assert set(dm.datasets) == splits, stage
        assert dm.classnames == list(SYNTHETIC_CLASSES)
    dm = _datamodule()
    with pytest.raises(RuntimeError, match="no dataset is set up"):
        _ = dm.classnames
    with pytest.raises(RuntimeError, match=r"setup\('fit'\)"):
        dm.train_dataloader()
    dm.setup("test")
    assert len(dm.datasets["test"]) == 6
    batches = list(dm.predict_dataloader())
    assert [b["image"].shape[0] for b in batches] == [4, 2]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6))  # eval loaders keep order


def test_drop_last_only_when_the_split_holds_a_full_batch() -> None:
    dm = _datamodule(num_train=6)
    dm.setup("fit")
    assert [b["image"].shape[0] for b in dm.train_dataloader()] == [4]
    dm = _datamodule(num_train=3)
    dm.setup("fit")
    assert [b["image"].shape[0] for b in dm.train_dataloader()] == [3]


def test_arguments_reach_the_dataset() -> None:
    dm = _datamodule(in_chans=2, n_captions=3, looks=2, seed=5, image_size=48)
    dm.setup("validate")
    ds = dm.datasets["val"]
    assert (ds.in_chans, ds.n_captions, ds.looks, ds.seed, ds.image_size, len(ds)) == (2, 3, 2, 5, 48, 8)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 2, 48, 48) and batch["text"].shape == (4, 3, CONTEXT)


def test_generic_base_with_a_dataset_class() -> None:
    dm = SARDataModule(SyntheticSARDataset, dataset_kwargs={"num_samples": 5, "n_captions": 2}, batch_size=2,
                       image_size=32, tokenizer=TOKENIZER)
    dm.setup("test")
    assert dm.dataset_kwargs_for("test") == {"num_samples": 5, "n_captions": 2}
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32) and batch["text"].shape == (2, 2, CONTEXT)
    assert "dataset_class" not in dm.hparams and dm.hparams["tokenizer"] == TOKENIZER


def test_bad_loader_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        _datamodule(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        _datamodule(num_workers=-1)
