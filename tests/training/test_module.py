"""SARCLIPModule: temperature clamp, weight-decay groups, per-step LR, dual-pol input, hub weights."""

import math
import os

import lightning.pytorch as pl
import pytest
import torch

from lightning_sarclip.models import create_model
from lightning_sarclip.training import SyntheticSARDataModule
from lightning_sarclip.training.module import LOGIT_SCALE_MAX, SARCLIPModule
from lightning_sarclip.training.unfreeze import cosine_with_warmup
from tests.conftest import TEST_ARCH
from tests.helpers import RandomPairsDataModule


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


@pytest.mark.parametrize(("start", "bound"), [(6.0, LOGIT_SCALE_MAX), (-2.0, 0.0)])
def test_logit_scale_is_clamped_after_each_step(tmp_path, start, bound):
    module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-6, warmup_steps=1)
    with torch.no_grad():
        module.model.logit_scale.fill_(start)
    _trainer(tmp_path, limit_train_batches=1).fit(module, RandomPairsDataModule())
    assert module.model.logit_scale.item() == pytest.approx(bound)


def test_no_weight_decay_on_biases_norms_embeddings_and_logit_scale():
    module = SARCLIPModule(model_name=TEST_ARCH, weight_decay=0.3)
    optimizer = module.configure_optimizers()
    names = {id(p): n for n, p in module.model.named_parameters()}
    seen = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            seen += 1
            exempt = param.ndim < 2 or "embedding" in name or "logit_scale" in name or ".ln_" in name
            assert group["weight_decay"] == (0.0 if exempt else 0.3), name
    assert seen == len(names)  # every parameter is in the optimizer, frozen or not


class _RecordLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(max(g["lr"] for g in optimizer.param_groups))


def test_learning_rate_is_warmup_then_cosine_per_step(tmp_path):
    module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=2, min_lr_ratio=0.1)
    recorder = _RecordLR()
    _trainer(tmp_path, max_epochs=2, limit_train_batches=3, callbacks=[recorder]).fit(module, RandomPairsDataModule())
    expected = [1e-3 * cosine_with_warmup(s, 6, 2, 0.1) for s in range(6)]
    assert recorder.lrs == pytest.approx(expected)
    assert recorder.lrs[0] == pytest.approx(5e-4) and recorder.lrs[1] == pytest.approx(1e-3)


def test_dual_pol_training_on_synthetic_data(tmp_path):
    data = SyntheticSARDataModule(num_train=8, num_val=4, num_test=4, batch_size=4, image_size=32, in_chans=2,
                                  tokenizer=TEST_ARCH)
    module = SARCLIPModule(model_name=TEST_ARCH, image_size=32, in_chans=2)
    _trainer(tmp_path, fast_dev_run=1).fit(module, data)
    assert math.isfinite(float(_trainer(tmp_path, fast_dev_run=1).validate(module, data)[0]["val/loss"]))


def test_fold_channel_mode_trains(tmp_path):
    module = SARCLIPModule(model_name=TEST_ARCH, in_chans=1, channel_mode="fold")
    assert module.model.visual.conv1.in_channels == 1
    _trainer(tmp_path, fast_dev_run=1).fit(module, RandomPairsDataModule())


def test_hf_hub_weights_are_read_with_the_same_loader(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    source = create_model(TEST_ARCH).model
    path = tmp_path / "RemoteCLIP-test.safetensors"
    save_file(source.state_dict(), path)
    calls = []

    def fake_download(repo_id, filename, cache_dir=None):
        calls.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    module = SARCLIPModule(model_name=TEST_ARCH, pretrained="hf-hub:someone/remoteclip/RemoteCLIP-test.safetensors")
    assert calls == [("someone/remoteclip", "RemoteCLIP-test.safetensors")]
    for (name, a), b in zip(source.state_dict().items(), module.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _poisoned_module(bad_step: int, **kwargs) -> SARCLIPModule:
    """A module whose training loss is NaN at global step ``bad_step`` (only there)."""
    module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-4, warmup_steps=1, **kwargs)
    loss_fn = module.loss_fn

    class Poison(torch.nn.Module):
        def forward(self, image, text, scale):
            loss = loss_fn(image, text, scale)
            return loss * float("nan") if module.global_step == bad_step else loss

    def setup(stage):
        module.loss_fn = Poison()

    module.setup = setup
    return module


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_sarclip.training.module import NonFiniteLossError

    module = _poisoned_module(3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    with pytest.raises(NonFiniteLossError, match="global step 3 "):
        _trainer(tmp_path, max_epochs=2, limit_train_batches=4, callbacks=[checkpoint],
                 enable_checkpointing=True).fit(module, RandomPairsDataModule())
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert all(torch.isfinite(p).all() for p in module.parameters())


class _Snapshot(pl.Callback):
    """The weights and AdamW step counts just before the batch of global step ``step``."""

    def __init__(self, step: int):
        self.step, self.weights, self.steps = step, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
            self.steps = [float(s["step"]) for s in trainer.optimizers[0].state.values() if "step" in s]


def test_a_nan_step_between_flag_reads_leaves_the_weights_intact(tmp_path):
    """The flag is read every 4 steps; the NaN at step 5 is kept out of the weights on the device, and so are
    steps 6 and 7 (the skip is sticky); the read after step 8 stops the run naming step 5."""
    from lightning_sarclip.training.module import NonFiniteLossError

    module = _poisoned_module(5, host_sync_every_n_steps=4)
    reads = []
    check = module.check_step_flags
    module.check_step_flags = lambda *a, **k: reads.append(module.global_step) or check(*a, **k)
    snapshot = _Snapshot(5)
    with pytest.raises(NonFiniteLossError, match="global step 5 .*seen at step 7"):
        _trainer(tmp_path, max_epochs=3, limit_train_batches=4, callbacks=[snapshot]).fit(module, RandomPairsDataModule())
    assert reads == [4, 8]  # no host read of the flag in between
    for name, value in module.state_dict().items():
        assert torch.equal(value, snapshot.weights[name]), name
    optimizer_steps = [float(s["step"]) for s in module.trainer.optimizers[0].state.values() if "step" in s]
    assert optimizer_steps == snapshot.steps == [5.0] * len(optimizer_steps)


def test_a_checkpoint_between_flag_reads_reads_the_flag_first(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_sarclip.training.module import NonFiniteLossError

    module = _poisoned_module(4, host_sync_every_n_steps=50)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=3)
    with pytest.raises(NonFiniteLossError, match="global step 4 "):
        _trainer(tmp_path, max_epochs=3, limit_train_batches=4, callbacks=[checkpoint],
                 enable_checkpointing=True).fit(module, RandomPairsDataModule())
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_nan_in_the_last_steps_fails_the_run_at_its_end(tmp_path):
    from lightning_sarclip.training.module import NonFiniteLossError

    module = _poisoned_module(6, host_sync_every_n_steps=50)
    with pytest.raises(NonFiniteLossError, match="global step 6 "):
        _trainer(tmp_path, max_epochs=2, limit_train_batches=4).fit(module, RandomPairsDataModule())


def _loss_and_grads(module: SARCLIPModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    image_features, text_features, scale = module(batch["image"], batch["text"])
    loss = module.loss_fn(image_features, text_features, scale)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    batch = next(iter(RandomPairsDataModule(batch_size=6).train_dataloader()))
    torch.manual_seed(0)
    plain = SARCLIPModule(model_name=TEST_ARCH)
    checkpointed = SARCLIPModule(model_name=TEST_ARCH, grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    loss_a, grads_a = _loss_and_grads(plain.train(), batch)
    loss_b, grads_b = _loss_and_grads(checkpointed.train(), batch)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-4, warmup_steps=1)
    trainer = _trainer(tmp_path, precision="bf16-mixed", limit_train_batches=2)
    trainer.fit(module, RandomPairsDataModule())
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in module.parameters())


def _fp16_plugin(init_scale: float = 2.0**16, backoff: float = 0.5):
    """``precision: 16-mixed`` as Lightning builds it on a GPU (fp16 autocast + GradScaler), here on the CPU: the
    Trainer itself turns ``16-mixed`` on a CPU into ``bf16-mixed``, so the plugin is passed explicitly."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, backoff_factor=backoff)
    return MixedPrecision("16-mixed", "cpu", scaler=scaler)


def test_fp16_with_a_grad_scaler_clips_and_survives_overflow(tmp_path):
    """The paper's recipe (amp = fp16 + loss scaling, gradient clipping 1.0): the optimizer is not fused (Lightning
    refuses to clip with a fused one under a scaler), and a scaled-gradient overflow is skipped by the scaler, which
    lowers its scale, instead of being taken for a non-finite loss by the module's guard."""
    plugin = _fp16_plugin(init_scale=2.0**60, backoff=2.0**-50)  # the first step's scaled gradients overflow fp16
    module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=1)
    start = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = _trainer(tmp_path, plugins=[plugin], gradient_clip_val=1.0, limit_train_batches=3)
    trainer.fit(module, RandomPairsDataModule())
    assert trainer.global_step == 3
    optimizer = trainer.optimizers[0]
    assert not optimizer.defaults.get("fused")
    assert plugin.scaler.get_scale() < 2.0**60  # it backed off: at least one step overflowed and was skipped
    steps = {float(s["step"]) for s in optimizer.state.values() if "step" in s}
    assert steps and max(steps) < 3  # the overflowing step left AdamW untouched
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in module.parameters())
    assert any(not torch.equal(v, start[k]) for k, v in module.state_dict().items())  # later steps did train


def test_fp16_a_nan_loss_still_stops_the_run(tmp_path):
    from lightning_sarclip.training.module import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="global step 1 "):
        _trainer(tmp_path, plugins=[_fp16_plugin()], gradient_clip_val=1.0, limit_train_batches=3).fit(
            _poisoned_module(1), RandomPairsDataModule())


@pytest.mark.slow
def test_compiled_towers_match_eager_and_keep_parameter_names():
    batch = next(iter(RandomPairsDataModule(batch_size=4).train_dataloader()))
    eager = SARCLIPModule(model_name=TEST_ARCH).eval()
    compiled = SARCLIPModule(model_name=TEST_ARCH, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    assert list(compiled.state_dict()) == list(eager.state_dict())
    with torch.no_grad():
        for a, b in zip(eager(batch["image"], batch["text"])[:2], compiled(batch["image"], batch["text"])[:2],
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("local_loss", [False])
def test_feature_cache_accumulation_equals_one_big_batch(tmp_path, local_loss):
    """Embedding a batch of 8 in 2 chunks (accum_freq=2) takes exactly the optimizer steps of one pass."""
    pl.seed_everything(0)
    big = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=1, local_loss=local_loss)
    small = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=1, local_loss=local_loss, accum_freq=2,
                          grad_clip_norm=1.0)
    small.load_state_dict(big.state_dict())
    small_start = {k: v.clone() for k, v in big.state_dict().items()}
    _trainer(tmp_path / "a", max_epochs=2, limit_train_batches=2, gradient_clip_val=1.0).fit(
        big, RandomPairsDataModule(n=16, batch_size=8))
    _trainer(tmp_path / "b", max_epochs=2, limit_train_batches=2).fit(small, RandomPairsDataModule(n=16, batch_size=8))
    assert small.global_step == big.global_step == 4
    for (name, a), b in zip(big.state_dict().items(), small.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)  # summation order, amplified by Adam
    # Lightning's gradient accumulation (each micro-batch sees only its own negatives) is a different step.
    plain_accum = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=1, local_loss=local_loss)
    plain_accum.load_state_dict(small_start)
    _trainer(tmp_path / "c", max_epochs=2, limit_train_batches=4, accumulate_grad_batches=2,
             gradient_clip_val=1.0).fit(plain_accum, RandomPairsDataModule(n=16, batch_size=4))
    gap = max((a - b).abs().max().item() for a, b in zip(big.state_dict().values(),
                                                        plain_accum.state_dict().values(), strict=True))
    assert gap > 1e-3


def test_accumulation_settings_are_checked():
    with pytest.raises(ValueError, match="accum_freq must be >= 1"):
        SARCLIPModule(model_name=TEST_ARCH, accum_freq=0)
    with pytest.raises(ValueError, match="grad_clip_norm is for accum_freq > 1"):
        SARCLIPModule(model_name=TEST_ARCH, grad_clip_norm=1.0)


def _ddp_accumulation_runs(rank: int, world_size: int, root: str) -> dict[str, list[float]]:
    """In each of two gloo processes: DDP with accum_freq 1 and 2 on the same global batch, both loss variants."""
    from pathlib import Path

    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world_size), NODE_RANK="0")
    losses = {}
    for local_loss in (False, True):
        for accum_freq in (1, 2):
            name = f"local{int(local_loss)}_accum{accum_freq}"
            pl.seed_everything(0)
            module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=1, local_loss=local_loss,
                                   accum_freq=accum_freq, grad_clip_norm=0.05 if accum_freq > 1 else None)
            recorder = _RecordLoss()
            _trainer(Path(root) / name, devices=2, strategy="ddp", max_epochs=2, limit_train_batches=2,
                     gradient_clip_val=0.05 if accum_freq == 1 else None, callbacks=[recorder]).fit(
                module, RandomPairsDataModule(n=32, batch_size=8))
            losses[name] = recorder.losses
            torch.save(module.state_dict(), Path(root) / f"{name}_rank{rank}.pt")
    return losses


class _RecordLoss(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


@pytest.mark.slow
def test_feature_cache_accumulation_under_ddp_equals_one_pass(tmp_path):
    """Two DDP ranks, 8 samples each (global contrastive batch 16): 2 chunks per rank take the same steps as 1."""
    from tests.distributed import run_distributed

    rank0, rank1 = run_distributed(_ddp_accumulation_runs, args=(str(tmp_path),))
    for variant in ("local0", "local1"):
        one, two = f"{variant}_accum1", f"{variant}_accum2"
        assert len(rank0[one]) == 4
        for losses in (rank0, rank1):
            assert losses[two] == pytest.approx(losses[one], rel=1e-5, abs=1e-6), variant
        weights = {(name, r): torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=True)
                   for name in (one, two) for r in (0, 1)}
        start = SARCLIPModule(model_name=TEST_ARCH).state_dict()
        for key, reference in weights[one, 0].items():
            assert torch.equal(weights[one, 1][key], reference) and torch.equal(weights[two, 1][key], weights[two, 0][key])
            torch.testing.assert_close(weights[two, 0][key], reference, rtol=1e-4, atol=1e-5, msg=key)
        assert not torch.equal(weights[one, 0]["model.logit_scale"], start["model.logit_scale"])


def test_label_positives_train_through_feature_cache_accumulation_as_one_batch(tmp_path):
    """``positives: label`` on labelled synthetic scenes: the groups follow the chunks of accum_freq exactly, and
    the step differs from CLIP's pairs (same-class columns are positives, no longer negatives)."""
    def fit(**kwargs):
        pl.seed_everything(0)
        module = SARCLIPModule(model_name=TEST_ARCH, image_size=32, lr=1e-3, warmup_steps=1, **kwargs)
        module.load_state_dict(start)
        data = SyntheticSARDataModule(num_train=16, num_val=4, num_test=4, batch_size=8, image_size=32,
                                      tokenizer=TEST_ARCH, num_workers=0)
        _trainer(tmp_path / str(len(results)), max_epochs=1, limit_train_batches=2).fit(module, data)
        results.append(module.state_dict())

    pl.seed_everything(0)
    start = SARCLIPModule(model_name=TEST_ARCH, image_size=32).state_dict()
    results: list[dict] = []
    fit(positives="label")
    fit(positives="label", accum_freq=2, grad_clip_norm=1e9)
    fit(positives="pair")
    def gap(a: dict, b: dict) -> float:
        return max((x - y).abs().max().item() for x, y in zip(a.values(), b.values(), strict=True))

    # summation order, amplified by Adam: about 2e-5 here, for pairs alike; the positives change moves 4e-3
    assert gap(results[0], results[1]) < 1e-4 < 1e-3 < gap(results[0], results[2])
    with pytest.raises(ValueError, match="positives must be one of"):
        SARCLIPModule(model_name=TEST_ARCH, positives="class")


def test_scalars_only_loggers_read_are_logged_fresh_at_log_steps(tmp_path):
    """``train/lr``/``train/logit_scale`` are logged only at the steps the logger writes (each ``self.log`` costs
    Lightning Python time every step), with that step's value."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=1)
    logger = CSVLogger(tmp_path)
    _trainer(tmp_path, max_steps=4, limit_train_batches=4, logger=logger, log_every_n_steps=2).fit(
        module, RandomPairsDataModule())
    with open(os.path.join(logger.log_dir, "metrics.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 3]
    for row in rows:
        expected = 1e-3 * cosine_with_warmup(int(row["step"]), 4, 1)
        assert float(row["train/lr"]) == pytest.approx(expected)
        assert float(row["train/logit_scale"]) > 0 and float(row["train/loss"]) > 0


def test_fp16_refuses_feature_cache_accumulation(tmp_path):
    module = SARCLIPModule(model_name=TEST_ARCH, accum_freq=2, grad_clip_norm=1.0)
    with pytest.raises(ValueError, match="accum_freq > 1 does not combine with trainer.precision 16-mixed"):
        _trainer(tmp_path, plugins=[_fp16_plugin()]).fit(module, RandomPairsDataModule(batch_size=4))
