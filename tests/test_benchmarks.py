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
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_train_step_benchmark_prints_the_ratio_and_flops():
    out = _run("benchmarks/train_step.py", "--model", TEST_ARCH, "--batch-size", "8", "--steps", "2", "--warmup", "1",
               "--rounds", "1", "--peak-tflops", "1")
    assert "ratio ours/bare = " in out
    assert "MFU ours:" in out
    gflops = float(out.split("model FLOPs per sample (fwd+bwd): ")[1].split()[0])
    assert gflops > 0  # the flop counter saw the matmuls of both towers


def test_gpu_memory_benchmark_runs_both_settings_on_cpu():
    out = _run("benchmarks/gpu_memory.py", "--model", TEST_ARCH, "--batch-size", "4", "--steps", "2",
               "--accelerator", "cpu", "--precision", "32-true")
    assert "grad_checkpointing=False" in out and "grad_checkpointing=True" in out


def test_gpu_check_script_is_valid_shell():
    script = REPO_ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needed in ("benchmarks/train_step.py", "benchmarks/gpu_memory.py", "ModelParallelStrategy", "bf16-mixed"):
        assert needed in text


def test_startup_benchmark_measures_commands_against_their_targets():
    import json

    out = _run("benchmarks/startup.py", "--repeats", "1", "--commands", "usage", "report", "export")
    result = json.loads(out.strip().splitlines()[-1])
    assert {"baseline: python", "baseline: import torch", "report", "export"} <= set(result["medians_s"])
    assert "report" in out and "target" in out
