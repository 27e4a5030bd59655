"""No host-device synchronisation in a training step: the check that catches a regression of the fit loop.

Runs ``SARCLIPModule`` through ``fit`` (a CSV logger, ``log_every_n_steps`` and ``host_sync_every_n_steps`` both
``--every``, no progress bar, no checkpoints) and watches the steps strictly between two reads of the step flags,
where nothing should wait on the device:

* on a GPU, under ``torch.cuda.set_sync_debug_mode("error")``: any synchronising CUDA call raises;
* on any device, by counting the conversions of a tensor to a Python value (``item``, ``bool``, ``float``,
  ``int``, ``tolist``, ``numpy``), each of which is a synchronisation on a GPU.

Prints the count and exits with status 1 when a checked step read a tensor on the host.

    python benchmarks/sync_check.py [--accelerator gpu] [--model ViT-B-16] [--batch-size 64] [--every 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import Batches, make_batches  # noqa: E402

from lightning_sarclip.training.module import SARCLIPModule  # noqa: E402

#: Tensor methods that hand a value to Python: each one waits for the device.
HOST_READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy")


@contextlib.contextmanager
def counting_host_reads(counts: Counter) -> Iterator[None]:
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name: str):
        original = originals[name]

        def counted(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return counted

    for name in HOST_READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


class WatchSteps(pl.Callback):
    """Watch from the start of the batch of global step ``first`` to the start of the batch of step ``last`` (so the
    steps ``first .. last - 1`` in full, their hooks and the loop between them included)."""

    def __init__(self, first: int, last: int, cuda: bool):
        self.first, self.last, self.cuda = first, last, cuda
        self.counts: Counter = Counter()
        self.watched = 0
        self._stack: contextlib.ExitStack | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step == self.first:
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            self._stack = contextlib.ExitStack()
            self._stack.enter_context(counting_host_reads(self.counts))
        elif step == self.last:
            self._stop()
        if self.first <= step < self.last:
            self.watched += 1

    def _stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
            if self.cuda:
                torch.cuda.set_sync_debug_mode("default")

    def on_train_end(self, trainer, pl_module):
        self._stop()

    def on_exception(self, trainer, pl_module, exception):
        self._stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SARCLIP-ViT-Tiny-64")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--every", type=int, default=10, help="log_every_n_steps and host_sync_every_n_steps")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--unfreeze", action="store_true", help="train only projections and logit_scale")
    args = parser.parse_args()
    if args.every < 4:
        parser.error(f"--every must be >= 4 (two warm-up steps and at least one watched step), got {args.every}")

    pl.seed_everything(0, verbose=False)
    cuda = args.accelerator == "gpu"
    stages = [{"train": ["projections", "logit_scale"], "start_step": 0}] if args.unfreeze else None
    module = SARCLIPModule(model_name=args.model, in_chans=1, lr=1e-4, warmup_steps=1, unfreeze=stages,
                           host_sync_every_n_steps=args.every)
    image_size = int(module.model.visual.image_size[0])
    steps = args.every + 2
    # On the CPU: the loader pins nothing and moves each batch itself, as a real run's does.
    batches = make_batches(steps, args.batch_size, image_size, int(module.model.context_length))
    # Warm-up: steps 0 and 1 (first-step allocations, lazy initialisation); the flags are read after step
    # ``every - 1``, so the batches of steps 2 .. every - 2 are the ones with nothing to read.
    watch = WatchSteps(2, args.every - 1, cuda)
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=steps,
                             logger=CSVLogger(logs), log_every_n_steps=args.every, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=0, callbacks=[watch])
        trainer.fit(module, train_dataloaders=DataLoader(Batches(batches), batch_size=None, shuffle=False))
    device = torch.cuda.get_device_name() if cuda else "cpu"
    reads = sum(watch.counts.values())
    detail = ", ".join(f"{name} x{n}" for name, n in sorted(watch.counts.items())) or "none"
    mode = "set_sync_debug_mode('error') and host-read count" if cuda else "host-read count"
    print(f"sync check ({mode}, {device}, {args.model}, unfreeze={args.unfreeze}): {watch.watched} steps watched, "
          f"host reads {reads} ({detail})")
    if watch.watched == 0 or reads:
        sys.exit(1)


if __name__ == "__main__":
    main()
