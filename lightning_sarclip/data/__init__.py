"""Data side of the library: readers, image IO, conversion policies, captions, the corpus builder, datasets.

Importable without Lightning (like torchgeo's ``datasets``). The LightningDataModules that batch these datasets
live in :mod:`lightning_sarclip.training.datamodules`.

The names below are loaded on first use, so ``import lightning_sarclip.data.io`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Captioner": "captions",
    "pretty_classname": "captions",
    "CorpusDataset": "corpus_dataset",
    "SourceDataset": "source_dataset",
    "DB_WINDOW": "synthetic",
    "SYNTHETIC_CLASSES": "synthetic",
    "SyntheticSARDataset": "synthetic",
    "SyntheticScene": "synthetic",
    "apply_speckle": "synthetic",
    "generate_scene": "synthetic",
    "intensity_to_unit": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
