"""Zero-shot labelling of a folder of SAR images through Lightning's own ``predict`` subcommand.

::

    python -m lightning_sarclip predict --config experiments/predict.yaml \\
        --data.init_args.folder /data/chips \\
        --trainer.callbacks.init_args.classnames classes.txt \\
        --trainer.callbacks.init_args.output_csv predictions.csv \\
        --ckpt_path runs/quickstart/checkpoints/last.ckpt

Two pieces, so that each can be reused on its own:

* :class:`ImageFolderPredictDataModule` lists the image files of a folder and reads them with
  :func:`~lightning_sarclip.data.io.read_sar`. A file that cannot be read does not stop the run: its item is a
  blank placeholder image carrying an ``error`` string that names the file, so one corrupt chip in a folder of
  thousands costs one row, not the whole job.
* :class:`ZeroShotPredictionWriter` builds the zero-shot classifier from the model being run (class names x
  prompt templates, :mod:`lightning_sarclip.eval.zeroshot`), scores every image and writes one CSV row per file:
  ``path, top1, score1, ..., topk, scorek, error``. Scores are softmax probabilities of ``100 * cosine``
  (CLIP_benchmark's fixed scale); rows of unreadable files have empty predictions and the error message.

Pixel conversion (``policy=None``) is chosen per image from what the reader says the pixels are: 8/16-bit
integers are divided by their type's maximum (display-scaled chips, PNG/JPEG), anything else (float GeoTIFFs in
dB or linear units, MSTAR magnitudes, complex SLC) gets a per-image 1-99 percentile stretch (in dB for data
known to be radiometric). Give ``policy`` (``"db_window"``, ``{"name": "db_window", "low_db": -30}``, ...) to use
the same conversion the model was trained with when that is known.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from lightning_sarclip.data.formats import is_mstar_raw
from lightning_sarclip.data.io import SARImage, read_sar
from lightning_sarclip.data.records import ImageRef
from lightning_sarclip.data.transforms import (
    IntegerScale,
    PercentileStretch,
    build_policy,
    model_array,
    resize_square,
)
from lightning_sarclip.models.checkpoints import lightning_hyperparameters, read_checkpoint
from lightning_sarclip.training.datamodules import SARDataModule
from lightning_sarclip.utils.atomic import atomic_open

#: File suffixes listed by default (lower case; matching ignores case).
IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")


# ----------------------------------------------------------------------------------------------- listing, reading
def list_images(
    folder: str | os.PathLike,
    recursive: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    detect_mstar: bool = True,
) -> list[ImageRef]:
    """Image files under ``folder``, sorted by path, as refs ``read_sar`` accepts.

    Files are chosen by suffix (case-insensitive). With ``detect_mstar``, files with any other suffix are sniffed
    for an MSTAR Phoenix header (raw chips are named ``HB03333.015`` and the like) and read as ``mstar_raw``;
    everything else is ignored. Hidden files (dot names) are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    wanted = {"." + ext.lower().lstrip(".") for ext in extensions}
    pattern = "**/*" if recursive else "*"
    refs = []
    for path in sorted(root.glob(pattern)):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() in wanted:
            refs.append(ImageRef(str(path)))
        elif detect_mstar and is_mstar_raw(path):
            refs.append(ImageRef(str(path), format="mstar_raw"))
    return refs


def auto_policy(image: SARImage) -> Callable[[SARImage], Any]:
    """Conversion by pixel type: integers -> :class:`IntegerScale`, everything else -> :class:`PercentileStretch`."""
    return IntegerScale() if image.kind in ("uint8", "uint16") else PercentileStretch()


class ImageFolderDataset(Dataset):
    """The images of a folder as ``{"image", "index", "path", "error"}`` items; never raises on a bad file.

    ``image`` is ``(in_chans, S, S)`` float32 in [0, 1]; an unreadable file gives a zero image and a non-empty
    ``error`` naming the file (empty string otherwise).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        image_size: int = 224,
        in_chans: int = 1,
        recursive: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        policy: str | dict | Callable | None = None,
        detect_mstar: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.image_size = int(image_size)
        self.in_chans = int(in_chans)
        self.policy = None if policy is None else build_policy(policy)
        self.refs = list_images(folder, recursive=recursive, extensions=extensions, detect_mstar=detect_mstar)
        if not self.refs:
            raise FileNotFoundError(
                f"no images under {self.folder} (extensions {list(extensions)}, recursive={recursive})"
            )

    @property
    def paths(self) -> list[str]:
        return [ref.path for ref in self.refs]

    def __len__(self) -> int:
        return len(self.refs)

    def load(self, index: int) -> torch.Tensor:
        """The model input of item ``index``; raises on an unreadable file."""
        ref = self.refs[index]
        image = read_sar(ref)
        policy = self.policy or auto_policy(image)
        array = model_array(image, policy, self.in_chans)
        return resize_square(array, self.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.refs[index]
        error = ""
        try:
            image = self.load(index)
        except Exception as err:  # noqa: BLE001 - any failure becomes this file's error row, not a crashed run
            message = " ".join(str(err).split())
            error = message if ref.path in message else f"{ref.path}: {type(err).__name__}: {message}"
            image = torch.zeros(self.in_chans, self.image_size, self.image_size)
        return {"image": image, "index": index, "path": ref.path, "error": error}


def collate_predict(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images; keep paths and error strings as lists (no tokenisation: prediction needs no text)."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        "path": [s["path"] for s in samples],
        "error": [s["error"] for s in samples],
    }


class ImageFolderPredictDataModule(SARDataModule):
    """Prediction-only datamodule over a folder of image files (see the module docstring).

    Args:
        folder: directory to list.
        recursive: descend into sub-folders.
        extensions: file suffixes to list (without dots, case-insensitive).
        image_size: model input size; ``None`` takes the input size of the model being run (the CLI links this
            value to the model, so leave it ``None`` unless the checkpoint was trained at a non-default size).
        policy: pixel conversion (``None``: chosen per image by pixel type; see the module docstring).
        detect_mstar: also list files with other suffixes that hold an MSTAR Phoenix header.
        Other arguments: see :class:`SARDataModule` (passed on as ``**kwargs``): ``in_chans`` (linked to the model
            by the CLI), the loader settings (``batch_size``; ``eval_batch_size``, which the predict loader uses
            when set) and ``tokenizer``, accepted because the CLI links the model's name to it (prediction
            itself tokenises nothing).
    """

    def __init__(
        self,
        folder: str,
        recursive: bool = True,
        extensions: list[str] | tuple[str, ...] = IMAGE_EXTENSIONS,
        image_size: int | None = None,
        policy: str | dict | None = None,
        detect_mstar: bool = True,
        **kwargs: Any,
    ) -> None:
        # image_size is re-declared because it may be None here (the base requires an int); everything else of
        # SARDataModule goes through **kwargs (LightningCLI/jsonargparse resolves it from this super() call).
        super().__init__(
            dataset_class=ImageFolderDataset,
            dataset_kwargs={
                "folder": folder,
                "recursive": recursive,
                "extensions": tuple(extensions),
                "policy": policy,
                "detect_mstar": detect_mstar,
            },
            image_size=image_size,  # type: ignore[arg-type]  # resolved from the model in setup when None
            **kwargs,
        )
        self.folder = folder

    def _resolved_image_size(self) -> int:
        if self.image_size is not None:
            return int(self.image_size)
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        model = getattr(module, "model", None)
        if model is None:
            raise ValueError("ImageFolderPredictDataModule: image_size=None needs a trainer running a SARCLIPModule")
        from lightning_sarclip.models.factory import image_size_of

        return image_size_of(model)

    def setup(self, stage: str | None = None) -> None:
        if stage not in ("predict", None):
            raise ValueError(f"ImageFolderPredictDataModule only serves 'predict', not {stage!r}")
        if "predict" not in self.datasets:
            self.datasets["predict"] = ImageFolderDataset(
                image_size=self._resolved_image_size(), in_chans=self.in_chans, **self.dataset_kwargs
            )

    @property
    def predict_dataset(self) -> ImageFolderDataset:
        return self._dataset("predict", "predict")  # type: ignore[return-value]

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.predict_dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_predict,
            pin_memory=self.pin_memory,
        )


# ------------------------------------------------------------------------------------------------ the writer
MISSING_CLASSNAMES = ("ZeroShotPredictionWriter: classnames is required (a list, or a JSON / text file of names); "
                      "e.g. --trainer.callbacks.init_args.classnames classes.txt")


def load_classnames(spec: Sequence[str] | str | os.PathLike) -> list[str]:
    """Class names from a list, a JSON file (a list, or an object with ``"classnames"``) or a text file (one per
    line, blank lines and ``#`` comments ignored)."""
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"classnames: {path} is not a file (give a JSON list or a file of names)")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            names = data.get("classnames") if isinstance(data, dict) else data
        else:
            names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    else:
        names = list(spec)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"classnames: expected a non-empty list of strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"classnames: duplicate names in {names}")
    return names


#: Module hyper-parameters that must equal the checkpoint's, or the loaded weights would see other inputs.
_MUST_MATCH = {
    "model_name": "--model.init_args.model_name",
    "in_chans": "--data.init_args.in_chans",
    "channel_mode": "--model.init_args.channel_mode",
    "image_mean": "--model.init_args.image_mean",
    "image_std": "--model.init_args.image_std",
    "image_size": "--data.init_args.image_size",
}


def checkpoint_mismatches(ckpt_hparams: dict[str, Any], module: pl.LightningModule) -> list[str]:
    """Settings in which the running module differs from the checkpoint it was loaded from.

    Why: normalisation statistics and the channel count are not weights, so ``load_state_dict`` accepts a
    checkpoint trained with other ones and predictions would be silently wrong.
    """
    from lightning_sarclip.models.factory import image_size_of

    problems = []
    hparams = dict(module.hparams)
    for key, flag in _MUST_MATCH.items():
        if key not in ckpt_hparams or key not in hparams:
            continue
        want, have = ckpt_hparams[key], hparams[key]
        if key == "image_size":
            if want is None:
                continue
            model = getattr(module, "model", None)
            have = image_size_of(model) if model is not None else have
        if isinstance(want, (list, tuple)) and isinstance(have, (list, tuple)):
            same = [float(v) for v in want] == [float(v) for v in have]
        else:
            same = want == have
        if not same:
            problems.append(f"{key}: checkpoint {want!r}, run {have!r} (set {flag} {want})")
    return problems


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """All ranks' rows on every rank (``None`` off rank 0); a single process returns its own."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    gathered: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part] if dist.get_rank() == 0 else None


def merge_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataloader, index), in listing order: a ``DistributedSampler`` pads ranks with repeats."""
    unique: dict[tuple[int, int], dict[str, Any]] = {}
    for row in rows:
        unique.setdefault((row["dataloader"], row["index"]), row)
    return [unique[key] for key in sorted(unique)]


def write_predictions_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], k: int) -> None:
    """``path, top1, score1, ..., topk, scorek, error`` (atomically, :mod:`lightning_sarclip.utils.atomic`)."""
    header = ["path"] + [f"{name}{i}" for i in range(1, k + 1) for name in ("top", "score")] + ["error"]
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells: list[str] = [row["path"]]
            for i in range(k):
                if i < len(row["labels"]):
                    cells += [row["labels"][i], f"{row['scores'][i]:.6f}"]
                else:
                    cells += ["", ""]
            writer.writerow([*cells, row["error"]])


class ZeroShotPredictionWriter(BasePredictionWriter):
    """Write zero-shot top-k labels of every predicted image to a CSV (see the module docstring).

    Works with any predict dataloader whose batches carry ``image``, ``index``, ``path`` and ``error`` (what
    :class:`ImageFolderPredictDataModule` yields) and a module with ``encode_text``, ``tokenizer`` and a
    ``predict_step`` returning ``image_features``. Under DDP every rank scores its share; rank 0 gathers the rows,
    drops the sampler's padding repeats and writes the file.

    Args:
        output_csv: where to write; ``None`` writes ``predictions.csv`` in the trainer's ``default_root_dir``.
        classnames: list of names, or a JSON / text file of them.
        templates: prompt template set name, JSON file or list (:func:`~lightning_sarclip.data.templates.get_templates`).
        topk: labels per image (capped at the number of classes).
        text_batch_size: prompts per text-tower call when building the classifier.
    """

    def __init__(
        self,
        output_csv: str | None = None,
        classnames: list[str] | str | None = None,
        templates: str | list[str] = "sar",
        topk: int = 5,
        text_batch_size: int = 256,
    ) -> None:
        super().__init__(write_interval="epoch")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        from lightning_sarclip.data.templates import get_templates

        self.output_csv = output_csv
        # A missing list is reported when predicting starts (and by the CLI before anything is built), not here:
        # an error raised while jsonargparse validates the config would reach the user buried in its type dump.
        self.classnames = load_classnames(classnames) if classnames is not None else None
        self.templates = get_templates(templates)
        self.topk = topk
        self.text_batch_size = text_batch_size
        self.rows: list[dict[str, Any]] = []
        self.classifier: torch.Tensor | None = None
        self.written_path: Path | None = None

    @property
    def k(self) -> int:
        return min(self.topk, len(self.classnames or []))

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.classnames is None:
            raise ValueError(MISSING_CLASSNAMES)
        ckpt_path = getattr(trainer, "ckpt_path", None)
        if ckpt_path and Path(ckpt_path).is_file():
            hparams = lightning_hyperparameters(read_checkpoint(ckpt_path), ckpt_path) or {}
            problems = checkpoint_mismatches(hparams, pl_module)
            if problems:
                raise ValueError(f"the model does not match checkpoint {ckpt_path}: " + "; ".join(problems))
        for attribute in ("encode_text", "tokenizer"):
            if not hasattr(pl_module, attribute):
                raise TypeError(f"ZeroShotPredictionWriter needs a module with {attribute!r}; got {type(pl_module)}")
        from lightning_sarclip.eval.zeroshot import build_zeroshot_classifier

        self.classifier = build_zeroshot_classifier(
            pl_module.encode_text, pl_module.tokenizer, self.classnames, self.templates,
            batch_size=self.text_batch_size, device=pl_module.device,
        )
        self.rows = []

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        from lightning_sarclip.eval.zeroshot import zeroshot_logits

        assert self.classifier is not None
        probs = zeroshot_logits(outputs["image_features"], self.classifier).softmax(dim=-1)
        scores, labels = probs.topk(self.k, dim=-1)
        indices = outputs.get("index", batch["index"]).tolist()
        finite = torch.isfinite(probs).all(dim=-1).tolist()
        for i, index in enumerate(indices):
            error = batch["error"][i]
            if not error and not finite[i]:  # a NaN/inf score is a failed row, never a prediction
                error = f"{batch['path'][i]}: the model produced non-finite scores"
            self.rows.append({
                "dataloader": dataloader_idx,
                "index": int(index),
                "path": batch["path"][i],
                "labels": [] if error else [self.classnames[j] for j in labels[i].tolist()],
                "scores": [] if error else scores[i].tolist(),
                "error": error,
            })
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        rows = _gather_rows(self.rows)
        if rows is None:
            return
        path = Path(self.output_csv) if self.output_csv else Path(trainer.default_root_dir) / "predictions.csv"
        merged = merge_rows(rows)
        write_predictions_csv(path, merged, self.k)
        self.written_path = path
        failed = sum(1 for row in merged if row["error"])
        print(f"wrote {len(merged)} predictions to {path} ({failed} unreadable file(s))")
