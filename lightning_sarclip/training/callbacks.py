"""Evaluation during ``fit``/``validate``/``test``: image-text retrieval and zero-shot classification.

:class:`RetrievalZeroShotCallback` feeds the features that ``SARCLIPModule.validation_step`` (and ``test_step``)
return into the metrics of :mod:`lightning_sarclip.eval.metrics`, which gather them from every rank, drop the
duplicates a ``DistributedSampler`` pads with (by sample ``index``) and call the plain functions of
:mod:`lightning_sarclip.eval`:

* ``<stage>/i2t_R@K``, ``<stage>/t2i_R@K``, ``<stage>/mean_recall`` (all captions of each image count);
* ``<stage>/zeroshot_top1`` (and ``top3``/``top5`` where there are enough classes) and
  ``<stage>/zeroshot_mean_per_class``, from prompts built of the datamodule's ``classnames`` and a template set.

:class:`EvalSuiteCallback` evaluates further datasets (any registered source, read with
:class:`~lightning_sarclip.data.source_dataset.SourceDataset`) at the end of validation during ``fit``, each
rank on its shard, and logs ``val/<dataset>/<metric>``: held-out SAR benchmarks tracked while training, which is
how forgetting of zero-shot ability shows up early.

Metrics go to every logger (TensorBoard) and, at the end of ``fit``, ``validate`` and ``test``, are printed as
a table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DistributedSampler, Subset

from lightning_sarclip.data.templates import get_templates
from lightning_sarclip.eval.evaluate import (
    DatasetSpec,
    PreparedDataset,
    check_dataset_spec,
    embed_images,
    evaluate_dataset,
    prepare_dataset,
)
from lightning_sarclip.eval.metrics import RetrievalRecall, ZeroShotAccuracy
from lightning_sarclip.eval.results import metrics_table
from lightning_sarclip.eval.retrieval import chance_recall_at_k
from lightning_sarclip.eval.zeroshot import build_zeroshot_classifier, zeroshot_logits
from lightning_sarclip.models.factory import image_size_of

log = logging.getLogger(__name__)


def format_table(metrics: dict[str, float], title: str) -> str:
    """Logged metrics (``val/<metric>``, ``val/<dataset>/<metric>``) as the one console table, a column per
    dataset (:func:`~lightning_sarclip.eval.results.metrics_table`)."""
    columns: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        column, _, metric = key.rpartition("/")
        columns.setdefault(column or "value", {})[metric] = value
    return metrics_table(columns, title)


class FeatureMetrics:
    """Retrieval and zero-shot metrics of one evaluation pass, fed batch by batch (one place for the DDP logic).

    Holds a :class:`~lightning_sarclip.eval.metrics.RetrievalRecall` and, when a zero-shot classifier is given,
    a :class:`~lightning_sarclip.eval.metrics.ZeroShotAccuracy`; the metrics gather across ranks and drop
    sampler padding by sample index. ``compute(prefix)`` returns ``{prefix}/<metric>`` keys plus the chance
    levels ``mean_recall_chance`` and ``zeroshot_top1_chance``. Every rank must call ``compute``.
    """

    def __init__(
        self,
        device: torch.device,
        ks: Sequence[int] = (1, 5, 10),
        classifier: torch.Tensor | None = None,
        retrieval: bool = True,
    ) -> None:
        self.ks = tuple(ks)
        self.classifier = classifier
        self.retrieval = RetrievalRecall(ks=self.ks).to(device) if retrieval else None
        self.zeroshot: ZeroShotAccuracy | None = None
        if classifier is not None:
            # top3/top5 only where there are enough classes (CLIP_benchmark would report NaN).
            topk = tuple(k for k in (1, 3, 5) if k <= classifier.shape[1])
            self.zeroshot = ZeroShotAccuracy(topk=topk).to(device)
        self.batches = 0

    def update(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor | None,
        index: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> None:
        """``image_features`` (B, D); ``text_features`` (B, K, D) or (B * K, D); ``index``, ``labels`` (B,)."""
        self.batches += 1
        image_features = image_features.detach().float()
        if self.retrieval is not None and text_features is not None:
            self.retrieval.update(image_features, text_features.detach().float(), index)
        if self.zeroshot is not None and labels is not None:
            logits = zeroshot_logits(image_features, self.classifier.to(image_features.device))
            self.zeroshot.update(logits, labels.to(logits.device), index)

    def compute(self, prefix: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.batches == 0:
            return metrics
        if self.retrieval is not None and self.retrieval.update_count:
            for key, value in self.retrieval.compute().items():
                metrics[f"{prefix}/{key}"] = value
            counts = [self.retrieval.captions_per_image] * self.retrieval.num_images
            metrics[f"{prefix}/mean_recall_chance"] = chance_recall_at_k(counts, ks=self.ks)["mean_recall"]
        if self.zeroshot is not None and self.zeroshot.update_count:
            # Empty when no image carries a single class label (multi-label scenes, captions only).
            zeroshot = self.zeroshot.compute()
            for key, value in zeroshot.items():
                metrics[f"{prefix}/zeroshot_{key}"] = value
            if zeroshot:
                metrics[f"{prefix}/zeroshot_top1_chance"] = 1.0 / self.classifier.shape[1]
        return metrics


def _sample_index(outputs: dict[str, Any], trainer: pl.Trainer, seen: int) -> torch.Tensor:
    """The batch's ``index``; without one, indices unique across ranks (so nothing is dropped as padding)."""
    if "index" in outputs:
        return torch.as_tensor(outputs["index"]).long()
    size = outputs["image_features"].shape[0]
    return torch.arange(seen, seen + size) * trainer.world_size + trainer.global_rank


class RetrievalZeroShotCallback(pl.Callback):
    """Recall@K and zero-shot accuracy on the validation and test sets.

    Args:
        templates: template set name (``sar``, ``optical``, ``sar_opt``, ``isprs``, ``simple``), a JSON file, or a
            list of templates with ``{}``.
        ks: the K of recall@K.
        every_n_epochs: run during ``fit`` every N epochs (``validate``/``test`` always run it).
        zeroshot, retrieval: switch either part off.
        print_table: print the metrics at the end of ``fit``, ``validate`` and ``test``.
        figures: draw the zero-shot confusion matrix each time the metrics are computed, as a PNG in
            ``<log dir>/figures/`` and an image in TensorBoard (tag ``<stage>/zeroshot_confusion``).
    """

    def __init__(
        self,
        templates: str | list[str] = "sar",
        ks: Sequence[int] = (1, 5, 10),
        every_n_epochs: int = 1,
        zeroshot: bool = True,
        retrieval: bool = True,
        print_table: bool = True,
        figures: bool = False,
    ) -> None:
        self.templates = get_templates(templates)
        self.ks = tuple(ks)
        self.every_n_epochs = every_n_epochs
        self.zeroshot = zeroshot
        self.retrieval = retrieval
        self.print_table = print_table
        self.figures = figures
        self._metrics: FeatureMetrics | None = None
        self._seen = 0
        self.last_metrics: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ collection
    def _active(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn == "fit":
            return (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return True

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._metrics, self._seen = None, 0
        if not self._active(trainer):
            return
        classifier = None
        classnames = getattr(trainer.datamodule, "classnames", None) if trainer.datamodule is not None else None
        if self.zeroshot and classnames:
            with torch.no_grad():
                classifier = build_zeroshot_classifier(
                    pl_module.encode_text, pl_module.tokenizer, classnames, self.templates, device=pl_module.device
                )
        self._metrics = FeatureMetrics(pl_module.device, self.ks, classifier, retrieval=self.retrieval)

    def _collect(self, trainer: pl.Trainer, outputs: Any) -> None:
        if self._metrics is None or not isinstance(outputs, dict) or "image_features" not in outputs:
            return
        index = _sample_index(outputs, trainer, self._seen)
        self._seen += index.shape[0]
        image = outputs["image_features"]
        text = outputs["text_features"].reshape(image.shape[0], outputs["captions_per_image"], -1)
        self._metrics.update(image, text, index.to(image.device), outputs.get("label"))

    def _compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        return self._metrics.compute(stage) if self._metrics is not None else {}

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._active(trainer):
            return
        metrics = self._compute(trainer, pl_module, stage)
        if self.figures and self._metrics is not None:
            self._draw_confusion(trainer, stage, self._metrics)
        self._metrics = None
        if metrics:
            # Identical on every rank after the gather, so no sync is needed.
            pl_module.log_dict(metrics, sync_dist=False, rank_zero_only=False)
            loss = trainer.callback_metrics.get(f"{stage}/loss")
            table = {f"{stage}/loss": float(loss)} if loss is not None else {}
            table.update(metrics)
            self.last_metrics[stage] = table

    def _draw_confusion(self, trainer: pl.Trainer, stage: str, metrics: FeatureMetrics) -> None:
        confusion = getattr(metrics.zeroshot, "confusion", None) if metrics.zeroshot is not None else None
        if confusion is None:
            return
        # trainer.log_dir broadcasts from rank 0 (a collective): every rank must ask, or rank 0 waits forever.
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "figures"
        if not trainer.is_global_zero:
            return
        from lightning_sarclip.eval.figures import confusion_matrix_figure, log_figure

        step = trainer.global_step
        image = confusion_matrix_figure(
            confusion, list(trainer.datamodule.classnames), title=f"{stage} zero-shot, step {step}",
            path=folder / f"{stage}_zeroshot_confusion_step{step:07d}.png",
        )
        log_figure(trainer.loggers, f"{stage}/zeroshot_confusion", image, step)

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, outputs)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "test")

    @rank_zero_only
    def _print(self, stage: str, title: str) -> None:
        if self.print_table and stage in self.last_metrics:
            print("\n" + format_table(self.last_metrics[stage], title), flush=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print("val", f"Validation after fit ({trainer.current_epoch} epochs)")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._print("val", "Validation")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print("test", "Test")


# ---------------------------------------------------------------------------------------------- eval suite
#: Spec fields that belong to the ``evaluate`` command only.
_NOT_AT_FIT_TIME = frozenset({"probes", "probe_train_split", "kshot_shots"})


def _dataset_spec(entry: dict[str, Any], templates: list[str]) -> DatasetSpec:
    """One ``datasets`` entry as ``evaluate``'s :class:`DatasetSpec` (validated now: a typo fails before training)."""
    if not isinstance(entry, dict):
        raise TypeError(f"every dataset must be a dict, got {type(entry).__name__}")
    missing = {"name", "source", "root"} - entry.keys()
    if missing:
        raise ValueError(f"dataset {entry.get('name', entry)!r} misses keys {sorted(missing)}")
    known = {f.name for f in dataclasses.fields(DatasetSpec)} - _NOT_AT_FIT_TIME
    unknown = entry.keys() - known
    if unknown:
        raise ValueError(f"dataset {entry['name']!r} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values = {"task": "both", **entry}
    if values.get("templates") is None:
        values["templates"] = templates
    values["source_options"] = dict(values.get("source_options") or {})
    spec = DatasetSpec(**values)
    check_dataset_spec(spec)
    get_templates(spec.templates)
    return spec


def _model_image_size(pl_module: pl.LightningModule) -> int:
    """The input size of the module's open_clip model (the one home: ``models.factory.image_size_of``)."""
    model = getattr(pl_module, "model", None)
    if model is None or not hasattr(model, "visual"):
        raise ValueError(f"EvalSuiteCallback needs a module with an open_clip ``model``; got {type(pl_module).__name__}")
    return image_size_of(model)


class _ModuleEncoder:
    """The module being trained, seen through the interface :func:`evaluate_dataset` uses."""

    def __init__(self, pl_module: pl.LightningModule) -> None:
        self.module = pl_module
        self.tokenizer = pl_module.tokenizer

    @property
    def device(self) -> torch.device:
        return self.module.device

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(image.to(self.device))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.encode_text(tokens.to(self.device))


class EvalSuiteCallback(pl.Callback):
    """Zero-shot and retrieval metrics on extra datasets, evaluated during ``fit`` at the end of validation.

    The same path as the ``evaluate`` command: each entry is an ``evaluate`` dataset spec
    (:class:`~lightning_sarclip.eval.evaluate.DatasetSpec`: same subset rule, class names and captions), prepared
    once by :func:`~lightning_sarclip.eval.evaluate.prepare_dataset` at the module's ``image_size``/``in_chans``,
    and scored by :func:`~lightning_sarclip.eval.evaluate.evaluate_dataset`. So ``val/<name>/<metric>`` equals
    what ``evaluate`` reports for the same checkpoint. Under DDP each rank embeds its share of the images and the
    features are gathered before scoring.

    Args:
        datasets: one dict per dataset with the fields of ``evaluate``'s dataset spec (``name``, ``source``,
            ``root``; optional ``split`` (default ``test``), ``task`` (``zeroshot``, ``retrieval`` or ``both``,
            the default here), ``templates`` (default: the callback's), ``classnames``, ``source_options``,
            ``policy``, ``detection``, ``n_captions``, ``max_images`` (a seeded random subset) ...). Probes are
            not run at fit time.
        every_n_epochs: evaluate after every N-th training epoch.
        batch_size, num_workers: of the evaluation loaders (``batch_size`` is the default of every dataset).
        templates: default zero-shot template set (name, JSON file or list).
        ks: the K of recall@K.
        print_table: print the last metrics at the end of ``fit``.
    """

    def __init__(
        self,
        datasets: list[dict[str, Any]],
        every_n_epochs: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        templates: str | list[str] = "sar",
        ks: Sequence[int] = (1, 5, 10),
        print_table: bool = True,
    ) -> None:
        if every_n_epochs < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError("every_n_epochs and batch_size must be >= 1 and num_workers >= 0")
        self.templates = get_templates(templates)
        specs = [_dataset_spec({"batch_size": batch_size, **dict(d)}, self.templates) for d in datasets]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        self.datasets = specs
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.ks = tuple(ks)
        self.print_table = print_table
        self._prepared: dict[str, PreparedDataset] = {}
        self.last_metrics: dict[str, float] = {}

    def prepared(self, spec: DatasetSpec, pl_module: pl.LightningModule) -> PreparedDataset:
        """The dataset listed, subset and named once (on first use)."""
        if spec.name not in self._prepared:
            self._prepared[spec.name] = prepare_dataset(spec, _model_image_size(pl_module),
                                                        int(getattr(pl_module.hparams, "in_chans", 1)))
        return self._prepared[spec.name]

    def _image_features(self, trainer: pl.Trainer, encoder: _ModuleEncoder, prepared: PreparedDataset
                        ) -> torch.Tensor:
        """All image features in dataset order; under DDP every rank embeds a share and all gather."""
        images = prepared.images
        if trainer.world_size == 1:
            return embed_images(encoder, images, prepared.spec.batch_size, self.num_workers)
        # Padded to equal shares (all_gather needs equal shapes); the padding repeats indices, written twice.
        share = list(DistributedSampler(images, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                        shuffle=False))
        features = embed_images(encoder, Subset(images, share), prepared.spec.batch_size, self.num_workers)
        module = encoder.module
        gathered = module.all_gather(features.to(module.device)).flatten(0, 1).cpu()
        indices = module.all_gather(torch.tensor(share, device=module.device)).flatten().cpu()
        out = torch.empty(len(images), gathered.shape[-1], dtype=gathered.dtype)
        out[indices] = gathered
        return out

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, spec: DatasetSpec) -> dict[str, float]:
        """Metrics of one dataset (keys ``val/<name>/<metric>``); a collective call under DDP."""
        prepared = self.prepared(spec, pl_module)
        encoder = _ModuleEncoder(pl_module)
        with trainer.precision_plugin.forward_context():
            features = self._image_features(trainer, encoder, prepared)
            metrics = evaluate_dataset(encoder, prepared, self.ks, self.num_workers, image_features=features)
        prefix = f"val/{spec.name}"
        out = {f"{prefix}/zeroshot_{k}": float(v) for k, v in metrics.get("zeroshot", {}).items()}
        out.update({f"{prefix}/{k}": float(v) for k, v in metrics.get("retrieval", {}).items()})
        return out

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for spec in self.datasets:
                    metrics = self.evaluate(trainer, pl_module, spec)
                    # Identical on every rank after the gather, so no sync is needed.
                    pl_module.log_dict(metrics, sync_dist=False, rank_zero_only=False)
                    self.last_metrics.update(metrics)
        finally:
            pl_module.train(was_training)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.print_table and self.last_metrics:
            print("\n" + format_table(self.last_metrics, "Evaluation suite"), flush=True)
