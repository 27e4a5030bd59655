"""Evaluation metrics with CLIP_benchmark semantics: retrieval recall, classification, zero-shot.

Pure PyTorch (no Lightning import), so the functions can be used from scripts, notebooks and Lightning
callbacks alike; :mod:`lightning_sarclip.eval.metrics` wraps them as DDP-correct torchmetrics metrics.
"""

from lightning_sarclip.data.templates import TEMPLATE_SETS, get_templates, normalize_template
from lightning_sarclip.eval.classification import classification_metrics, confusion_matrix
from lightning_sarclip.eval.metrics import RetrievalRecall, ZeroShotAccuracy
from lightning_sarclip.eval.retrieval import (
    TIE_RULES,
    RankCounts,
    chance_recall_at_k,
    recall_at_k,
    retrieval_rank_counts,
    retrieval_ranks,
)
from lightning_sarclip.eval.zeroshot import build_zeroshot_classifier, zeroshot_logits

__all__ = [
    "TIE_RULES",
    "RankCounts",
    "TEMPLATE_SETS",
    "RetrievalRecall",
    "ZeroShotAccuracy",
    "build_zeroshot_classifier",
    "chance_recall_at_k",
    "classification_metrics",
    "confusion_matrix",
    "get_templates",
    "normalize_template",
    "recall_at_k",
    "retrieval_rank_counts",
    "retrieval_ranks",
    "zeroshot_logits",
]
