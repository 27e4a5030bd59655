"""Every training config under experiments/ parses (--print_config round-trips) and runs with fast_dev_run.

The configs name real checkpoints, GPUs and corpora; the test swaps in the tiny test architecture, the CPU and
the corpus built from the committed fixtures, and keeps everything else (recipe, schedule, unfreezing stages,
callbacks, held-out variants) as written.
"""

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from lightning_sarclip.commands import main
from lightning_sarclip.commands.fit import SARCLIPCLI
from tests.conftest import REPO_ROOT, TEST_ARCH
from tests.data.sarvlm_csv.data import generate

TRAINING_CONFIGS = sorted(
    p for p in (REPO_ROOT / "experiments").rglob("*.yaml")
    if {"model", "trainer", "data"} <= set(yaml.safe_load(p.read_text()) or {}) and p.name != "predict.yaml"
)
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
       "--trainer.precision", "32-true", "--trainer.num_nodes", "1"]
MODEL = ["--model.init_args.model_name", TEST_ARCH, "--model.init_args.pretrained", "null",
         "--model.init_args.force_quick_gelu", "false"]




def _data_overrides(config: dict, corpus: Path, tmp_path: Path) -> list[str]:
    data_class = config["data"]["class_path"].rsplit(".", 1)[-1]
    common = ["--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "4",
              "--data.init_args.num_workers", "0", "--data.init_args.image_size", "32"]
    if data_class == "CorpusDataModule":
        return [*common, "--data.init_args.root", str(corpus), "--data.init_args.pin_memory", "false"]
    if data_class == "SyntheticSARDataModule":
        return [*common, "--data.init_args.num_train", "8", "--data.init_args.num_val", "8",
                "--data.init_args.num_test", "8"]
    source = config["data"]["init_args"].get("source")
    if data_class == "SourceDataModule" and source == "image_caption_table":  # paper mode: the released CSVs' layout
        tables = generate(tmp_path / "SARVLM-1M")
        return [*common, "--data.init_args.root", str(tables), "--data.init_args.pin_memory", "false",
                "--data.init_args.source_options.allowed_roots", f"[{tables}]"]
    if data_class == "SourceDataModule":  # the fine-tuning starting points: MSTAR chips as distributed
        assert source == "mstar", "add a fixture root for this source"
        return [*common, "--data.init_args.root", str(REPO_ROOT / "tests/data/mstar/jpeg_folders")]
    raise AssertionError(f"no fixture data for {data_class}; add it to this test")


def test_the_paper_recipes_are_all_here():
    names = {p.stem for p in TRAINING_CONFIGS}
    assert {"quickstart", "vitl14_remoteclip", "vitl14_openai", "vitl14_scratch", "vitb32_remoteclip",
            "vitb16_openai", "vitl14_remoteclip_staged", "vitl14_remoteclip_wo_mstar",
            "vitl14_remoteclip_wo_opensarship"} <= names
    assert {"openai_vitb32", "laion_vitb32", "remoteclip_vitb32", "georsclip_vitb32"} <= names
    assert "sarvlm_vitl14_remoteclip" in names  # paper mode (experiments/paper/)


def test_paper_mode_keeps_the_released_scripts_settings():
    """experiments/paper/ is SARVLM's train_tranferclip.sh: a change there must be a deliberate one."""
    config = yaml.safe_load((REPO_ROOT / "experiments" / "paper" / "sarvlm_vitl14_remoteclip.yaml").read_text())
    trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    assert trainer["devices"] * trainer["num_nodes"] * data["batch_size"] == 1024
    assert (trainer["precision"], trainer["max_epochs"], trainer["gradient_clip_val"]) == ("16-mixed", 10, 1.0)
    assert (model["model_name"], model["force_quick_gelu"], model["lr"], model["weight_decay"],
            model["warmup_steps"]) == ("ViT-L-14", False, 5.0e-5, 0.01, 1000)
    assert "RemoteCLIP-ViT-L-14" in model["pretrained"]
    assert (model["local_loss"], model["gather_with_grad"]) == (False, False)  # open_clip_train's defaults
    assert (data["source"], data["epoch_unit"], data["drop_prompt_like"]) == ("image_caption_table", "pairs", False)
    assert data["source_options"]["separator"] == "," and data["source_options"]["image_column"] == "imgpath"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "experiments" / "finetune").glob("*.yaml")), ids=lambda p: p.stem)
def test_finetune_starting_points_keep_the_checkpoints_statistics(path: Path):
    """Real-checkpoint configs train at the transfer recipe's learning rate on the weights' own normalisation."""
    model = yaml.safe_load(path.read_text())["model"]["init_args"]
    assert model["pretrained"] and model["lr"] == 5.0e-5 and model["warmup_steps"] == 1000
    assert model["image_mean"] is None and model["image_std"] is None
    openai_lineage = path.stem.split("_")[0] in ("openai", "remoteclip", "georsclip")
    # OpenAI's tag switches QuickGELU on by itself; weights loaded from a file need it said
    assert model["force_quick_gelu"] is (openai_lineage and model["pretrained"] != "openai")


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT / "experiments")))
def test_config_prints_and_runs_fast_dev_run(path: Path, fixture_corpus: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SAR_CORPUS", str(fixture_corpus))
    config = yaml.safe_load(path.read_text())
    # As written (real model, GPU): the config parses and prints a config that parses again.
    printed = io.StringIO()
    with redirect_stdout(printed), pytest.raises(SystemExit) as exit_info:
        SARCLIPCLI(args=["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(printed.getvalue())
    assert resolved["model"]["init_args"]["model_name"] == config["model"]["init_args"]["model_name"]
    again = tmp_path / "printed.yaml"
    again.write_text(printed.getvalue())
    with redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
        SARCLIPCLI(args=["fit", "--config", str(again), "--print_config"])
    # On the fixtures with the tiny model: one batch of fit.
    main(["fit", "--config", str(path), *CPU, *MODEL, *_data_overrides(config, fixture_corpus, tmp_path),
          "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false"])
