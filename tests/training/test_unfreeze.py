"""Staged unfreezing: group enumeration, selectors, exact parameter updates, resume and DDP."""

import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_sarclip.models import create_model
from lightning_sarclip.training.module import SARCLIPModule
from lightning_sarclip.training.unfreeze import UnfreezeSchedule, cosine_with_warmup, group_of
from tests.conftest import TEST_ARCH
from tests.helpers import RandomPairsDataModule, StopAfterEpoch, changed, snapshot

STAGES = [
    {"train": ["projections", "logit_scale"], "start_epoch": 0},
    {"train": ["projections", "logit_scale", "vision.blocks[-1:]"], "start_epoch": 1, "lr_scale": {"vision": 0.5}},
]


def _module(**kwargs) -> SARCLIPModule:
    kwargs.setdefault("unfreeze", STAGES)
    return SARCLIPModule(model_name=TEST_ARCH, in_chans=1, lr=1e-3, warmup_steps=1, **kwargs)


def _trainer(tmp_path, max_epochs, callbacks=(), **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **kwargs,
    )


def _group_keys(module: SARCLIPModule, groups: set[str]) -> set[str]:
    return {f"model.{n}" for g in groups for n, _ in module.schedule.groups[g]}


def test_groups_of_an_open_clip_vit():
    model = create_model(TEST_ARCH).model
    names = UnfreezeSchedule(model).group_names
    assert set(names) == {
        "vision.stem", "vision.block.0", "vision.block.1", "vision.head", "vision.proj",
        "text.stem", "text.block.0", "text.block.1", "text.head", "text.proj", "logit_scale",
    }
    assert group_of("visual.conv1.weight") == "vision.stem"
    assert group_of("visual.proj") == "vision.proj"
    assert group_of("text_projection") == "text.proj"
    assert group_of("visual.layer3.0.conv1.weight") == "vision.block.2"  # ModifiedResNet stages


def test_selectors():
    schedule = UnfreezeSchedule(create_model(TEST_ARCH).model)
    assert schedule.select("vision.blocks[-1:]") == ["vision.block.1"]
    assert schedule.select("text.blocks[0]") == ["text.block.0"]
    assert schedule.select("vision.blocks") == ["vision.block.0", "vision.block.1"]
    assert set(schedule.select("projections")) == {"vision.proj", "text.proj"}
    assert len(schedule.select("all")) == len(schedule.group_names)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"train": ["vision.decoder"], "start_epoch": 0}], "selector 'vision.decoder' matches no parameter group"),
        ([{"train": ["vision.blocks[7]"], "start_epoch": 0}], "matches no parameter group"),
        ([{"train": ["text"], "start_epoch": 2}], "first stage must start at epoch 0"),
        ([{"train": ["text"]}], "exactly one of start_epoch or start_step"),
    ],
)
def test_bad_stage_fails_when_the_module_is_built(stages, message):
    with pytest.raises(ValueError, match=message):
        _module(unfreeze=stages)


def test_layer_decay_multipliers():
    schedule = UnfreezeSchedule(create_model(TEST_ARCH).model, layer_decay=0.5)
    m = schedule.multipliers(0, 0)
    assert m["vision.proj"] == m["vision.head"] == 1.0
    assert m["vision.block.1"] == 0.5 and m["vision.block.0"] == 0.25 and m["vision.stem"] == 0.125
    assert m["logit_scale"] == 1.0


def test_cosine_with_warmup_matches_open_clip_shape():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_exactly_the_scheduled_parameters_change(tmp_path):
    pl.seed_everything(0)
    module = _module()
    data = RandomPairsDataModule()
    before = snapshot(module)
    _trainer(tmp_path, max_epochs=2, callbacks=[StopAfterEpoch(0)]).fit(module, data)
    after_stage0 = snapshot(module)
    stage0 = _group_keys(module, {"vision.proj", "text.proj", "logit_scale"})
    assert changed(before, after_stage0) == stage0

    _trainer(tmp_path, max_epochs=2).fit(module, data)  # continues into epoch 1 (stage 1)
    after_stage1 = snapshot(module)
    stage1 = stage0 | _group_keys(module, {"vision.block.1"})
    assert changed(after_stage0, after_stage1) == stage1


class _RecordGraph(pl.Callback):
    """Per step: whether the image trunk's output is part of the autograd graph, and which parameters train."""

    def __init__(self, module: SARCLIPModule):
        self.trunk_in_graph: list[bool] = []
        self.trainable: list[set[str]] = []
        module.model.visual.transformer.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        if torch.is_grad_enabled():
            self.trunk_in_graph.append(output.requires_grad)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.trainable.append({n for n, p in pl_module.named_parameters() if p.requires_grad})
        for group in optimizer.param_groups:
            for param in group["params"]:
                assert (param.grad is None) == (not param.requires_grad)


def test_frozen_groups_do_no_backward_and_thaw_after_fit(tmp_path):
    """Stage 0 trains the projections only: the trunk runs outside the graph (no backward, no saved activations);
    stage 1 unfreezes the last vision block, which brings the trunk's output back into it."""
    pl.seed_everything(0)
    module = _module()
    recorder = _RecordGraph(module)
    _trainer(tmp_path, max_epochs=2, callbacks=[recorder]).fit(module, RandomPairsDataModule())
    assert recorder.trunk_in_graph == [False, False, True, True]
    stage0 = _group_keys(module, {"vision.proj", "text.proj", "logit_scale"})
    stage1 = stage0 | _group_keys(module, {"vision.block.1"})
    assert [recorder.trainable[0], recorder.trainable[2]] == [stage0, stage1]
    assert all(p.requires_grad for p in module.parameters())  # outside fit, the module is as it was built


def _fit_interrupted(tmp_path, stop_after: int, total: int) -> dict:
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    module = _module(unfreeze=STAGES + [{"train": ["all"], "start_epoch": 2}])
    _trainer(tmp_path, total, callbacks=[ckpt, StopAfterEpoch(stop_after)]).fit(module, RandomPairsDataModule())
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.exists()
    resumed = _module(unfreeze=STAGES + [{"train": ["all"], "start_epoch": 2}])
    ckpt2 = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    before = snapshot(resumed)
    _trainer(tmp_path, total, callbacks=[ckpt2]).fit(resumed, RandomPairsDataModule(), ckpt_path=str(last))
    return {"module": resumed, "before": before}


def test_resume_after_unfreeze_keeps_groups_trainable_and_matches_uninterrupted(tmp_path):
    pl.seed_everything(0)
    straight = _module(unfreeze=STAGES + [{"train": ["all"], "start_epoch": 2}])
    _trainer(tmp_path / "a", 3).fit(straight, RandomPairsDataModule())

    # Stop after epoch 1 (stage 1 in force: vision.block.1 trainable), resume for epoch 2.
    resumed = _fit_interrupted(tmp_path / "b", stop_after=1, total=3)["module"]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} differs after resume")
    assert resumed.schedule.last_active == frozenset(resumed.schedule.group_names)


def test_resume_loads_schedule_state_and_the_unfrozen_block_keeps_training(tmp_path):
    # Interrupt after epoch 1 but resume under a schedule ending at stage 1: block 1 must keep changing.
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    module = _module()
    _trainer(tmp_path, 3, callbacks=[ckpt, StopAfterEpoch(1)]).fit(module, RandomPairsDataModule())
    resumed = _module()
    _trainer(tmp_path, 3, callbacks=[ModelCheckpoint(dirpath=tmp_path / "c2", save_last=True, save_top_k=0)]).fit(
        resumed, RandomPairsDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    trained = changed(snapshot(module), snapshot(resumed))
    assert trained == _group_keys(resumed, {"vision.proj", "text.proj", "logit_scale", "vision.block.1"})


class _SaveWeights(pl.Callback):
    """Each rank's final weights, and per step how many parameters DDP's reducer averages."""

    def __init__(self, out_dir):
        self.out_dir = str(out_dir)
        self.reduced: list[int] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.reduced.append(trainer.strategy.model._get_ddp_logging_data()["num_parameter_tensors"])

    def on_train_end(self, trainer, pl_module):
        torch.save({"weights": snapshot(pl_module), "reduced": self.reduced},
                   os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


@pytest.mark.slow
def test_ddp_ranks_keep_identical_weights_under_unfreezing(tmp_path):
    pl.seed_everything(0)
    module = _module()
    before = snapshot(module)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[_SaveWeights(tmp_path)],
    )
    trainer.fit(module, RandomPairsDataModule(batch_size=2))
    saved0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank0, rank1 = saved0["weights"], torch.load(tmp_path / "rank1.pt", weights_only=True)["weights"]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    stage1 = _group_keys(module, {"vision.proj", "text.proj", "logit_scale", "vision.block.1"})
    assert changed(before, rank0) == stage1
    # The reducer follows the stage: it averages only what trains (frozen groups have no gradient to average).
    stage0 = _group_keys(module, {"vision.proj", "text.proj", "logit_scale"})
    assert saved0["reduced"] == [len(stage0)] * 2 + [len(stage1)] * 2
