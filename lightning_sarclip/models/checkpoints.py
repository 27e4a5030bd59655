"""Load CLIP checkpoints in the shapes they come in from the wild, safely.

SAR / remote-sensing CLIP weights (RemoteCLIP, GeoRSCLIP, SkyCLIP, SARVLM, CAESAR-SARCLIP), OpenAI CLIP and our
own Lightning runs are published as raw ``torch.save`` state_dicts, training checkpoints that wrap one
(``{"state_dict": ...}``, ``{"model": ...}``), DDP / ``torch.compile`` / Lightning-prefixed keys, safetensors
files and OpenAI's TorchScript archives. :func:`read_state_dict` turns any of them into a flat
``{name: tensor}`` mapping and :func:`load_checkpoint` loads that into a model, adapting positional embeddings
to the model's image / text size and reporting every key it could not load.

Security: pickles are only ever read with ``torch.load(weights_only=True)``. A checkpoint whose *weights*
need arbitrary Python objects is rejected. Metadata next to the weights (a Lightning checkpoint's
``hyper_parameters`` holding a ``pathlib.Path`` or an ``Enum``) is tolerated by replacing those objects with
inert placeholders (see :func:`_load_pickle_with_placeholders`); no foreign class is ever imported or run.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import struct
import threading
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "LoadReport", "lightning_hyperparameters", "load_checkpoint", "read_checkpoint",
           "read_state_dict"]

_DEFAULT_LOGGER_NAME = "lightning_sarclip"

# Keys under which training checkpoints keep the model weights, in order of preference: open_clip_train and
# Lightning use "state_dict", several research repos use "model", plain PyTorch tutorials use
# "model_state_dict".
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
# Leading key segments added by wrappers rather than by the architecture: DDP (``module.``), torch.compile
# (``_orig_mod.``) and our LightningModule, which holds the open_clip model as ``self.model``.
_WRAPPER_PREFIXES = ("module", "_orig_mod", "model")
# OpenAI's TorchScript archives store these hyper-parameters as tensors next to the weights; they are not
# parameters of any model (open_clip drops them the same way).
_OPENAI_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
_SUPPORTED_FORMATS = (
    "safetensors, TorchScript archive, torch.save pickle of a state_dict or of a checkpoint dict holding one "
    "under 'state_dict'/'model' (read with weights_only=True)"
)
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_IN_MEMORY = "<in-memory state_dict>"
# How torch's weights_only unpickler names the global it refused ("GLOBAL pathlib.PosixPath was not ...").
_GLOBAL_IN_ERROR = re.compile(r"GLOBAL (\S+)")
# A safetensors file starts with the little-endian u64 length of its JSON header; anything above this is not a
# header length but a different file format.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or loaded; the message names the file and what was expected."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did with each checkpoint entry.

    ``mismatched`` holds ``(key, checkpoint shape, model shape)`` for tensors skipped because of
    ``allow_shape_mismatch=True``; ``resized`` holds ``(key, checkpoint shape, loaded shape)`` for positional
    embeddings adapted to the model's image grid or text context; ``dropped`` lists checkpoint entries that are
    deliberately not weights (OpenAI JIT hyper-parameters, buffers the model recomputes itself).
    """

    path: str | None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    stripped_prefix: str | None = None
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model weight came from the checkpoint and every checkpoint weight was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """Multi-line, human-readable account: counts, and every key that was not loaded as-is."""
        source = self.path if self.path is not None else _IN_MEMORY
        lines = [f"checkpoint {source}: loaded {len(self.loaded)} tensors"]
        if self.stripped_prefix:
            lines.append(f"  stripped key prefix {self.stripped_prefix!r}")
        if self.resized:
            lines.append(f"  resized {len(self.resized)} positional embedding(s):")
            lines += [f"    {k}: {_fmt(old)} -> {_fmt(new)}" for k, old, new in self.resized]
        if self.missing:
            lines.append(f"  missing from checkpoint ({len(self.missing)}), left as initialised:")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected in checkpoint ({len(self.unexpected)}), ignored:")
            lines += [f"    {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append(f"  shape mismatch ({len(self.mismatched)}), skipped:")
            lines += [f"    {k}: checkpoint {_fmt(ck)} vs model {_fmt(mo)}" for k, ck, mo in self.mismatched]
        if self.dropped:
            lines.append(f"  dropped non-weight entries ({len(self.dropped)}): {', '.join(self.dropped)}")
        return "\n".join(lines)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read any supported checkpoint file into a flat tensor state_dict (no model needed).

    Unwraps ``{"state_dict"}`` / ``{"model"}`` checkpoints, drops OpenAI JIT hyper-parameters and strips the
    wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) that every key shares. Without a model to
    compare against the longest shared wrapper prefix is stripped; :func:`load_checkpoint` chooses by match.
    """
    state_dict, _ = _read_checkpoint_file(path)
    prefix = _shared_wrapper_prefixes(state_dict)[-1]
    return _strip_prefix(state_dict, prefix)


def load_checkpoint(
    model: torch.nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | torch.nn.Module,
    *,
    allow_shape_mismatch: bool = False,
    strict: bool = False,
    logger: logging.Logger | None = None,
    source: str | None = None,
) -> LoadReport:
    """Load ``checkpoint`` (a file, an in-memory state_dict / checkpoint dict, or a module) into ``model``.

    Positional embeddings trained at another image size are resized to the model's grid and longer text
    positional embeddings are truncated to the model's context length (both recorded in the report). Any other
    tensor whose shape differs from the model's raises :class:`CheckpointError`, unless
    ``allow_shape_mismatch=True``, which skips and reports it. Missing / unexpected keys are reported (and
    logged at WARNING); with ``strict=True`` they raise instead, before the model is modified. Keys skipped by
    ``allow_shape_mismatch`` are not counted as missing. ``source`` names an in-memory checkpoint in messages
    (e.g. the file :func:`read_checkpoint` read it from).
    """
    log = logger if logger is not None else logging.getLogger(_DEFAULT_LOGGER_NAME)
    path_str: str | None = None
    if isinstance(checkpoint, torch.nn.Module):
        # Covers users handing over the TorchScript object from torch.jit.load (RemoteCLIP issue #8).
        source = f"<in-memory {type(checkpoint).__name__}>"
        raw, dropped = _extract_tensor_mapping(checkpoint.state_dict(), source)
    elif isinstance(checkpoint, Mapping):
        source = source or _IN_MEMORY
        raw, dropped = _extract_tensor_mapping(checkpoint, source)
    elif isinstance(checkpoint, (str, os.PathLike)):
        path_str = source = os.fspath(checkpoint)
        raw, dropped = _read_checkpoint_file(checkpoint)
    else:
        raise CheckpointError(
            f"checkpoint must be a file path, a mapping of names to tensors or a torch.nn.Module, "
            f"got {type(checkpoint).__name__}"
        )
    target = model.state_dict()
    prefix = _best_prefix(raw, target.keys())
    state_dict = _strip_prefix(raw, prefix)

    # Non-persistent buffers (e.g. open_clip's causal ``attn_mask``) are not part of the model's state_dict
    # but TorchScript archives save them; the model recomputes them, so they are neither weights nor surprises.
    for name in _non_persistent_buffers(model):
        if name in state_dict and name not in target:
            del state_dict[name]
            dropped.append(name)

    resized = _adapt_positional_embeddings(state_dict, model, target)

    mismatched = [
        (k, tuple(v.shape), tuple(target[k].shape))
        for k, v in state_dict.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if mismatched and not allow_shape_mismatch:
        details = "\n".join(f"  {k}: checkpoint {_fmt(ck)} vs model {_fmt(mo)}" for k, ck, mo in mismatched)
        raise CheckpointError(
            f"{source}: {len(mismatched)} tensor(s) have a different shape than the model expects "
            f"(checkpoint vs model):\n{details}\n"
            "The checkpoint is probably for another architecture or embedding size. Pass "
            "allow_shape_mismatch=True to skip these tensors and load the rest."
        )
    skipped = {k for k, _, _ in mismatched}
    for key in skipped:
        del state_dict[key]

    if strict:
        missing = sorted(set(target) - set(state_dict) - skipped)
        unexpected = sorted(set(state_dict) - set(target))
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: strict loading failed, model left unchanged:\n"
                + _strict_details(missing, unexpected)
            )

    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: model.load_state_dict failed: {err}") from err
    missing = [k for k in result.missing_keys if k not in skipped]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        # Only reachable when a module's own load hooks consume keys differently from its state_dict().
        raise CheckpointError(f"{source}: strict loading failed:\n" + _strict_details(missing, unexpected))

    unexpected_set = set(unexpected)
    report = LoadReport(
        path=path_str,
        loaded=[k for k in state_dict if k not in unexpected_set],
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        stripped_prefix=prefix or None,
        resized=resized,
        dropped=dropped,
    )
    log.log(logging.INFO if report.complete else logging.WARNING, "%s", report.summary())
    return report


# --------------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object a checkpoint file holds, read once: the one place this package reads a checkpoint file.

    Pickles are read with ``torch.load(weights_only=True)`` (objects outside the allowlist in metadata become
    placeholders; in weights they are refused), safetensors files as a dict of tensors, TorchScript archives as
    their state_dict. Anything else (a missing, empty, truncated or foreign file) is a :class:`CheckpointError`
    naming the file and what was expected, never the advice to turn ``weights_only`` off.
    """
    file = Path(os.fspath(path))
    if not file.exists():
        raise CheckpointError(f"checkpoint file not found: {file}")
    if file.is_dir():
        found = sorted(p.name for p in file.iterdir() if p.suffix in _CHECKPOINT_SUFFIXES)[:10]
        hint = f"; checkpoint-like files inside: {', '.join(found)}" if found else ""
        raise CheckpointError(f"checkpoint path is a directory, expected a checkpoint file: {file}{hint}")
    if not file.is_file():
        raise CheckpointError(f"checkpoint path is not a regular file: {file}")
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            head = fh.read(9)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint file {file}: {err}") from err
    if size == 0:
        raise CheckpointError(
            f"checkpoint file is empty (0 bytes), not a readable checkpoint: {file}; "
            f"expected one of: {_SUPPORTED_FORMATS}"
        )

    if file.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        return _load_safetensors(file)
    if _is_torchscript_zip(file):
        return _load_torchscript(file)
    return _load_pickle(file)


def lightning_hyperparameters(checkpoint: Any, source: str | os.PathLike = "checkpoint") -> dict[str, Any] | None:
    """The hyper-parameters of one of our Lightning checkpoints (a dict naming ``model_name``), else ``None``.

    They build the model, so a value that was not loaded for safety (a pickled object :func:`read_checkpoint`
    replaced by an inert placeholder) is a :class:`CheckpointError` naming ``source`` and the key.
    """
    if not isinstance(checkpoint, Mapping):
        return None
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, _Placeholder):
        raise _weights_only_error(os.fspath(source), [hparams.qualified_name])
    if isinstance(hparams, Mapping) and "model_name" in hparams:
        for key, value in hparams.items():
            found = _placeholder_in(value)
            if found is not None:
                raise CheckpointError(
                    f"{os.fspath(source)}: hyper-parameter {key!r} holds a pickled Python object "
                    f"({found.qualified_name}) that is not loaded, because unpickling arbitrary objects can execute "
                    "code; the model cannot be built from these hyper-parameters"
                )
        return dict(hparams)
    return None


def _placeholder_in(value: Any, depth: int = 0) -> _Placeholder | None:
    if isinstance(value, _Placeholder):
        return value
    if depth < 8 and isinstance(value, Mapping):
        value = list(value.values())
    if depth < 8 and isinstance(value, list | tuple):
        for item in value:
            found = _placeholder_in(item, depth + 1)
            if found is not None:
                return found
    return None


def _read_checkpoint_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read ``path`` into a tensor mapping (keys as stored, prefixes kept) plus the dropped non-weight names."""
    return _extract_tensor_mapping(read_checkpoint(path), os.fspath(path))


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    # Truncated files still count (size is not checked against header_len) so they get a safetensors error.
    return 1 < header_len <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{" and size > 8


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types; all mean "unreadable"
        raise CheckpointError(
            f"checkpoint file is not a readable safetensors file: {file}: {_reason(err)}"
        ) from err


def _is_torchscript_zip(file: Path) -> bool:
    """TorchScript archives are zips with ``<archive>/constants.pkl`` and ``<archive>/code/``; torch.save zips
    have neither (torch uses the same ``constants.pkl`` test internally)."""
    try:
        with zipfile.ZipFile(file) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(
        n.partition("/")[2] == "constants.pkl" or n.partition("/")[2].startswith("code/") for n in names
    )


def _load_torchscript(file: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated for *writing* models; reading existing archives (OpenAI CLIP) is the point.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(file), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - the JIT loader raises RuntimeError/ValueError/C++ errors
        raise CheckpointError(
            f"checkpoint file looks like a TorchScript archive but could not be loaded: {file}: {_reason(err)}"
        ) from err
    return dict(module.state_dict())


def _load_pickle(file: Path) -> Any:
    """``torch.load(weights_only=True)``, with TorchScript and placeholder-for-metadata fallbacks."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript archive.*", category=UserWarning)
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(file)
        if unsafe:
            return _load_pickle_with_placeholders(file, unsafe)
        named = sorted(set(_GLOBAL_IN_ERROR.findall(str(err))))
        if named:
            # Legacy (non-zip) torch.save files cannot be scanned statically; the error names the global.
            raise _weights_only_error(file, named) from err
        raise _unreadable(file, err) from err
    except RuntimeError as err:
        if "TorchScript" in str(err):  # torch's own archive detection disagreed with ours: trust it
            return _load_torchscript(file)
        raise _unreadable(file, err) from err
    except Exception as err:  # noqa: BLE001 - EOFError, ValueError, zip errors...: all mean "not a checkpoint"
        raise _unreadable(file, err) from err


def _unsafe_globals(file: Path) -> list[str]:
    """Globals a torch.save zip needs beyond the weights_only allowlist (static scan, nothing is imported)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    except Exception:  # noqa: BLE001 - legacy format or corrupt zip: no list, the caller reports the error
        return []


class _Placeholder:
    """Inert stand-in for a pickled object whose class we refuse to import.

    It accepts any constructor arguments and state and does nothing with them, so a checkpoint's metadata can
    be unpickled without running code from it. ``qualified_name`` is set on per-global subclasses.
    """

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<not unpickled: {self.qualified_name}>"


_placeholder_classes: dict[str, type[_Placeholder]] = {}
# torch's safe_globals registry is process-global; serialise our use of it so two loads cannot remove each
# other's placeholders mid-unpickle.
_placeholder_lock = threading.Lock()


def _placeholder_for(name: str) -> type[_Placeholder]:
    if name not in _placeholder_classes:
        _placeholder_classes[name] = type(f"Placeholder[{name}]", (_Placeholder,), {"qualified_name": name})
    return _placeholder_classes[name]


def _load_pickle_with_placeholders(file: Path, unsafe: list[str]) -> Any:
    """Re-run the weights_only unpickler with every non-allowlisted global mapped to an inert placeholder.

    Lightning checkpoints are plain dicts/lists/tensors except for user hyper-parameters, which may hold a
    ``Path``, an ``Enum``, a config dataclass... We only need ``state_dict``, so those objects become
    placeholders (torch's ``safe_globals`` accepts ``(replacement, "module.Name")`` pairs). This is still the
    weights_only unpickler (blocked modules stay blocked), and the caller rejects the file if a placeholder
    ends up where the weights are, so a pickled model or custom tensor type still fails. Instances of dict or
    list *subclasses* (``defaultdict``, Lightning's ``AttributeDict``) cannot be stood in for, because the
    unpickler only fills exact dicts and lists; such files are rejected with the conversion advice.
    """
    pairs = [(_placeholder_for(name), name) for name in unsafe]
    try:
        with _placeholder_lock, torch.serialization.safe_globals(pairs):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # e.g. a blocked module (os, sys) or a dict subclass being filled
        raise _weights_only_error(file, unsafe) from err
    except Exception as err:  # noqa: BLE001 - anything else means the file itself is damaged
        raise _unreadable(file, err) from err


def _extract_tensor_mapping(
    obj: Any, source: str, _depth: int = 0
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Find the state_dict in a loaded checkpoint object; returns it with the dropped non-weight entry names."""
    if isinstance(obj, _Placeholder):
        raise _weights_only_error(source, [obj.qualified_name])
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a mapping of parameter names to tensors (a state_dict), or a checkpoint dict "
            f"holding one under {' / '.join(repr(k) for k in _WRAPPER_KEYS)}, but found {type(obj).__name__}"
        )
    if _depth < 2:
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, (Mapping, _Placeholder)):
                return _extract_tensor_mapping(inner, source, _depth + 1)

    dropped = [k for k in _OPENAI_JIT_EXTRAS if k in obj]
    entries = {k: v for k, v in obj.items() if k not in dropped}
    bad = [(k, v) for k, v in entries.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    placeholders = [v.qualified_name for _, v in bad if isinstance(v, _Placeholder)]
    if placeholders:
        raise _weights_only_error(source, sorted(set(placeholders)))
    if bad:
        shown = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise CheckpointError(
            f"{source}: expected a mapping of parameter names to tensors, but {len(bad)} of {len(entries)} "
            f"entries are not str -> tensor: {shown}{more}"
        )
    if not entries:
        raise CheckpointError(f"{source}: the checkpoint holds no tensors (empty state_dict)")
    return dict(entries), dropped


def _unreadable(file: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint file is not a readable checkpoint (corrupt, truncated or another format): {file}; "
        f"tried: {_SUPPORTED_FORMATS}; torch.load said: {_reason(err)}"
    )


def _weights_only_error(source: str | Path, needs: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{source}: the checkpoint holds Python objects that cannot be unpickled safely ({', '.join(needs)}). "
        "Only weights-only checkpoints are accepted (tensors in plain dicts/lists/numbers/strings), because "
        "unpickling arbitrary objects can execute code. To convert a file you trust, load it once with "
        "torch.load(path, weights_only=False) and re-save just the weights, e.g. "
        "torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file(state_dict, "
        "'weights.safetensors')."
    )


# -------------------------------------------------------------------------------------------- key handling


def _shared_wrapper_prefixes(state_dict: Mapping[str, Any]) -> list[str]:
    """Wrapper prefixes that every key shares, shortest first, always starting with ``""``."""
    keys = list(state_dict)
    prefixes = [""]
    while keys:
        first = keys[0].split(".", 1)[0]
        if first not in _WRAPPER_PREFIXES or not all(k.startswith(first + ".") for k in keys):
            break
        keys = [k[len(first) + 1 :] for k in keys]
        prefixes.append(prefixes[-1] + first + ".")
    return prefixes


def _best_prefix(state_dict: Mapping[str, Any], model_keys: Iterable[str]) -> str:
    """The shared wrapper prefix whose removal makes the most keys match the model (longest wins ties).

    Matching against the model instead of always stripping keeps a model whose own keys start with
    ``model.`` (e.g. a LightningModule) loadable from its own checkpoint.
    """
    wanted = set(model_keys)
    candidates = _shared_wrapper_prefixes(state_dict)
    scores = [(sum(k[len(p) :] in wanted for k in state_dict), len(p), p) for p in candidates]
    return max(scores)[2]


def _strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items()} if prefix else dict(state_dict)


def _non_persistent_buffers(model: torch.nn.Module) -> list[str]:
    names = []
    for mod_name, module in model.named_modules():
        for buf in getattr(module, "_non_persistent_buffers_set", ()):
            names.append(f"{mod_name}.{buf}" if mod_name else buf)
    return names


def _adapt_positional_embeddings(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module, target: Mapping[str, torch.Tensor]
) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """Resize image / truncate text positional embeddings in place; returns what was changed.

    Only embeddings whose width matches are touched, so a genuinely different architecture still surfaces as
    a shape mismatch. Keys may sit under a prefix (a CLIP inside a wrapper module): the owning submodule is
    looked up so open_clip's helper sees the CLIP it expects.
    """
    resized = []
    for key, model_value in target.items():
        if key not in state_dict or not key.endswith("positional_embedding"):
            continue
        ckpt_value = state_dict[key]
        old, new = tuple(ckpt_value.shape), tuple(model_value.shape)
        if old == new or ckpt_value.ndim != 2 or model_value.ndim != 2 or old[1] != new[1]:
            continue
        segments = key.split(".")
        if len(segments) >= 2 and segments[-2] == "visual":
            owner_path = ".".join(segments[:-2])
            _resize_image_pos_embed(state_dict, key, model, owner_path)
        elif "visual" not in segments and old[0] > new[0]:
            # Text context shorter than the checkpoint's: positions beyond it can never be used, so keep the
            # first ones unchanged (interpolating would shift every learned position).
            state_dict[key] = ckpt_value[: new[0]].clone()
        if tuple(state_dict[key].shape) == new:
            resized.append((key, old, new))
        else:
            state_dict[key] = ckpt_value  # could not adapt: leave it for the shape-mismatch check
    return resized


def _resize_image_pos_embed(
    state_dict: dict[str, torch.Tensor], key: str, model: torch.nn.Module, owner_path: str
) -> None:
    """Interpolate a ViT positional embedding to the model's patch grid with open_clip's own helper."""
    from open_clip.model import resize_pos_embed

    try:
        owner = model.get_submodule(owner_path) if owner_path else model
    except AttributeError:
        return
    if not hasattr(getattr(owner, "visual", None), "grid_size"):
        return
    original = state_dict[key]
    # Interpolate in float32: OpenAI checkpoints are fp16, which CPU bicubic kernels handle poorly or not at all.
    scratch = {"visual.positional_embedding": original.float()}
    try:
        resize_pos_embed(scratch, owner)
    except (RuntimeError, ValueError) as err:  # e.g. a token count that is not a square grid + class token
        logging.getLogger(_DEFAULT_LOGGER_NAME).debug("could not resize %s: %s", key, err)
        return
    state_dict[key] = scratch["visual.positional_embedding"].to(original.dtype)


# ------------------------------------------------------------------------------------------------- helpers


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _reason(err: BaseException) -> str:
    """The informative part of a loader error, without torch's boilerplate advice.

    torch wraps unpickler errors in a paragraph suggesting ``weights_only=False`` (advice we must not pass
    on) and appends a paragraph to miniz errors; keep the actual cause.
    """
    text = str(err).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip().split("\n\n")[0]
    line = text.splitlines()[0] if text else ""
    if len(line) > 160 and ". " in line:
        line = line.split(". ", 1)[0] + "."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _strict_details(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(
            f"  missing from checkpoint ({len(missing)}):\n" + "\n".join(f"    {k}" for k in missing)
        )
    if unexpected:
        parts.append(
            f"  unexpected in checkpoint ({len(unexpected)}):\n" + "\n".join(f"    {k}" for k in unexpected)
        )
    return "\n".join(parts)
