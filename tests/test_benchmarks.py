"""The benchmark scripts still run end to end (tiny settings on the CPU); their figures are not asserted here,
benchmarks print them. The GPU check script is at least valid shell and names the scripts it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, TEST_ARCH

pytestmark = pytest.mark.slow


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "",
                                 "PYTHONPATH": str(REPO_ROOT)})  # this checkout's package, not an installed one
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_train_step_benchmark_prints_the_ratio_and_flops():
    out = _run("benchmarks/train_step.py", "--model", TEST_ARCH, "--batch-size", "8", "--steps", "2", "--warmup", "1",
               "--rounds", "1", "--peak-tflops", "1", "--stage-steps", "3", "--staged-rounds", "1")
    assert "ratio ours/bare = " in out
    assert "MFU ours:" in out
    gflops = float(out.split("model FLOPs per sample (fwd+bwd): ")[1].split()[0])
    assert gflops > 0  # the flop counter saw the matmuls of both towers
    # The staged schedule: both stages measured, and the frozen one saves the trunk's activations.
    stages = {line.split(":")[0]: line for line in out.splitlines() if line.startswith("stage ")}
    assert set(stages) == {"stage projections+logit_scale", "stage all trainable"}
    saved = {k: float(v.split("saved activations ")[1].split()[0]) for k, v in stages.items()}
    assert saved["stage projections+logit_scale"] < saved["stage all trainable"]
    last = out.strip().splitlines()[-1]
    assert last.startswith("frozen-stage speedup = ") and float(last.split("= ")[1]) > 0


def test_train_step_benchmark_runs_ddp_on_two_gloo_processes():
    """``--strategy ddp``: both loops run as 2-process torchrun jobs and the DDP ratio is printed."""
    out = _run("benchmarks/train_step.py", "--strategy", "ddp", "--devices", "2", "--model", TEST_ARCH,
               "--batch-size", "4", "--steps", "2", "--warmup", "1", "--rounds", "1")
    rounds = [line for line in out.splitlines() if line.startswith("round 0:")]
    assert rounds and float(rounds[0].split("ratio ")[1]) > 0, out
    assert out.strip().splitlines()[-1].startswith("ratio ours/bare (DDP x2) = ")


def test_sync_check_finds_no_host_read_between_flag_reads():
    """The CPU half of the GPU check: no tensor is read on the host in the steps between two flag reads."""
    for extra in ([], ["--unfreeze"]):
        out = _run("benchmarks/sync_check.py", "--model", TEST_ARCH, "--batch-size", "4", "--every", "8", *extra)
        assert "5 steps watched, host reads 0 (none)" in out.splitlines()[-1], out


def test_gpu_memory_benchmark_runs_both_settings_on_cpu():
    out = _run("benchmarks/gpu_memory.py", "--model", TEST_ARCH, "--batch-size", "4", "--steps", "2",
               "--accelerator", "cpu", "--precision", "32-true")
    assert "grad_checkpointing=False" in out and "grad_checkpointing=True" in out


def test_gpu_check_script_is_valid_shell():
    script = REPO_ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needed in ("benchmarks/train_step.py", "benchmarks/gpu_memory.py", "ModelParallelStrategy", "bf16-mixed",
                   "benchmarks/sync_check.py"):
        assert needed in text


def test_startup_benchmark_measures_commands_against_their_targets():
    import json

    out = _run("benchmarks/startup.py", "--repeats", "1", "--commands", "usage", "report", "export")
    result = json.loads(out.strip().splitlines()[-1])
    assert {"baseline: python", "baseline: import torch", "report", "export"} <= set(result["medians_s"])
    assert "report" in out and "target" in out


def test_bare_loop_benchmark_trains_both_arms_and_prints_the_comparison(tmp_path):
    """Tiny settings on the MSTAR fixture (8 chips): both arms train for their budget, snapshots are scored on the
    held-out split, and the last line carries the figures the README quotes."""
    import json

    root = REPO_ROOT / "tests" / "data" / "mstar" / "jpeg_folders"
    out = _run("benchmarks/vs_bare_loop.py", "--root", str(root), "--budget", "4", "--curve-points", "2",
               "--out", str(tmp_path), "--image-size", "32", "--bare-model", TEST_ARCH, "--bare-batch-size", "2",
               "--ours-args", "--model.init_args.model_name", TEST_ARCH, "--data.init_args.image_size", "32",
               "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", "--trainer.max_epochs", "100000")
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("ours_top1", "bare_top1", "ratio", "ours_seconds", "bare_seconds", "ours_mean_per_class"):
        assert key in result, key
    assert 0 <= result["ours_top1"] <= 1 and result["ours_seconds"] >= 4 and result["bare_seconds"] >= 4
    assert len(result["curves"]["ours (fit)"]) >= 2 and (tmp_path / "learning_curve.png").stat().st_size > 0


def test_bare_loop_benchmark_runs_on_another_source_with_a_step_budget(tmp_path):
    """``--source`` takes any class-labelled source in its own layout (SAMPLE's fixture here) and ``--unit steps``
    gives both arms the same number of optimizer steps (the per-step comparison)."""
    import json

    root = REPO_ROOT / "tests" / "data" / "sample"
    out = _run("benchmarks/vs_bare_loop.py", "--root", str(root), "--source", "sample", "--unit", "steps",
               "--budget", "3", "--curve-points", "3", "--threads", "1", "--out", str(tmp_path),
               "--image-size", "32", "--bare-model", TEST_ARCH, "--bare-batch-size", "2",
               "--ours-args", "--model.init_args.model_name", TEST_ARCH, "--data.init_args.image_size", "32",
               "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["source"] == "sample" and result["unit"] == "steps"
    assert result["ours_steps"] == 3 and result["bare_steps"] == 3, result
    assert result["ours_steps_done"] == 3 and result["bare_steps_done"] == 3
    assert [point[0] for point in result["curves"]["bare open_clip loop"]] == [1, 2, 3]
    assert 0 <= result["bare_top1"] <= 1 and "ratio" in result


def test_csv_listing_benchmark_lists_a_released_style_table():
    """A small SARVLM-style table: every row listed, rows of an image grouped, one pair per row in the epoch."""
    import json

    out = _run("benchmarks/csv_listing.py", "--images", "40", "--max-captions", "5")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["records"] == 40 and result["captions"] == result["rows"] >= 40
    assert result["pairs_per_epoch"] == result["rows"]  # epoch_unit pairs: one sample a row
    assert "ratio" in out
