"""Load any checkpoint for evaluation: an open_clip tag, a local file in any supported format, or our ``.ckpt``.

``load_model`` returns a :class:`LoadedModel` with everything evaluation needs and nothing else (no trainer):
the open_clip model in eval mode, its tokenizer, the SAR input adapter ([0, 1] SAR batch -> normalised tower
input), the input size and channel count, and a short hash of the checkpoint file (results rows record it).

Our Lightning ``.ckpt`` files carry the module's hyper-parameters (architecture, ``in_chans``, channel mode,
normalisation), so they need no other argument: ``load_model(pretrained="runs/quickstart/checkpoints/last.ckpt")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_sarclip.models.checkpoints import (
    CheckpointError,
    lightning_hyperparameters,
    load_checkpoint,
    read_checkpoint,
)
from lightning_sarclip.models.factory import (
    build_input_adapter,
    create_model,
    has_weights,
    image_size_of,
    weights_follow,
)
from lightning_sarclip.models.sar_stem import SARInputAdapter


@dataclass
class LoadedModel:
    """A model ready for evaluation. ``encode_image`` takes [0, 1] SAR batches ``(B, in_chans, S, S)``."""

    name: str
    model: nn.Module
    tokenizer: Any
    adapter: SARInputAdapter
    image_size: int
    in_chans: int
    checkpoint: str | None
    checkpoint_hash: str | None

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device)
        return self.model.encode_image(self.adapter.to(self.device)(image), normalize=True)

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens.to(self.device), normalize=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> LoadedModel:
        self.model.to(device)
        self.adapter.to(device)
        return self


@lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def checkpoint_hash(path: str | os.PathLike | None) -> str | None:
    """First 16 hex digits of the file's SHA-256 (``None`` for tags and random weights)."""
    if path is None or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return _file_hash(str(Path(path).resolve()), stat.st_size, stat.st_mtime)


def read_lightning_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(hyper_parameters, checkpoint)`` of our ``.ckpt`` (a Lightning checkpoint whose hyper-parameters name an
    open_clip architecture), read once; ``None`` for any other file or name."""
    if not str(path).endswith(".ckpt") or not Path(path).is_file():
        return None
    checkpoint = read_checkpoint(path)
    hparams = lightning_hyperparameters(checkpoint, path)
    return None if hparams is None else (hparams, checkpoint)


class RandomWeightsError(ValueError):
    """A command was asked to use a model without trained weights (see :func:`load_model`)."""


def load_model(
    model_name: str | None = None,
    pretrained: str | None = None,
    *,
    in_chans: int | None = None,
    channel_mode: str | None = None,
    image_size: int | None = None,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    force_quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    allow_random_weights: bool = False,
) -> LoadedModel:
    """Build the model named by ``model_name`` with weights ``pretrained`` (tag, file, ``hf-hub:``, our ``.ckpt``).

    For our ``.ckpt`` the architecture and SAR settings come from its hyper-parameters; explicit arguments
    override them. Otherwise ``model_name`` is required and ``in_chans`` defaults to 1.

    ``force_quick_gelu``: build the towers with QuickGELU, as the weights were trained (``None``: as our ``.ckpt``'s
    run was built, else GELU unless the open_clip tag says QuickGELU). A file carries no activation, so a checkpoint
    fine-tuned as ``ViT-L-14`` (GELU, SARVLM's released SARCLIP) and one kept in OpenAI's QuickGELU (our
    ``vitl14_remoteclip`` recipe) need it said: evaluated with the other activation, every layer's output shifts.

    Without weights (a bare architecture name and no ``pretrained``) it raises :class:`RandomWeightsError`: the
    commands built on it (``evaluate``, ``embed``) would otherwise label, embed or score with a randomly
    initialised model and succeed. ``allow_random_weights=True`` is for a deliberate random baseline.
    """
    if pretrained is not None and str(pretrained).endswith(".ckpt") and not Path(pretrained).is_file():
        raise CheckpointError(f"checkpoint file not found: {pretrained}")
    ours = read_lightning_checkpoint(pretrained) if pretrained is not None else None
    lightning_ckpt = ours is not None
    hparams: dict[str, Any] = ours[0] if ours is not None else {}
    model_name = model_name or hparams.get("model_name")
    if model_name is None:
        raise ValueError("load_model: model_name is required unless pretrained is one of our .ckpt files")
    if not lightning_ckpt and not allow_random_weights and not has_weights(model_name, pretrained):
        raise RandomWeightsError(
            f"no trained weights given for {model_name!r}: it would run with randomly initialised weights. Name the "
            "weights (our .ckpt, an open_clip tag such as 'openai', a checkpoint file or an hf-hub: id), or allow "
            "random weights explicitly for a baseline"
        )
    settings = {
        "in_chans": in_chans if in_chans is not None else hparams.get("in_chans", 1),
        "channel_mode": channel_mode or hparams.get("channel_mode", "auto"),
        "image_size": image_size if image_size is not None else hparams.get("image_size"),
        "image_mean": image_mean if image_mean is not None else hparams.get("image_mean"),
        "image_std": image_std if image_std is not None else hparams.get("image_std"),
    }
    # Our .ckpt is loaded right below: the model is built as the run's was (its tag's activation and statistics,
    # see weights_follow), without fetching the weights it started from.
    with weights_follow() if lightning_ckpt else contextlib.nullcontext():
        created = create_model(
            model_name,
            hparams.get("pretrained") if lightning_ckpt else pretrained,
            image_size=settings["image_size"],
            in_chans=settings["in_chans"],
            channel_mode=settings["channel_mode"],
            image_mean=settings["image_mean"],
            image_std=settings["image_std"],
            force_quick_gelu=bool(hparams.get("force_quick_gelu", False) if force_quick_gelu is None
                                  else force_quick_gelu),
        )
    model = created.model
    if lightning_ckpt:
        # The module keeps the open_clip model as ``model``: the loader strips that prefix by best match.
        load_checkpoint(model, ours[1], strict=False, source=str(pretrained))
    adapter = build_input_adapter(
        model, settings["in_chans"], settings["channel_mode"], settings["image_mean"], settings["image_std"]
    )
    loaded = LoadedModel(
        name=model_name,
        model=model.eval(),
        tokenizer=created.tokenizer,
        adapter=adapter,
        image_size=settings["image_size"] or image_size_of(model),
        in_chans=settings["in_chans"],
        checkpoint=str(pretrained) if pretrained else None,
        checkpoint_hash=checkpoint_hash(pretrained),
    )
    return loaded.to(device)
