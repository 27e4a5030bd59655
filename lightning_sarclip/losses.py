"""Symmetric InfoNCE (the CLIP loss) with negatives gathered from every rank.

``InfoNCELoss`` computes exactly what open_clip's ``ClipLoss`` computes (a test checks values and gradients, in
one process and across two gloo processes), written so that it can be built *after* the trainer knows the rank
and world size (LightningCLI instantiates the model before the strategy exists):

* global loss (default): every rank gathers all image and text features and computes the full
  ``(W*B) x (W*B)`` logits; the loss is identical on every rank.
* ``local_loss=True``: each rank scores only its own rows against the gathered columns (``B x W*B``), which is
  ``W`` times cheaper in memory; averaged over ranks it equals the global loss. open_clip's maintainers
  recommend ``local_loss`` together with ``gather_with_grad`` at scale.
* ``gather_with_grad=True`` (default) gathers through ``torch.distributed.nn.functional.all_gather``, so gradients
  reach the features of every rank. Without it, remote features are constants and only the local slot carries
  gradient, which is what open_clip does without ``--gather-with-grad``.

``logit_scale`` is the *multiplier* (``model.logit_scale.exp()``, as open_clip's model returns it), not its log.

Label-aware contrast (beyond open_clip and SARVLM): ``forward(..., groups=...)`` takes one integer per pair. Pairs
that share a group are positives of each other, as in UniCL's multi-positive target: each row's target spreads
evenly over its positive columns, ``-sum_j t_ij log softmax(logits)_ij`` with ``t_ij = 1[g_i = g_j] / #{k: g_k =
g_i}``. With class-captioned SAR chips, a batch of 64 holds about six images of each of ten classes, and plain
InfoNCE pushes apart image-caption pairs that describe the same thing. Groups are gathered from every rank with
the features, so global negatives stay global. When every group is distinct, the target is the identity and the
loss is exactly the CLIP loss. :func:`label_groups` and :func:`caption_groups` build groups from a batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    *,
    local_loss: bool = False,
    gather_with_grad: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate features from all ranks along the batch dimension, in rank order."""
    if world_size == 1:
        return image_features, text_features
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"InfoNCELoss was built for world_size={world_size} but torch.distributed is not initialised")
    if gather_with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(image_features), dim=0), torch.cat(all_gather(text_features), dim=0)
    image_list = [torch.zeros_like(image_features) for _ in range(world_size)]
    text_list = [torch.zeros_like(text_features) for _ in range(world_size)]
    dist.all_gather(image_list, image_features.contiguous())
    dist.all_gather(text_list, text_features.contiguous())
    if not local_loss:
        # dist.all_gather cuts the graph: put the local tensors back so their gradient flows.
        image_list[rank] = image_features
        text_list[rank] = text_features
    return torch.cat(image_list, dim=0), torch.cat(text_list, dim=0)


def label_groups(labels: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Groups from class labels: equal labels share a group; a label < 0 (none, several, unknown) is a group of its
    own, made unique across ranks from the sample's dataset ``index`` when given (else from its batch position,
    which is unique within a rank: pass ``index`` in multi-process training)."""
    labels = labels.long()
    own = index.long() if index is not None else torch.arange(labels.shape[0], device=labels.device)
    return torch.where(labels >= 0, labels, -1 - own)


#: multiplier of the polynomial hash of token rows (int64 arithmetic wraps, which a hash may do)
_HASH_BASE = 1_000_003


def caption_groups(tokens: torch.Tensor) -> torch.Tensor:
    """Groups from tokenised captions: identical token rows share a group (on every rank alike: a hash, not an
    index; a collision of two different 77-token rows in 63 bits is not a practical concern)."""
    tokens = tokens.long()
    groups = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    for column in tokens.unbind(dim=1):
        groups = groups * _HASH_BASE + column
    return groups.abs()  # non-negative, so no clash with label_groups' own groups (< 0)


def _gather_groups(groups: torch.Tensor, world_size: int) -> torch.Tensor:
    gathered = [torch.empty_like(groups) for _ in range(world_size)]
    dist.all_gather(gathered, groups.contiguous())
    return torch.cat(gathered)


def _multi_positive_ce(logits: torch.Tensor, row_groups: torch.Tensor, column_groups: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against targets spread evenly over each row's positive columns (its own pair included)."""
    positives = (row_groups[:, None] == column_groups[None, :]).to(logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class InfoNCELoss(nn.Module):
    """Symmetric cross-entropy over image-text similarity logits (CLIP), with global negatives."""

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"InfoNCELoss: rank {rank} is not valid for world_size {world_size}")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size
        self._labels: dict[tuple[int, torch.device], torch.Tensor] = {}

    def logits(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image->text and text->image logits for this rank's rows."""
        if self.world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T
            return logits_per_image, logits_per_image.T
        all_image, all_text = gather_features(
            image_features,
            text_features,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
        )
        if self.local_loss:
            return logit_scale * image_features @ all_text.T, logit_scale * text_features @ all_image.T
        logits_per_image = logit_scale * all_image @ all_text.T
        return logits_per_image, logits_per_image.T

    def labels(self, num_logits: int, device: torch.device) -> torch.Tensor:
        """Index of each row's positive column (offset by rank when rows are local); cached per size."""
        key = (num_logits, device)
        if key not in self._labels:
            labels = torch.arange(num_logits, device=device, dtype=torch.long)
            if self.world_size > 1 and self.local_loss:
                labels = labels + num_logits * self.rank
            self._labels[key] = labels
        return self._labels[key]

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The symmetric loss; ``groups`` (one integer per pair of this rank) makes pairs of one group positives
        of each other (see the module docstring). Without ``groups`` it is open_clip's ``ClipLoss``."""
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"InfoNCELoss: image features {tuple(image_features.shape)} and text features "
                f"{tuple(text_features.shape)} must have the same (batch, dim) shape"
            )
        if groups is not None and groups.shape != image_features.shape[:1]:
            raise ValueError(f"InfoNCELoss: groups {tuple(groups.shape)} must hold one value per pair "
                             f"({image_features.shape[0]})")
        logits_per_image, logits_per_text = self.logits(image_features, text_features, logit_scale)
        if groups is None:
            labels = self.labels(logits_per_image.shape[0], image_features.device)
            return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        columns = groups if self.world_size == 1 else _gather_groups(groups, self.world_size)
        rows = groups if self.local_loss and self.world_size > 1 else columns
        return (_multi_positive_ce(logits_per_image, rows, columns)
                + _multi_positive_ce(logits_per_text, rows, columns)) / 2

    def extra_repr(self) -> str:
        return (
            f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, "
            f"rank={self.rank}, world_size={self.world_size}"
        )
