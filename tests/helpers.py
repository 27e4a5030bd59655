"""Small shared pieces for tests that drive a Trainer without the synthetic data generator."""

from __future__ import annotations

import lightning.pytorch as pl
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
        import time

        time.sleep(self.seconds)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}
