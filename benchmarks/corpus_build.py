"""Corpus build throughput and peak memory at two sizes (memory must not grow with the corpus).

Each size is built in a fresh subprocess from the ``synthetic`` source (procedural SAR scenes, no download), so
its peak RSS is its own. Prints images/s, pairs/s (image-caption pairs; 5 captions per image) and peak RSS, and
the ratio of peak memory large/small (target: about 1, i.e. flat) and pairs/s per core (target >= 500).

    python benchmarks/corpus_build.py [--sizes 4000 20000] [--image-size 64] [--shard-size 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time, logging
from lightning_sarclip.data.corpus import CorpusConfig, CorpusSource, build_corpus
out, root, n, size, shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
# n images in all: the synthetic source makes num_samples per split; only train is taken.
config = CorpusConfig(output=out, max_side=size, shard_size=shard, progress_every=10**9, sources=[
    CorpusSource(name="synthetic", root=root, splits=["train"],
                 options={"num_samples": n, "image_size": size})])
start = time.perf_counter()
summary = build_corpus(config)
elapsed = time.perf_counter() - start
print(json.dumps({"images": summary["images"], "pairs": summary["pairs"], "seconds": elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(n: int, image_size: int, shard_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(Path(tmp) / "corpus"), tmp, str(n), str(image_size), str(shard_size)],
            capture_output=True, text=True, check=True, env=env,
        )
        return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[4000, 20000], help="images (x5 captions = pairs)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    print(f"corpus build, synthetic source, {args.image_size}px scenes, single process (1 core), "
          f"shard_size={args.shard_size}")
    results = []
    for n in args.sizes:
        r = run(n, args.image_size, args.shard_size)
        r["pairs_per_s"] = r["pairs"] / r["seconds"]
        results.append(r)
        print(f"{r['images']:>7} images {r['pairs']:>7} pairs  {r['seconds']:7.1f} s  "
              f"{r['images'] / r['seconds']:7.1f} images/s  {r['pairs_per_s']:7.1f} pairs/s  "
              f"peak RSS {r['peak_rss_mb']:7.1f} MB")
    small, large = results
    print(f"peak memory ratio large/small = {large['peak_rss_mb'] / small['peak_rss_mb']:.2f} "
          f"for {large['pairs'] / small['pairs']:.0f}x the pairs (target: ~1, flat)")
    print(f"pairs/s per core = {large['pairs_per_s']:.0f} (target >= 500)")


if __name__ == "__main__":
    main()
