"""Data side of lightning_sarclip: the synthetic SAR generator and the LightningDataModules.

Importing this package makes the datamodules resolvable by short name in LightningCLI configs
(``class_path: SyntheticSARDataModule``).
"""

from lightning_sarclip.data.datamodules import (
    CaptionCollate,
    SARDataModule,
    SyntheticSARDataModule,
    build_tokenizer,
)
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
    "SARDataModule",
    "SyntheticSARDataModule",
    "SyntheticSARDataset",
    "SyntheticScene",
    "apply_speckle",
    "build_tokenizer",
    "generate_scene",
    "intensity_to_unit",
]
