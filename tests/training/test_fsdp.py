"""Sharded training (FSDP2 through Lightning's ModelParallelStrategy) in two gloo CPU processes.

Every run happens in one pair of processes (started once, ~6 s): DDP as the reference; FSDP2 plain, resumed
from ``last.ckpt``, with feature-cache accumulation and compiled; settings that must fail at start; the
ViT-L-14 FSDP recipe through the CLI (one epoch, then ``--ckpt_path last``; and straight through). The processes
come from ``tests.distributed.run_distributed`` with ``LOCAL_RANK``/``WORLD_SIZE`` set, so Lightning sees
externally launched processes (as under torchrun) and joins the process group already there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_sarclip.training.module import SARCLIPModule
from tests.conftest import REPO_ROOT, TEST_ARCH
from tests.distributed import run_distributed
from tests.helpers import RandomPairsDataModule, StopAfterEpoch

# Stage 1 starts at step 2 (epoch 1): the boundary falls inside the compared runs, and right after the resume.
STAGES = [
    {"train": ["projections", "logit_scale"], "start_step": 0},
    {"train": ["projections", "logit_scale", "vision.blocks[-1:]", "text.blocks[0]"], "start_step": 2,
     "lr_scale": {"vision": 0.5}},
]


class _RecordLoss(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class _PairsWithClasses(RandomPairsDataModule):
    classnames = ["ship", "aircraft", "tank"]  # RandomPairs labels are 0..2: zero-shot runs in validation


def _strategy(name: str):
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    if name == "ddp":
        return DDPStrategy()
    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False)


def _fit(root: Path, strategy: str, *, stop_after: int | None = None, resume: bool = False, validate: bool = False,
         **module_kwargs) -> dict:
    """Train 2 epochs x 2 steps on 2 ranks; per-rank losses and, with ``validate``, the final validation metrics."""
    from lightning_sarclip.training.callbacks import RetrievalZeroShotCallback

    pl.seed_everything(0)
    # local_loss: each rank's loss (and temperature gradient) is its own, so gradients must really be averaged.
    module = SARCLIPModule(model_name=TEST_ARCH, lr=1e-3, warmup_steps=1, unfreeze=STAGES, local_loss=True,
                           **module_kwargs)
    manual = module_kwargs.get("accum_freq", 1) > 1  # clips with grad_clip_norm itself
    recorder = _RecordLoss()
    callbacks = [recorder, ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)]
    if stop_after is not None:
        callbacks.append(StopAfterEpoch(stop_after))
    evaluation = RetrievalZeroShotCallback(templates="simple", ks=(1, 5), print_table=False)
    if validate:  # encode_text/encode_image of the zero-shot classifier and retrieval, sharded
        callbacks.append(evaluation)
    trainer = pl.Trainer(
        default_root_dir=root, accelerator="cpu", devices=2, strategy=_strategy(strategy), max_epochs=2,
        limit_train_batches=2, limit_val_batches=1 if validate else 0, gradient_clip_val=None if manual else 0.05,
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(module, _PairsWithClasses(n=16, batch_size=4), ckpt_path="last" if resume else None)
    return {"loss": recorder.losses, "val": evaluation.last_metrics.get("val", {})}


def _start_error(root: Path, strategy) -> str:
    trainer = pl.Trainer(default_root_dir=root, accelerator="cpu", devices=2, strategy=strategy, max_steps=1,
                         logger=False, enable_progress_bar=False, enable_model_summary=False)
    try:
        trainer.fit(SARCLIPModule(model_name=TEST_ARCH), RandomPairsDataModule())
    except ValueError as err:
        return str(err)
    return "no error"


def _cli_fit(run_root: Path, corpus: str, max_epochs: int, resume: bool) -> str | None:
    """The FSDP recipe as written, on the fixture corpus with the tiny model on 2 CPU processes; the checkpoint
    the trainer resumed from."""
    from lightning_sarclip.commands.fit import SARCLIPCLI

    cli = SARCLIPCLI(args=[
        "fit", "--config", str(REPO_ROOT / "experiments" / "sarclip" / "vitl14_remoteclip_fsdp.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.precision", "32-true",
        "--trainer.strategy.init_args.data_parallel_size", "2",
        "--model.init_args.model_name", TEST_ARCH, "--model.init_args.pretrained", "null",
        "--model.init_args.force_quick_gelu", "false",
        "--data.init_args.root", corpus, "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "4",
        "--data.init_args.num_workers", "0", "--data.init_args.image_size", "32", "--data.init_args.pin_memory", "false",
        "--trainer.max_epochs", str(max_epochs), "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--run_root", str(run_root),
        *(["--ckpt_path", "last"] if resume else []),
    ])
    return cli.trainer.ckpt_path


def _train_all(rank: int, world_size: int, root: str, corpus: str) -> dict:
    from lightning.pytorch.strategies import ModelParallelStrategy

    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world_size), NODE_RANK="0")
    root = Path(root)
    _cli_fit(root / "cli", corpus, max_epochs=1, resume=False)
    torch.distributed.barrier()
    if rank == 0:
        shutil.copy(root / "cli" / "vitl14_remoteclip_fsdp" / "checkpoints" / "last.ckpt", root / "cli_epoch0.ckpt")
    torch.distributed.barrier()
    resumed_from = _cli_fit(root / "cli", corpus, max_epochs=2, resume=True)
    _cli_fit(root / "cli_straight", corpus, max_epochs=2, resume=False)
    runs = {
        "ddp": _fit(root / "ddp", "ddp", validate=True),
        "fsdp": _fit(root / "fsdp", "fsdp", validate=True),
        # Stopped after the first epoch, resumed from last.ckpt into the unfreeze boundary, with checkpointing.
        "fsdp_first": _fit(root / "resumed", "fsdp", stop_after=0, grad_checkpointing=True),
        "fsdp_resumed": _fit(root / "resumed", "fsdp", resume=True, grad_checkpointing=True),
        # Feature-cache accumulation: 2 chunks of 2 per rank, the contrastive batch of the other runs.
        "fsdp_accum": _fit(root / "accum", "fsdp", accum_freq=2, grad_clip_norm=0.05),
        "fsdp_compiled": _fit(root / "compiled", "fsdp", compile=True),
    }
    errors = {
        "tensor_parallel": _start_error(root / "tp", ModelParallelStrategy(save_distributed_checkpoint=False)),
        "sharded_checkpoint": _start_error(root / "dcp", ModelParallelStrategy(data_parallel_size=2,
                                                                              tensor_parallel_size=1)),
    }
    return {"runs": runs, "errors": errors, "cli_resumed_from": resumed_from}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fixture_corpus) -> tuple[Path, dict[str, dict], dict]:
    """(root folder, per-run results, {"errors": start errors, "cli_resumed_from": checkpoint path})."""
    root = tmp_path_factory.mktemp("fsdp")
    rank0, rank1 = run_distributed(_train_all, args=(str(root), str(fixture_corpus)))
    assert rank0["errors"] == rank1["errors"] and rank0["cli_resumed_from"] == rank1["cli_resumed_from"]
    assert rank0["runs"]["fsdp"]["val"] == rank1["runs"]["fsdp"]["val"]  # gathered metrics
    runs = {name: {"loss": (rank0["runs"][name]["loss"], rank1["runs"][name]["loss"]),  # each rank's own loss
                   "val": rank0["runs"][name]["val"]} for name in rank0["runs"]}
    return root, runs, {"errors": rank0["errors"], "cli_resumed_from": rank0["cli_resumed_from"]}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["fsdp", "fsdp_accum", "fsdp_compiled"])
def test_fsdp_loss_curve_and_weights_equal_ddp(runs, run):
    """Same seed, data and global batch: per-step losses (4 steps, across an unfreeze boundary) and final weights."""
    root, results, _ = runs
    ddp_loss = results["ddp"]["loss"]
    assert len(ddp_loss[0]) == 4 and ddp_loss[0] != ddp_loss[1]
    torch.testing.assert_close(results[run]["loss"], ddp_loss, rtol=1e-5, atol=1e-6)
    ddp, fsdp = _weights(root / "ddp" / "last.ckpt"), _weights(root / run.removeprefix("fsdp_") / "last.ckpt")
    assert {k: v.shape for k, v in fsdp.items()} == {k: v.shape for k, v in ddp.items()}
    for name in ddp:  # summation order (and compiled kernels) differ at float precision, amplified by Adam
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-4, atol=1e-5, msg=name)
    start = SARCLIPModule(model_name=TEST_ARCH).state_dict()
    assert any(not torch.equal(start[k], ddp[k]) for k in ddp if ".resblocks.1." in k)  # stage 1 did train


@pytest.mark.slow
def test_fsdp_validation_metrics_equal_ddp(runs):
    _, results, _ = runs
    ddp, fsdp = results["ddp"]["val"], results["fsdp"]["val"]
    assert {"val/zeroshot_top1", "val/i2t_R@1"} <= set(ddp)
    assert fsdp == pytest.approx(ddp, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_fsdp_resume_from_last_with_grad_checkpointing_continues_the_same_run(runs):
    root, results, _ = runs
    for rank in (0, 1):
        resumed = results["fsdp_first"]["loss"][rank] + results["fsdp_resumed"]["loss"][rank]
        assert resumed == pytest.approx(results["ddp"]["loss"][rank], rel=1e-5, abs=1e-6)
    ddp, resumed = _weights(root / "ddp" / "last.ckpt"), _weights(root / "resumed" / "last.ckpt")
    for name in ddp:
        torch.testing.assert_close(resumed[name], ddp[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_fsdp_checkpoint_loads_into_a_plain_module_evaluate_and_export(runs, tmp_path):
    from lightning_sarclip.commands.export import WEIGHTS_NAME, export_checkpoint
    from lightning_sarclip.models.loading import load_model

    root, _, _ = runs
    ckpt = root / "fsdp" / "last.ckpt"
    state = _weights(ckpt)
    plain = SARCLIPModule(model_name=TEST_ARCH)
    plain.load_state_dict(state, strict=True)
    assert state["model.logit_scale"].shape == torch.Size([])
    loaded = load_model(pretrained=str(ckpt))
    torch.testing.assert_close(loaded.model.visual.proj, state["model.visual.proj"])
    files = export_checkpoint(ckpt, tmp_path / "export")  # stock open_clip reloads it strictly inside
    assert files["weights"].name == WEIGHTS_NAME


@pytest.mark.slow
def test_unsupported_sharding_settings_fail_at_start_naming_the_setting(runs):
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_sarclip.training.sharding import data_parallel_mesh

    errors = runs[2]["errors"]
    assert "tensor_parallel_size is 2" in errors["tensor_parallel"]
    assert "tensor_parallel_size: 1" in errors["tensor_parallel"]
    assert "save_distributed_checkpoint: false" in errors["sharded_checkpoint"]
    with pytest.raises(ValueError, match="'fsdp' strategy \\(FSDP1\\) is not supported.*ModelParallelStrategy"):
        data_parallel_mesh(FSDPStrategy())


@pytest.mark.slow
def test_fsdp_recipe_runs_through_the_cli_and_resumes_from_last(runs):
    """experiments/sarclip/vitl14_remoteclip_fsdp.yaml on 2 processes: one epoch, then ``--ckpt_path last``."""
    root, _, info = runs
    last = Path("vitl14_remoteclip_fsdp") / "checkpoints" / "last.ckpt"
    first = torch.load(root / "cli_epoch0.ckpt", map_location="cpu", weights_only=True)
    final = torch.load(root / "cli" / last, map_location="cpu", weights_only=True)
    straight = torch.load(root / "cli_straight" / last, map_location="cpu", weights_only=True)
    assert info["cli_resumed_from"] == str(root / "cli" / last)
    assert (first["epoch"], first["global_step"]) == (0, 2)
    assert (final["epoch"], final["global_step"]) == (straight["epoch"], straight["global_step"]) == (1, 4)
    assert final["state_dict"].keys() == first["state_dict"].keys()
    for name, weight in straight["state_dict"].items():  # continued the run instead of starting over
        torch.testing.assert_close(final["state_dict"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(first["state_dict"][k], final["state_dict"][k]) for k in first["state_dict"])
    # AdamW state of every parameter, gathered from the shards into the one file
    assert len(final["optimizer_states"][0]["state"]) == len(list(SARCLIPModule(model_name=TEST_ARCH).parameters()))
