"""Listing a SARVLM-1M-sized caption table: seconds and memory, against reading the same CSV with ``csv.reader``.

SARVLM-1M's released training table has about 1.39M (``imgpath``, ``caption``) rows over about 280k images. This
writes a table of that shape (``--images`` images, 1 to ``--max-captions`` captions each, mean about 5: the
authors' five caption styles, sometimes fewer), with every image a hard link to a small PNG (the listing checks
that each image exists, so the files must be there; their pixels are never read here), then times, in this one
process:

* **baseline**: ``csv.reader`` over the file, every row touched (the floor any CSV listing pays);
* **listing**: ``SourceListing("image_caption_table", ...)``: every row parsed, paths checked and contained,
  rows of one image grouped into one record;
* **pairs epoch**: ``SourceDataModule(epoch_unit="pairs")`` set up for training and its loader's length: the
  records, the captions counted per image (``caption_counts``), the compact pair index, one epoch's order.

and prints the seconds of each with the ratio to the baseline, and the resident memory after each step (``VmRSS``)
and at its peak (``VmHWM``), with the table's size on disk for scale. The last line is JSON.

    python benchmarks/csv_listing.py                     # 280,000 images, about 1.39M rows
    python benchmarks/csv_listing.py --images 20000      # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak (MB), from ``/proc/self/status`` (Linux)."""
    values = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return values


def write_table(folder: Path, images: int, max_captions: int, seed: int = 0) -> tuple[Path, int]:
    """``folder/train.csv`` with the released columns (``imgpath,caption``; comma separator, paths relative to the
    table) over ``images`` hard links to one PNG; returns the table and its number of rows."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    template = folder / "template.png"
    rows = 0
    with (folder / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["imgpath", "caption"])
        for i in range(images):
            relative = f"images/{i // 10_000:03d}/{i:07d}.png"
            target = folder / relative
            if i % 10_000 == 0:
                target.parent.mkdir(parents=True, exist_ok=True)
                # a fresh file to link to every 10,000 images: file systems cap the links of one file (ext4: 65,000)
                template = target.parent / "template.png"
                Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(template)
            os.link(template, target)
            # mostly the five styles, sometimes fewer: about 4.95 captions an image, as SARVLM-1M's 1.39M / 280k
            count = max_captions if rng.random() < 0.97 else rng.randint(1, max_captions - 1)
            for c in range(count):
                writer.writerow([relative, f"A SAR image of object {i % 997}, caption style {c}, seen from above."])
                rows += 1
    with (folder / "val.csv").open("w", newline="") as handle:  # fit sets up a val split too
        csv.writer(handle).writerows([["imgpath", "caption"], *([f"images/000/{i:07d}.png", "A SAR image."]
                                                                 for i in range(min(images, 100)))])
    return folder / "train.csv", rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=280_000)
    parser.add_argument("--max-captions", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="write the table here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)

    import lightning_sarclip.models  # noqa: F401  (registers our architectures: the tokenizer name)
    from lightning_sarclip.data.listing import SourceListing
    from lightning_sarclip.training.datamodules import SourceDataModule

    folder = args.keep or Path(tempfile.mkdtemp(prefix="csv_listing-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        table, rows = write_table(folder, args.images, args.max_captions)
        print(f"wrote {rows:,} rows over {args.images:,} images ({table.stat().st_size / 2**20:.0f} MB) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        result: dict = {"rows": rows, "images": args.images, "table_mb": round(table.stat().st_size / 2**20, 1)}
        result["memory_start_mb"] = memory_mb()

        started = time.perf_counter()
        with table.open(newline="") as handle:
            baseline_rows = sum(1 for _ in csv.reader(handle)) - 1
        result["baseline_s"] = time.perf_counter() - started
        assert baseline_rows == rows

        started = time.perf_counter()
        records = list(SourceListing("image_caption_table", folder, "train").records())
        result["listing_s"] = time.perf_counter() - started
        result["records"] = len(records)
        result["captions"] = sum(len(r.captions) for r in records)
        result["memory_after_listing_mb"] = memory_mb()
        del records

        started = time.perf_counter()
        data = SourceDataModule(source="image_caption_table", root=str(folder), image_size=32, batch_size=1024,
                                num_workers=0, epoch_unit="pairs", n_captions=args.max_captions,
                                tokenizer="SARCLIP-ViT-Tiny-64")
        data.setup("fit")
        loader = data.train_dataloader()
        result["pairs_per_epoch"] = len(loader.sampler)  # samples an epoch (the loader drops a last partial batch)
        result["steps_per_epoch"] = len(loader)
        result["pairs_epoch_s"] = time.perf_counter() - started
        result["memory_after_pairs_mb"] = memory_mb()
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    base = result["baseline_s"]
    print(f"baseline csv.reader   {base:7.2f} s")
    print(f"listing (records)     {result['listing_s']:7.2f} s  ratio {result['listing_s'] / base:5.1f}x  "
          f"{result['records']:,} records, {result['captions']:,} captions, "
          f"RSS {result['memory_after_listing_mb'].get('VmRSS', 0):.0f} MB")
    print(f"pairs epoch (setup)   {result['pairs_epoch_s']:7.2f} s  ratio {result['pairs_epoch_s'] / base:5.1f}x  "
          f"{result['pairs_per_epoch']:,} samples, {result['steps_per_epoch']:,} steps of 1024, "
          f"RSS {result['memory_after_pairs_mb'].get('VmRSS', 0):.0f} MB, peak "
          f"{result['memory_after_pairs_mb'].get('VmHWM', 0):.0f} MB")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
