"""Small shared pieces for tests that drive a Trainer: a random-pairs datamodule, callbacks, a caption table.

Callbacks that configs name by dotted path (``class_path: tests.helpers.X``, read by jsonargparse in the CLI, in a
subprocess or in a Slurm job) live here, so that moving a test file never breaks such a path.
"""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class RandomPairs(Dataset):
    """Fixed random SAR-like images in [0, 1] with random caption tokens (deterministic by seed)."""

    def __init__(self, n: int = 16, image_size: int = 32, in_chans: int = 1, context: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, in_chans, image_size, image_size, generator=g)
        self.tokens = torch.randint(1, 1000, (n, context), generator=g)
        self.tokens[:, 0] = 49406  # start of text
        self.labels = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "text": self.tokens[i], "label": self.labels[i], "index": i}


class RandomPairsDataModule(pl.LightningDataModule):
    def __init__(self, n: int = 16, batch_size: int = 4, seed: int = 0):
        super().__init__()
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomPairs(self.n, seed=self.seed), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomPairs(8, seed=self.seed + 1), batch_size=4)


class StopAfterEpoch(pl.Callback):
    """Stop the run after a given epoch, as a preemption would (the LR schedule still spans max_epochs)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class SlowSteps(pl.Callback):
    """Sleep after every training step, so an external action (kill, requeue) can land in the middle of a run."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


class SignalDuringStep(pl.Callback):
    """Send ``signum`` to this process in the middle of the step after ``step`` (on rank ``rank`` only).

    From ``on_before_optimizer_step``: after the backward pass, before the update (the preemption tests' moment).
    """

    def __init__(self, step: int, rank: int | None = None, name: str = "SIGUSR1") -> None:
        self.step, self.rank, self.signum = step, rank, getattr(signal, name)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step != self.step or (self.rank is not None and trainer.global_rank != self.rank):
            return
        if signal.getsignal(self.signum) in (signal.SIG_DFL, signal.SIG_IGN, None):  # would kill pytest
            raise RuntimeError(f"no handler for signal {self.signum} during fit")
        os.kill(os.getpid(), self.signum)


PAUSE_ENV = "SARCLIP_TEST_PAUSE_AT_STEP"


class PauseAtStep(pl.Callback):
    """In CLI runs started by a test: wait (to be killed) before the batch after step ``$SARCLIP_TEST_PAUSE_AT_STEP``."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if os.environ.get(PAUSE_ENV) and trainer.global_step == int(os.environ[PAUSE_ENV]):
            time.sleep(600)


GATE_ENV = "SARCLIP_TEST_GATE"


class GateAfterStep(pl.Callback):
    """In runs started by a test with ``$SARCLIP_TEST_GATE=<file>``: from step ``step`` on, wait at every step end
    until that file exists or a preemption signal has been received.

    The test then requeues or signals a run that is certainly in its middle, however fast or slow the machine, and
    creates the file before the restart (which would otherwise wait at the same step). Runs without the variable
    pass straight through. The wait sleeps in short slices, so signal handlers run.
    """

    def __init__(self, step: int, timeout: float = 600.0):
        self.step, self.timeout = step, timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        gate = os.environ.get(GATE_ENV)
        if not gate or trainer.global_step < self.step:
            return
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(gate) and time.monotonic() < deadline:
            if any(getattr(c, "received", None) is not None for c in trainer.callbacks):
                return  # PreemptionCheckpoint noted a signal: let the step boundary act on it
            time.sleep(0.05)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def write_caption_table(root: Path, sizes: dict[str, int], n_captions: int = 5) -> dict[str, list[tuple[str, str]]]:
    """SARVLM-shaped ``<split>.csv`` tables under ``root`` (an ``image_caption_table`` source): ``sizes[split]``
    random 16 px PNG images, each on ``n_captions`` ``imgpath,caption`` rows with distinct captions. Returns each
    split's rows."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[str, str]]] = {}
    for split, count in sizes.items():
        table = []
        for i in range(count):
            name = f"images/{split}_{i:03d}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(root / name)
            table += [(name, f"{split} image {i} seen in caption number {c}") for c in range(n_captions)]
        with (root / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([("imgpath", "caption"), *table])
        rows[split] = table
    return rows


def save_torchscript(model: torch.nn.Module, path: Path, image_size: int = 32, context_length: int = 16) -> None:
    """A traced archive of an open_clip model shaped like OpenAI's (and SARVLM's released ``.pt``): the
    hyper-parameters stored as tensors next to the weights."""
    import copy
    import warnings

    jit_source = copy.deepcopy(model)
    del jit_source.context_length, jit_source.vocab_size  # plain ints on open_clip's CLIP, unused in forward
    jit_source.register_buffer("input_resolution", torch.tensor(image_size))
    jit_source.register_buffer("context_length", torch.tensor(context_length))
    jit_source.register_buffer("vocab_size", torch.tensor(49408))
    example = (torch.zeros(1, 3, image_size, image_size), torch.zeros(1, context_length, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; OpenAI's files still are TorchScript
        traced = torch.jit.trace(jit_source, example, check_trace=False)
        traced.save(str(path))
