"""Peak GPU memory of our training step with and without gradient checkpointing (same model, batch, precision).

Each configuration trains a few steps through ``Trainer.fit`` (the real loop: optimizer state, autocast, clamp);
the figure is ``torch.cuda.max_memory_allocated`` over those steps, and the ratio checkpointed / plain shows what
``grad_checkpointing: true`` buys.

    python benchmarks/gpu_memory.py --model ViT-B-16 --batch-size 256 [--precision bf16-mixed] [--steps 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the batches come from train_step.py beside us

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from train_step import Batches, make_batches  # noqa: E402

from lightning_sarclip.training.module import SARCLIPModule  # noqa: E402


def peak_memory(model_name: str, batch_size: int, steps: int, precision: str, grad_checkpointing: bool,
                accelerator: str) -> tuple[float, float]:
    """(peak GiB allocated, steps/s) of ``steps`` training steps."""
    import time

    pl.seed_everything(0, verbose=False)
    module = SARCLIPModule(model_name=model_name, in_chans=1, lr=1e-4, warmup_steps=1,
                           grad_checkpointing=grad_checkpointing)
    image_size = int(module.model.visual.image_size[0])
    device = "cuda" if accelerator == "gpu" else "cpu"
    batches = make_batches(steps, batch_size, image_size, int(module.model.context_length), device=device)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    cuda = accelerator == "gpu"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=DataLoader(Batches(batches), batch_size=None))
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del trainer, module
    gc.collect()
    return peak, steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"])
    args = parser.parse_args()
    results = {}
    for checkpointing in (False, True):
        peak, rate = peak_memory(args.model, args.batch_size, args.steps, args.precision, checkpointing,
                                 args.accelerator)
        results[checkpointing] = peak
        print(f"grad_checkpointing={str(checkpointing):5s}: peak {peak:6.2f} GiB allocated, {rate:5.2f} steps/s "
              f"(model={args.model} batch={args.batch_size} precision={args.precision}, incl. start-up)")
    print(f"peak memory ratio checkpointed/plain = {results[True] / results[False]:.2f}")


if __name__ == "__main__":
    main()
