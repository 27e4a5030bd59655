"""Build an open_clip model for SAR: architecture by name, weights from a tag, a file or the Hugging Face hub.

``create_model`` is the one entry point, used by the Lightning module, the evaluation commands and library users::

    from lightning_sarclip.models import create_model
    model, train_transform, val_transform, tokenizer = create_model(
        "ViT-B-32", pretrained="/ckpts/RemoteCLIP-ViT-B-32.pt", in_chans=2)

Where ``pretrained`` may be

* ``None``: random initialisation (what the quickstart and tests use: nothing is downloaded);
* an open_clip tag for that architecture (``"openai"``, ``"laion2b_s34b_b79k"`` ...), fetched by open_clip;
* a local checkpoint in any format :mod:`lightning_sarclip.models.checkpoints` reads (raw state_dict,
  ``{"state_dict": ...}``, ``{"model": ...}``, DDP ``module.`` prefix, safetensors, TorchScript, our ``.ckpt``),
  or a folder holding ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``;
* ``"hf-hub:org/repo"`` or ``"hf-hub:org/repo/file.pt"``: a file on the hub, read with the same loader
  (RemoteCLIP and GeoRSCLIP publish raw ``.pt`` state_dicts this way).

``model_name`` may itself carry open_clip's schemas (``"hf-hub:org/repo"``, ``"local-dir:/path"``), in which case
config and weights both come from there and ``pretrained`` must be left empty.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import torch
from torch import nn

from lightning_sarclip.models.checkpoints import CheckpointError, load_checkpoint
from lightning_sarclip.models.sar_stem import (
    SARInputAdapter,
    _as_three,
    fold_patch_embedding,
    resolve_channel_mode,
)
from lightning_sarclip.models.transforms import SARImageTransform

log = logging.getLogger("lightning_sarclip")

_SCHEMAS = ("hf-hub:", "local-dir:")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl", ".tar")
_FOLDER_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class CreatedModel(NamedTuple):
    """What :func:`create_model` returns; unpacks as ``model, train_transform, val_transform, tokenizer``."""

    model: nn.Module
    train_transform: Callable[[Any], torch.Tensor]
    val_transform: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]


def check_architecture(model_name: str) -> None:
    """Fail early, with suggestions, on an architecture open_clip does not know."""
    if model_name.startswith(_SCHEMAS):
        return
    known = open_clip.list_models()
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"model_name: unknown open_clip architecture {model_name!r}.{hint} "
            "See open_clip.list_models(), or register your own JSON config with "
            "lightning_sarclip.models.register_model_configs(path)."
        )


def resolve_pretrained(model_name: str, pretrained: str | os.PathLike | None) -> tuple[str, str] | None:
    """Classify ``pretrained`` as ``("tag", name)``, ``("file", path)`` or ``("hf", spec)``; ``None`` = random init.

    Everything is decided before any weights are touched, so a typo fails before training starts.
    """
    if pretrained is None or str(pretrained).strip().lower() in ("", "none", "null"):
        return None
    spec = str(pretrained)
    if model_name.startswith(_SCHEMAS):
        raise ValueError(
            f"pretrained={spec!r} given together with model_name={model_name!r}: a schema model name already "
            "names its weights; leave pretrained empty"
        )
    if spec.startswith("hf-hub:"):
        return ("hf", spec[len("hf-hub:") :])
    path = Path(spec).expanduser()
    if path.is_file():
        return ("file", str(path))
    if path.is_dir():
        for name in _FOLDER_WEIGHT_NAMES:
            if (path / name).is_file():
                return ("file", str(path / name))
        raise CheckpointError(
            f"pretrained folder {path} holds none of {list(_FOLDER_WEIGHT_NAMES)}; point at the weight file itself"
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if spec in tags:
        return ("tag", spec)
    looks_like_path = os.sep in spec or "/" in spec or spec.lower().endswith(_CHECKPOINT_SUFFIXES)
    if looks_like_path:
        raise CheckpointError(f"checkpoint file not found: {path} (pretrained for model {model_name!r})")
    raise ValueError(
        f"pretrained: {spec!r} is neither an existing checkpoint file nor an open_clip tag for {model_name!r}. "
        f"Known tags for this architecture: {sorted(tags) or 'none'}"
    )


def _download_from_hub(spec: str, cache_dir: str | None) -> str:
    """Fetch ``org/repo`` (open_clip's default weight names) or ``org/repo/path/to/file`` from the hub."""
    from huggingface_hub import hf_hub_download

    parts = spec.split("/")
    if len(parts) < 2:
        raise ValueError(f"pretrained: 'hf-hub:{spec}' is not 'hf-hub:org/repo' or 'hf-hub:org/repo/file'")
    repo_id = "/".join(parts[:2])
    filenames = ["/".join(parts[2:])] if len(parts) > 2 else list(_FOLDER_WEIGHT_NAMES)
    errors = []
    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
        except Exception as err:  # noqa: BLE001 - every hub failure mode is reported below, by file
            errors.append(f"{filename}: {type(err).__name__}: {err}")
    raise CheckpointError(
        f"could not fetch weights from hf-hub:{repo_id} (offline? HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}); "
        + "; ".join(errors)
    )


def preprocess_stats(model: nn.Module) -> tuple[list[float], list[float]]:
    """The normalisation mean/std the checkpoint was trained with (open_clip's ``preprocess_cfg``)."""
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
    return list(mean), list(std)


def image_size_of(model: nn.Module) -> int:
    size = getattr(model.visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    if size is None:
        size = (getattr(model.visual, "preprocess_cfg", None) or {}).get("size", 224)
        size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size)


_RANDOM_INIT_NOTE = "No pretrained weights loaded for model"
_WEIGHTS_FOLLOW: contextvars.ContextVar[bool] = contextvars.ContextVar("weights_follow", default=False)
#: what a pretrained tag's config says about preprocessing (open_clip's PreprocessCfg fields)
_TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _drop_random_init_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_RANDOM_INIT_NOTE)


@contextlib.contextmanager
def _quiet_random_init_note() -> Iterator[None]:
    root = logging.getLogger()  # open_clip logs through the root logger
    root.addFilter(_drop_random_init_note)
    try:
        yield
    finally:
        root.removeFilter(_drop_random_init_note)


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Build models whose trained weights are loaded right after (a resume, ``--ckpt_path``, our ``.ckpt``).

    Inside this block :func:`create_model` builds the architecture that ``pretrained`` *was*, without reading or
    downloading its weights: a pretrained tag still decides the activation (OpenAI's tags use QuickGELU) and the
    preprocessing statistics, exactly as when the run was trained, but nothing is fetched (so an offline machine
    can load a checkpoint fine-tuned from ``openai``, and a file named at training time need not exist here).
    open_clip's "No pretrained weights loaded ... Model initialized randomly" note is dropped too.
    """
    token = _WEIGHTS_FOLLOW.set(True)
    try:
        with _quiet_random_init_note():
            yield
    finally:
        _WEIGHTS_FOLLOW.reset(token)


def tag_config(model_name: str, pretrained: str | os.PathLike | None) -> dict[str, Any]:
    """open_clip's config of ``pretrained`` when it is a tag of ``model_name`` (``{}`` otherwise): the weights'
    activation (``quick_gelu``) and preprocessing (``mean``, ``std`` ...), without downloading anything."""
    if not pretrained or str(pretrained) not in open_clip.list_pretrained_tags_by_model(model_name):
        return {}
    return dict(open_clip.get_pretrained_cfg(model_name, str(pretrained)) or {})


_STATS_WARNED: set[tuple] = set()


def warn_if_stats_differ(
    model_name: str,
    pretrained: str | os.PathLike | None,
    own: tuple[Sequence[float], Sequence[float]],
    explicit: tuple[Sequence[float] | None, Sequence[float] | None],
) -> bool:
    """Warn (once per process and setting) when an explicit ``image_mean``/``image_std`` differs from the statistics
    the pretrained weights were trained with: the pretrained features then see shifted inputs, which is rarely
    meant (a config written for random-init training, such as the quickstart's, reused with a checkpoint).
    Returns whether it differs."""
    differ = []
    for name, own_values, given in zip(("image_mean", "image_std"), own, explicit, strict=True):
        if given is None:
            continue
        a, b = _as_three(list(given), name), _as_three(list(own_values), name)
        if not torch.allclose(a, b, atol=1e-3):
            differ.append(f"{name}={[round(v, 4) for v in a.tolist()]} (the weights': "
                          f"{[round(v, 4) for v in b.tolist()]})")
    key = (model_name, str(pretrained), tuple(differ))
    if differ and key not in _STATS_WARNED:
        _STATS_WARNED.add(key)
        log.warning("%s with pretrained %r was trained on inputs normalised otherwise: %s. Fine-tuning from these "
                    "weights usually keeps their statistics: set image_mean/image_std to null (see "
                    "experiments/finetune/), or keep them if the change is meant.", model_name, str(pretrained),
                    "; ".join(differ))
    return bool(differ)


def has_weights(model_name: str, pretrained: str | os.PathLike | None) -> bool:
    """Whether ``model_name`` + ``pretrained`` name trained weights (a tag, a file, ``hf-hub:``/``local-dir:``
    models that carry their own), rather than a randomly initialised architecture."""
    return pretrained is not None or str(model_name).startswith(("hf-hub:", "local-dir:"))


def create_model(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    in_chans: int = 3,
    channel_mode: str = "auto",
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    allow_shape_mismatch: bool = False,
    force_quick_gelu: bool = False,
    cache_dir: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
) -> CreatedModel:
    """Create an open_clip model, load ``pretrained`` weights, and adapt it to ``in_chans``-channel SAR input.

    Returns ``(model, train_transform, val_transform, tokenizer)``. The transforms take a SAR image scaled to
    [0, 1] (numpy ``HxW``/``HxWxC``, tensor ``CxHxW`` or PIL) and return the normalised tensor the model eats.
    Use :func:`build_input_adapter` for the same mapping on already-batched tensors.

    A pretrained tag decides the activation (``quick_gelu`` of OpenAI's tags is switched on for them), and an
    explicit ``image_mean``/``image_std`` that differs from the loaded weights' statistics is warned about once.
    """
    check_architecture(model_name)
    channel_mode = resolve_channel_mode(in_chans, channel_mode)
    preprocess: dict[str, Any] | None = None
    if _WEIGHTS_FOLLOW.get():  # the architecture the weights were trained as; the weights come later
        source = None
        built_as = tag_config(model_name, pretrained)
        force_quick_gelu = force_quick_gelu or bool(built_as.get("quick_gelu", False))
        preprocess = {key: built_as[key] for key in _TAG_PREPROCESS_KEYS if built_as.get(key) is not None} or None
    else:
        source = resolve_pretrained(model_name, pretrained)
        # The tag decides the activation its weights were trained with (OpenAI's use QuickGELU): open_clip only
        # warns about a mismatch, and a GELU tower on QuickGELU weights is a silently worse model.
        force_quick_gelu = force_quick_gelu or bool(tag_config(model_name, pretrained).get("quick_gelu", False))
    tag = source[1] if source and source[0] == "tag" else None
    weights_later = source is not None and source[0] in ("file", "hf")
    with _quiet_random_init_note() if weights_later else contextlib.nullcontext():
        model = open_clip.create_model(
            model_name,
            pretrained=tag,
            force_image_size=image_size,
            force_quick_gelu=force_quick_gelu,
            force_preprocess_cfg=preprocess,
            cache_dir=cache_dir,
            precision=precision,
            device=device,
        )
    if source and source[0] in ("file", "hf"):
        path = source[1] if source[0] == "file" else _download_from_hub(source[1], cache_dir)
        load_checkpoint(model, path, allow_shape_mismatch=allow_shape_mismatch)
    if channel_mode == "fold":
        fold_patch_embedding(model.visual, in_chans)
    mean, std = preprocess_stats(model)
    if source is not None:  # weights loaded here; under weights_follow the run's own choice is being restored
        warn_if_stats_differ(model_name, pretrained, (mean, std), (image_mean, image_std))
    mean = list(image_mean) if image_mean is not None else mean
    std = list(image_std) if image_std is not None else std
    size = image_size or image_size_of(model)
    tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    common = dict(image_size=size, in_chans=in_chans, channel_mode=channel_mode, mean=mean, std=std)
    return CreatedModel(
        model=model,
        train_transform=SARImageTransform(train=True, **common),
        val_transform=SARImageTransform(train=False, **common),
        tokenizer=tokenizer,
    )


def build_input_adapter(
    model: nn.Module,
    in_chans: int,
    channel_mode: str = "auto",
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> SARInputAdapter:
    """The on-device twin of the transforms: [0, 1] SAR batch -> normalised tower input."""
    mean, std = preprocess_stats(model)
    return SARInputAdapter(
        in_chans=in_chans,
        channel_mode=channel_mode,
        mean=list(image_mean) if image_mean is not None else mean,
        std=list(image_std) if image_std is not None else std,
    )
