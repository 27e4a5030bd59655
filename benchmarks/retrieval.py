"""Peak memory and time of ``recall_at_k`` against a full-matrix computation and a pure-matmul lower bound.

Why: retrieval recall over a large SAR test set (the target is 100k images x 500k captions x 512 dims, 5 captions
per image) must fit in bounded memory and cost little more than the matmuls it cannot avoid. Three methods:

* ``ours``: :func:`lightning_sarclip.eval.retrieval.recall_at_k` (chunked exact ranks);
* ``matmul``: the same chunked matmuls (same chunk sizes, both directions) with no ranking: a lower bound;
* ``full``: the textbook way: the whole ``M x N`` score matrix, a positive-pair mask and ``topk`` per direction
  (run only at ``--full-scale``, where it fits).

Every measurement runs in a fresh subprocess: random unit-norm float32 features are generated in chunks, then the
resident set size (RSS) is read, the method runs, and the peak RSS (``ru_maxrss``) minus that baseline is the
memory of the method's own allocations (tracemalloc does not see torch's allocator). Times are the best of
``--repeats`` runs. Size ``--scale 1`` is the full 100k x 500k target (about 2 x 25 TFLOP of matmul: tens of
minutes on 2 cores); the default scale keeps the whole run under ~10 minutes on 2 cores.

    python benchmarks/retrieval.py                 # scale 0.2: 20k x 100k, and the full matrix at 10k x 50k
    python benchmarks/retrieval.py --scale 1       # the target size (long)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

FULL_IMAGES, CAPTIONS_PER_IMAGE, DIM = 100_000, 5, 512
GIB = 1024**3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _features(num: int, dim: int, seed: int, chunk: int = 20_000) -> torch.Tensor:
    """Random unit-norm float32 rows, generated in chunks so generation adds no transient peak."""
    out = torch.empty(num, dim)
    g = torch.Generator().manual_seed(seed)
    for start in range(0, num, chunk):
        stop = min(start + chunk, num)
        out[start:stop] = F.normalize(torch.randn(stop - start, dim, generator=g), dim=-1)
    return out


def _matmul_bound(images: torch.Tensor, texts: torch.Tensor) -> None:
    from lightning_sarclip.eval.retrieval import _resolve_chunk

    for queries, keys in ((images, texts), (texts, images)):
        chunk = _resolve_chunk(None, keys.shape[0])
        block = torch.empty(min(chunk, queries.shape[0]), keys.shape[0])
        for start in range(0, queries.shape[0], chunk):
            stop = min(start + chunk, queries.shape[0])
            torch.mm(queries[start:stop], keys.T, out=block[: stop - start])


def _full_matrix(images: torch.Tensor, texts: torch.Tensor, text_to_image: torch.Tensor, ks) -> dict:
    """Whole-matrix recall: scores (M, N), positives (M, N), top-k per direction; the 'any positive' rule."""
    scores = texts @ images.T
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(texts.shape[0]), text_to_image] = True
    kmax = max(ks)
    t2i_hit = positives.gather(1, scores.topk(kmax, dim=1).indices)  # (M, kmax)
    i2t_hit = positives.T.gather(1, scores.T.topk(kmax, dim=1).indices)  # (N, kmax)
    out = {f"i2t_R@{k}": i2t_hit[:, :k].any(1).double().mean().item() for k in ks}
    out.update({f"t2i_R@{k}": t2i_hit[:, :k].any(1).double().mean().item() for k in ks})
    return out


def worker(method: str, num_images: int, repeats: int) -> dict:
    from lightning_sarclip.eval.retrieval import recall_at_k

    num_texts = num_images * CAPTIONS_PER_IMAGE
    images, texts = _features(num_images, DIM, 0), _features(num_texts, DIM, 1)
    text_to_image = torch.arange(num_images).repeat_interleave(CAPTIONS_PER_IMAGE)
    ks = (1, 5, 10)
    baseline = _rss_bytes()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        if method == "ours":
            result = recall_at_k(images, texts, text_to_image, ks=ks)
        elif method == "matmul":
            _matmul_bound(images, texts)
        elif method == "full":
            result = _full_matrix(images, texts, text_to_image, ks)
        else:
            raise ValueError(f"unknown method {method!r}")
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "images": num_images, "captions": num_texts, "time_s": min(times),
            "peak_bytes": max(0, peak - baseline), "features_bytes": (num_images + num_texts) * DIM * 4,
            "result": result}


def measure(method: str, num_images: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--images", str(num_images), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(r: dict) -> str:
    return (f"{r['method']:7s} {r['images']:>7d} x {r['captions']:>7d}  time {r['time_s']:8.2f} s  "
            f"peak {r['peak_bytes'] / GIB:6.3f} GiB  (features {r['features_bytes'] / GIB:5.2f} GiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.2, help="fraction of the 100k-image target size")
    parser.add_argument("--full-scale", type=float, default=0.1, help="size of the full-matrix comparison")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.images, args.repeats)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dim {DIM}, "
          f"{CAPTIONS_PER_IMAGE} captions per image")
    small = int(FULL_IMAGES * args.full_scale)
    print(f"\n(a) against the full matrix at {small} x {small * CAPTIONS_PER_IMAGE}")
    full, ours_small = measure("full", small, 1), measure("ours", small, args.repeats)
    for r in (full, ours_small):
        print(_line(r))
    agree = all(abs(full["result"][k] - ours_small["result"][k]) < 1e-9 for k in full["result"])
    print(f"ours / full: time {ours_small['time_s'] / full['time_s']:.2f}x, "
          f"peak {ours_small['peak_bytes'] / full['peak_bytes']:.3f}x; same recalls: {agree}")

    large = int(FULL_IMAGES * args.scale)
    print(f"\n(b) against the matmul lower bound at {large} x {large * CAPTIONS_PER_IMAGE}")
    bound, ours = measure("matmul", large, args.repeats), measure("ours", large, args.repeats)
    for r in (bound, ours):
        print(_line(r))
    ratio = ours["time_s"] / bound["time_s"]
    print(f"ours / matmul: time {ratio:.2f}x (target <= 1.30x); ours peak {ours['peak_bytes'] / GIB:.3f} GiB "
          f"(target <= 2 GiB at scale 1)")


if __name__ == "__main__":
    main()
