"""Evaluation during ``fit``/``validate``/``test``: image-text retrieval and zero-shot classification.

:class:`RetrievalZeroShotCallback` collects the features that ``SARCLIPModule.validation_step`` (and
``test_step``) return, gathers them from every rank, drops the duplicates a ``DistributedSampler`` pads with
(by sample ``index``), and computes with the plain functions of :mod:`lightning_sarclip.eval`:

* ``<stage>/i2t_R@K``, ``<stage>/t2i_R@K``, ``<stage>/mean_recall`` (all captions of each image count);
* ``<stage>/zeroshot_top1`` (and ``top3``/``top5`` where there are enough classes) and
  ``<stage>/zeroshot_mean_per_class``, from prompts built of the datamodule's ``classnames`` and a template set.

Metrics go to every logger (TensorBoard) and, at the end of ``fit``, ``validate`` and ``test``, are printed as
a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from lightning_sarclip.eval.classification import classification_metrics
from lightning_sarclip.eval.retrieval import chance_recall_at_k, recall_at_k
from lightning_sarclip.eval.templates import get_templates
from lightning_sarclip.eval.zeroshot import build_zeroshot_classifier, zeroshot_logits


def format_table(metrics: dict[str, float], title: str) -> str:
    """A fixed-width two-column table (metric, value); recalls and accuracies are shown in percent."""
    if not metrics:
        return f"{title}: no metrics"
    width = max(len(k) for k in metrics)
    lines = [title, f"{'metric'.ljust(width)}  value", f"{'-' * width}  --------"]
    for key, value in metrics.items():
        shown = f"{100 * value:8.2f}" if not key.endswith("loss") else f"{value:8.4f}"
        lines.append(f"{key.ljust(width)}  {shown}")
    return "\n".join(lines)


class RetrievalZeroShotCallback(pl.Callback):
    """Recall@K and zero-shot accuracy on the validation and test sets.

    Args:
        templates: template set name (``sar``, ``optical``, ``sar_opt``, ``isprs``, ``simple``), a JSON file, or a
            list of templates with ``{}``.
        ks: the K of recall@K.
        every_n_epochs: run during ``fit`` every N epochs (``validate``/``test`` always run it).
        zeroshot, retrieval: switch either part off.
        print_table: print the metrics at the end of ``fit``, ``validate`` and ``test``.
    """

    def __init__(
        self,
        templates: str | list[str] = "sar",
        ks: Sequence[int] = (1, 5, 10),
        every_n_epochs: int = 1,
        zeroshot: bool = True,
        retrieval: bool = True,
        print_table: bool = True,
    ) -> None:
        self.templates = get_templates(templates)
        self.ks = tuple(ks)
        self.every_n_epochs = every_n_epochs
        self.zeroshot = zeroshot
        self.retrieval = retrieval
        self.print_table = print_table
        self._buffer: list[dict[str, torch.Tensor]] = []
        self._classifier: torch.Tensor | None = None
        self.last_metrics: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ collection
    def _active(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn == "fit":
            return (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return True

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._buffer = []
        self._classifier = None
        classnames = getattr(trainer.datamodule, "classnames", None) if trainer.datamodule is not None else None
        if self.zeroshot and classnames and self._active(trainer):
            with torch.no_grad():
                self._classifier = build_zeroshot_classifier(
                    pl_module.encode_text, pl_module.tokenizer, classnames, self.templates, device=pl_module.device
                )

    def _collect(self, trainer: pl.Trainer, outputs: Any) -> None:
        if not self._active(trainer) or not isinstance(outputs, dict) or "image_features" not in outputs:
            return
        self._buffer.append({k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in outputs.items()})

    def _gather(self, pl_module: pl.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
        if pl_module.trainer.world_size == 1:
            return tensor
        gathered = pl_module.all_gather(tensor)  # (world, N, ...) ; every rank holds the same number of rows
        return gathered.flatten(0, 1)

    def _compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        if not self._buffer:
            return {}
        k = self._buffer[0]["captions_per_image"]
        image = torch.cat([b["image_features"] for b in self._buffer]).float()
        text = torch.cat([b["text_features"] for b in self._buffer]).float().view(image.shape[0], k, -1)
        n = image.shape[0]
        index = torch.cat([b["index"] for b in self._buffer]) if "index" in self._buffer[0] else torch.arange(n)
        labels = torch.cat([b["label"] for b in self._buffer]) if "label" in self._buffer[0] else None
        image, text, index = (self._gather(pl_module, t.to(pl_module.device)) for t in (image, text, index))
        if labels is not None:
            labels = self._gather(pl_module, labels.to(pl_module.device))
        # A DistributedSampler repeats samples to even out ranks: keep the first copy of every index.
        order = torch.argsort(index, stable=True)
        keep = order[torch.cat([torch.tensor([True], device=index.device), index[order][1:] != index[order][:-1]])]
        image, text = image[keep], text[keep]
        labels = labels[keep] if labels is not None else None
        metrics: dict[str, float] = {}
        if self.retrieval:
            text_to_image = torch.arange(image.shape[0], device=image.device).repeat_interleave(k)
            for key, value in recall_at_k(image, text.flatten(0, 1), text_to_image, ks=self.ks).items():
                metrics[f"{stage}/{key}"] = value
            chance = chance_recall_at_k([k] * image.shape[0], ks=self.ks)["mean_recall"]
            metrics[f"{stage}/mean_recall_chance"] = chance
        if self._classifier is not None and labels is not None and bool((labels >= 0).any()):
            # Images without a single class label (multi-label scenes, captions only) carry -1: not scored.
            labelled = labels >= 0
            image, labels = image[labelled], labels[labelled]
            logits = zeroshot_logits(image, self._classifier.to(image.device))
            num_classes = self._classifier.shape[1]
            topk = tuple(t for t in (1, 3, 5) if t <= num_classes)
            for key, value in classification_metrics(logits, labels, topk=topk).items():
                metrics[f"{stage}/zeroshot_{key}"] = value
            metrics[f"{stage}/zeroshot_top1_chance"] = 1.0 / num_classes
        return metrics

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._active(trainer):
            return
        metrics = self._compute(trainer, pl_module, stage)
        self._buffer = []
        if metrics:
            # Identical on every rank after the gather, so no sync is needed.
            pl_module.log_dict(metrics, sync_dist=False, rank_zero_only=False)
            loss = trainer.callback_metrics.get(f"{stage}/loss")
            table = {f"{stage}/loss": float(loss)} if loss is not None else {}
            table.update(metrics)
            self.last_metrics[stage] = table

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
