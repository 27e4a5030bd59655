"""``epoch_unit``: an epoch of images (one drawn caption each) or of (image, caption) pairs (open_clip_train's).

The acceptance case: a table of N images x 5 captions (SARVLM's CSV shape, one row per pair) is N samples an
epoch with ``images`` and 5N with ``pairs``, every pair exactly once (also split over two DDP ranks and across a
mid-epoch resume), and a real ``Trainer.fit`` runs exactly the steps its LR schedule spans.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from lightning_sarclip.data.pairs import CaptionPairs, check_epoch_unit
from lightning_sarclip.data.samplers import SeededDataset, SeededEpochSampler
from lightning_sarclip.training import CorpusDataModule, SourceDataModule, SyntheticSARDataModule
from lightning_sarclip.training.module import SARCLIPModule
from lightning_sarclip.training.unfreeze import cosine_with_warmup
from tests.conftest import TEST_ARCH
from tests.helpers import write_caption_table

N_IMAGES, N_CAPTIONS = 6, 5


def _table(root: Path) -> dict[str, set[tuple[str, str]]]:
    """N training images x 5 captions (and 2 val images), as (imgpath, caption) row sets."""
    rows = write_caption_table(root, {"train": N_IMAGES, "val": 2}, N_CAPTIONS)
    return {split: set(table) for split, table in rows.items()}


def _dm(root: Path, epoch_unit: str, **kwargs) -> SourceDataModule:
    return SourceDataModule(**{"source": "image_caption_table", "root": str(root), "n_captions": N_CAPTIONS,
                               "image_size": 32, "batch_size": 5, "tokenizer": TEST_ARCH, "epoch_unit": epoch_unit,
                               **kwargs})


def _drawn(samples, order) -> list[tuple[str, str]]:
    """(imgpath, caption) of each ``(index, seed)`` of ``order``, read as training reads it."""
    seeded = SeededDataset(samples)
    dataset = getattr(samples, "dataset", samples)
    out = []
    for index, seed in order:
        item = seeded[(index, seed)]
        out.append((dataset.records[item["index"]].source_id, item["captions"][0]))
    return out


def test_an_epoch_holds_every_pair_once_or_every_image_once(tmp_path):
    rows = _table(tmp_path)["train"]
    counts = {}
    for unit in ("images", "pairs"):
        dm = _dm(tmp_path, unit)
        dm.setup("fit")
        samples = dm.train_samples()
        loader = dm.train_dataloader()
        counts[unit] = len(samples)
        assert len(loader) == len(samples) // 5
        drawn = _drawn(samples, loader.sampler)
        if unit == "pairs":
            assert isinstance(samples, CaptionPairs)
            assert Counter(drawn) == Counter(rows)  # every (image, caption) row exactly once
            loader.sampler.set_epoch(1)
            assert _drawn(samples, loader.sampler) != drawn  # another order in another epoch
            assert Counter(_drawn(samples, loader.sampler)) == Counter(rows)
        else:
            assert sorted(path for path, _ in drawn) == sorted({path for path, _ in rows})
            assert set(drawn) <= rows
    assert counts == {"images": N_IMAGES, "pairs": N_IMAGES * N_CAPTIONS}


def test_two_ranks_share_the_pairs_of_an_epoch(tmp_path):
    rows = _table(tmp_path)["train"]
    dm = _dm(tmp_path, "pairs")
    dm.setup("fit")
    samples = dm.train_samples()
    order = SeededEpochSampler(dm.train_dataloader().sampler.order, seed=0)
    shards = []
    for rank in range(2):
        sharded = DistributedSamplerWrapper(order, num_replicas=2, rank=rank, shuffle=True)
        sharded.set_epoch(2)
        shards.append(_drawn(samples, sharded))
    assert len(shards[0]) == len(shards[1]) == len(rows) // 2
    assert Counter(shards[0] + shards[1]) == Counter(rows)


def test_a_pairs_epoch_resumes_mid_epoch_exactly(tmp_path):
    _table(tmp_path)
    dm = _dm(tmp_path, "pairs")
    dm.setup("fit")
    full = dm.train_dataloader()
    full.sampler.set_epoch(1)
    batches = list(full)
    resumed = _dm(tmp_path, "pairs")
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    loader.load_state_dict({"epoch": 1, "batches": 2, "num_batches": len(batches)})
    iterator = iter(loader)  # Lightning builds the iterator before it sets the epoch
    loader.sampler.set_epoch(1)
    rest = list(iterator)
    assert len(rest) == len(batches) - 2
    assert all(torch.equal(a[k], b[k]) for a, b in zip(rest, batches[2:], strict=True) for k in a)


def test_pair_items_fix_their_caption_and_keep_the_image_index(tmp_path):
    _table(tmp_path)
    dm = _dm(tmp_path, "pairs", augment=True)
    dm.setup("fit")
    pairs = dm.train_samples()
    dataset = pairs.dataset
    assert pairs.images.dtype == np.int32 and pairs.images.nbytes == 4 * len(pairs)  # compact, not per-pair objects
    for pair in (0, 4, 5, 29):
        image, caption = pairs.locate(pair)
        assert (image, caption) == (pair // N_CAPTIONS, pair % N_CAPTIONS)
        item = pairs.seeded_item(pair, seed=11)
        assert item["index"] == image
        assert item["captions"] == [dataset.styled_captions(image)[caption][0]]
        assert torch.equal(item["image"], pairs.seeded_item(pair, seed=11)["image"])  # the seed fixes augmentation


def test_fit_runs_the_steps_the_lr_schedule_spans(tmp_path):
    """5N pairs in batches of 5 over 2 epochs: 2N steps, and the warmup + cosine schedule is 2N steps long."""

    class RecordLR(pl.Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.lrs.append(optimizer.param_groups[0]["lr"])

    _table(tmp_path / "data")
    steps = {}
    for unit in ("images", "pairs"):
        pl.seed_everything(0, verbose=False)
        module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=2, min_lr_ratio=0.1)
        record = RecordLR()
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                             num_sanity_val_steps=0, callbacks=[record], default_root_dir=tmp_path / unit)
        trainer.fit(module, _dm(tmp_path / "data", unit))
        total = trainer.estimated_stepping_batches
        assert trainer.global_step == total == len(record.lrs)
        assert record.lrs == pytest.approx([1e-3 * cosine_with_warmup(s, total, 2, 0.1) for s in range(total)])
        steps[unit] = total
    assert steps == {"images": 2 * (N_IMAGES // 5), "pairs": 2 * N_IMAGES * N_CAPTIONS // 5}


def test_synthetic_and_corpus_datamodules_count_pairs(fixture_corpus):
    synthetic = SyntheticSARDataModule(num_train=8, num_val=4, num_test=4, n_captions=3, image_size=32,
                                       batch_size=4, tokenizer=TEST_ARCH, epoch_unit="pairs")
    synthetic.setup("fit")
    samples = synthetic.train_samples()
    assert len(samples) == 24 and len(synthetic.train_dataloader()) == 6
    scene = synthetic.datasets["train"][3]
    assert [samples.seeded_item(9 + c, 0)["captions"][0] for c in range(3)] == scene["captions"]

    corpus = CorpusDataModule(root=str(fixture_corpus), batch_size=4, image_size=32, tokenizer=TEST_ARCH,
                              epoch_unit="pairs", source_weights={"mstar": 2.0})
    corpus.setup("fit")
    dataset = corpus.datasets["train"]
    pairs = corpus.train_samples()
    assert len(pairs) == sum(len(item[3]) for item in dataset.items) > len(dataset)
    sampler = corpus.train_dataloader().sampler.order
    assert len(sampler) == len(pairs)
    weights = sampler.weights.numpy()
    sources = np.asarray(dataset.sources)[pairs.images]
    share = {s: weights[sources == s].sum() for s in set(sources)}
    assert share["mstar"] == pytest.approx(2 * share[next(s for s in share if s != "mstar")])


def test_epoch_unit_is_checked():
    assert check_epoch_unit("pairs") == "pairs"
    with pytest.raises(ValueError, match=r"epoch_unit: expected one of \['images', 'pairs'\], got 'rows'"):
        SyntheticSARDataModule(epoch_unit="rows")
    with pytest.raises(TypeError, match="has no caption_counts"):
        CaptionPairs(torch.utils.data.TensorDataset(torch.zeros(3)))

