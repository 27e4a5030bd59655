"""``SARCLIPModule``: the training math of CLIP transfer to SAR, and nothing else.

What it owns: the open_clip model (built by :func:`~lightning_sarclip.models.create_model`), the on-device SAR
input adapter, the symmetric InfoNCE loss with global negatives, AdamW parameter groups (no weight decay on
biases, norms, embeddings and ``logit_scale``), a per-step warmup + cosine learning rate, the ``logit_scale``
clamp, the staged unfreezing schedule (:mod:`lightning_sarclip.training.unfreeze`), and FSDP2 sharding of both towers
when the trainer runs Lightning's ``ModelParallelStrategy`` (:mod:`lightning_sarclip.training.sharding`).

What it does not own: metrics beyond the loss. Evaluation (recall@K, zero-shot) lives in
:mod:`lightning_sarclip.eval` and plugs in as callbacks that read the features ``validation_step`` returns.

Batches are dicts: ``image`` (B, in_chans, S, S) in [0, 1], ``text`` token ids (B, L) for training and (B, L) or
(B, K, L) (K captions per image) for evaluation, optional ``label`` and ``index``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn.parallel import DistributedDataParallel

from lightning_sarclip.losses import InfoNCELoss, caption_groups, label_groups
from lightning_sarclip.models.factory import build_input_adapter, create_model
from lightning_sarclip.training.sharding import all_reduce_grads, data_parallel_mesh, reshard_all, shard_model
from lightning_sarclip.training.unfreeze import UnfreezeSchedule, UnfreezeStage, as_stages, cosine_with_warmup

log = logging.getLogger("lightning_sarclip")

LOGIT_SCALE_MAX = math.log(100.0)
#: ``positives`` choices of :class:`SARCLIPModule` (see :mod:`lightning_sarclip.losses`)
POSITIVES = ("pair", "label", "caption")


@dataclass
class _Stage:
    """What is resolved once per unfreeze stage, so that a step only sets learning rates."""

    index: int | None
    optimizer: torch.optim.Optimizer
    lr_multipliers: list[tuple[dict, float]]  # (optimizer param group, stage x layer-decay multiplier)
    trained: list[torch.nn.Parameter]


class NonFiniteLossError(FloatingPointError):
    """The training loss (or a gradient) became NaN or infinite; the message names the step."""


class _FiniteGuard:
    """0-d tensors on the training device: whether a non-finite step happened (sticky, 1.0 from the first one on:
    fused AdamW's ``found_inf``), how many steps have been skipped since, and the loss of the first one."""

    def __init__(self, device: torch.device) -> None:
        self.skip = torch.zeros((), device=device)
        self.skipped = torch.zeros((), device=device)
        self.first_loss = torch.zeros((), device=device)
        self.last_loss = torch.zeros((), device=device)
        self.one = torch.ones((), device=device)


def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """open_clip's rule: 1-D tensors (biases, norms, logit_scale) and embeddings are not decayed."""
    return param.ndim < 2 or "bias" in name or "ln" in name or "bn" in name or "logit_scale" in name or "embedding" in name


def fused_adamw_devices() -> list[str]:
    """Device types with a fused AdamW kernel."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return _get_fused_kernels_supported_devices()


def compile_towers(model: torch.nn.Module) -> None:
    """Compile the image and text towers in place (keeps state_dict keys, unlike wrapping in torch.compile)."""
    towers = [getattr(model, "visual", None), getattr(model, "transformer", None), getattr(model, "text", None)]
    towers = [t for t in towers if isinstance(t, torch.nn.Module)]
    if not towers:
        raise ValueError(f"compile: found no image/text tower to compile in {type(model).__name__}")
    for tower in towers:
        tower.compile()


def _dataset_statistics(image_mean: Any, image_std: Any) -> bool:
    """Whether ``image_mean``/``image_std`` ask for statistics measured on the training data (both, or neither)."""
    flags = [value == "dataset" if isinstance(value, str) else None for value in (image_mean, image_std)]
    for name, value, flag in zip(("image_mean", "image_std"), (image_mean, image_std), flags, strict=True):
        if flag is False:
            raise ValueError(f"{name}: expected a list of numbers, null or 'dataset', got {value!r}")
    if flags[0] != flags[1]:
        raise ValueError(f"image_mean and image_std: 'dataset' measures both, so set both to 'dataset' (got "
                         f"{image_mean!r} and {image_std!r})")
    return bool(flags[0])


class SARCLIPModule(pl.LightningModule):
    """Contrastive image-text training of an open_clip model on SAR data.

    Args:
        model_name: open_clip architecture (``open_clip.list_models()``, our registered tiny ones, or
            ``hf-hub:``/``local-dir:`` names).
        pretrained: open_clip tag, local checkpoint (any supported format) or ``hf-hub:org/repo[/file]``.
        image_size: input resolution (linked from the datamodule by the CLI); ``None`` keeps the architecture's.
        in_chans: SAR channels the data delivers (1 single-pol, 2 dual-pol); linked from the datamodule.
        channel_mode: how SAR channels enter the RGB stem (see :mod:`lightning_sarclip.models.sar_stem`).
        image_mean, image_std: normalisation; ``None`` uses the checkpoint's own statistics; ``"dataset"`` (both)
            measures them on the training data when training starts (:meth:`SARDataModule.pixel_statistics
            <lightning_sarclip.training.datamodules.SARDataModule.pixel_statistics>`): the mean and standard deviation
            of what the model is fed, per channel. Use it for towers trained from scratch: SAR chips are dark (MSTAR's
            mean is about 0.09 with a standard deviation of 0.07 in [0, 1]), and normalised with RGB-like
            statistics they reach the patch embedding as a near-constant input, from which a random-init model
            can take hundreds of steps to escape (measured: docs/training.md). The measured values replace
            ``"dataset"`` in the hyper-parameters, so the checkpoint, ``evaluate``, ``predict`` and ``export`` use
            them; a resumed run keeps the values it was trained with.
        allow_shape_mismatch: skip checkpoint tensors whose shape differs instead of failing.
        lr, weight_decay, betas, eps: AdamW (``betas``/``eps`` default to CLIP's ViT values).
        warmup_steps, min_lr_ratio: linear warmup for ``warmup_steps`` optimizer steps, then cosine to
            ``min_lr_ratio * lr`` at the last step of the run.
        local_loss, gather_with_grad: see :class:`~lightning_sarclip.losses.InfoNCELoss`.
        positives: which pairs of a training batch count as positives of each other: ``pair`` (CLIP: only an image
            and its own caption), ``label`` (also pairs of the same class label; unlabelled pairs stay alone) or
            ``caption`` (also pairs whose tokenised captions are identical); see
            :mod:`lightning_sarclip.losses`. The validation loss is always the plain pair loss, so runs compare.
        unfreeze: list of :class:`~lightning_sarclip.training.unfreeze.UnfreezeStage`; ``None`` trains everything.
        layer_decay: optional layer-wise LR decay factor in (0, 1].
        grad_checkpointing: activation checkpointing in both towers (memory for compute).
        accum_freq: feature-cache accumulation (open_clip's ``--accum-freq``): each data batch (the contrastive
            batch, all of it negatives for each sample) is embedded in ``accum_freq`` chunks, at the activation
            memory of one chunk (two forward passes per sample). open_clip's ``--batch-size B --accum-freq k`` is
            ``data.batch_size: k*B`` with ``accum_freq: k`` here. Lightning's ``accumulate_grad_batches`` does
            *not* do this (each batch sees only its own negatives). Uses manual optimisation, so clip with
            ``grad_clip_norm`` instead of ``trainer.gradient_clip_val``. Works on one device, DDP and FSDP2.
        grad_clip_norm: gradient-norm clipping applied by the module with ``accum_freq > 1``.
        compile: ``torch.compile`` both towers in place (``nn.Module.compile``, so parameter names, checkpoints
            and exports are unchanged); opt-in, it pays off on long GPU runs only.
        host_sync_every_n_steps: how often (in optimizer steps) the host reads the training step's device-side
            flags: a non-finite loss or gradient (whose update is kept out of the weights on the device, every
            step) and, with :class:`~lightning_sarclip.training.preemption.PreemptionCheckpoint`, the preemption
            signal, both in one collective across ranks. ``None``: every step on a CPU (a read costs nothing
            there), every ``trainer.log_every_n_steps`` steps on an accelerator (where logging reads its metrics
            anyway). Checkpoints and the end of training always read them first.
    """

    def __init__(
        self,
        model_name: str = "SARCLIP-ViT-Tiny-64",
        pretrained: str | None = None,
        image_size: int | None = None,
        in_chans: int = 1,
        channel_mode: str = "auto",
        image_mean: list[float] | str | None = None,
        image_std: list[float] | str | None = None,
        allow_shape_mismatch: bool = False,
        force_quick_gelu: bool = False,
        cache_dir: str | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.0,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        positives: str = "pair",
        unfreeze: list[UnfreezeStage] | None = None,
        layer_decay: float | None = None,
        grad_checkpointing: bool = False,
        accum_freq: int = 1,
        grad_clip_norm: float | None = None,
        compile: bool = False,
        host_sync_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        if positives not in POSITIVES:
            raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
        self._stats_from_data = self._statistics_configured_from_data = _dataset_statistics(image_mean, image_std)
        if self._stats_from_data:  # measured in setup; until then the tower's own statistics stand in
            image_mean = image_std = None
        stages = as_stages(unfreeze)
        self.save_hyperparameters(ignore=["unfreeze"])
        # Plain dicts, so the checkpoint stays loadable with torch.load(weights_only=True).
        self.hparams["unfreeze"] = [
            {"train": list(s.train), "start_epoch": s.start_epoch, "start_step": s.start_step, "lr_scale": dict(s.lr_scale)}
            for s in stages
        ] or None
        created = create_model(
            model_name,
            pretrained,
            image_size=image_size,
            in_chans=in_chans,
            channel_mode=channel_mode,
            image_mean=image_mean,
            image_std=image_std,
            allow_shape_mismatch=allow_shape_mismatch,
            force_quick_gelu=force_quick_gelu,
            cache_dir=cache_dir,
        )
        self.model = created.model
        self.tokenizer = created.tokenizer
        self.input_adapter = build_input_adapter(self.model, in_chans, channel_mode, image_mean, image_std)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if compile:
            compile_towers(self.model)
        # Validated now, so a stage naming a group that does not exist fails before training starts.
        self.schedule = UnfreezeSchedule(self.model, stages, layer_decay)
        self.loss_fn = InfoNCELoss(local_loss=local_loss, gather_with_grad=gather_with_grad)
        if accum_freq < 1:
            raise ValueError(f"accum_freq must be >= 1, got {accum_freq}")
        if host_sync_every_n_steps is not None and host_sync_every_n_steps < 1:
            raise ValueError(f"host_sync_every_n_steps must be >= 1 (or null for the default), got "
                             f"{host_sync_every_n_steps}")
        if grad_clip_norm is not None and accum_freq == 1:
            raise ValueError("grad_clip_norm is for accum_freq > 1; with accum_freq 1 use trainer.gradient_clip_val")
        # Feature-cache accumulation needs several backward passes per optimizer step: manual optimisation.
        self.automatic_optimization = accum_freq == 1
        # Set by configure_model under FSDP2: the parameters left unsharded, whose gradients are averaged here.
        self._replicated_params: list[torch.nn.Parameter] | None = None
        # The unfreeze stage in force during fit (see on_train_batch_start); None outside fit.
        self._stage: _Stage | None = None
        # Device-side record of non-finite steps during fit (see _guard_update); None until the first step.
        self._finite_guard: _FiniteGuard | None = None
        self._flags_read_at = -1  # global step at which the host last read the flags

    # ------------------------------------------------------------------ model
    def setup(self, stage: str) -> None:
        if self._trainer is not None:
            data_parallel_mesh(self.trainer.strategy)  # unsupported strategy settings fail here, before any step
            if self.hparams.accum_freq > 1 and self._grad_scaler() is not None:
                # The chunked backward clips before Lightning's step unscales the gradients: the norm would be that
                # of the scaled gradients, so clipping (and the guard) would be wrong by the loss scale.
                raise ValueError("model.accum_freq > 1 does not combine with trainer.precision 16-mixed (a GradScaler); "
                                 "use bf16-mixed, or accum_freq: 1")
            if self._stats_from_data:
                self._measure_statistics()
        # open_clip bakes rank and world size into the loss; only now does the trainer know them.
        self.loss_fn = InfoNCELoss(
            local_loss=self.hparams.local_loss,
            gather_with_grad=self.hparams.gather_with_grad,
            rank=self.global_rank,
            world_size=self.trainer.world_size if self._trainer is not None else 1,
        )

    def _measure_statistics(self) -> None:
        """``image_mean/image_std: dataset``: measure them on the trainer's datamodule (every rank reads the same
        deterministic sample, so no collective is needed); a checkpoint loaded afterwards overrides them."""
        datamodule = getattr(self.trainer, "datamodule", None)
        measure = getattr(datamodule, "pixel_statistics", None)
        if not callable(measure):
            raise ValueError(
                "image_mean/image_std: 'dataset' measures the statistics on the training data, but the trainer has no "
                f"datamodule with pixel_statistics() (got {type(datamodule).__name__}); give the values as lists"
            )
        mean, std = measure()
        self._use_statistics(mean, std)
        log.info("image_mean/image_std measured on the training data: mean %s, std %s",
                 [round(v, 4) for v in mean], [round(v, 4) for v in std])

    def _use_statistics(self, mean: list[float], std: list[float]) -> None:
        self.hparams["image_mean"], self.hparams["image_std"] = list(mean), list(std)
        adapter = build_input_adapter(self.model, self.hparams.in_chans, self.hparams.channel_mode, mean, std)
        self.input_adapter = adapter.to(next(self.model.parameters()).device)
        self._stats_from_data = False

    def configure_model(self) -> None:
        """FSDP2 under ``ModelParallelStrategy``: each transformer block, then the model (:mod:`.sharding`).

        Lightning calls this after ``setup`` and before ``configure_optimizers``, so the optimizer holds the
        sharded parameters. Under any other strategy it does nothing.
        """
        if self._trainer is None or self._replicated_params is not None:  # not trained, or sharded already
            return
        mesh = data_parallel_mesh(self.trainer.strategy)
        if mesh is None:
            return
        self._replicated_params = shard_model(self.model, mesh)
        # fully_shard replaced the parameters: the groups must hold the new ones (and not keep the full ones alive).
        last_active = self.schedule.last_active
        self.schedule = UnfreezeSchedule(self.model, self.schedule.stages, self.schedule.layer_decay)
        self.schedule.last_active = last_active

    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """L2-normalised image and text features and the logit scale (``exp`` of the learnt temperature).

        Every tower call goes through here, so DDP/FSDP wrappers see it.
        """
        if image is not None:
            image = self.input_adapter(image)
        image_features, text_features, logit_scale = self.model(image, text)[:3]
        return image_features, text_features, logit_scale

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self(image=image)[0]

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return self(text=text)[1]

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not self.automatic_optimization:
            return self._accumulated_step(batch, batch_idx)
        image_features, text_features, logit_scale = self(batch["image"], batch["text"])
        loss = self._guard_loss(self._loss(image_features, text_features, logit_scale, self._groups(batch)))
        batch_size = batch["image"].shape[0]
        # Not prog_bar: Lightning turns progress-bar metrics into Python numbers after every batch (a host-device
        # sync on a GPU), whereas logged tensors are read only at log steps; check_step_flags shows the loss on
        # the progress bar when it reads the flags anyway.
        self.log("train/loss", loss, batch_size=batch_size)
        if self._is_log_step():  # each self.log costs Lightning ~1 ms of Python; the logger reads it only here
            self.log("train/logit_scale", logit_scale.detach(), batch_size=batch_size)
        return loss

    def _loss(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              groups: torch.Tensor | None) -> torch.Tensor:
        """The training loss; ``groups`` only reaches the loss when set (a custom loss may not take it)."""
        if groups is None:
            return self.loss_fn(image_features, text_features, logit_scale)
        return self.loss_fn(image_features, text_features, logit_scale, groups=groups)

    def _groups(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The positives groups of a training batch (``None``: CLIP's pairs)."""
        if self.hparams.positives == "label":
            return label_groups(batch["label"], batch.get("index"))
        if self.hparams.positives == "caption":
            return caption_groups(batch["text"])
        return None

    def _accumulated_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Feature-cache accumulation: the batch is the contrastive batch, processed in ``accum_freq`` chunks.

        1. Embed every chunk without gradients (the cache). 2. For each chunk, embed it again with gradients, put
        it in place of its cached features and back-propagate the loss over the whole batch: the gradients add
        up to the gradient of the full-batch loss, at the activation memory of one chunk. The temperature enters
        with gradient in the last pass only, so it is counted once (open_clip counts it ``accum_freq`` times).

        Several processes: each rank embeds its own chunks and the loss gathers features across ranks, as in
        one pass. Under DDP only the last backward reduces gradients (see :meth:`_ddp_gradient_sync`), and the
        temperature is in that one, since DDP expects every parameter to get a gradient from it. Under FSDP2
        every backward reduce-scatters and the sharded gradients add up.
        """
        chunks = [dict(zip(("image", "text"), pair, strict=True)) for pair in
                  zip(batch["image"].chunk(self.hparams.accum_freq), batch["text"].chunk(self.hparams.accum_freq),
                      strict=True)]
        groups = self._groups(batch)  # of the whole batch: the chunks' features are put back in batch order
        with torch.no_grad():
            cache = [self(c["image"], c["text"]) for c in chunks]
            full_loss = self._loss(torch.cat([c[0] for c in cache]), torch.cat([c[1] for c in cache]), cache[0][2],
                                   groups)
        poison = self._nonfinite_factor(full_loss)  # a non-finite batch loss makes every chunk's gradients NaN
        optimizer = self.optimizers()
        last = len(chunks) - 1
        for j, chunk in enumerate(chunks):
            image_j, text_j, scale = self(chunk["image"], chunk["text"])
            images = torch.cat([image_j if i == j else c[0] for i, c in enumerate(cache)])
            texts = torch.cat([text_j if i == j else c[1] for i, c in enumerate(cache)])
            loss = self._loss(images, texts, scale if j == last else scale.detach(), groups) * poison
            with self._ddp_gradient_sync(j == last):
                self.manual_backward(loss)
        if self._replicated_params:
            all_reduce_grads(self._replicated_params)
        self._guard_update(optimizer.optimizer)
        if self.hparams.grad_clip_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        size = batch["image"].shape[0]
        self.log("train/loss", full_loss, batch_size=size)  # not prog_bar: see training_step
        if self._is_log_step():
            self.log("train/logit_scale", cache[0][2], batch_size=size)
        return full_loss

    @contextmanager
    def _ddp_gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Under DDP, reduce gradients in this backward only if ``enabled`` (open_clip's ``no_sync`` otherwise).

        ``training_step`` runs *inside* the forward of Lightning's DDP wrapper, which, with gradient sync on,
        prepares the reducer for one more backward when it returns: a backward that never comes, so the next
        step would fail. Sync therefore stays off for the whole step and is switched on only around the last
        backward, where ``manual_backward`` prepares the reducer; that backward all-reduces the gradients
        accumulated over all chunks. Without DDP this does nothing.
        """
        ddp = self.trainer.strategy.model if self._trainer is not None else None
        if not isinstance(ddp, DistributedDataParallel):
            yield
            return
        ddp.require_backward_grad_sync = enabled
        try:
            yield
        finally:
            ddp.require_backward_grad_sync = False

    # ------------------------------------------------------------------ non-finite steps, without host syncs
    def _nonfinite_factor(self, loss: torch.Tensor) -> torch.Tensor:
        """1 for a finite loss, NaN otherwise, on the device; the loss is kept for the error message.

        Multiplying the loss by it is exact for a finite loss and makes every gradient of a non-finite one NaN, so
        that the gradient check of :meth:`_guard_update` sees it on every rank (DDP averages the NaN into all
        ranks' gradients) without reading anything on the host.
        """
        guard = self._finite_guard
        if guard is None or guard.skip.device != loss.device:
            guard = self._finite_guard = _FiniteGuard(loss.device)
        guard.last_loss = loss.detach()
        return torch.where(torch.isfinite(guard.last_loss), guard.one, torch.full_like(guard.one, math.nan))

    def _guard_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._nonfinite_factor(loss)

    def _guard_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep a non-finite update out of the weights without a host-device sync (as ``GradScaler`` does).

        After the backward (and the gradient reduction across ranks), one fused kernel checks every gradient for
        NaN/inf. From the first non-finite step on, the skip flag stays set and is fused AdamW's ``found_inf``:
        the optimizer then leaves weights, moments and step counts as they are, on the device. The host reads
        the flag only every ``host_sync_every_n_steps`` and at every checkpoint (:meth:`check_step_flags`) and
        stops the run there, so neither the weights nor any checkpoint ever holds a non-finite update.

        Where the optimizer cannot take ``found_inf`` (not fused), the flag is read here, every step, and the run
        stops before the optimizer step.

        Under a ``GradScaler`` (``16-mixed``) non-finite *gradients* are the scaler's business: an overflow of the
        scaled fp16 gradients is expected now and then (the scaler skips that step and lowers its scale), so only a
        non-finite *loss* stops the run here: scaling cannot cause one, and lowering the scale cannot cure it.
        """
        guard = self._finite_guard
        if guard is None:  # no loss went through _nonfinite_factor (a custom training_step)
            return
        if self._grad_scaler() is not None:
            found = (~torch.isfinite(guard.last_loss)).to(guard.skip.dtype)
            self._flag_step(guard, found)
            self.check_step_flags(steps_done=self.global_step + 1)  # the scaler reads its own flag every step too
            return
        grads: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        trained = self._stage.trained if self._stage is not None else [
            p for group in optimizer.param_groups for p in group["params"]]
        for param in trained:
            grad = param.grad
            if grad is not None:
                grad = grad.to_local() if hasattr(grad, "to_local") else grad  # FSDP2: this rank's shard
                grads.setdefault((grad.device, grad.dtype), []).append(grad)
        found = torch.zeros((), device=guard.skip.device)
        for (device, _), tensors in grads.items():
            flag = found if device == found.device else torch.zeros((), device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, flag, guard.one.to(device))  # x 1: exact
            if flag is not found:
                found = torch.maximum(found, flag.to(found.device))
        self._flag_step(guard, found)
        if self._device_skip(optimizer):
            optimizer.found_inf = guard.skip
        else:
            self.check_step_flags(steps_done=self.global_step + 1)  # raises before this step's update

    @staticmethod
    def _flag_step(guard: _FiniteGuard, found: torch.Tensor) -> None:
        """Record this step's non-finite flag ``found`` (0-d, on the device): sticky skip flag, count, first loss."""
        guard.first_loss = torch.where(guard.skip > 0, guard.first_loss, guard.last_loss.float())
        torch.maximum(guard.skip, found, out=guard.skip)
        guard.skipped.add_(guard.skip)

    def _grad_scaler(self) -> Any:
        """The trainer's ``GradScaler`` (``precision: 16-mixed``), or ``None``."""
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def _device_skip(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether the optimizer skips a flagged step on the device (fused, and no GradScaler replacing the flag)."""
        return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and self._grad_scaler() is None

    @property
    def host_sync_interval(self) -> int:
        """Steps between two host reads of the step flags (``host_sync_every_n_steps`` resolved for this trainer)."""
        every = self.hparams.get("host_sync_every_n_steps")
        if every is not None:
            return int(every)
        if self._trainer is None or self.trainer.strategy.root_device.type == "cpu":
            return 1
        return max(1, int(self.trainer.log_every_n_steps))

    def check_step_flags(self, preempted: bool = False, steps_done: int | None = None) -> bool:
        """Read the device flags on the host, in one collective with ``preempted`` (this rank's preemption note).

        Raises :class:`NonFiniteLossError` when any rank had a non-finite step, naming the first one; otherwise
        returns whether any rank was preempted. ``steps_done``: optimizer steps taken, the flagged ones included
        (default ``global_step``, right after a step). Every rank must call it at the same step.
        """
        guard = self._finite_guard
        device = guard.skip.device if guard is not None else self.device
        skipped = guard.skipped if guard is not None else torch.zeros((), device=device)
        flags = torch.stack([skipped.float(), torch.tensor(float(preempted), device=device)])
        if self._trainer is not None:
            flags = self.trainer.strategy.reduce(flags, reduce_op="max")
            self._flags_read_at = self.global_step
        skipped_steps, any_preempted = (int(v) for v in flags.tolist())
        if self._trainer is not None and guard is not None:  # the device is synchronised now: a free read
            self.trainer.progress_bar_metrics["train/loss"] = float(guard.last_loss)
        if skipped_steps:
            steps_done = self.global_step if steps_done is None else steps_done
            first = steps_done - skipped_steps
            local = float(guard.first_loss) if guard is not None and guard.skipped.item() > 0 else float("nan")
            raise NonFiniteLossError(
                f"non-finite training loss or gradient (loss {local:.4g} on rank {self.global_rank}) at global step "
                f"{first} (seen at step {steps_done - 1}, epoch {self.current_epoch}; "
                f"host_sync_every_n_steps={self.host_sync_interval}); training stopped, and no update was applied "
                "from that step on: the weights and every checkpoint written are those of the last finite step. "
                "Lower the learning rate, check the data, or resume from the last checkpoint."
            )
        return bool(any_preempted)

    def _read_flags_if_unread(self) -> None:
        if self._finite_guard is not None and self._flags_read_at != self.global_step:
            self.check_step_flags()

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
        image, text = batch["image"], batch["text"]
        multi = text.ndim == 3
        captions_per_image = text.shape[1] if multi else 1
        flat_text = text.flatten(0, 1) if multi else text
        image_features, text_features, logit_scale = self(image, flat_text)
        # The loss pairs each image with its first caption, as training does with one caption per image.
        first = text_features.view(image.shape[0], captions_per_image, -1)[:, 0]
        loss = self.loss_fn(image_features, first, logit_scale)
        self.log(f"{prefix}/loss", loss, prog_bar=True, sync_dist=True, batch_size=image.shape[0])
        out = {"image_features": image_features, "text_features": text_features, "captions_per_image": captions_per_image}
        for key in ("label", "index"):
            if key in batch:
                out[key] = batch[key]
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        out = {"image_features": self.encode_image(batch["image"])}
        for key in ("label", "index"):
            if key in batch:
                out[key] = batch[key]
        return out

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for group, members in self.schedule.groups.items():
            for name, param in members:
                groups.setdefault((group, _no_weight_decay(name, param)), []).append(param)
        param_groups = [
            {
                "params": params,
                "unfreeze_group": group,
                "weight_decay": 0.0 if no_decay else self.hparams.weight_decay,
                "lr": self.hparams.lr,
            }
            for (group, no_decay), params in groups.items()
        ]
        # Fused where the device has the kernel: besides being the fastest AdamW, it takes ``found_inf``, which
        # keeps a non-finite step out of the weights without a host-device sync (_guard_update). Not under a
        # GradScaler (16-mixed): Lightning leaves a fused optimizer's gradients scaled until its step and so refuses
        # gradient clipping with it (the paper's recipe clips at 1.0); unfused, Lightning unscales them first.
        params = [p for group in param_groups for p in group["params"]]
        fused = (self._grad_scaler() is None
                 and all(p.is_floating_point() and p.device.type in fused_adamw_devices() for p in params)) or None
        return torch.optim.AdamW(param_groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas), eps=self.hparams.eps,
                                 fused=fused)

    def lr_multiplier(self, step: int) -> float:
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return cosine_with_warmup(step, total, self.hparams.warmup_steps, self.hparams.min_lr_ratio)

    def on_train_start(self) -> None:
        # A new fit (new trainer, optimizer, DDP wrapper): the stage is entered afresh at its first batch, and
        # the non-finite record starts clean.
        self._stage = None
        self._finite_guard = None
        self._flags_read_at = -1

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set every group's LR for this step; at a stage boundary (only there) switch what trains.

        The LR is a pure function of (global_step, epoch), so it is right after a resume without any saved
        scheduler state. What changes only between stages (which groups train, their multipliers, the frozen
        parameters) is resolved once per stage by :meth:`_enter_stage`, not every step.
        """
        optimizer = self.optimizers(use_pl_optimizer=False)
        epoch, step = self.current_epoch, self.global_step
        index = self.schedule.stage_index(epoch, step)
        if self._stage is None or self._stage.index != index or self._stage.optimizer is not optimizer:
            self._stage = self._enter_stage(optimizer, index, epoch, step)
        base = self.hparams.lr * self.lr_multiplier(step)
        for group, multiplier in self._stage.lr_multipliers:
            group["lr"] = base * multiplier
        if self._is_log_step():
            self.log("train/lr", base, batch_size=1)
            if index is not None:
                self.log("train/unfreeze_stage", float(index), batch_size=1)

    def _is_log_step(self) -> bool:
        """Whether the logger writes this step's metrics (Lightning's ``should_update_logs`` during a step):
        metrics only loggers read are logged then, fresh, and not at the other steps."""
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def _enter_stage(self, optimizer: torch.optim.Optimizer, index: int | None, epoch: int, step: int) -> _Stage:
        """Make the stage in force the one that trains: ``requires_grad``, optimizer state, DDP reducer.

        A group frozen for the stage gets ``requires_grad=False``: autograd then neither computes its gradients
        nor, where everything below it is frozen too (a frozen trunk under trainable projections), keeps its
        activations. AdamW skips a parameter whose ``grad`` is ``None`` entirely, so a frozen parameter is neither
        moved nor decayed and its moments stay as they are. A group that unfreezes has its AdamW state cleared
        (moments from an earlier training period would push it with stale statistics); ``schedule.last_active``
        (saved in checkpoints) makes that happen after a resume too.
        """
        multipliers = self.schedule.multipliers(epoch, step)
        active = frozenset(g for g, m in multipliers.items() if m > 0)
        newly_active = active - self.schedule.last_active if self.schedule.last_active is not None else frozenset()
        trained: list[torch.nn.Parameter] = []
        for group in optimizer.param_groups:
            name = group["unfreeze_group"]
            for param in group["params"]:
                if name in newly_active:
                    optimizer.state.pop(param, None)
                if name in active:
                    param.requires_grad_(True)
                    trained.append(param)
                else:
                    param.requires_grad_(False)
                    param.grad = None  # a gradient left from the stage before must not reach the optimizer
                    # An (empty) optimizer state entry, filled by AdamW at the first update after unfreezing:
                    # FSDP2 checkpoints load optimizer state strictly and refuse a parameter without one.
                    optimizer.state.setdefault(param, {})
        self.schedule.last_active = active
        if self._replicated_params is not None:
            reshard_all(self.model)
        self._follow_stage_in_ddp()
        lr_multipliers = [(group, multipliers[group["unfreeze_group"]]) for group in optimizer.param_groups]
        return _Stage(index=index, optimizer=optimizer, lr_multipliers=lr_multipliers, trained=trained)

    def _follow_stage_in_ddp(self) -> None:
        """Under DDP, rebuild the wrapper when the set of trainable parameters changed.

        DDP's reducer is built for the parameters that require a gradient when the wrapper is created and expects
        exactly those to receive one in every backward: a parameter frozen since would fail the next step
        ("expected to have finished reduction"), and one unfrozen since would never be averaged (the ranks would
        drift apart). ``find_unused_parameters=True`` would cope with the first only, at the price of a graph
        traversal and a full-size all-reduce of zeros for the frozen trunk every step. Re-wrapping at a stage
        boundary costs one broadcast of the weights (identical on every rank) and leaves a reducer that
        communicates only what trains. Every rank enters a stage at the same global step, so the collectives of
        the new wrapper line up.
        """
        strategy = self.trainer.strategy
        ddp = strategy.model
        if not isinstance(ddp, DistributedDataParallel):
            return
        trainable = [p for p in ddp.module.parameters() if p.requires_grad]
        built_for = getattr(ddp, "_sarclip_trainable", None)
        if built_for is None:  # wrapped by Lightning before the first stage, when every parameter trained (_thaw)
            built_for = ddp._module_parameters
        if len(built_for) == len(trainable) and all(a is b for a, b in zip(built_for, trainable, strict=True)):
            return
        ddp._remove_autograd_hooks()  # the old reducer must not see the next backward
        # Lightning's own wrapping (same DDP kwargs, device ids and communication hooks as the first one).
        strategy.model = strategy._setup_model(ddp.module)
        strategy._register_ddp_hooks()
        strategy.model._sarclip_trainable = trainable
        if hasattr(strategy, "_pl_static_graph_delay_done"):
            strategy._pl_static_graph_delay_done = False

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs before gradient clipping: under FSDP2 the unsharded parameters' gradients are averaged like the
        # sharded ones. Frozen parameters have no gradient (requires_grad=False), so they neither move nor count
        # towards the clipping norm.
        if self._replicated_params and self.automatic_optimization:
            all_reduce_grads(self._replicated_params)
        if self.automatic_optimization:
            self._guard_update(optimizer)

    def on_train_end(self) -> None:
        self._read_flags_if_unread()  # a non-finite step since the last read still fails the run
        self._thaw()

    def teardown(self, stage: str) -> None:
        self._thaw()  # also after a fit that raised (on_train_end does not run then)

    def _thaw(self) -> None:
        """Outside ``fit`` every parameter requires a gradient again, as the module was built."""
        if getattr(self, "_stage", None) is not None:
            for param in self.parameters():
                param.requires_grad_(True)
            self._stage = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # CLIP's temperature clamp, after the optimizer step: logit_scale.exp() stays in [1, 100].
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        if self.global_step % self.host_sync_interval == 0:
            self._read_flags_if_unread()

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # No checkpoint after a non-finite step: the flags are read (on every rank: all of them save) first.
        if self._trainer is not None and self.trainer.state.fn == "fit":  # also at validation end, within fit
            self._read_flags_if_unread()
        checkpoint["unfreeze_schedule"] = self.schedule.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.schedule.load_state_dict(checkpoint.get("unfreeze_schedule", {}))
        if self._statistics_configured_from_data:
            # The weights were trained with the statistics measured then: a resume or an evaluation keeps them, even
            # if the data read today would measure slightly different ones.
            saved = checkpoint.get("hyper_parameters") or {}
            mean, std = saved.get("image_mean"), saved.get("image_std")
            if isinstance(mean, list) and isinstance(std, list):
                self._use_statistics(mean, std)
