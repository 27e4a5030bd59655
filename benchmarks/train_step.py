"""Training throughput of our ``fit`` loop against a bare PyTorch loop, measured in the same run.

Both loops train the same open_clip architecture from the same initial weights on the same in-memory batches,
with AdamW, a per-step learning rate and the ``logit_scale`` clamp, exactly as open_clip's ``train_one_epoch``
does; the bare loop uses open_clip's own ``ClipLoss`` and the same AdamW kernel as ours (fused where the device has
one). The figure of merit is samples/s of ours divided by samples/s of the bare loop (target >= 0.99 on CPU,
>= 1.0 on a GPU). Rounds alternate between the two loops to
cancel drift. On a GPU it also prints model FLOPs utilisation (MFU): the FLOPs of one training step (forward and
backward, counted by ``torch.utils.flop_counter`` on the real step) times steps/s, over the card's dense bf16 peak.

Staged unfreezing: one ``fit`` per round with a two-stage schedule, the projections and ``logit_scale`` only for
``--stage-steps`` steps, then everything; per stage the median step time (the first steps of each stage are not
counted) and the peak memory: ``torch.cuda.max_memory_allocated`` (reset at the stage's start) on a GPU; on a CPU,
where a process's peak resident set size (``VmHWM``, or ``ru_maxrss`` off Linux) only grows, how far
``--stage-steps`` steps of the stage raise it above its value after the model and batches are built, each stage
in a fresh process; and on both the
activations autograd saves for the backward of one step (``saved_tensors_hooks``, exact). The last line is ``frozen-stage speedup = X.XX``:
all-trainable step time over projections-only step time (target >= 2 on the tiny default model on a CPU).

DDP (``--strategy ddp``, default 2 processes on gloo, one thread each on a CPU): each round starts both loops as
``torch.distributed.run`` jobs of this script (``--ddp-worker``); ours is ``fit`` with ``strategy="ddp"`` (global
negatives: features gathered across ranks, as ``InfoNCELoss`` does by default), the bare loop is
``DistributedDataParallel`` around the same model with open_clip's ``ClipLoss(gather_with_grad=True, rank,
world_size)``; rank ``r`` trains on batches ``r, r + n, ...`` in both. Samples/s count the global batch (target
ratio >= 0.97).

    python benchmarks/train_step.py [--model SARCLIP-ViT-Tiny-64] [--batch-size 64] [--steps 30] [--rounds 5]
    python benchmarks/train_step.py --strategy ddp --devices 2     # two gloo processes on a CPU
    python benchmarks/train_step.py --accelerator gpu --precision bf16-mixed --model ViT-B-16 --batch-size 256
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lightning_sarclip.training.module import SARCLIPModule, fused_adamw_devices  # noqa: E402


class Batches(Dataset):
    """Pre-built batches, so neither loop pays for data generation."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


#: Dense bf16 tensor-core peaks (datasheet, FLOP/s) by device-name fragment, for MFU.
PEAK_BF16 = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12, "A100": 312.0e12, "L40S": 362.1e12}


def make_batches(n: int, batch_size: int, image_size: int, context: int, seed: int = 0,
                 device: str = "cpu") -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(batch_size, 1, image_size, image_size, generator=g).to(device),
            "text": torch.randint(1, 49000, (batch_size, context), generator=g).to(device),
        }
        for _ in range(n)
    ]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_flops(override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def step_flops(module: SARCLIPModule, batch: dict, precision: str) -> int:
    """FLOPs of one forward + backward pass of the contrastive step (counted on the real step)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, adapter = module.model, module.input_adapter
    device_type = batch["image"].device.type
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            image_features, text_features, logit_scale = model(adapter(batch["image"]), batch["text"])[:3]
            loss = ClipLoss()(image_features, text_features, logit_scale)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = None
        self.end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            _sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        _sync()
        self.end = time.perf_counter()


def run_ours(module: SARCLIPModule, batches: list[dict], warmup: int, accelerator: str = "cpu",
             precision: str = "32-true") -> float:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = DataLoader(Batches(batches), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    steps = len(batches) - warmup
    return steps * batches[0]["image"].shape[0] / (timer.end - timer.start)


def run_bare(module: SARCLIPModule, batches: list[dict], warmup: int, lr: float, precision: str = "32-true",
             wrap: Any = None, loss_fn: torch.nn.Module | None = None) -> float:
    """Samples/s (of this process) of open_clip's ``train_one_epoch`` step on ``batches``, timed after ``warmup``
    steps; ``wrap`` wraps the model for the forward pass (``DistributedDataParallel``), ``loss_fn`` replaces the
    single-process ``ClipLoss``."""
    device = batches[0]["image"].device
    model, adapter = module.model.to(device), module.input_adapter.to(device)
    model.train()
    forward = wrap(model) if wrap else model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    # The AdamW implementation SARCLIPModule uses (fused where the device has the kernel), so that the ratio
    # measures the loop around the step, not a faster optimizer kernel.
    fused = device.type in fused_adamw_devices() or None
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused,
    )
    loss_fn = loss_fn or ClipLoss()
    total = len(batches)
    start = None
    for step, batch in enumerate(batches):
        if step == warmup:
            _sync()
            start = time.perf_counter()
        for group in optimizer.param_groups:  # open_clip's cosine_lr, called every step
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            image_features, text_features, logit_scale = forward(adapter(batch["image"]), batch["text"])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    _sync()
    elapsed = time.perf_counter() - start
    return (total - warmup) * batches[0]["image"].shape[0] / elapsed


# ------------------------------------------------------------------------------------------------ DDP
def ddp_round(arm: str, args: argparse.Namespace) -> float:
    """Global samples/s of one DDP run of ``arm`` (``ours`` or ``bare``): ``args.devices`` processes started by
    ``torch.distributed.run`` (one thread each on a CPU, as torchrun sets ``OMP_NUM_THREADS``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.devices}",
               os.path.abspath(__file__), "--ddp-worker", arm, "--model", args.model, "--batch-size",
               str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--accelerator", args.accelerator, "--precision", args.precision]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"DDP {arm} run failed ({' '.join(command)}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("ddp samples/s ")]
    return float(lines[-1].split()[-1])


def ddp_worker(args: argparse.Namespace) -> None:
    """One rank of :func:`ddp_round`: prints ``ddp samples/s <global rate>`` on rank 0."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    gpu = args.accelerator == "gpu"
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    pl.seed_everything(0, verbose=False)
    template = SARCLIPModule(model_name=args.model, in_chans=1, lr=1e-4, warmup_steps=1)
    image_size, context = int(template.model.visual.image_size[0]), int(template.model.context_length)
    total = args.steps + args.warmup
    # every rank builds the same batches and keeps its own slice, so both arms see identical data per rank
    batches = make_batches(world * total, args.batch_size, image_size, context, device=str(device))[rank::world]
    if args.ddp_worker == "ours":
        timer = StepTimer(args.warmup)
        trainer = pl.Trainer(accelerator=args.accelerator, devices=world, strategy="ddp", precision=args.precision,
                             max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                             use_distributed_sampler=False, callbacks=[timer])
        trainer.fit(template, train_dataloaders=DataLoader(Batches(batches), batch_size=None, shuffle=False))
        elapsed = timer.end - timer.start
    else:
        dist.init_process_group("nccl" if gpu else "gloo")
        rate = run_bare(template, batches, args.warmup, lr=1e-4, precision=args.precision,
                        wrap=lambda model: DistributedDataParallel(model, device_ids=[device.index] if gpu else None),
                        loss_fn=ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world))
        elapsed = args.steps * args.batch_size / rate
    if rank == 0:
        print(f"ddp samples/s {world * args.steps * args.batch_size / elapsed:.3f}", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def report_ddp(args: argparse.Namespace) -> None:
    name = torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu, 1 thread per process"
    print(f"model={args.model} batch={args.batch_size} per rank x {args.devices} ranks (DDP) steps={args.steps} "
          f"precision={args.precision} device={name} torch={torch.__version__}")
    ours, bare = [], []
    for r in range(args.rounds):
        bare.append(ddp_round("bare", args))
        ours.append(ddp_round("ours", args))
        print(f"round {r}: bare {bare[-1]:7.1f} samples/s   ours {ours[-1]:7.1f} samples/s   "
              f"ratio {ours[-1] / bare[-1]:.3f}", flush=True)
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"median: bare {statistics.median(bare):.1f} samples/s, ours {statistics.median(ours):.1f} samples/s")
    print(f"ratio ours/bare (DDP x{args.devices}) = {ratio:.3f} (target >= 0.97)")


FROZEN_STAGE = ["projections", "logit_scale"]


class StageTimer(pl.Callback):
    """Wall time of each training step (start of the batch to the end of its optimizer step) and the peak memory
    of each stage of a two-stage schedule that switches at step ``boundary``."""

    def __init__(self, boundary: int):
        self.boundary = boundary
        self.step_times: list[float] = []
        self.peak_bytes: list[int] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.boundary:
            self.peak_bytes.append(self._peak())
        if trainer.global_step in (0, self.boundary) and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _sync()
        self.step_times.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module):
        self.peak_bytes.append(self._peak())

    @staticmethod
    def _peak() -> int:
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated()
        return peak_rss()


def peak_rss() -> int:
    """This process's peak resident set size in bytes: Linux's ``VmHWM`` (its own, unlike ``ru_maxrss``, which
    ``execve`` carries over from the parent), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def staged_module(template: SARCLIPModule, model: str, stage_steps: int) -> SARCLIPModule:
    """The template's weights under a schedule: projections + ``logit_scale`` for ``stage_steps`` steps, then all."""
    stages = [{"train": FROZEN_STAGE, "start_step": 0}, {"train": ["all"], "start_step": stage_steps}]
    module = SARCLIPModule(model_name=model, in_chans=1, lr=1e-4, warmup_steps=1, unfreeze=stages)
    module.load_state_dict(template.state_dict())
    return module


def run_staged(staged: SARCLIPModule, batches: list[dict], stage_steps: int, skip: int, accelerator: str,
               precision: str) -> tuple[list[float], list[int]]:
    """One fit of ``2 * stage_steps`` steps of the staged module; per stage the median step time (after ``skip``
    steps) and the peak memory."""
    module = copy.deepcopy(staged)
    timer = StageTimer(stage_steps)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=2 * stage_steps,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    loader = DataLoader(Batches(batches[:2 * stage_steps]), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    times = [statistics.median(timer.step_times[i * stage_steps + skip:(i + 1) * stage_steps]) for i in (0, 1)]
    return times, timer.peak_bytes


def saved_activation_bytes(template: SARCLIPModule, batch: dict, frozen: bool) -> int:
    """Bytes of the tensors autograd saves for the backward of one training step (everything trainable, or only
    the projections and ``logit_scale``, frozen as ``SARCLIPModule`` freezes them: ``requires_grad=False``)."""
    module = copy.deepcopy(template)
    if frozen:
        trained = {g for s in FROZEN_STAGE for g in module.schedule.select(s)}
        for group, members in module.schedule.groups.items():
            for _, param in members:
                param.requires_grad_(group in trained)
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()  # a storage saved by several nodes counts once
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        image_features, text_features, logit_scale = module(batch["image"], batch["text"])
        loss = ClipLoss()(image_features, text_features, logit_scale)
    loss.backward()
    return sum(seen.values())


def report_staged(template: SARCLIPModule, batches: list[dict], args: argparse.Namespace) -> None:
    skip = min(2, args.stage_steps - 1)
    frozen_times, all_times, frozen_peaks, all_peaks = [], [], [], []
    staged = staged_module(template, args.model, args.stage_steps)
    for r in range(args.staged_rounds):
        (frozen, full), peaks = run_staged(staged, batches, args.stage_steps, skip, args.accelerator, args.precision)
        frozen_times.append(frozen)
        all_times.append(full)
        frozen_peaks.append(peaks[0])
        all_peaks.append(peaks[1])
        print(f"staged round {r}: projections+logit_scale {frozen * 1e3:7.1f} ms/step   all {full * 1e3:7.1f} ms/step")
    frozen, full = statistics.median(frozen_times), statistics.median(all_times)
    if torch.cuda.is_available():
        memory = "max_memory_allocated"
    else:  # a peak resident set size never goes down in a process: each stage in a fresh one
        source = "VmHWM" if os.path.exists("/proc/self/status") else "ru_maxrss"
        memory = f"peak RSS growth in training (fresh process, {source})"
        frozen_peaks, all_peaks = ([rss_growth(args, stage)] for stage in ("frozen", "all"))
    batch_size = batches[0]["image"].shape[0]
    saved = {f: saved_activation_bytes(template, batches[0], f) for f in (True, False)}
    for label, seconds, peak, frozen_flag in (("projections+logit_scale", frozen, max(frozen_peaks), True),
                                              ("all trainable", full, max(all_peaks), False)):
        print(f"stage {label}: {batch_size / seconds:7.1f} samples/s, {seconds * 1e3:.1f} ms/step, "
              f"{memory} {peak / 2**20:.0f} MiB, saved activations {saved[frozen_flag] / 2**20:.2f} MiB")
    print(f"frozen-stage speedup = {full / frozen:.2f}")


def rss_growth(args: argparse.Namespace, stage: str) -> int:
    """Bytes by which ``--stage-steps`` steps of ``stage`` (``frozen`` or ``all``) raise a fresh process's peak RSS."""
    command = [sys.executable, os.path.abspath(__file__), "--rss-probe", stage, "--model", args.model,
               "--batch-size", str(args.batch_size), "--stage-steps", str(args.stage_steps)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def rss_probe(args: argparse.Namespace) -> None:
    """The child of :func:`rss_growth`: prints the growth of the peak RSS (bytes) over the training steps."""
    stages = [{"train": FROZEN_STAGE, "start_step": 0}] if args.rss_probe == "frozen" else None
    module = SARCLIPModule(model_name=args.model, in_chans=1, lr=1e-4, warmup_steps=1, unfreeze=stages)
    batches = make_batches(args.stage_steps, args.batch_size, int(module.model.visual.image_size[0]),
                           int(module.model.context_length))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.stage_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    before = peak_rss()
    trainer.fit(module, train_dataloaders=DataLoader(Batches(batches), batch_size=None, shuffle=False))
    print(peak_rss() - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SARCLIP-ViT-Tiny-64")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    parser.add_argument("--stage-steps", type=int, default=10, help="steps of each stage of the staged schedule")
    parser.add_argument("--staged-rounds", type=int, default=3, help="fits of the staged schedule (median)")
    parser.add_argument("--strategy", choices=["single", "ddp"], default="single",
                        help="one process, or DDP over --devices processes (gloo on a CPU) against a bare DDP loop")
    parser.add_argument("--devices", type=int, default=2, help="processes of --strategy ddp")
    parser.add_argument("--rss-probe", choices=["frozen", "all"], help=argparse.SUPPRESS)  # see rss_growth
    parser.add_argument("--ddp-worker", choices=["ours", "bare"], help=argparse.SUPPRESS)  # see ddp_round
    args = parser.parse_args()
    if args.rss_probe:
        rss_probe(args)
        return
    if args.ddp_worker:
        ddp_worker(args)
        return
    if args.strategy == "ddp":
        report_ddp(args)
        return

    pl.seed_everything(0, verbose=False)
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    template = SARCLIPModule(model_name=args.model, in_chans=1, lr=1e-4, warmup_steps=1)
    image_size = int(template.model.visual.image_size[0])
    context = int(template.model.context_length)
    batches = make_batches(max(args.steps + args.warmup, 2 * args.stage_steps), args.batch_size, image_size, context, device=device)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"model={args.model} image={image_size}px batch={args.batch_size} steps={args.steps} "
          f"precision={args.precision} device={name} torch={torch.__version__}")
    flops = step_flops(copy.deepcopy(template).to(device), batches[0], args.precision)
    peak = peak_flops(args.peak_tflops)
    ours, bare = [], []
    for r in range(args.rounds):
        bare.append(run_bare(copy.deepcopy(template), batches[:args.steps + args.warmup], args.warmup, lr=1e-4, precision=args.precision))
        ours.append(run_ours(copy.deepcopy(template), batches[:args.steps + args.warmup], args.warmup,
                             args.accelerator, args.precision))
        print(f"round {r}: bare {bare[-1]:7.1f} samples/s   ours {ours[-1]:7.1f} samples/s   "
              f"ratio {ours[-1] / bare[-1]:.3f}")
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"median: bare {statistics.median(bare):.1f} samples/s, ours {statistics.median(ours):.1f} samples/s")
    target = 1.0 if device == "cuda" else 0.99
    print(f"ratio ours/bare = {ratio:.3f} (target >= {target})")
    per_sample = flops / args.batch_size
    print(f"model FLOPs per sample (fwd+bwd): {per_sample / 1e9:.4f} GFLOP")
    if peak:
        for label, rate in (("bare", statistics.median(bare)), ("ours", statistics.median(ours))):
            print(f"MFU {label}: {per_sample * rate / peak * 100:.1f} % of {peak / 1e12:.0f} TFLOP/s (target >= 45 %)")
    report_staged(template, batches, args)


if __name__ == "__main__":
    main()
