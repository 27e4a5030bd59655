"""Architectures as data: tiny open_clip configs shipped with the package.

open_clip keeps its architectures as JSON files in a registry (``open_clip.list_models()``). We add ours the
same way, so ``create_model("SARCLIP-ViT-Tiny-64")`` and ``open_clip.create_model("SARCLIP-ViT-Tiny-64")``
both work once :func:`register_model_configs` has run (it runs on ``import lightning_sarclip.models``).
"""

from __future__ import annotations

from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).parent / "configs"

_registered: set[Path] = set()


def register_model_configs(path: str | Path = CONFIG_DIR) -> list[str]:
    """Register every ``*.json`` architecture in ``path`` (a folder or one file) with open_clip.

    Returns the names (file stems) that were registered. Registering the same path twice is a no-op.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"model config path does not exist: {path}")
    names = [p.stem for p in (sorted(path.glob("*.json")) if path.is_dir() else [path])]
    if path not in _registered:
        open_clip.add_model_config(path)
        _registered.add(path)
    return names
