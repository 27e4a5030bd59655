"""Drive the real CLI (``python -m lightning_sarclip``) end to end on the synthetic data with the test model."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from lightning_sarclip.commands import main
from lightning_sarclip.commands.fit import SARCLIPCLI
from tests.conftest import REPO_ROOT, TEST_ARCH

QUICK = str(REPO_ROOT / "experiments" / "quickstart.yaml")
SMALL = [
    "--model.init_args.model_name", TEST_ARCH,
    "--data.init_args.image_size", "32",
    "--data.init_args.num_train", "16",
    "--data.init_args.num_val", "8",
    "--data.init_args.num_test", "8",
    "--data.init_args.batch_size", "4",
    "--data.init_args.eval_batch_size", "4",
    "--data.init_args.num_workers", "0",
    "--trainer.enable_progress_bar", "false",
]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_fast_dev_run(subcommand, tmp_path, capsys):
    random_ok = [] if subcommand == "fit" else ["--allow_random_weights", "true"]  # a smoke run: no weights
    main([subcommand, "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1",
          *random_ok])
    printed = capsys.readouterr().out
    stage = "test" if subcommand == "test" else "val"
    # Our table: a row per metric under a column named after the stage (Lightning's own table: "val/loss" ...).
    table = printed[printed.rindex("\nmetric "):]
    assert table.split("\n")[1].split() == ["metric", stage]
    rows = {line.split()[0] for line in table.strip().splitlines()[2:]}
    assert {"loss", "i2t_R@1", "t2i_R@10", "mean_recall", "zeroshot_top1", "zeroshot_mean_per_class"} <= rows


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_using_a_model_without_weights_is_refused_naming_the_flags(subcommand, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "randomly initialised" in message and "--ckpt_path" in message and "--allow_random_weights" in message
    assert not (tmp_path / "quickstart").exists()  # refused before anything was built or written


def test_print_config_round_trips(tmp_path):
    printed = subprocess.run(
        [sys.executable, "-m", "lightning_sarclip", "fit", "--config", QUICK, *SMALL, "--print_config"],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    ).stdout
    config = yaml.safe_load(printed)
    assert config["model"]["class_path"] == "lightning_sarclip.training.module.SARCLIPModule"
    # Linked values are derived, so they are not in the printed config (nothing to disagree with).
    assert "tokenizer" not in config["data"]["init_args"]
    assert "image_size" not in config["model"]["init_args"]
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    main(["fit", "--config", str(path), "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1"])


def test_linked_settings_agree(tmp_path):
    cli = SARCLIPCLI(args=["--config", QUICK, *SMALL, "--data.init_args.in_chans", "2",
                           "--run_root", str(tmp_path)], run=False)
    assert cli.model.hparams.image_size == cli.datamodule.image_size == 32
    assert cli.model.hparams.in_chans == cli.datamodule.in_chans == 2
    assert cli.datamodule.tokenizer_name == cli.model.hparams.model_name == TEST_ARCH


def test_run_directory_and_resume_with_last(tmp_path, caplog):
    args = ["fit", "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    main(args)
    run_dir = tmp_path / "quickstart"
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert list(run_dir.glob("events.out.tfevents.*"))
    # Repeating the command with a larger budget resumes from last.ckpt instead of starting over.
    main([*args[:-6], "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", "--ckpt_path", "last"])
    assert f"Restored all states from the checkpoint at {run_dir / 'checkpoints' / 'last.ckpt'}" in caplog.text
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4  # 2 steps before the resume + 2 after


def test_name_override_sets_the_run_directory(tmp_path):
    main(["fit", "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--name", "ablation-a",
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0"])
    assert (tmp_path / "ablation-a" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.init_args.model_name", "ViT-Nope-99"], "unknown open_clip architecture"),
        (["--model.init_args.pretrained", "/does/not/exist.pt"], "checkpoint file not found"),
        (["--model.init_args.unfreeze", '[{"train": ["vision.decoder"], "start_epoch": 0}]'], "vision.decoder"),
    ],
)
def test_bad_input_stops_before_training(override, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_sarclip", "fit", "--config", QUICK, *SMALL, *override,
         "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Epoch 0" not in result.stderr + result.stdout


def test_corrupt_checkpoint_stops_before_training(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_sarclip", "fit", "--config", QUICK, *SMALL,
         "--model.init_args.pretrained", str(bad), "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )
    assert result.returncode != 0
    assert "corrupt.pt" in result.stderr
    assert "Epoch 0" not in result.stderr + result.stdout


def test_predict_returns_image_features(tmp_path):
    cli = SARCLIPCLI(args=["predict", "--config", QUICK, *SMALL, "--run_root", str(tmp_path),
                           "--trainer.fast_dev_run", "1", "--allow_random_weights", "true"])
    predictions = cli.trainer.predict_loop.predictions
    assert predictions and predictions[0]["image_features"].shape == (4, 32)


def test_help_lists_every_command_and_version_prints(capsys):
    from lightning_sarclip import __version__
    from lightning_sarclip.commands import COMMANDS

    main(["--help"])
    shown = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "build-corpus", "evaluate", "report", "export", "embed",
                 "curriculum", "sweep"):
        assert name in COMMANDS and f"  {name} " in shown, name
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"lightning_sarclip {__version__}"
    with pytest.raises(SystemExit, match="unknown command 'fitt'"):
        main(["fitt"])


def test_report_help_does_not_load_lightning():
    check = ("import sys\nfrom lightning_sarclip.commands import main\ntry:\n    main(['report', '--help'])\n"
             "except SystemExit:\n    pass\nassert not any(m == 'lightning' or m.startswith('lightning.') for m in sys.modules)")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_run_name_holding_a_run_is_refused_and_a_finished_run_reports_itself(tmp_path, capsys):
    args = ["fit", "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    main(args)
    run_dir = tmp_path / "quickstart"
    finished_before = (run_dir / "finished.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # the same command again: refused, nothing mixed into the run
        main(args)
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert f"{run_dir} already holds a run that finished at step 2" in error
    assert "--ckpt_path last" in error and "--new_run true" in error
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (run_dir / "finished.json").read_text() == finished_before
    with pytest.raises(SystemExit) as done:  # --ckpt_path last on a finished run: says so, prints its table
        main([*args, "--ckpt_path", "last"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "already finished at step 2" in printed and "Validation after fit (1 epochs)" in printed
    assert "zeroshot_top1" in printed
    main([*args, "--new_run", "true"])  # explicitly a second run, beside the first
    assert (tmp_path / "quickstart-v2" / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "finished.json").read_text() == finished_before


def _shell(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    """The command as a user types it: ``python -m lightning_sarclip ...`` (console set-up and error handling)."""
    return subprocess.run([sys.executable, "-m", "lightning_sarclip", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_the_console_is_quiet_and_errors_are_one_message(tiny_checkpoint, tmp_path):
    run = _shell("fit", "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    for noise in ("litlogger", "srun", "LeafSpec", "args parameter is intended", "logging interval"):
        assert noise not in run.stderr, noise
    assert run.stderr.count("`Trainer.fit` stopped") == 1 and "Validation after fit" in run.stdout
    loud = _shell("fit", "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--name", "loud",
                  "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
                  "1", "--verbose")
    assert "litlogger" in loud.stderr  # --verbose shows everything
    missing = _shell("predict", "--config", str(REPO_ROOT / "experiments" / "predict.yaml"),
                     "--data.init_args.folder", str(tmp_path), "--ckpt_path", str(tiny_checkpoint))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "Union" not in missing.stderr
    assert "classnames is required" in missing.stderr and "--trainer.callbacks.init_args.classnames" in missing.stderr
    suite = str(REPO_ROOT / "experiments" / "eval" / "quickstart.yaml")
    bad = _shell("evaluate", "--config", suite, "--model.pretrained", str(tmp_path / "nope.ckpt"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (f"error: checkpoint file not found: {tmp_path / 'nope.ckpt'} "
                                                   "(run with --debug for the traceback)")
    debug = _shell("evaluate", "--config", suite, "--model.pretrained", str(tmp_path / "nope.ckpt"), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
