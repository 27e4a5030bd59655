"""``sweep``: grid expansion, run names, the files it writes, checks, and skipping finished runs (no Slurm needed;
tests/training/test_slurm.py submits a sweep to a real local cluster)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from lightning_sarclip.commands import sweep
from lightning_sarclip.commands.sweep import SlurmSettings, SweepConfig, Variant, expand, nested, write_sweep
from lightning_sarclip.training.runs import mark_finished
from tests.conftest import REPO_ROOT, TEST_ARCH

QUICK = str(REPO_ROOT / "experiments" / "quickstart.yaml")


def _config(tmp_path, **kwargs) -> SweepConfig:
    kwargs.setdefault("grid", {"model.init_args.lr": [1e-4, 5e-4], "model.init_args.warmup_steps": [10, 20]})
    kwargs.setdefault("fixed", {"model.init_args.model_name": TEST_ARCH, "data.init_args.image_size": 32})
    return SweepConfig(name="abl", configs=[QUICK], run_root=str(tmp_path / "runs"), **kwargs)


def test_grid_is_the_cartesian_product_crossed_with_variants(tmp_path):
    config = _config(tmp_path, variants=[Variant("full"), Variant("staged", {"model.init_args.layer_decay": 0.8})])
    runs = expand(config)
    assert [name for name, _ in runs] == [
        "full,lr=0.0001,warmup_steps=10", "full,lr=0.0001,warmup_steps=20",
        "full,lr=0.0005,warmup_steps=10", "full,lr=0.0005,warmup_steps=20",
        "staged,lr=0.0001,warmup_steps=10", "staged,lr=0.0001,warmup_steps=20",
        "staged,lr=0.0005,warmup_steps=10", "staged,lr=0.0005,warmup_steps=20",
    ]
    name, overrides = runs[-1]
    assert overrides == {"model.init_args.model_name": TEST_ARCH, "data.init_args.image_size": 32,
                         "model.init_args.layer_decay": 0.8, "model.init_args.lr": 5e-4,
                         "model.init_args.warmup_steps": 20}


def test_run_names_use_the_shortest_unique_key_suffix_and_index_complex_values(tmp_path):
    config = _config(tmp_path, grid={
        "model.init_args.seed": [1],
        "data.init_args.seed": [2],
        "model.init_args.unfreeze": [None, [{"train": ["all"], "start_epoch": 0}]],
    })
    names = [name for name, _ in expand(config)]
    assert names == ["model.init_args.seed=1,data.init_args.seed=2,unfreeze=null",
                     "model.init_args.seed=1,data.init_args.seed=2,unfreeze=choice1"]


@pytest.mark.parametrize(("change", "message"), [
    ({"grid": {"model.init_args.lr": []}}, "non-empty list"),
    ({"grid": {"model.init_args.lr": 0.1}}, "non-empty list"),
    ({"variants": [Variant("a"), Variant("a")]}, "unique"),
])
def test_bad_grids_are_refused(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        expand(_config(tmp_path, **change))


def test_dotted_overrides_nest_like_a_config_file():
    assert nested({"a.b.c": 1, "a.b.d": 2, "e": 3}) == {"a": {"b": {"c": 1, "d": 2}}, "e": 3}
    with pytest.raises(ValueError, match="conflicts"):
        nested({"a": 1, "a.b": 2})


def test_written_sweep_stacks_base_copies_and_matches_devices_to_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    config = _config(tmp_path, slurm=SlurmSettings(nodes=2, gpus_per_node=4, time="01:00:00", max_parallel=2,
                                                    setup=["module load cuda"], extra=["--constraint=h100"]))
    runs = write_sweep(config)
    out = tmp_path / "runs" / "abl" / "sweep"
    assert len(runs) == 4 and not any(r.finished for r in runs)
    assert (out / "base" / "00_quickstart.yaml").read_text() == (REPO_ROOT / "experiments" / "quickstart.yaml").read_text()
    run_config = yaml.safe_load(runs[0].config_path.read_text())
    assert run_config["name"] == f"abl/{runs[0].name}"
    assert run_config["trainer"] == {"num_nodes": 2, "devices": 4}
    assert run_config["model"]["init_args"]["lr"] == 1e-4
    script = (out / "sweep.sbatch").read_text()
    for directive in ("--array=0-3%2", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=01:00:00",
                      "--signal=SIGUSR1@90", "--requeue", "--constraint=h100"):
        assert f"#SBATCH {directive}\n" in script
    assert "module load cuda\n" in script and "--ckpt_path last" in script
    assert (out / "runs.txt").read_text().splitlines() == [str(r.config_path) for r in runs]


def test_cpu_runs_and_inconsistent_devices(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    runs = write_sweep(_config(tmp_path, slurm=SlurmSettings(tasks_per_node=2)))
    assert yaml.safe_load(runs[0].config_path.read_text())["trainer"] == {
        "num_nodes": 1, "devices": 2, "accelerator": "cpu"}
    with pytest.raises(ValueError, match="one task per GPU"):
        write_sweep(_config(tmp_path, slurm=SlurmSettings(gpus_per_node=8, tasks_per_node=4)))
    with pytest.raises(ValueError, match="set from the slurm section"):
        write_sweep(_config(tmp_path, fixed={"trainer.devices": 3}))


def test_finished_runs_drop_out_of_the_array_and_stale_configs_go(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    config = _config(tmp_path)
    runs = write_sweep(config)
    mark_finished(runs[1].run_dir, global_step=10)
    again = write_sweep(_config(tmp_path))
    assert [r.finished for r in again] == [False, True, False, False]
    out = tmp_path / "runs" / "abl" / "sweep"
    assert str(runs[1].config_path) not in (out / "runs.txt").read_text()
    assert "#SBATCH --array=0-2\n" in (out / "sweep.sbatch").read_text()
    write_sweep(_config(tmp_path, grid={"model.init_args.lr": [1e-3]}))  # a smaller grid replaces the files
    assert [p.name for p in (out / "configs").glob("*.yaml")] == ["lr=0.001.yaml"]


def test_check_names_the_run_whose_config_does_not_parse(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    config = _config(tmp_path, grid={"model.init_args.lrr": [1.0]}, check=True)
    with pytest.raises(ValueError, match="'lrr=1'.*does not parse"):
        write_sweep(config)
    assert not (tmp_path / "runs" / "abl" / "sweep" / "runs.txt").exists()
    assert "lrr" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_submit_needs_sbatch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    ablation = tmp_path / "abl.yaml"
    ablation.write_text(yaml.safe_dump({"name": "abl", "configs": [QUICK], "run_root": str(tmp_path / "runs"),
                                        "grid": {"model.init_args.lr": [1e-4, 2e-4]},
                                        "fixed": {"model.init_args.model_name": TEST_ARCH}}))
    sweep.main(["--config", str(ablation)])
    printed = capsys.readouterr().out
    assert "2 run(s), 0 finished, 2 to do" in printed and "dry run" in printed and "sbatch " in printed
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="sbatch not found"):
        sweep.main(["--config", str(ablation), "--submit", "--no-check"])


def test_missing_base_config_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        write_sweep(SweepConfig(name="x", configs=["experiments/nope.yaml"], run_root=str(tmp_path)))


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "experiments" / "ablations").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_ablation_file_expands_and_parses(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    sweep.main(["--config", str(path), "--run_root", str(tmp_path)])
    assert "dry run" in capsys.readouterr().out


def _fake_slurm(tmp_path, monkeypatch, queued: str) -> None:
    """``squeue`` that lists ``queued`` for any id, ``sbatch`` that answers job 124."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho '{queued}'\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 124\n")
    for tool in ("squeue", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_a_second_submission_is_refused_while_the_first_array_is_active(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    ablation = tmp_path / "abl.yaml"
    ablation.write_text(yaml.safe_dump({"name": "abl", "configs": [QUICK], "run_root": str(tmp_path / "runs"),
                                        "grid": {"model.init_args.lr": [1e-4, 2e-4]}}))
    out = tmp_path / "runs" / "abl" / "sweep"
    out.mkdir(parents=True)
    (out / "submissions.jsonl").write_text('{"job_id": "123", "runs": []}\n')
    _fake_slurm(tmp_path, monkeypatch, queued="123")
    with pytest.raises(SystemExit) as refused:
        sweep.main(["--config", str(ablation), "--submit", "--no-check"])
    assert refused.value.code == 2 and "123" in capsys.readouterr().err
    sweep.main(["--config", str(ablation), "--submit", "--no-check", "--force"])
    assert "submitted array job 124" in capsys.readouterr().out
    assert [json.loads(line)["job_id"] for line in (out / "submissions.jsonl").read_text().splitlines()] == ["123", "124"]


def test_the_array_script_carries_its_own_run_list(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    runs = write_sweep(_config(tmp_path))
    script = (tmp_path / "runs" / "abl" / "sweep" / "sweep.sbatch").read_text()
    listed = script.split("RUNS=(\n")[1].split("\n)")[0].split("\n")
    assert [line.strip().strip("'") for line in listed] == [str(r.config_path.resolve()) for r in runs]
    assert "runs.txt" not in script.split("RUNS=(")[1]  # a later rewrite of runs.txt cannot shift queued tasks
    mark_finished(runs[0].run_dir, global_step=1)
    write_sweep(_config(tmp_path))  # the next script lists the remaining runs only
    script = (tmp_path / "runs" / "abl" / "sweep" / "sweep.sbatch").read_text()
    assert str(runs[0].config_path.resolve()) not in script and "#SBATCH --array=0-2\n" in script
