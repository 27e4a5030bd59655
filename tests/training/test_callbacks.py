"""Evaluation callbacks in a real ``Trainer.fit``: logged keys, values against a direct computation, DDP parity."""

import math

import lightning.pytorch as pl
import pytest

from lightning_sarclip.training import SourceDataModule
from lightning_sarclip.training.callbacks import EvalSuiteCallback, RetrievalZeroShotCallback
from lightning_sarclip.training.module import SARCLIPModule
from tests.conftest import REPO_ROOT, TEST_ARCH

DATA = REPO_ROOT / "tests" / "data"
CLASS_FOLDER = str(DATA / "class_folder" / "split_layout")
MSTAR = str(DATA / "mstar" / "jpeg_folders")
SUITE = [
    # val split: 3 images, so 2 ranks get a padded duplicate.
    {"name": "folders", "source": "class_folder", "root": CLASS_FOLDER, "split": "val", "n_captions": 2},
    {"name": "mstar", "source": "mstar", "root": MSTAR, "task": "zeroshot", "max_images": 3, "templates": "simple"},
]
SUITE_KEYS = ["val/folders/i2t_R@1", "val/folders/t2i_R@2", "val/folders/mean_recall",
              "val/folders/zeroshot_top1", "val/folders/zeroshot_mean_per_class",
              "val/mstar/zeroshot_top1", "val/mstar/zeroshot_top5", "val/mstar/zeroshot_mean_per_class"]
VAL_KEYS = ["val/i2t_R@1", "val/t2i_R@2", "val/mean_recall", "val/zeroshot_top1", "val/zeroshot_mean_per_class"]


def _fit(tmp_path, **trainer_kwargs) -> tuple[pl.Trainer, SARCLIPModule, EvalSuiteCallback]:
    pl.seed_everything(0)
    # lr=0: weights stay at their (seeded) initial values whatever the batches, so runs are comparable.
    module = SARCLIPModule(model_name=TEST_ARCH, lr=0.0, warmup_steps=1)
    data = SourceDataModule(source="class_folder", root=CLASS_FOLDER, n_captions=2, image_size=32,
                            batch_size=2, eval_batch_size=1, tokenizer=TEST_ARCH)
    suite = EvalSuiteCallback(SUITE, batch_size=1, ks=(1, 2), print_table=False)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_train_batches=1,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RetrievalZeroShotCallback(ks=(1, 2), print_table=False), suite], **trainer_kwargs,
    )
    trainer.fit(module, data)
    return trainer, module, suite


def _logged(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k in SUITE_KEYS + VAL_KEYS}


def test_dataset_specs_are_checked_at_construction():
    with pytest.raises(ValueError, match="task must be one of"):
        EvalSuiteCallback([{"name": "a", "source": "mstar", "root": MSTAR, "task": "linear"}])
    with pytest.raises(ValueError, match="unknown keys"):
        EvalSuiteCallback([{"name": "a", "source": "mstar", "root": MSTAR, "n_caption": 2}])
    with pytest.raises(ValueError, match="misses keys"):
        EvalSuiteCallback([{"name": "a", "source": "mstar"}])
    with pytest.raises(ValueError, match="unique"):
        EvalSuiteCallback([{"name": "a", "source": "mstar", "root": MSTAR}] * 2)


def test_fit_logs_suite_metrics_equal_to_a_direct_evaluation(tmp_path):
    trainer, module, suite = _fit(tmp_path, devices=1)
    logged = _logged(trainer)
    assert set(logged) == set(SUITE_KEYS + VAL_KEYS)
    assert "val/mstar/i2t_R@1" not in trainer.callback_metrics  # zero-shot only
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in logged.values())
    assert suite.last_metrics["val/mstar/zeroshot_top1"] == pytest.approx(logged["val/mstar/zeroshot_top1"])



def test_fit_time_metrics_equal_evaluate_on_the_same_checkpoint(tmp_path):
    """One evaluation path: the callback's numbers are what the ``evaluate`` command reports for the checkpoint."""
    from lightning_sarclip.eval.evaluate import DatasetSpec, EvalConfig, ModelSpec, run

    trainer, module, suite = _fit(tmp_path, devices=1)
    logged = _logged(trainer)
    checkpoint = tmp_path / "fitted.ckpt"
    trainer.save_checkpoint(checkpoint)
    datasets = [DatasetSpec(**{"task": "both", "batch_size": 1, "templates": "sar", **entry}) for entry in SUITE]
    config = EvalConfig(output=str(tmp_path / "eval" / "results.jsonl"), datasets=datasets,
                        model=ModelSpec(pretrained=str(checkpoint)), ks=[1, 2], figures=False)
    rows = run(config)
    reported = {}
    for row in rows:
        key = f"zeroshot_{row['metric']}" if row["task"] == "zeroshot" else row["metric"]
        reported[f"val/{row['dataset']}/{key}"] = row["value"]
    compared = [key for key in SUITE_KEYS if key in logged]
    assert compared == SUITE_KEYS
    for key in compared:
        assert logged[key] == pytest.approx(reported[key], abs=1e-6), key
    assert suite.last_metrics["val/mstar/zeroshot_top1"] == pytest.approx(reported["val/mstar/zeroshot_top1"])


def test_ddp_spawn_two_processes_log_the_single_process_values(tmp_path):
    single = _logged(_fit(tmp_path / "one", devices=1)[0])
    double = _logged(_fit(tmp_path / "two", devices=2, strategy="ddp_spawn")[0])
    assert set(double) == set(single) == set(SUITE_KEYS + VAL_KEYS)
    assert double == single


def test_confusion_matrix_figure_lands_in_the_run_dir_and_tensorboard(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_sarclip.training import SyntheticSARDataModule
    from lightning_sarclip.training.callbacks import RetrievalZeroShotCallback
    from lightning_sarclip.training.module import SARCLIPModule

    data = SyntheticSARDataModule(num_train=8, num_val=10, num_test=4, batch_size=4, image_size=32,
                                  tokenizer="SARCLIP-ViT-Test-32")
    module = SARCLIPModule(model_name="SARCLIP-ViT-Test-32", image_size=32)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[RetrievalZeroShotCallback(figures=True, print_table=False)])
    trainer.fit(module, data)
    pngs = list((tmp_path / "figures").glob("val_zeroshot_confusion_step*.png"))
    assert len(pngs) == 1
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert "val/zeroshot_confusion" in events.Tags()["images"]
