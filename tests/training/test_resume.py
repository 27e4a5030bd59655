"""Exact mid-epoch resume: loader position, per-sample randomness, atomic checkpoints, and whole runs killed and resumed.

The end-to-end tests compare final weights with ``torch.equal``: on one CPU with deterministic algorithms, a resumed
run does exactly the arithmetic of the uninterrupted one, so any difference in the data it sees shows up.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, Dataset

from lightning_sarclip.data.samplers import (
    ResumableDataLoader,
    SeededDataset,
    SeededEpochSampler,
    WeightedEpochSampler,
)
from lightning_sarclip.training import SyntheticSARDataModule
from lightning_sarclip.training.checkpoint_io import (
    AtomicCheckpointIO,
    RunCheckpoint,
    atomic_torch_save,
    with_atomic_checkpoint_io,
)
from lightning_sarclip.training.module import SARCLIPModule
from tests.conftest import REPO_ROOT, TEST_ARCH
from tests.helpers import PAUSE_ENV

# ---------------------------------------------------------------------------------------------------- loader unit


class DrawingDataset(Dataset):
    """Plain ``int`` indexing; every item draws from the three global generators (as user augmentations do)."""

    def __init__(self, n: int = 23) -> None:
        self.n = n
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        self.loaded.append(index)
        return {"index": index, "draw": torch.tensor([torch.rand(()).item(), random.random(), np.random.rand()])}


def _loader(dataset: Dataset, world_size: int = 1, rank: int = 0, num_workers: int = 0) -> ResumableDataLoader:
    """A training loader as the datamodules build it; with ``world_size > 1`` rebuilt by Lightning for DDP."""
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = ResumableDataLoader(
            SeededDataset(dataset), batch_size=3, drop_last=True, num_workers=num_workers,
            sampler=SeededEpochSampler(WeightedEpochSampler(None, len(dataset), seed=7), seed=7),
        )
    if world_size > 1:  # what Lightning's DDP set-up does to a training loader
        sharded = DistributedSamplerWrapper(loader.sampler, num_replicas=world_size, rank=rank, shuffle=True)
        loader = _update_dataloader(loader, sharded)
    assert isinstance(loader, ResumableDataLoader)
    return loader


def _epoch(loader: DataLoader, epoch: int, batches: int | None = None) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(islice(loader, batches))


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("world_size", [1, 2])
def test_loader_resumes_exactly_at_any_batch_of_an_epoch(world_size):
    for rank in range(world_size):
        full = _epoch(_loader(DrawingDataset(), world_size, rank), epoch=1)
        assert len(full) == (7 if world_size == 1 else 4)
        for k in range(len(full) + 1):
            interrupted = _loader(DrawingDataset(), world_size, rank)
            _epoch(interrupted, epoch=1, batches=k)
            state = interrupted.state_dict()
            assert state == {"epoch": 1 if k else None, "batches": k, "num_batches": len(full)}  # None: not started

            dataset = DrawingDataset()
            resumed = _loader(dataset, world_size, rank)
            resumed.load_state_dict(state)
            iterator = iter(resumed)  # Lightning builds the iterator before it sets the sampler's epoch
            resumed.sampler.set_epoch(1)
            rest = list(iterator)
            if k < len(full):
                assert _same(rest, full[k:]), (rank, k)
                # The skipped batches were never loaded.
                assert dataset.loaded == [int(i) for batch in full[k:] for i in batch["index"]]
                assert resumed.state_dict()["batches"] == len(full)
            else:  # a complete epoch restarts from its beginning
                assert _same(rest, full)


def test_checkpoint_at_epoch_end_resumes_at_the_start_of_the_next_epoch():
    finished = _loader(DrawingDataset())
    _epoch(finished, epoch=1)
    resumed = _loader(DrawingDataset())
    resumed.load_state_dict(finished.state_dict())
    assert resumed.state_dict()["batches"] == len(resumed)  # restored, not started: still reports the saved position
    assert _same(_epoch(resumed, epoch=2), _epoch(_loader(DrawingDataset()), epoch=2))


def test_ranks_split_one_epoch_and_the_epoch_changes_order_and_seeds():
    shards = [_epoch(_loader(DrawingDataset(), 2, rank), epoch=3) for rank in range(2)]
    indices = [int(i) for shard in shards for batch in shard for i in batch["index"]]
    assert len(indices) == 24 and set(indices) == set(range(23))  # 23 items, padded to 12 per rank
    sampler = SeededEpochSampler(WeightedEpochSampler(None, 50, seed=1), seed=1)
    epoch0 = list(sampler)
    assert epoch0 == list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]
    assert dict(epoch0) != dict(epoch1)  # the same image gets another seed in another epoch
    assert sorted(i for i, _ in epoch1) == list(range(50))


def test_per_sample_draws_do_not_depend_on_the_number_of_workers():
    reference = _epoch(_loader(DrawingDataset()), epoch=2)
    assert len({tuple(batch["draw"][0].tolist()) for batch in reference}) == len(reference)  # draws differ per sample
    with_workers = _epoch(_loader(DrawingDataset(), num_workers=2), epoch=2)
    assert _same(reference, with_workers)
    # A worker-process loader resumed mid-epoch continues identically too.
    state = {"epoch": 2, "batches": 3, "num_batches": len(reference)}
    resumed = _loader(DrawingDataset(), num_workers=2)
    resumed.load_state_dict(state)
    assert _same(_epoch(resumed, epoch=2), reference[3:])
    # Items read in the main process leave its generators as they were.
    after = []
    for read in (False, True):
        torch.manual_seed(5)
        random.seed(5)
        np.random.seed(5)
        if read:
            assert torch.equal(SeededDataset(DrawingDataset())[(4, 123)]["draw"], _item(4, 123))
        after.append((torch.rand(()).item(), random.random(), np.random.rand()))
    assert after[0] == after[1]


def _item(index: int, seed: int) -> torch.Tensor:
    """What DrawingDataset draws for ``index`` under sample seed ``seed`` (computed independently)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.tensor([torch.rand((), generator=generator).item(), random.Random(seed).random(),
                         np.random.RandomState(seed % 2**32).rand()])


def test_synthetic_datamodule_batches_do_not_depend_on_the_number_of_workers():
    batches = {}
    for workers in (0, 1):
        pl.seed_everything(3, verbose=False)
        dm = SyntheticSARDataModule(num_train=12, num_val=4, num_test=4, image_size=32, batch_size=4,
                                    num_workers=workers, tokenizer=TEST_ARCH)
        dm.setup("fit")
        batches[workers] = _epoch(dm.train_dataloader(), epoch=1)
    assert _same(batches[0], batches[1])


def test_corpus_training_items_are_functions_of_the_sample_seed(fixture_corpus):
    from lightning_sarclip.training import CorpusDataModule

    epochs = {}
    for workers in (0, 1):
        dm = CorpusDataModule(root=str(fixture_corpus), batch_size=4, image_size=32, num_workers=workers,
                              tokenizer=TEST_ARCH, seed=5)
        dm.setup("fit")
        epochs[workers] = _epoch(dm.train_dataloader(), epoch=1, batches=4)
    assert _same(epochs[0], epochs[1])
    dataset = dm.datasets["train"]
    index = next(i for i, item in enumerate(dataset.items) if len(item[3]) > 1)  # an image with several captions
    draws = [dataset.seeded_item(index, seed) for seed in range(12)]
    again = [dataset.seeded_item(index, seed) for seed in range(12)]
    assert all(torch.equal(a["image"], b["image"]) and a["captions"] == b["captions"] for a, b in zip(draws, again, strict=True))
    assert len({tuple(d["captions"]) for d in draws}) > 1 or len({d["image"].numpy().tobytes() for d in draws}) > 1


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_atomic_save_keeps_the_previous_file_when_a_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.arange(4)}, path)

    def dies_halfway(obj, handle):
        handle.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # what a signal during torch.save looks like to Python

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # A temporary file left by a writer that was killed is removed by a later save once it is old.
    stale, fresh = path.parent / ".last.ckpt.dead.tmp", path.parent / ".last.ckpt.busy.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    atomic_torch_save({"step": 3}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == [fresh.name, "last.ckpt"]
    assert torch.load(path, weights_only=True)["step"] == 3


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_run_checkpoint_keeps_last_ckpt_at_the_final_step(tmp_path):
    """ModelCheckpoint(every_n_train_steps=5, save_top_k=0) would end with step 5's weights; RunCheckpoint with 8's."""
    callbacks = {"plain": ModelCheckpoint, "run": RunCheckpoint}
    steps = {}
    for name, cls in callbacks.items():
        dirpath = tmp_path / name
        trainer = _trainer([cls(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=5)], max_epochs=2)
        trainer.fit(_module(), _data(num_train=16))
        steps[name] = torch.load(dirpath / "last.ckpt", weights_only=True)["global_step"]
    assert steps == {"plain": 5, "run": 8}
    callbacks = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["callbacks"]
    assert [key.split("{")[0] for key in callbacks] == ["ModelCheckpoint"]  # interchangeable with ModelCheckpoint


def test_run_checkpoint_every_n_epochs_writes_last_ckpt_that_often_and_at_the_end(tmp_path, monkeypatch):
    """``every_n_epochs: 2`` over 5 epochs of 2 steps: last.ckpt after epochs 2 and 4, then at the end (step 10)."""
    written = []
    original = RunCheckpoint._save_last_checkpoint

    def spy(self, trainer, monitor_candidates):
        written.append(trainer.global_step)
        return original(self, trainer, monitor_candidates)

    monkeypatch.setattr(RunCheckpoint, "_save_last_checkpoint", spy)
    checkpoint = RunCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_epochs=2)
    _trainer([checkpoint], max_epochs=5).fit(_module(), _data(num_train=8))
    assert sorted(set(written)) == [4, 8, 10]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 10


def test_cli_uses_atomic_checkpoint_io_and_run_checkpoint_unless_configured(tmp_path):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from lightning_sarclip.commands.fit import SARCLIPCLI

    base = ["--config", str(REPO_ROOT / "experiments" / "quickstart.yaml"), "--model.init_args.model_name", TEST_ARCH,
            "--data.init_args.image_size", "32", "--run_root", str(tmp_path)]
    cli = SARCLIPCLI(args=base, run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert isinstance(cli.trainer.checkpoint_callback, RunCheckpoint)
    own = SARCLIPCLI(args=[*base, "--trainer.plugins", "lightning.pytorch.plugins.io.TorchCheckpointIO"], run=False)
    assert type(own.trainer.strategy.checkpoint_io) is TorchCheckpointIO
    assert with_atomic_checkpoint_io(None, "deepspeed_stage_2", "gpu") is None  # DeepSpeed/XLA write their own
    assert with_atomic_checkpoint_io(None, "auto", {"class_path": "lightning.pytorch.accelerators.XLAAccelerator"}) is None
    added = with_atomic_checkpoint_io("bf16-mixed", "ddp", "gpu")
    assert added[0] == "bf16-mixed" and added[1].class_path == "lightning_sarclip.training.checkpoint_io.AtomicCheckpointIO"


# ---------------------------------------------------------------------------------------------------- whole runs

STEPS_PER_EPOCH = 6  # 24 scenes, batch 4
STAGES = [{"start_step": 0, "train": ["projections", "logit_scale"]},
          {"start_step": 10, "train": ["all"]}]  # epoch 1, batch 4: after the interruption at step 8


class Preempted(RuntimeError):
    pass


class PreemptAt(pl.Callback):
    """Die before the batch after ``step`` (``last.ckpt`` then holds exactly ``step`` steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Preempted(f"preempted at step {self.step}")


def _module() -> SARCLIPModule:
    pl.seed_everything(0, verbose=False)
    return SARCLIPModule(model_name=TEST_ARCH, lr=2e-3, warmup_steps=2, unfreeze=STAGES)


def _data(num_train: int = 24, num_workers: int = 0) -> SyntheticSARDataModule:
    return SyntheticSARDataModule(num_train=num_train, num_val=4, num_test=4, n_captions=3, image_size=32, batch_size=4,
                                  num_workers=num_workers, tokenizer=TEST_ARCH)


def _trainer(callbacks: list, max_epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, deterministic=True, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=callbacks, plugins=[AtomicCheckpointIO()])


def _fit(dirpath: Path, num_workers: int, extra: list | None = None, ckpt_path: Path | None = None) -> pl.Trainer:
    module = _module()
    checkpoint = RunCheckpoint(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = _trainer([checkpoint, *(extra or [])])
    trainer.fit(module, _data(num_workers=num_workers), ckpt_path=ckpt_path)
    return trainer


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 1])
def test_fit_interrupted_mid_epoch_resumes_to_the_same_weights(tmp_path, num_workers):
    straight = _fit(tmp_path / "straight", num_workers)
    assert straight.global_step == 2 * STEPS_PER_EPOCH
    expected = straight.lightning_module.state_dict()

    with pytest.raises(Preempted):
        _fit(tmp_path / "run", num_workers, extra=[PreemptAt(8)])
    last = tmp_path / "run" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 8
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 8 - STEPS_PER_EPOCH, "num_batches": STEPS_PER_EPOCH}]

    resumed = _fit(tmp_path / "run", num_workers, ckpt_path=last)
    assert resumed.global_step == straight.global_step
    _assert_same_weights(resumed.lightning_module.state_dict(), expected)

    if num_workers == 0:  # the test can fail: without the loader position, the resumed epoch starts over
        del saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        torch.save(saved, tmp_path / "no_position.ckpt")
        blind = _fit(tmp_path / "blind", num_workers, ckpt_path=tmp_path / "no_position.ckpt")
        assert blind.global_step == straight.global_step
        assert any(not torch.equal(v, expected[k]) for k, v in blind.lightning_module.state_dict().items())


def _cli_config(path: Path) -> Path:
    config = {
        "name": "resume",
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_epochs": 2, "deterministic": True,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
            "num_sanity_val_steps": 0, "callbacks": [{"class_path": "tests.helpers.PauseAtStep"}],
        },
        "checkpoint": {"every_n_train_steps": 1},
        "model": {"class_path": "lightning_sarclip.training.module.SARCLIPModule",
                  "init_args": {"model_name": TEST_ARCH, "lr": 2e-3, "warmup_steps": 2, "unfreeze": STAGES}},
        "data": {"class_path": "lightning_sarclip.training.SyntheticSARDataModule",
                 "init_args": {"num_train": 24, "num_val": 4, "num_test": 4, "n_captions": 3, "image_size": 32,
                               "batch_size": 4, "num_workers": 1}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(config: Path, run_root: Path, pause_at: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    env.pop(PAUSE_ENV, None)
    if pause_at is not None:
        env[PAUSE_ENV] = str(pause_at)
    command = [sys.executable, "-m", "lightning_sarclip", "fit", "--config", str(config), "--run_root", str(run_root),
               "--ckpt_path", "last"]
    run_root.mkdir(parents=True, exist_ok=True)
    with open(run_root / f"attempt-{len(list(run_root.glob('attempt-*.log')))}.log", "w") as log:  # never a full pipe
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, run_root: Path) -> None:
    process.wait(timeout=300)
    logs = "".join(p.read_text() for p in sorted(run_root.glob("attempt-*.log")))
    assert process.returncode == 0, logs[-3000:]


def _global_step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"] if path.exists() else -1


@pytest.mark.slow
def test_cli_run_killed_mid_epoch_and_resumed_matches_an_uninterrupted_run(tmp_path):
    config = _cli_config(tmp_path / "resume.yaml")
    straight = _cli(config, tmp_path / "straight")
    victim = _cli(config, tmp_path / "killed", pause_at=8)
    last = tmp_path / "killed" / "resume" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 240
        while _global_step(last) < 8:  # safe to read while it is being rewritten: the writes are atomic
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint at step 8"
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        assert victim.returncode == -signal.SIGKILL
        saved = torch.load(last, weights_only=True)
        assert saved["global_step"] == 8 and saved["epoch"] == 1  # mid-epoch 1, before the unfreezing at step 10
        assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 2

        _finish(_cli(config, tmp_path / "killed"), tmp_path / "killed")  # the same command line, again
        _finish(straight, tmp_path / "straight")
    finally:
        for process in (victim, straight):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)
    resumed = torch.load(last, weights_only=True)
    expected = torch.load(tmp_path / "straight" / "resume" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == expected["global_step"] == 2 * STEPS_PER_EPOCH
    _assert_same_weights(resumed["state_dict"], expected["state_dict"])
