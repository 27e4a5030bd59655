"""One source + split + options -> model-ready items, the same way on every path.

A reader *instance* is the only authority on its data: the layout it detected under ``root`` decides the class
names and the conversion policy (MSTAR's SDMS CDs hold raw Phoenix magnitudes, its JPEG folders 8-bit chips;
SAMPLE's PNGs and ``.mat`` files differ likewise). Everything that turns a source into images and captions goes
through :class:`SourceListing`, which reads those answers from the instance:

* ``records()``: the reader's records, detection sources expanded to image-text pairs
  (:func:`~lightning_sarclip.data.detection.detection_pairs`, ``whole`` images, object ``chips`` or ``both``);
* ``policy``: the user's override, else the instance's ``default_policy``;
* ``classnames``: the instance's class list (empty for open-ended sources);
* ``vocabulary``: the instance's caption nouns and fields, handed to the
  :class:`~lightning_sarclip.data.captions.Captioner` (which never looks a source up by name);
* ``load_image(record)``: read, convert with ``policy``, map channels, resize: the model's input tensor.

Its users: :class:`~lightning_sarclip.data.source_dataset.SourceDataset` (and through it ``SourceDataModule``,
the fit-time evaluation callback and ``evaluate``) and the corpus builder. A test drives every registered source
through each of them (``tests/test_paths.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_sarclip.data.captions import STYLES, Captioner, CaptionVocabulary, Rewriter
from lightning_sarclip.data.detection import MODES as DETECTION_MODES
from lightning_sarclip.data.detection import detection_pairs
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.records import SARRecord
from lightning_sarclip.data.sources.base import SARSource, get_source
from lightning_sarclip.data.transforms import build_policy, model_array, resize_square

__all__ = ["DETECTION_MODES", "SourceListing", "model_input", "sized_input"]


def source_array(record: SARRecord, policy: Any, in_chans: int) -> np.ndarray:
    """``record``'s image converted by ``policy`` to ``(in_chans, H, W)`` in [0, 1], at its own size."""
    return model_array(read_sar(record.image), policy, in_chans)


def model_input(record: SARRecord, policy: Any, image_size: int, in_chans: int) -> torch.Tensor:
    """``record``'s image as the model sees it: ``float32 (in_chans, image_size, image_size)`` in [0, 1]."""
    return sized_input(source_array(record, policy, in_chans), image_size)


def sized_input(array: np.ndarray, image_size: int) -> torch.Tensor:
    """A converted ``(C, H, W)`` image as model input: ``float32 (C, image_size, image_size)`` in [0, 1], never
    sharing memory with ``array`` (which may be a cached copy)."""
    return resize_square(array, image_size).clamp(0.0, 1.0).to(torch.float32)


def _construct(source_cls: type[SARSource], root: str | Path, split: str, options: dict[str, Any]) -> SARSource:
    """The reader instance; a misspelt option is an error that lists the reader's options."""
    accepted = [name for name, p in inspect.signature(source_cls.__init__).parameters.items()
                if name not in ("self", "root", "split") and p.kind is not inspect.Parameter.VAR_KEYWORD]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD
                    for p in inspect.signature(source_cls.__init__).parameters.values())
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(f"source {source_cls.name!r}: unknown source_options {unknown}; its options are "
                         f"{accepted or 'none'} (see data_cards/{source_cls.name}.md)")
    return source_cls(root, split, **options)


class SourceListing:
    """The records of one source split and everything about them, resolved by the reader instance.

    Args:
        source: registered source name (``list_sources()`` names them).
        root: the dataset's folder in its original layout (see its data card).
        split: one of the reader's splits, or ``all``.
        options: extra keyword arguments of the reader (``layout``, ``product`` ...).
        policy: conversion policy spec overriding the reader instance's ``default_policy``.
        detection: how detection sources become pairs: ``whole`` images with an object summary, one ``chips``
            record per box (labelled like a classification chip), or ``both``. Ignored for other sources.
    """

    def __init__(
        self,
        source: str,
        root: str | Path,
        split: str = "all",
        *,
        options: dict[str, Any] | None = None,
        policy: str | dict | None = None,
        detection: str = "whole",
    ) -> None:
        if detection not in DETECTION_MODES:
            raise ValueError(f"source {source!r}: detection must be one of {DETECTION_MODES}, got {detection!r}")
        self.source_cls = get_source(source)
        self.source, self.root, self.split = source, str(root), split
        self.options = dict(options or {})
        self.detection = detection
        self.reader = _construct(self.source_cls, root, split, self.options)
        # The instance's answers, not the class's: readers resolve these per detected layout.
        self.policy_spec: str | dict = policy if policy is not None else self.reader.default_policy
        self.policy = build_policy(self.policy_spec)
        self.classnames: list[str] = list(self.reader.classnames or [])
        fields = self.reader.caption_fields
        self.vocabulary = CaptionVocabulary(dict(self.reader.caption_nouns),
                                            None if fields is None else tuple(fields))

    @property
    def is_detection(self) -> bool:
        return self.reader.task == "detection"

    def records(self) -> Iterator[SARRecord]:
        """The split's records, lazily; detection sources as pairs (see ``detection``)."""
        records = self.reader.records()
        if self.is_detection:
            records = detection_pairs(records, mode=self.detection)
        return records

    def captioner(self, styles: Sequence[str] = STYLES, n_captions: int = 5, seed: int = 0, *,
                  drop_prompt_like: bool = True, rewriter: Rewriter | None = None) -> Captioner:
        """A captioner that knows this source's vocabulary (the other arguments: see :class:`Captioner`)."""
        return Captioner(styles=tuple(styles), n_captions=n_captions, seed=seed, rewriter=rewriter,
                         vocabularies={self.source: self.vocabulary}, drop_prompt_like=drop_prompt_like)

    def load_image(self, record: SARRecord, image_size: int, in_chans: int) -> torch.Tensor:
        """``record``'s model input, converted with this listing's policy."""
        # every image read of a listing passes load_array (the path tests spy on it)
        return sized_input(self.load_array(record, in_chans), image_size)

    def load_array(self, record: SARRecord, in_chans: int) -> np.ndarray:
        """``record``'s converted image at its own size (what augmentation crops before the resize)."""
        return source_array(record, self.policy, in_chans)

    def __repr__(self) -> str:
        return (f"SourceListing({self.source!r}, {self.root!r}, split={self.split!r}, policy={self.policy_spec!r}, "
                f"detection={self.detection!r})")
