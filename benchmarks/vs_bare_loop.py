"""Real SAR chips: our ``fit`` against a bare open_clip training loop, at one wall-clock budget, in one run.

Both arms start from random initialisation and train on the same real chips (the source's ``train`` split, e.g.
MSTAR at 17 deg) for the same budget of training seconds, then are scored the same way: zero-shot top-1 and mean
per-class accuracy on the held-out split (MSTAR at 15 deg), which neither arm sees while training and nothing is
chosen on. Every ``budget / curve_points`` seconds of training each arm leaves a snapshot; the snapshots are scored
after training, so evaluation costs no arm any training time, and give the learning curve (accuracy against
seconds, saved as a PNG).

* **ours**: ``python -m lightning_sarclip fit --config <recipe>`` in a subprocess, exactly as a user runs it, with
  the data pointed at ``--root``/``--source``, validation off (the held-out chips are for the final score only),
  and :class:`BudgetSnapshots` added to the callbacks, which stops the run at the budget (the recipe's own
  ``max_epochs`` is what it was measured to fit in it). Snapshots are scored through ``evaluate``'s own code
  (:func:`lightning_sarclip.eval.evaluate.run`) with the recipe's zero-shot settings (templates, class names).
* **bare**: the loop a researcher writes in 60 lines (:func:`bare_loop`): the chips decoded once into memory (with
  the source's own conversion, so the arms differ in training only), open_clip's ``create_model`` and
  ``ClipLoss``, AdamW with a warm-up and cosine decay laid over the time budget, horizontal flips, one caption per
  image from four class templates; it is scored with those templates and the raw class names. It trains the
  recipe's architecture at the recipe's peak learning rate unless told otherwise (``--bare-model``,
  ``--bare-lr``), so the two *loops* are compared, not two models.

The last line is one JSON object: ``ours_top1``, ``bare_top1``, ``ratio`` (ours / bare), ``ours_seconds``,
``bare_seconds``, mean per-class accuracies and both curves. ``--unit steps`` gives both arms a budget of
optimizer steps instead (``ours_steps``, ``bare_steps``): per-step learning, which does not depend on how busy the
machine is, so such runs may share it (``--threads``).

    python benchmarks/vs_bare_loop.py --root <MSTAR root>   # any MSTAR layout of data_cards/mstar.md
    python benchmarks/vs_bare_loop.py --root <root> --source class_folder --budget 120 --arms ours
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "experiments" / "real" / "mstar_cpu.yaml"
#: train/val/test shares for a source that ships no splits (SourceDataModule's split_fractions)
MADE_SPLIT = (0.8, 0.0, 0.2)
#: the bare loop's captions and prompts (a researcher's usual four)
BARE_TEMPLATES = ("a SAR image of a {}.", "a radar image of a {}.", "a SAR chip of a {}.", "a military vehicle: {}.")


class BudgetSnapshots(pl.Callback):
    """Stops a run after ``budget`` units of training and leaves a checkpoint every ``every`` units and at the end,
    as ``<out>/t<progress>.ckpt``: the benchmark's learning curve of ``fit``.

    The unit is ``seconds`` of training (from the first batch; the time spent writing these snapshots excluded, as
    in the bare loop; everything else ``fit`` does, its own checkpoints included, counts) or optimizer ``steps``
    (for per-step comparisons that do not depend on how busy the machine is)."""

    def __init__(self, out: str, every: float, budget: float, unit: str = "seconds") -> None:
        if unit not in ("seconds", "steps"):
            raise ValueError(f"BudgetSnapshots unit: expected 'seconds' or 'steps', got {unit!r}")
        self.out, self.every, self.budget, self.unit = Path(out), float(every), float(budget), unit
        self.started = 0.0
        self.paused = 0.0
        self.next_mark = self.every

    def progress(self, trainer: pl.Trainer) -> float:
        if self.unit == "steps":
            return float(trainer.global_step)
        return time.perf_counter() - self.started - self.paused

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()

    def _save(self, trainer: pl.Trainer, progress: float) -> None:
        before = time.perf_counter()
        trainer.save_checkpoint(self.out / f"t{progress:08.1f}.ckpt", weights_only=True)
        self.paused += time.perf_counter() - before

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        progress = self.progress(trainer)
        if progress >= self.budget:
            trainer.should_stop = True  # the end-of-training snapshot follows in on_train_end
            return
        if progress >= self.next_mark:
            self._save(trainer, progress)
            while self.next_mark <= progress:
                self.next_mark += self.every

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self.started - self.paused
        self._save(trainer, self.progress(trainer))
        (self.out / "progress.json").write_text(json.dumps({"steps": trainer.global_step, "seconds": seconds}))


# ------------------------------------------------------------------------------------------------ ours
def run_ours(args: argparse.Namespace, work: Path) -> list[tuple[float, Path]]:
    snapshots = work / "ours_snapshots"
    callback = {"class_path": "vs_bare_loop.BudgetSnapshots",
                "init_args": {"out": str(snapshots), "every": args.budget / args.curve_points,
                              "budget": args.budget, "unit": args.unit}}
    # the callback stops the run at the budget; max_time is only a backstop, and in steps mode the cosine is laid
    # over exactly the budget's steps, as in the bare loop
    made = ["--data.init_args.split_fractions", json.dumps(args.made_split)] if args.made_split else []
    limits = (["--trainer.max_steps", str(int(args.budget)), "--trainer.max_epochs", "-1"] if args.unit == "steps"
              else ["--trainer.max_time", _hms(3 * args.budget + 60)])
    command = [sys.executable, "-m", "lightning_sarclip", "fit", "--config", str(args.config),
               "--data", "lightning_sarclip.training.SourceDataModule",
               "--data.init_args.source", args.source, "--data.init_args.root", str(args.root),
               *limits, "--trainer.limit_val_batches", "0",
               "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
               f"--trainer.callbacks+={json.dumps(callback)}",
               "--run_root", str(work / "runs"), "--name", "ours", "--seed_everything", str(args.seed), *made,
               *args.ours_args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    print("ours:", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env, cwd=REPO)
    args.ours_progress = json.loads((snapshots / "progress.json").read_text())
    return sorted((float(p.stem[1:]), p) for p in snapshots.glob("t*.ckpt"))


def score_ours(args: argparse.Namespace, ckpt: Path, split: str, run: dict[str, Any]) -> dict[str, float]:
    """Zero-shot on ``split`` through ``evaluate``'s code, read the way the run read its data (its conversion policy,
    reader options and on-the-fly split) and prompted as its zero-shot callback was configured."""
    from lightning_sarclip.eval.evaluate import DatasetSpec, EvalConfig, ModelSpec
    from lightning_sarclip.eval.evaluate import run as evaluate

    data, zeroshot = run["data"], run["zeroshot"]
    spec = DatasetSpec(name="heldout", source=args.source, root=str(args.root), split=split, task="zeroshot",
                       templates=zeroshot.get("templates") or "sar", batch_size=100, split_fractions=args.made_split,
                       policy=data.get("policy"), source_options=dict(data.get("source_options") or {}))
    rows = evaluate(EvalConfig(model=ModelSpec(pretrained=str(ckpt)), datasets=[spec], device="cpu",
                               output=str(ckpt.parent / "eval" / ckpt.stem / "results.jsonl"), figures=False))
    values = {row["metric"]: row["value"] for row in rows if row["task"] == "zeroshot"}
    return {"top1": values["top1"], "mean_per_class": values["mean_per_class"]}


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The data and zero-shot settings the ``fit`` run actually used (its saved ``config.yaml``: the recipe with
    every command-line override applied)."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = dict((config.get("data") or {}).get("init_args") or {})
    zeroshot: dict[str, Any] = {}
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        if str(callback.get("class_path", "")).endswith("RetrievalZeroShotCallback"):
            zeroshot = dict(callback.get("init_args") or {})
    return {"data": data, "zeroshot": zeroshot}


def _recipe_model(config: Path) -> dict[str, Any]:
    import yaml

    return dict((yaml.safe_load(config.read_text()).get("model") or {}).get("init_args") or {})


# ------------------------------------------------------------------------------------------------ bare
def load_split(source: str, root: Path, split: str, image_size: int, fractions: list[float] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every chip of ``split`` decoded once ((N, 1, S, S) in [0, 1]) with its label index, and the class names;
    with ``fractions``, ``split`` is the part of the split made on the fly, as ``fit`` and ``evaluate`` make it."""
    from lightning_sarclip.data.listing import SourceListing
    from lightning_sarclip.data.splits import made_part

    listing = SourceListing(source, root, "all")
    records = list(listing.records())
    records = made_part(records, split, fractions) if fractions else [r for r in records if r.split == split]
    records = [r for r in records if r.label is not None]
    classnames = listing.classnames or sorted({r.label for r in records})
    images = torch.stack([listing.load_image(r, image_size, 1) for r in records])
    labels = torch.tensor([classnames.index(r.label) for r in records])
    return images, labels, classnames


def bare_loop(images: torch.Tensor, labels: torch.Tensor, classnames: list[str], args: argparse.Namespace,
              snapshot_every: float) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """The loop a researcher writes: open_clip model, ClipLoss, AdamW, warm-up + cosine over the time budget."""
    import open_clip
    from open_clip.loss import ClipLoss

    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.bare_model)
    tokenizer = open_clip.get_tokenizer(args.bare_model)
    prompts = tokenizer([t.format(c) for c in classnames for t in BARE_TEMPLATES]).view(len(classnames),
                                                                                        len(BARE_TEMPLATES), -1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.bare_lr, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    snapshots, started, paused, next_mark, steps = [], time.perf_counter(), 0.0, snapshot_every, 0
    snapshot_step = -1  # the step of the last snapshot

    def progress() -> float:  # training seconds (snapshots excluded) or optimizer steps, as --unit says
        return float(steps) if args.unit == "steps" else time.perf_counter() - started - paused

    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    while progress() < args.budget:
        for batch in torch.randperm(len(images), generator=generator).split(args.bare_batch_size):
            if len(batch) < args.bare_batch_size:
                continue
            fraction = progress() / args.budget
            if fraction >= 1:
                break
            warm = 0.1
            scale = fraction / warm if fraction < warm else 0.5 * (1 + math.cos(math.pi * (fraction - warm) / (1 - warm)))
            for group in optimizer.param_groups:
                group["lr"] = args.bare_lr * scale
            x = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            x = ((x - 0.5) / 0.25).expand(-1, 3, -1, -1)
            template = torch.randint(len(BARE_TEMPLATES), (len(batch),), generator=generator)
            text = prompts[labels[batch], template]
            image_features, text_features, logit_scale = model(x, text)
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if (now := progress()) >= next_mark:
                before = time.perf_counter()
                snapshots.append((now, {k: v.detach().clone() for k, v in model.state_dict().items()}))
                snapshot_step = steps
                next_mark += snapshot_every
                paused += time.perf_counter() - before
    args.bare_progress = {"steps": steps, "seconds": time.perf_counter() - started - paused}
    if snapshot_step != steps:  # the end, unless the last step already left a snapshot
        snapshots.append((progress(), {k: v.detach().clone() for k, v in model.state_dict().items()}))
    return snapshots


def score_bare(state: dict[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor, classnames: list[str],
               args: argparse.Namespace) -> dict[str, float]:
    import open_clip

    from lightning_sarclip.eval.classification import classification_metrics
    from lightning_sarclip.eval.zeroshot import build_zeroshot_classifier, zeroshot_logits

    model = open_clip.create_model(args.bare_model)
    model.load_state_dict(state)
    model.eval()
    classifier = build_zeroshot_classifier(model.encode_text, open_clip.get_tokenizer(args.bare_model), classnames,
                                           list(BARE_TEMPLATES))
    with torch.no_grad():
        features = torch.cat([model.encode_image(((x - 0.5) / 0.25).expand(-1, 3, -1, -1), normalize=True)
                              for x in images.split(100)])
    metrics = classification_metrics(zeroshot_logits(features, classifier), labels, topk=(1,))
    return {"top1": metrics["top1"], "mean_per_class": metrics["mean_per_class"]}


def train_part_layout(args: argparse.Namespace, folder: Path) -> Path:
    """A copy of the train split as ``<folder>/{train,test}/<class>/<file>``: a seeded, stratified 80/20 split
    (:func:`lightning_sarclip.data.splits.stratified_split`), which both arms then read as the real root.

    ``--holdout train-part`` holds out single chips: each has neighbours a few degrees of aspect away in the training
    part, so it measures how well an arm interpolates between views it has seen. ``--holdout train-blocks`` holds out
    runs of ``--block`` consecutive chips of a class in file order instead (MSTAR's files are numbered in collection
    order, which sweeps the aspect angle: neighbouring files correlate most, and files half a class apart, 180
    degrees, correlate again), so a held-out chip has no near view in training: a validation of generalisation to
    unseen geometry, closer to what a change of depression asks of a model than single held-out chips."""
    import dataclasses
    import shutil

    from lightning_sarclip.data.listing import SourceListing
    from lightning_sarclip.data.splits import stratified_split

    if args.source not in ("mstar", "class_folder"):
        raise SystemExit(f"--holdout {args.holdout} lays chips out as <split>/<class>/<file>: mstar or class_folder, "
                         f"not {args.source}")
    records = [r for r in SourceListing(args.source, args.root, "all").records()
               if r.split == args.train_split and r.label is not None]
    group_by = None
    if args.holdout == "train-blocks":
        by_class: dict[str, list[Any]] = {}
        for record in sorted(records, key=lambda r: r.source_id):
            by_class.setdefault(record.label, []).append(record)
        records = [dataclasses.replace(r, metadata={**r.metadata, "block": f"{label}/{i // args.block}"})
                   for label, members in by_class.items() for i, r in enumerate(members)]
        group_by = "block"
    parts = stratified_split(records, {"train": 0.8, "test": 0.2}, seed=0, group_by=group_by)
    for part, members in parts.items():
        for record in members:
            target = folder / part / record.label / Path(record.image.path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.image.path, target)
            if part == "test":
                write_gain_copies(target, args.holdout_gains_db)
    return folder


def write_gain_copies(chip: Path, gains_db: list[float]) -> None:
    """Beside ``chip``, a lossless copy of it for every non-zero gain in dB (``<stem>_g+1.0dB.png``): the held-out
    part then scores the same chips brighter and darker, as another acquisition (a change of depression or
    calibration) shows them. Magnitudes scale by ``10 ** (dB / 20)`` and clip to the 8-bit range."""
    import numpy as np
    from PIL import Image

    pixels = None
    for gain_db in gains_db:
        if gain_db == 0:
            continue
        if pixels is None:
            with Image.open(chip) as image:
                pixels = np.asarray(image.convert("L"), dtype=np.float32)
        shifted = np.clip(np.rint(pixels * 10 ** (gain_db / 20)), 0, 255).astype(np.uint8)
        Image.fromarray(shifted).save(chip.with_name(f"{chip.stem}_g{gain_db:+.1f}dB.png"))


# ------------------------------------------------------------------------------------------------ main
def _hms(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _plot(curves: dict[str, list[tuple[float, float]]], path: Path, unit: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        if points:
            axis.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=name)
    axis.set_xlabel(f"training {unit}")
    axis.set_ylabel("zero-shot top-1 on the held-out split (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the dataset root, in its original layout")
    parser.add_argument("--source", default="mstar", help="a class-labelled registered source")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--eval-split", default=None, help="held-out split (default: test, else val)")
    parser.add_argument("--holdout", choices=["heldout", "train-part", "train-blocks"], default="heldout",
                        help="score on the held-out split (the result), or on a seeded stratified 20%% of the train "
                             "split with the other 80%% for training (for choosing settings without the test chips): "
                             "single chips (train-part) or runs of --block consecutive chips of a class "
                             "(train-blocks: unseen aspect angles)")
    parser.add_argument("--block", type=int, default=5, help="chips per held-out run of --holdout train-blocks")
    parser.add_argument("--holdout-gains-db", type=float, nargs="+", default=[0.0],
                        help="with --holdout train-part/train-blocks: score every held-out chip at each of these "
                             "gains in dB (e.g. -2 -1 0 1 2): a validation of robustness to the intensity changes "
                             "another acquisition brings, without the test chips")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="our recipe (a fit config)")
    parser.add_argument("--budget", type=float, default=450.0, help="training seconds (or steps) per arm")
    parser.add_argument("--unit", choices=["seconds", "steps"], default="seconds",
                        help="what the budget counts: wall-clock seconds of training (the result) or optimizer steps "
                             "(per-step learning, independent of machine load)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of both arms (initial weights, batch order, augmentation): repeat with others to "
                             "see the spread")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both arms (default: torch's own choice)")
    parser.add_argument("--curve-points", type=int, default=6, help="snapshots per arm for the learning curve")
    parser.add_argument("--arms", nargs="+", default=["ours", "bare"], choices=["ours", "bare"])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "vs_bare_loop")
    parser.add_argument("--image-size", type=int, default=64, help="the bare loop's input size")
    parser.add_argument("--bare-model", default=None,
                        help="open_clip architecture of the bare loop (default: the recipe's, so the loops compare)")
    parser.add_argument("--bare-lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--bare-batch-size", type=int, default=64)
    parser.add_argument("--ours-args", nargs=argparse.REMAINDER, default=[],
                        help="extra fit arguments for our arm (last on the line)")
    args = parser.parse_args(argv)
    recipe_model = _recipe_model(args.config)
    args.bare_model = args.bare_model or recipe_model.get("model_name", "SARCLIP-ViT-Tiny-64")
    args.bare_lr = args.bare_lr or float(recipe_model.get("lr", 5e-4))
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the fit subprocess
    import lightning_sarclip.models  # noqa: F401  (registers our architectures with open_clip, for the bare loop)
    from lightning_sarclip.data.listing import SourceListing

    splits = {r.split for r in SourceListing(args.source, args.root, "all").records()}
    args.made_split = None
    if splits == {"all"}:  # no official splits: both arms use the seeded stratified split fit and evaluate make
        args.made_split, splits = list(MADE_SPLIT), {"train", "test"}
        print(f"{args.source} ships no splits: training on a seeded stratified {MADE_SPLIT[0]:.0%}, scoring on the "
              f"other {MADE_SPLIT[2]:.0%}", flush=True)
    eval_split = args.eval_split or next((s for s in ("test", "val") if s in splits), None)
    if args.train_split not in splits or eval_split not in splits:
        raise SystemExit(f"{args.source} at {args.root} has splits {sorted(splits)}; need {args.train_split!r} and "
                         "a held-out one (--eval-split)")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vs_bare_loop-", dir=args.out))
    if args.holdout != "heldout":
        if args.made_split:
            raise SystemExit("--holdout train-part carves the official train split; this source has none, so the "
                             "default run already scores on a part of the training images")
        args.root, eval_split = train_part_layout(args, work / "train_part"), "test"
    result: dict[str, Any] = {"source": args.source, "budget": args.budget, "unit": args.unit, "seed": args.seed, "eval_split": eval_split,
                              "holdout": args.holdout, "config": str(args.config), "bare_model": args.bare_model,
                              "bare_lr": args.bare_lr}
    curves: dict[str, list[tuple[float, float]]] = {}
    test_images, test_labels, classnames = load_split(args.source, args.root, eval_split, args.image_size,
                                                      args.made_split)
    if "ours" in args.arms:
        snapshots = run_ours(args, work)
        settings = run_settings(work / "runs" / "ours")
        scores = [(t, score_ours(args, path, eval_split, settings)) for t, path in snapshots]
        curves["ours (fit)"] = [(t, s["top1"]) for t, s in scores]
        result["ours_steps_done"] = args.ours_progress["steps"]
        result.update(ours_top1=scores[-1][1]["top1"], ours_mean_per_class=scores[-1][1]["mean_per_class"],
                      **{f"ours_{args.unit}": round(scores[-1][0], 1)})
    if "bare" in args.arms:
        images, labels, bare_classes = load_split(args.source, args.root, args.train_split, args.image_size,
                                                  args.made_split)
        snapshots = bare_loop(images, labels, bare_classes, args, args.budget / args.curve_points)
        scores = [(t, score_bare(state, test_images, test_labels, bare_classes, args)) for t, state in snapshots]
        curves["bare open_clip loop"] = [(t, s["top1"]) for t, s in scores]
        result["bare_steps_done"] = args.bare_progress["steps"]
        result.update(bare_top1=scores[-1][1]["top1"], bare_mean_per_class=scores[-1][1]["mean_per_class"],
                      **{f"bare_{args.unit}": round(scores[-1][0], 1)})
    if "ours_top1" in result and "bare_top1" in result:
        result["ratio"] = round(result["ours_top1"] / max(result["bare_top1"], 1e-9), 4)
    result["curves"] = {name: [[round(t, 1), round(a, 4)] for t, a in points] for name, points in curves.items()}
    figure = args.out / "learning_curve.png"
    _plot(curves, figure, args.unit, f"{args.source}: train on {args.train_split}, zero-shot on {eval_split}")
    result["figure"] = str(figure)
    print(f"{'arm':22s} {args.unit:>8s} {'steps':>6s} {'top-1':>7s} {'mean/cls':>9s}")
    for arm in ("ours", "bare"):
        if f"{arm}_top1" in result:
            print(f"{arm:22s} {result[f'{arm}_{args.unit}']:8.1f} {result[f'{arm}_steps_done']:6d} "
                  f"{100 * result[f'{arm}_top1']:6.1f}% {100 * result[f'{arm}_mean_per_class']:8.1f}%")
    if "ratio" in result:
        print(f"ratio (ours / bare top-1) = {result['ratio']:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
