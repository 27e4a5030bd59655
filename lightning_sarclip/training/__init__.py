"""The training layer: everything that needs Lightning.

The LightningModule (:mod:`.module`), the optimiser schedule and staged unfreezing (:mod:`.unfreeze`), FSDP2
sharding (:mod:`.sharding`), the datamodules (:mod:`.datamodules`), fit-time callbacks (:mod:`.callbacks`,
:mod:`.preemption`), checkpoint writing (:mod:`.checkpoint_io`) and the run directory (:mod:`.runs`).

It imports the library (``models``, ``losses``, ``eval``, ``data``) and never the commands. Importing this package
makes its classes resolvable by short name in LightningCLI configs (``class_path: CorpusDataModule``).
"""

from lightning_sarclip.training.callbacks import EvalSuiteCallback, RetrievalZeroShotCallback
from lightning_sarclip.training.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from lightning_sarclip.training.datamodules import (
    CaptionCollate,
    CorpusDataModule,
    SARDataModule,
    SourceDataModule,
    SyntheticSARDataModule,
    build_tokenizer,
)
from lightning_sarclip.training.module import SARCLIPModule
from lightning_sarclip.training.preemption import PreemptionCheckpoint

__all__ = [
    "AtomicCheckpointIO",
    "CaptionCollate",
    "CorpusDataModule",
    "EvalSuiteCallback",
    "PreemptionCheckpoint",
    "RetrievalZeroShotCallback",
    "RunCheckpoint",
    "SARCLIPModule",
    "SARDataModule",
    "SourceDataModule",
    "SyntheticSARDataModule",
    "build_tokenizer",
]
