"""``class_folder``: the user's own labelled chips in torchvision's ImageFolder layout.

``<root>/<split>/<class>/**/<image>`` (splits ``train``/``val``/``test``; ``valid``/``validation``/``training``/
``testing`` are accepted) or ``<root>/<class>/**/<image>`` (no split: records get ``"all"`` and the corpus
builder splits them). Every image format :mod:`lightning_sarclip.data.io` knows is read (PNG, JPEG, BMP, TIFF and
whatever other readers registered suffixes); other files are skipped and counted. The class list is the union of
the class folders of all splits, so class indices agree between splits even when a split lacks a class.

Captions are written by :class:`~lightning_sarclip.data.captions.Captioner` from the class name (folder names
like ``bulk_carrier`` read as "bulk carrier").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from lightning_sarclip.data.io import SARReadError, format_of
from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    register_source,
)
from lightning_sarclip.data.sources.image_caption_table import SPLIT_ALIASES

LAYOUTS = ("auto", "split", "flat")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@register_source("class_folder")
class ClassFolder(SARSource):
    """Labelled images in class folders (torchvision ``ImageFolder`` layout), optionally under split folders.

    Args:
        root: folder holding ``<split>/<class>/`` or ``<class>/`` folders.
        split: ``train``/``val``/``test``, or ``all``.
        layout: ``"auto"`` (split layout when every top folder is a split name), ``"split"`` or ``"flat"``.
        allowed_roots: folders outside ``root`` whose files may be reached through symlinks (see
            :meth:`~lightning_sarclip.data.sources.base.SARSource.contained`).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    classnames: ClassVar[list[str]] = []
    default_policy: ClassVar[str | dict] = "integer"
    caption_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, split: str = "train", *, layout: str = "auto",
                 allowed_roots: Sequence[str | Path] = ()) -> None:
        super().__init__(root, split, allowed_roots=allowed_roots)
        if layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout must be one of {LAYOUTS}, got {layout!r}")
        self.split_dirs = self._split_dirs(layout)
        names = sorted({d.name for folder in self.split_dirs.values() for d in _visible_dirs(folder)})
        if not names:
            raise DatasetNotFoundError(f"{self.name}: no class folders under {self.root}. {self.expected_layout()}")
        self.classnames = names  # instance attribute: this root's classes

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected <root>/<split>/<class>/<images> (split in train/val/test) or <root>/<class>/<images> "
            "(torchvision ImageFolder). See data_cards/class_folder.md."
        )

    def _split_dirs(self, layout: str) -> dict[str, Path]:
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"{self.name}: {self.root} is not a folder. {self.expected_layout()}")
        top = _visible_dirs(self.root)
        if not top:
            raise DatasetNotFoundError(f"{self.name}: {self.root} has no sub-folders. {self.expected_layout()}")
        is_split = [d.name.lower() in SPLIT_ALIASES for d in top]
        if layout == "auto":
            if any(is_split) and not all(is_split):
                raise DatasetNotFoundError(
                    f"{self.name}: {self.root} mixes split folders "
                    f"{[d.name for d, s in zip(top, is_split, strict=True) if s]} with other folders "
                    f"{[d.name for d, s in zip(top, is_split, strict=True) if not s]}; pass layout='split' or "
                    "layout='flat'"
                )
            layout = "split" if all(is_split) else "flat"
        if layout == "flat":
            return {"all": self.root}
        out: dict[str, Path] = {}
        for d in top:
            split = SPLIT_ALIASES.get(d.name.lower())
            if split is None:
                raise DatasetNotFoundError(f"{self.name}: {d} is not a split folder (train/val/test)")
            if split in out:
                raise DatasetNotFoundError(f"{self.name}: two folders for split {split!r}: {out[split]}, {d}")
            out[split] = d
        return out

    def _records(self) -> Iterator[SARRecord]:
        for split, folder in self.split_dirs.items():
            if not self.wants(split):  # a flat folder's records are "all": only split="all" yields them
                continue
            for class_dir in _visible_dirs(folder):
                images = self._images(class_dir)
                if not images:
                    raise DatasetNotFoundError(
                        f"{self.name}: class folder {class_dir} holds no image files ({self.expected_layout()})"
                    )
                for path in images:
                    yield SARRecord(self.name, path.relative_to(self.root).as_posix(), split,
                                    ImageRef(str(path)), labels=[class_dir.name])

    def _images(self, class_dir: Path) -> list[Path]:
        """Image files under ``class_dir``, sorted by path, hidden files and folders left out; symlinked folders are
        followed like symlinked files, and refused when they lead outside the allowed roots."""
        found: list[Path] = []
        for folder, dirnames, filenames in self.walk(class_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .ipynb_checkpoints
            for name in filenames:
                path = folder / name
                if name.startswith(".") or not path.is_file():  # .DS_Store, broken links, sockets
                    continue
                try:
                    format_of(ImageRef(str(path)))
                except SARReadError:
                    self.skip("not an image file", path)
                    continue
                found.append(self.contained(path))
        return sorted(found)
