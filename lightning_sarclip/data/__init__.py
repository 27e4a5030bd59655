"""Data side of lightning_sarclip: the synthetic SAR generator and the LightningDataModules.

Importing this package makes the datamodules resolvable by short name in LightningCLI configs
(``class_path: SyntheticSARDataModule``).
"""

from lightning_sarclip.data.captions import Captioner, pretty_classname
from lightning_sarclip.data.corpus_datamodule import CorpusDataModule, CorpusDataset
from lightning_sarclip.data.datamodules import (
    CaptionCollate,
    SARDataModule,
    SourceDataModule,
    SyntheticSARDataModule,
    build_tokenizer,
)
from lightning_sarclip.data.source_dataset import SourceDataset
from lightning_sarclip.data.synthetic import (
    DB_WINDOW,
    SYNTHETIC_CLASSES,
    SyntheticSARDataset,
    SyntheticScene,
    apply_speckle,
    generate_scene,
    intensity_to_unit,
)

__all__ = [
    "DB_WINDOW",
    "SYNTHETIC_CLASSES",
    "CaptionCollate",
    "Captioner",
    "CorpusDataModule",
    "CorpusDataset",
    "SARDataModule",
    "SourceDataModule",
    "SourceDataset",
    "SyntheticSARDataModule",
    "SyntheticSARDataset",
    "SyntheticScene",
    "apply_speckle",
    "build_tokenizer",
    "generate_scene",
    "intensity_to_unit",
    "pretty_classname",
]
