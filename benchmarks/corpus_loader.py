"""Corpus loader throughput: training samples/s per dataloader worker at 224 px, from a built corpus.

Builds a small synthetic corpus (stored at ``--stored-size`` px), then times ``CorpusDataModule``'s training
loader (PNG decode, SAR-safe augmentation, resize to 224, tokenisation, collation) with 1 and 2 workers.
Target: >= 1,000 samples/s per worker (per core).

    python benchmarks/corpus_loader.py [--images 2000] [--stored-size 128] [--batches 40]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lightning_sarclip.data.corpus import CorpusConfig, CorpusSource, build_corpus  # noqa: E402
from lightning_sarclip.training import CorpusDataModule  # noqa: E402


def time_loader(root: str, workers: int, batches: int, batch_size: int, warmup: int = 3) -> float:
    data = CorpusDataModule(root=root, batch_size=batch_size, image_size=224, num_workers=workers,
                            tokenizer="ViT-B-32", samples_per_epoch=None)
    data.setup("fit")
    loader = data.train_dataloader()
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--stored-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(tmp) / "corpus")
        build_corpus(CorpusConfig(output=root, max_side=args.stored_size, progress_every=10**9, sources=[
            CorpusSource(name="synthetic", root=tmp, splits=["train", "val"],
                         options={"num_samples": args.images, "image_size": args.stored_size})]))
        print(f"loader: {args.images} stored images at {args.stored_size}px -> 224px, batch {args.batch_size}, "
              f"{os.cpu_count()} cores")
        for workers in (1, 2):
            rate = time_loader(root, workers, args.batches, args.batch_size)
            print(f"num_workers={workers}: {rate:8.1f} samples/s  = {rate / workers:8.1f} samples/s per worker "
                  "(target >= 1000)")


if __name__ == "__main__":
    main()
