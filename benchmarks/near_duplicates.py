"""The corpus's near-duplicate rule on real chips: planted copies caught, distinct acquisitions wrongly merged.

Every chip of the given sources is read and stored as ``build-corpus`` stores it (the reader's policy, 8 bits,
``--max-side``). The chips themselves are distinct acquisitions (MSTAR: one vehicle at many azimuths, 17 and 15 deg;
OpenSARShip: many ships on open sea). Copies of a sample of them are then planted, the way datasets re-publish one
another: re-encoded as JPEG at another quality, resized, cropped by a few pixels, re-rendered by another source
(another contrast curve). Each rule groups all the images, and the script prints per rule:

* planted copies caught: copies grouped with their original (per kind of copy, and in all);
* distinct acquisitions wrongly merged: original chips grouped with another original chip (and the pairs).

    python benchmarks/near_duplicates.py --source mstar=/data/mstar_jpeg --source \\
        opensarship=/data/OpenSARShip:product=Patch_Uint8 [--copies 100] [--max-side 256]
"""

from __future__ import annotations

import argparse
import io
import itertools
from collections import Counter
from collections.abc import Callable

import numpy as np
from PIL import Image

from lightning_sarclip.data.corpus import content_hash, convert_record, perceptual_hash
from lightning_sarclip.data.corpus_config import CorpusSource, source_listing, source_splits
from lightning_sarclip.data.corpus_dedup import near_duplicate_groups


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape
    return np.asarray(Image.fromarray(image).resize((max(8, round(w * factor)), max(8, round(h * factor))),
                                                    Image.BILINEAR))


def _restyled(image: np.ndarray) -> np.ndarray:
    """Another source's rendering of the same data: another contrast curve, then its own JPEG."""
    return _jpeg((255 * (image / 255.0) ** 0.8 + 0.5).astype(np.uint8), 90)


#: Kinds of planted copy: grey uint8 (H, W) -> grey uint8 (H, W).
COPIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg q95": lambda a: _jpeg(a, 95),
    "jpeg q75": lambda a: _jpeg(a, 75),
    "jpeg q50": lambda a: _jpeg(a, 50),
    "resize x0.5": lambda a: _resize(a, 0.5),
    "resize x0.75": lambda a: _resize(a, 0.75),
    "resize x2": lambda a: _resize(a, 2.0),
    "crop 2 px": lambda a: a[2:-2, 2:-2],
    "crop 4 px": lambda a: a[4:-4, 4:-4],
    "crop 4 px one corner": lambda a: a[4:, 4:],
    "crop 4 px + jpeg q75": lambda a: _jpeg(a[4:-4, 4:-4], 75),
    "another source's rendering": _restyled,
}


def load(spec: str, max_side: int) -> list[tuple[str, np.ndarray]]:
    """``name=root[:option=value,...]`` -> every chip of every split as stored: ``(label, uint8 (H, W))``."""
    name, _, rest = spec.partition("=")
    root, _, opts = rest.partition(":")
    options = dict(item.split("=", 1) for item in opts.split(",") if item)
    source = CorpusSource(name=name, root=root, options=options)
    chips = []
    for split in source_splits(source):
        listing = source_listing(source, split)
        for record in listing.records():
            pixels, _ = convert_record(record, listing.policy, max_side)
            chips.append((f"{name}:{split}", pixels[0]))
    return chips


def evaluate(images: list[np.ndarray], originals: int, planted: list[tuple[int, str]], max_distance: int,
             min_correlation: float, max_side: int) -> tuple[Counter, Counter, int, int]:
    """Group ``images`` (the originals first, then the copies) under one rule; returns copies caught per kind,
    copies per kind, originals merged with another original, and such pairs."""
    stored = [_bounded(image, max_side) for image in images]
    groups = near_duplicate_groups(
        np.array([perceptual_hash(s[None].astype(np.float32) / 255.0) for s in stored], dtype=np.uint64),
        [content_hash(s[None]) for s in stored], max_distance, lambda i: stored[i][None], min_correlation)
    caught, total = Counter(), Counter()
    for position, (original, kind) in enumerate(planted):
        total[kind] += 1
        caught[kind] += int(groups[originals + position] == groups[original])
    sizes = Counter(groups[:originals].tolist())
    merged = sum(count for count in sizes.values() if count > 1)
    pairs = sum(count * (count - 1) // 2 for count in sizes.values())
    return caught, total, merged, pairs


def _bounded(image: np.ndarray, max_side: int) -> np.ndarray:
    """As the corpus stores a planted copy: its longest side bounded (a x2 resize of a 128 px chip stays 256)."""
    h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True,
                        help="name=root[:option=value,...], e.g. mstar=/data/mstar or "
                             "opensarship=/data/OpenSARShip:product=Patch_Uint8 (repeatable)")
    parser.add_argument("--copies", type=int, default=100, help="originals that get one copy of every kind")
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", default="3:0.9,3:0,6:0.9",
                        help="phash_distance:min_pixel_correlation pairs to compare (0: no pixel check)")
    args = parser.parse_args()
    chips = list(itertools.chain.from_iterable(load(spec, args.max_side) for spec in args.source))
    print(f"{len(chips)} chips: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(c for c, _ in chips).items())))
    rng = np.random.default_rng(args.seed)
    sample = sorted(rng.choice(len(chips), min(args.copies, len(chips)), replace=False).tolist())
    planted = [(i, kind) for i in sample for kind in COPIES]
    images = [image for _, image in chips] + [COPIES[kind](chips[i][1]) for i, kind in planted]
    print(f"{len(planted)} planted copies ({len(sample)} originals x {len(COPIES)} kinds)")
    for rule in args.rules.split(","):
        distance, correlation = int(rule.split(":")[0]), float(rule.split(":")[1])
        caught, total, merged, pairs = evaluate(images, len(chips), planted, distance, correlation, args.max_side)
        name = f"phash_distance {distance}, " + (f"min_pixel_correlation {correlation}" if correlation
                                                 else "no pixel check")
        print(f"\nrule: {name}")
        for kind in COPIES:
            print(f"  caught {kind:28s} {caught[kind]:4d}/{total[kind]:<4d} {caught[kind] / total[kind]:6.1%}")
        n_caught, n_total = sum(caught.values()), sum(total.values())
        print(f"  planted copies caught: {n_caught}/{n_total} = {n_caught / n_total:.1%}")
        print(f"  distinct acquisitions wrongly merged: {merged}/{len(chips)} chips = {merged / len(chips):.1%} "
              f"({pairs} pairs)")


if __name__ == "__main__":
    main()
