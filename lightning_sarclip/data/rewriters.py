"""Caption rewriters configured by class path, and the on-disk cache that makes a corpus build call each once.

A rewriter is any object with ``rewrite(record, captions) -> list[str]`` returning one non-empty caption per input
caption (a local LLM that paraphrases: :class:`~lightning_sarclip.data.hf_rewriter.HFParaphraser`). ``build-corpus``
takes one as ``rewriter: {class_path: package.module.Class, init_args: {...}}`` and hands it to the
:class:`~lightning_sarclip.data.captions.Captioner` of every source, wrapped in :class:`CachedRewriter`:

* **Why a cache.** A model call costs far more than reading and storing an image, and a corpus build is resumable:
  a killed build stores again the records of the shard it was writing, and a rebuild (another ``max_side``, a
  deleted output folder) stores all of them again. Without a cache each would call the model again, and a
  sampling model would give other captions than the first time.
* **Key.** ``(rewriter identity, record key, input captions)``: the identity is a digest of the class path and
  ``init_args`` (so another model or prompt never reuses answers), the record key says whose captions they are, and
  the input captions change when the seed, styles or banks do. Each answer is one small JSON file,
  ``<cache>/<identity>/<key[:2]>/<key>.json``, written atomically (:mod:`lightning_sarclip.utils.atomic`): a
  kill leaves the old state or the complete answer, never half of one, and any number of builds may share a cache.
* **Lazy.** The rewriter is constructed at the first cache miss, so a build whose answers are all cached never
  loads the model.

What is not in the identity: a change of the weights behind an unchanged path. Put a revision or a version into
``init_args`` (or point ``rewriter_cache`` elsewhere) when the model changes.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_sarclip.data.captions import checked_rewrite
from lightning_sarclip.data.records import SARRecord
from lightning_sarclip.utils.atomic import atomic_write_json

__all__ = ["CachedRewriter", "load_rewriter_class", "rewriter_identity", "rewriter_problems"]

#: The keys of a rewriter spec.
SPEC_KEYS = ("class_path", "init_args")


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def load_rewriter_class(class_path: str) -> type:
    """The class named ``package.module.Class``; ``ValueError`` naming what is missing."""
    module_name, _, name = str(class_path).rpartition(".")
    if not module_name:
        raise ValueError(f"expected a class path 'package.module.Class', got {class_path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} of {class_path!r} ({err})") from err
    cls = getattr(module, name, None)
    if not inspect.isclass(cls):
        raise ValueError(f"module {module_name!r} has no class {name!r}")
    if not callable(getattr(cls, "rewrite", None)):
        raise ValueError(f"{class_path} has no method rewrite(record, captions) -> list[str]")
    return cls


def rewriter_problems(spec: Any, where: str = "rewriter") -> list[str]:
    """The problems of a ``{class_path, init_args}`` spec, without constructing it: its shape, the class (importable,
    with ``rewrite``), ``init_args`` (JSON values the constructor accepts) and the class's own ``config_problems``
    (a classmethod taking ``init_args``, e.g. a missing optional dependency), each naming its field."""
    if spec is None:
        return []
    if not isinstance(spec, Mapping) or "class_path" not in spec or set(spec) - set(SPEC_KEYS):
        return [f"{where}: expected null or a mapping {{class_path: package.module.Class, init_args: {{...}}}}, "
                f"got {spec!r}"]
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        return [f"{where}.init_args: expected a mapping of constructor arguments, got {init_args!r}"]
    try:
        json.dumps(dict(init_args), sort_keys=True)
    except (TypeError, ValueError) as err:
        return [f"{where}.init_args: expected plain values (they identify the rewriter's cache), got {err}"]
    try:
        cls = load_rewriter_class(spec["class_path"])
    except ValueError as err:
        return [f"{where}.class_path: {err}"]
    try:
        inspect.signature(cls).bind(**init_args)
    except TypeError as err:
        return [f"{where}.init_args: {spec['class_path']} does not accept {sorted(init_args)} ({err})"]
    own = getattr(cls, "config_problems", None)
    return [f"{where}: {problem}" for problem in own(dict(init_args))] if callable(own) else []


def rewriter_identity(spec: Mapping[str, Any]) -> str:
    """A digest of the class path and ``init_args``: answers of one identity are never used for another."""
    return _digest({"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})})[:16]


class CachedRewriter:
    """``(record, captions) -> captions`` for the :class:`~lightning_sarclip.data.captions.Captioner`: the spec's
    rewriter behind an on-disk cache in ``cache_dir`` (see the module docstring).

    ``calls`` counts the rewriter's calls and ``hits`` the answers read from the cache (the build reports both).
    """

    def __init__(self, spec: Mapping[str, Any], cache_dir: str | Path) -> None:
        problems = rewriter_problems(spec)
        if problems:
            raise ValueError("; ".join(problems))
        self.spec = {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
        self.identity = rewriter_identity(self.spec)
        self.folder = Path(cache_dir) / self.identity
        self._rewriter: Any = None
        self.calls = self.hits = 0

    def entry(self, record: SARRecord, captions: Sequence[str]) -> Path:
        """The cache file of ``record``'s ``captions``."""
        key = _digest({"record": record.key, "captions": list(captions)})
        return self.folder / key[:2] / f"{key}.json"

    def __call__(self, record: SARRecord, captions: list[str]) -> list[str]:
        path = self.entry(record, captions)
        if path.is_file():
            self.hits += 1
            return self._cached(path, record, captions)
        if self._rewriter is None:
            cls = load_rewriter_class(self.spec["class_path"])
            self._rewriter = cls(**self.spec["init_args"])
            # what the identity folder holds, for a person looking at the cache
            atomic_write_json(self.folder / "rewriter.json", self.spec, sort_keys=True)
        who = f"rewriter {self.spec['class_path']}"
        rewritten = checked_rewrite(record, captions, self._rewriter.rewrite(record, list(captions)), who)
        self.calls += 1
        atomic_write_json(path, {"record": record.key, "captions": list(captions), "rewritten": rewritten},
                          sort_keys=True)
        return rewritten

    @staticmethod
    def _cached(path: Path, record: SARRecord, captions: list[str]) -> list[str]:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a rewriter cache entry ({err}); delete it to rewrite again") from err
        if not isinstance(entry, dict) or entry.get("record") != record.key or entry.get("captions") != captions:
            raise ValueError(f"{path}: expected the rewrite of {record.key!r}'s captions {captions!r}, found another "
                             "entry; delete it to rewrite again")
        return checked_rewrite(record, captions, entry.get("rewritten"), f"rewriter cache entry {path}")
