"""Model side of lightning_sarclip: open_clip towers, checkpoint loading, SAR input adaptation.

Importable without Lightning: ``from lightning_sarclip.models import create_model``. Importing this package
registers the architectures shipped in ``models/configs`` with open_clip.
"""

from typing import Any

from lightning_sarclip.models.registry import register_model_configs

register_model_configs()

__all__ = ["CreatedModel", "SARInputAdapter", "create_model", "load_checkpoint", "register_model_configs"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import lightning_sarclip.models.registry`` stays cheap and free of import cycles.
    if name in ("CreatedModel", "create_model"):
        from lightning_sarclip.models import factory

        return getattr(factory, name)
    if name == "SARInputAdapter":
        from lightning_sarclip.models.sar_stem import SARInputAdapter

        return SARInputAdapter
    if name == "load_checkpoint":
        from lightning_sarclip.models.checkpoints import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'lightning_sarclip.models' has no attribute {name!r}")
