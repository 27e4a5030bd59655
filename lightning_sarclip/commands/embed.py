"""``python -m lightning_sarclip embed``: image or text embeddings of any checkpoint, as a parquet file.

::

    python -m lightning_sarclip embed --ckpt runs/quickstart/checkpoints/last.ckpt --images /data/chips --out img.parquet
    python -m lightning_sarclip embed --model-name ViT-B-32 --pretrained RemoteCLIP.pt --texts prompts.txt --out txt.parquet

Output columns: ``path`` (images, as listed under the folder) or ``text`` (one per non-blank line of the text
file, stripped, in file order), and ``embedding`` (``list<float32>``, L2-normalised, the model's
``encode_image`` / ``encode_text`` of :func:`~lightning_sarclip.models.loading.load_model`). The parquet schema
metadata key ``lightning_sarclip`` holds a JSON object with the model name, checkpoint path and hash, input
size, channels, embedding dim and the number of skipped files, so embeddings are never separated from the model
that made them.

Images are listed and converted exactly as in folder prediction (:mod:`lightning_sarclip.training.prediction`: suffix
filter, optional MSTAR sniffing, pixel policy by type unless ``--policy``). Unreadable images are skipped, named
on stderr and listed in a side file ``<out stem>.errors.csv`` (``path,error``) next to the parquet; a run with no
errors removes a stale side file of that name.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_sarclip.eval.evaluate import embed_texts as embed_text_features
from lightning_sarclip.training.prediction import (
    IMAGE_EXTENSIONS,
    ImageFolderDataset,
    collate_predict,
)
from lightning_sarclip.utils.atomic import atomic_open, atomic_path

METADATA_KEY = b"lightning_sarclip"


def embed_images(
    loaded: Any,
    folder: str | os.PathLike,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    recursive: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    policy: str | dict | None = None,
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """``(paths, (N, D) float32 embeddings, [(path, error), ...])`` for the readable images under ``folder``."""
    dataset = ImageFolderDataset(
        folder, image_size=loaded.image_size, in_chans=loaded.in_chans, recursive=recursive,
        extensions=extensions, policy=policy,
    )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_predict)
    paths: list[str] = []
    chunks: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    for batch in loader:
        ok = [i for i, error in enumerate(batch["error"]) if not error]
        errors += [(batch["path"][i], error) for i, error in enumerate(batch["error"]) if error]
        if ok:
            features = loaded.encode_image(batch["image"][ok]).float().cpu().numpy()
            finite = np.isfinite(features).all(axis=1)  # a NaN/inf embedding is a failure, never a row of the table
            errors += [(batch["path"][i], f"{batch['path'][i]}: the model produced a non-finite embedding")
                       for i, good in zip(ok, finite, strict=True) if not good]
            chunks.append(features[finite])
            paths += [batch["path"][i] for i, good in zip(ok, finite, strict=True) if good]
    if not chunks:  # every file unreadable: an empty table that still has the model's embedding width
        dim = loaded.encode_image(torch.zeros(1, loaded.in_chans, loaded.image_size, loaded.image_size)).shape[1]
        return paths, np.zeros((0, int(dim)), np.float32), errors
    return paths, np.concatenate(chunks), errors


def read_texts(path: str | os.PathLike) -> list[str]:
    """Non-blank lines of a UTF-8 text file, stripped, in order."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def embed_texts(loaded: Any, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """``(N, D)`` float32 text embeddings (the model's own tokenizer and context length; ``evaluate``'s loop)."""
    if not texts:
        raise ValueError("no texts to embed (the file has no non-blank line)")
    return embed_text_features(loaded, texts, batch_size).numpy()


def write_embeddings(path: str | os.PathLike, key: str, values: Sequence[str], embeddings: np.ndarray,
                     metadata: dict[str, Any]) -> None:
    """Parquet with columns ``key`` and ``embedding`` (``list<float32>``), metadata as JSON, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    column = pa.ListArray.from_arrays(pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)),
                                      pa.array(embeddings.reshape(-1), type=pa.float32()))
    table = pa.table({key: pa.array(list(values), type=pa.string()), "embedding": column})
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """``(paths or texts, (N, D) float32 array, metadata)`` of a file written by :func:`write_embeddings`."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    key = "path" if "path" in table.column_names else "text"
    values = table.column(key).to_pylist()
    column = table.column("embedding").combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    embeddings = flat.reshape(len(values), -1) if values else np.zeros((0, 0), np.float32)
    metadata = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return values, embeddings, metadata


def errors_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.errors.csv")


def _write_errors(out: Path, errors: list[tuple[str, str]]) -> None:
    side = errors_path(out)
    if not errors:
        side.unlink(missing_ok=True)
        return
    with atomic_open(side, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "error"])
        writer.writerows(errors)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_sarclip embed", description=__doc__.split("\n")[0])
    model = parser.add_argument_group("model (a .ckpt of ours, or an open_clip architecture + weights)")
    model.add_argument("--ckpt", help="our Lightning .ckpt (architecture and SAR settings come from it)")
    model.add_argument("--model-name", help="open_clip architecture (with --pretrained), or local-dir:/hf-hub: name")
    model.add_argument("--pretrained", help="open_clip tag, checkpoint file or hf-hub: spec")
    model.add_argument("--in-chans", type=int, default=None, help="SAR channels (default: checkpoint's, else 1)")
    model.add_argument("--channel-mode", default=None, help="replicate / vv_vh_mean / identity / fold / auto")
    model.add_argument("--device", default="cpu")
    model.add_argument("--allow-random-weights", action="store_true",
                       help="embed with an architecture's random initial weights (a baseline); refused otherwise")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", help="folder of images (listed recursively unless --no-recursive)")
    what.add_argument("--texts", help="text file, one text per line")
    parser.add_argument("--out", required=True, help="output .parquet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--no-recursive", action="store_true")
    parser.add_argument("--policy", default=None, help="pixel conversion (db_window, percentile, integer); "
                        "default: by pixel type")
    args = parser.parse_args(argv)
    if not args.ckpt and not args.model_name:
        parser.error("give --ckpt, or --model-name (with --pretrained for trained weights)")
    if args.ckpt and args.pretrained:
        parser.error("--ckpt and --pretrained name the weights twice; give one of them")

    from lightning_sarclip.models.loading import RandomWeightsError, load_model

    try:
        loaded = load_model(args.model_name, args.ckpt or args.pretrained, in_chans=args.in_chans,
                            channel_mode=args.channel_mode, device=args.device,
                            allow_random_weights=args.allow_random_weights)
    except RandomWeightsError as err:
        parser.error(f"{err} (--ckpt, --pretrained, or --allow-random-weights)")
    metadata: dict[str, Any] = {
        "model": loaded.name, "checkpoint": loaded.checkpoint, "checkpoint_hash": loaded.checkpoint_hash,
        "image_size": loaded.image_size, "in_chans": loaded.in_chans,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    if args.images:
        paths, embeddings, errors = embed_images(
            loaded, args.images, batch_size=args.batch_size, num_workers=args.num_workers,
            recursive=not args.no_recursive, policy=args.policy,
        )
        for path, error in errors:
            print(f"embed: skipped {path}: {error}", file=sys.stderr)
        metadata.update(kind="image", source=str(args.images), policy=args.policy or "auto",
                        dim=int(embeddings.shape[1]), skipped=len(errors))
        write_embeddings(out, "path", paths, embeddings, metadata)
        _write_errors(out, errors)
        print(f"wrote {len(paths)} image embeddings to {out}"
              + (f"; {len(errors)} unreadable file(s) listed in {errors_path(out)}" if errors else ""))
    else:
        texts = read_texts(args.texts)
        with torch.no_grad():
            embeddings = embed_texts(loaded, texts, batch_size=args.batch_size)
        metadata.update(kind="text", source=str(args.texts), dim=int(embeddings.shape[1]), skipped=0)
        write_embeddings(out, "text", texts, embeddings, metadata)
        print(f"wrote {len(texts)} text embeddings to {out}")
