"""``python -m lightning_sarclip export --ckpt run.ckpt --out folder``: a trained run as a stock open_clip model folder.

The folder is what open_clip's ``local-dir:`` schema (and, once uploaded, ``hf-hub:``) loads with no code from
this package::

    open_clip_config.json          {"model_cfg": <architecture config, image_size as trained>,
                                    "preprocess_cfg": {"mean", "std", "size", "interpolation", "resize_mode", "mode"}}
    open_clip_model.safetensors    the open_clip model's state_dict (our module's ``model.`` prefix stripped)
    README.md                      model card: architecture, initialisation, data, recipe, SAR input convention,
                                   results rows of this checkpoint, licence note, how to load

``preprocess_cfg`` holds the normalisation the model was trained with (the module's ``image_mean``/``image_std``
or, when those were left empty, the statistics of its initialisation). It applies to 3-channel RGB input: SAR
must first be scaled to [0, 1] and mapped to RGB exactly as during training (single-pol replicated to three
channels, dual-pol as ``(VV, VH, (VV + VH) / 2)``); the card spells this out. ``channel_mode: fold`` models are
refused: their patch embedding takes 1 or 2 channels and stock open_clip architectures cannot hold it.

The files are first written to a staging folder inside ``out``, loaded back with stock open_clip (strict
weights), and only then moved into place, each by its own atomic rename
(:func:`lightning_sarclip.utils.atomic.staged_folder`; files get the permissions a plain ``open`` gives).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sarclip.utils.atomic import staged_folder
from lightning_sarclip.utils.run_dir import RunDirectory

if TYPE_CHECKING:  # torch and the checkpoint reader load only when a checkpoint is read, not for --help
    import torch

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
CARD_NAME = "README.md"
_PREFIX = "model."


class ExportError(ValueError):
    """The checkpoint cannot be exported as a stock open_clip model (the message says why)."""


# ------------------------------------------------------------------------------------------------ checkpoint
def read_lightning_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(hyper_parameters, open_clip state_dict)`` of one of our ``.ckpt`` files (weights-only unpickling)."""
    from lightning_sarclip.models.checkpoints import lightning_hyperparameters, read_checkpoint

    checkpoint = read_checkpoint(path)
    hparams = lightning_hyperparameters(checkpoint, path) or {}
    if "model_name" not in hparams or not isinstance(checkpoint.get("state_dict"), dict):
        raise ExportError(f"{path}: not a lightning_sarclip checkpoint (no model_name hyper-parameter / state_dict)")
    state = {k[len(_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(_PREFIX)}
    if not state:
        raise ExportError(f"{path}: the state_dict holds no '{_PREFIX}*' weights")
    return hparams, state


def architecture_config(model_name: str) -> dict[str, Any]:
    """open_clip's model config for ``model_name`` (registered name, ``local-dir:`` or cached ``hf-hub:``)."""
    import open_clip

    import lightning_sarclip.models  # noqa: F401  (registers our architectures)

    if model_name.startswith("local-dir:"):
        return json.loads((Path(model_name[len("local-dir:"):]) / CONFIG_NAME).read_text())["model_cfg"]
    if model_name.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config

        return _get_hf_config(model_name[len("hf-hub:"):])["model_cfg"]
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ExportError(f"unknown open_clip architecture {model_name!r}")
    return cfg


def _three(values: Sequence[float]) -> list[float]:
    values = [float(v) for v in values]
    return values * 3 if len(values) == 1 else values


def training_normalisation(hparams: dict[str, Any]) -> tuple[list[float], list[float], str]:
    """``(mean, std, where from)``: the module's statistics, else those of its open_clip tag, else open_clip's."""
    import open_clip

    from lightning_sarclip.models.factory import tag_config

    mean, std = hparams.get("image_mean"), hparams.get("image_std")
    source = "module image_mean/image_std"
    default_mean, default_std = list(open_clip.OPENAI_DATASET_MEAN), list(open_clip.OPENAI_DATASET_STD)
    if mean is None or std is None:
        pretrained = hparams.get("pretrained")
        tag_cfg = tag_config(hparams["model_name"], pretrained)
        default_mean = list(tag_cfg.get("mean", default_mean))
        default_std = list(tag_cfg.get("std", default_std))
        source = f"statistics of open_clip tag {pretrained!r}" if tag_cfg else "open_clip default (OpenAI CLIP)"
    return _three(mean if mean is not None else default_mean), _three(std if std is not None else default_std), source


def open_clip_config(hparams: dict[str, Any]) -> dict[str, Any]:
    """The ``open_clip_config.json`` content for a run with these hyper-parameters."""
    from lightning_sarclip.models.factory import tag_config

    model_cfg = json.loads(json.dumps(architecture_config(hparams["model_name"])))
    if hparams.get("image_size"):
        model_cfg.setdefault("vision_cfg", {})["image_size"] = int(hparams["image_size"])
    # QuickGELU when the run asked for it or when its starting tag was built with it (OpenAI's): open_clip turns it
    # on for such tags at training time, and a stock GELU model would give other embeddings from the same weights.
    if hparams.get("force_quick_gelu") or tag_config(hparams["model_name"], hparams.get("pretrained")).get("quick_gelu"):
        model_cfg["quick_gelu"] = True
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    mean, std, _ = training_normalisation(hparams)
    return {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": mean,
            "std": std,
            "size": size,
            # Our SAR transforms squash to a square with bilinear (antialiased) resampling.
            "interpolation": "bilinear",
            "resize_mode": "squash",
            "mode": "RGB",
        },
    }


def refuse_fold(hparams: dict[str, Any]) -> None:
    """``fold`` runs have a 1/2-channel patch embedding that no stock open_clip architecture can hold."""
    if hparams.get("channel_mode") == "fold":
        raise ExportError(
            "cannot export a channel_mode='fold' model: its patch embedding takes "
            f"{hparams.get('in_chans')} channel(s) instead of RGB, which stock open_clip cannot load. "
            "Train with channel_mode 'replicate' / 'vv_vh_mean' (or 'auto') to export."
        )


def verify_folder(folder: Path) -> None:
    """Load ``folder`` with stock open_clip (``local-dir:``, strict weights) before it replaces anything."""
    import open_clip

    try:
        open_clip.create_model(f"local-dir:{folder}", require_pretrained=True)
    except Exception as err:  # noqa: BLE001 - any failure means the export would be unusable
        raise ExportError(f"stock open_clip cannot load the exported weights ({type(err).__name__}: {err})") from err


# ------------------------------------------------------------------------------------------------ model card
def run_directory(ckpt: Path) -> Path:
    """``runs/<name>`` for ``runs/<name>/checkpoints/x.ckpt``; the checkpoint's folder otherwise."""
    run = RunDirectory.of_checkpoint(ckpt)
    return run.path if run is not None else ckpt.parent


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's saved ``config.yaml`` (LightningCLI writes it there), or ``{}``."""
    path = RunDirectory(run_dir).config
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def matching_results(paths: Sequence[Path], ckpt_hash: str | None) -> list[dict[str, Any]]:
    """Rows of the given ``results.jsonl`` files whose ``checkpoint_hash`` is this checkpoint's (deduplicated)."""
    from lightning_sarclip.eval.results import read_results

    rows, seen = [], set()
    for path in paths:
        if not path.is_file() or ckpt_hash is None:
            continue
        for row in read_results(path):
            key = (row.get("dataset"), row.get("split"), row.get("task"), row.get("metric"), row.get("time"))
            if row.get("checkpoint_hash") == ckpt_hash and key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def _results_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No evaluation results recorded for this checkpoint (no `results.jsonl` rows with its hash)."
    lines = ["| dataset | split | task | metric | value | templates |", "|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (str(r.get("dataset")), str(r.get("split")), str(r.get("task")),
                                          str(r.get("metric")))):
        value = row.get("value")
        shown = "n/a" if value is None else f"{100 * float(value):.2f}"
        templates = row.get("templates")
        templates = f"{len(templates)} prompts" if isinstance(templates, list) else (templates or "")
        lines.append(f"| {row.get('dataset')} | {row.get('split')} | {row.get('task')} | {row.get('metric')} | "
                     f"{shown} | {templates} |")
    return "\n".join(lines) + "\n\nValues are percentages (accuracies, recalls)."


def _data_section(config: dict[str, Any]) -> str:
    data = config.get("data") or {}
    if not data:
        return "Not recorded (no `config.yaml` next to the checkpoint's run directory)."
    init = data.get("init_args") or {}
    lines = [f"- datamodule: `{data.get('class_path')}`"]
    for key, value in init.items():
        if value is not None and key not in ("num_workers", "pin_memory"):
            lines.append(f"- {key}: `{json.dumps(value)}`")
    return "\n".join(lines)


def _recipe_section(hparams: dict[str, Any], config: dict[str, Any]) -> str:
    trainer = config.get("trainer") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    unfreeze = hparams.get("unfreeze")
    lines = [
        f"- optimiser: AdamW, lr `{hparams.get('lr')}`, weight decay `{hparams.get('weight_decay')}`, "
        f"betas `{hparams.get('betas')}`, warmup `{hparams.get('warmup_steps')}` steps then cosine "
        f"(min ratio `{hparams.get('min_lr_ratio')}`)",
        f"- epochs: `{trainer.get('max_epochs', 'not recorded')}`, batch size: `{data.get('batch_size', 'not recorded')}`"
        f" per device x `{trainer.get('devices', 'not recorded')}` device(s), precision "
        f"`{trainer.get('precision', 'not recorded')}`",
        f"- loss: symmetric InfoNCE, local_loss `{hparams.get('local_loss')}`",
        f"- unfreezing: {'all parameters trained from the start' if not unfreeze else json.dumps(unfreeze)}",
    ]
    if hparams.get("layer_decay"):
        lines.append(f"- layer-wise lr decay: `{hparams['layer_decay']}`")
    return "\n".join(lines)


def model_card(
    hparams: dict[str, Any],
    oc_config: dict[str, Any],
    run_config: dict[str, Any],
    results: list[dict[str, Any]],
    ckpt: Path,
    ckpt_hash: str | None,
    extra: str | None = None,
) -> str:
    """The README.md of the exported folder."""
    from lightning_sarclip.models.sar_stem import resolve_channel_mode

    in_chans = int(hparams.get("in_chans", 1))
    mode = resolve_channel_mode(in_chans, hparams.get("channel_mode", "auto"))
    pre = oc_config["preprocess_cfg"]
    _, _, norm_source = training_normalisation(hparams)
    size = pre["size"]
    mapping = {
        "replicate": "single-pol amplitude `x` -> RGB `(x, x, x)`",
        "vv_vh_mean": "dual-pol `(VV, VH)` -> RGB `(VV, VH, (VV + VH) / 2)`",
        "identity": "three channels used as they are",
    }[mode]
    feed = {
        "replicate": "x = sar[None].expand(3, -1, -1)  # (1, H, W) in [0, 1] -> (3, H, W)",
        "vv_vh_mean": "x = torch.cat([sar, sar.mean(0, keepdim=True)])  # (2, H, W) in [0, 1] -> (3, H, W)",
        "identity": "x = sar  # (3, H, W) in [0, 1]",
    }[mode]
    pretrained = hparams.get("pretrained") or "none (random initialisation)"
    name = run_config.get("name") or run_directory(ckpt).name
    sections = [
        f"# {name}: SAR CLIP model (open_clip format)\n\n"
        f"Exported by `lightning_sarclip export` from `{ckpt.name}` (SHA-256 prefix `{ckpt_hash}`).",
        f"## Architecture\n\nopen_clip `{hparams['model_name']}`, image size {size} (as trained), embedding dim "
        f"{oc_config['model_cfg'].get('embed_dim')}, text context length "
        f"{oc_config['model_cfg'].get('text_cfg', {}).get('context_length')}. "
        f"`open_clip_config.json` holds the full `model_cfg`.",
        f"## Initialisation\n\n`pretrained`: `{pretrained}`.",
        f"## Training data\n\n{_data_section(run_config)}",
        f"## Recipe\n\n{_recipe_section(hparams, run_config)}",
        "## SAR input convention\n\n"
        f"- trained on `in_chans = {in_chans}` SAR channel(s), channel mode `{mode}`: {mapping}\n"
        "- SAR pixels are first scaled to [0, 1] (8/16-bit chips divided by their maximum; radiometric data "
        "through a dB window or a per-image percentile stretch, as the data source's policy says), resized to "
        f"{size} x {size}, then mapped to RGB as above, and only then normalised with `preprocess_cfg` "
        f"(mean `{pre['mean']}`, std `{pre['std']}`; {norm_source}).\n"
        "- open_clip's own `preprocess` transform (squash resize, bilinear, then the normalisation above) fits "
        "8-bit single-pol chips: a greyscale PNG/JPEG opened with `.convert('RGB')` is the replicated image "
        "(it resizes the 8-bit image rather than the [0, 1] floats, a rounding-level difference). For dual-pol "
        "or float data, build the RGB tensor yourself:\n\n"
        "```python\nimport json, torch\n"
        "cfg = json.load(open('open_clip_config.json'))['preprocess_cfg']\n"
        f"{feed}\n"
        "mean, std = torch.tensor(cfg['mean'])[:, None, None], torch.tensor(cfg['std'])[:, None, None]\n"
        "features = model.encode_image(((x - mean) / std)[None], normalize=True)\n```",
        f"## Results\n\n{_results_table(results)}",
        "## Licence\n\nThe weights inherit the terms of the initialisation checkpoint and of every training "
        "data set listed above (several SAR data sets are for research use only); check those before any "
        "redistribution or commercial use. The export tool adds no terms of its own.",
        "## How to load\n\n```python\nimport open_clip\n"
        "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:/path/to/this/folder')\n"
        "tokenizer = open_clip.get_tokenizer('local-dir:/path/to/this/folder')\n"
        "# the same folder uploaded as a Hugging Face repo: open_clip.create_model_and_transforms('hf-hub:org/repo')\n"
        "```\n\nWith this package: `lightning_sarclip.models.loading.load_model('local-dir:/path/to/this/folder', "
        f"in_chans={in_chans})`.",
    ]
    if extra:
        sections.append(extra.strip())
    return "\n\n".join(sections) + "\n"


# ------------------------------------------------------------------------------------------------ export
def export_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    results: Sequence[str | os.PathLike] = (),
    card_extra: str | None = None,
) -> dict[str, Path]:
    """Write the open_clip folder for ``ckpt`` into ``out``; returns the written files by role."""
    from safetensors.torch import save_file

    from lightning_sarclip.models.loading import checkpoint_hash

    ckpt = Path(ckpt)
    hparams, state = read_lightning_checkpoint(ckpt)
    refuse_fold(hparams)
    oc_config = open_clip_config(hparams)
    run_dir = run_directory(ckpt)
    ckpt_hash = checkpoint_hash(ckpt)
    # Where evaluate writes by default (runs/eval/<suite>/results.jsonl) is searched too; rows match by hash.
    result_paths = [Path(p) for p in results] + [run_dir / "results.jsonl", run_dir.parent / "results.jsonl",
                                                 *sorted(run_dir.parent.glob("eval/*/results.jsonl"))]
    rows = matching_results(result_paths, ckpt_hash)
    card = model_card(hparams, oc_config, read_run_config(run_dir), rows, ckpt, ckpt_hash, card_extra)

    out = Path(out)
    roles = {"weights": WEIGHTS_NAME, "config": CONFIG_NAME, "card": CARD_NAME}
    # Each file is moved into place only after the whole folder loaded back; the staging folder never stays.
    with staged_folder(out, names=tuple(roles.values())) as staging:
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(staging / WEIGHTS_NAME),
                  metadata={"format": "pt", "checkpoint_hash": str(ckpt_hash)})
        (staging / CONFIG_NAME).write_text(json.dumps(oc_config, indent=2) + "\n", encoding="utf-8")
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        verify_folder(staging)
    return {role: out / name for role, name in roles.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_sarclip export",
        description="Export a lightning_sarclip checkpoint as an open_clip folder (local-dir: / hf-hub: layout).",
    )
    parser.add_argument("--ckpt", required=True, help="our Lightning .ckpt (runs/<name>/checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--results", action="append", default=[],
                        help="results.jsonl to take this checkpoint's rows from (repeatable; the run directory's, "
                             "its parent's and evaluate's default <parent>/eval/<suite>/ are always searched)")
    parser.add_argument("--model-card-extra", default=None, help="Markdown file appended to the model card")
    args = parser.parse_args(argv)
    extra = Path(args.model_card_extra).read_text(encoding="utf-8") if args.model_card_extra else None
    try:
        files = export_checkpoint(args.ckpt, args.out, results=args.results, card_extra=extra)
    except ExportError as err:
        raise SystemExit(f"export: {err}") from err
    print(f"exported {args.ckpt} -> {Path(args.out)} ({', '.join(p.name for p in files.values())})")
