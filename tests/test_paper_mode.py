"""Paper mode (experiments/paper/): the released pipeline's settings, on a copy of the released CSV layout.

The copy (tests/data/sarvlm_csv/data.py) is written per test session, since half of its paths are absolute. The
models are the tiny test architecture: a TorchScript archive and a state dict of the same weights stand for the
released SARCLIP checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml
from PIL import Image

from lightning_sarclip.commands import evaluate as evaluate_command
from lightning_sarclip.eval.evaluate import FOLDER_NAMES, run
from lightning_sarclip.eval.report import dataset_labels
from lightning_sarclip.eval.results import read_results
from lightning_sarclip.training import SourceDataModule
from tests.conftest import REPO_ROOT, TEST_ARCH
from tests.data.sarvlm_csv.data import SAMPLE_NAME, SAMPLE_SIZE, generate
from tests.helpers import save_torchscript

PAPER = REPO_ROOT / "experiments" / "paper"
TINY = ["--model.model_name", TEST_ARCH, "--model.image_size", "32"]


@pytest.fixture(scope="module")
def sarvlm_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("sarvlm") / "SARVLM-1M")


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny weights as a TorchScript archive and as a ``{"state_dict": ...}`` checkpoint."""
    folder = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    model = open_clip.create_model(TEST_ARCH).eval()
    save_torchscript(model, folder / "SARCLIP-jit.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / "SARCLIP-sd.pt")
    return {"torchscript": folder / "SARCLIP-jit.pt", "state_dict": folder / "SARCLIP-sd.pt"}


def _rows(text: str) -> int:
    return len(text.strip().splitlines()) - 1


def test_fixture_copies_the_released_layout(sarvlm_csv: Path):
    train = (sarvlm_csv / "train.csv").read_text().splitlines()
    assert train[0] == "imgpath,caption" and 200 <= len(train) - 1 <= 400
    paths = [line.split(",")[0] for line in train[1:]]
    assert any(Path(p).is_absolute() for p in paths) and any(not Path(p).is_absolute() for p in paths)
    sample = (sarvlm_csv / SAMPLE_NAME).read_text()
    assert _rows(sample) == SAMPLE_SIZE


def test_paper_training_epoch_is_one_pass_over_the_caption_rows(sarvlm_csv: Path):
    """epoch_unit: pairs is open_clip's CSV epoch: every row once (a fit through the CLI: tests/test_experiments.py)."""
    init = yaml.safe_load((PAPER / "sarvlm_vitl14_remoteclip.yaml").read_text())["data"]["init_args"]
    assert (init["epoch_unit"], init["drop_prompt_like"], init["source"]) == ("pairs", False, "image_caption_table")
    options = {**init["source_options"], "allowed_roots": [str(sarvlm_csv)]}
    datamodule = SourceDataModule(**{**init, "root": str(sarvlm_csv), "source_options": options, "batch_size": 8,
                                     "num_workers": 0, "image_size": 32, "pin_memory": False,
                                     "tokenizer": TEST_ARCH})
    datamodule.setup("fit")
    pairs = _rows((sarvlm_csv / "train.csv").read_text())
    assert len(datamodule.train_dataloader()) == pairs // 8
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32)


def _evaluate(args: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, Path]) -> list[dict]:
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return run(evaluate_command.config_from_args(args))


@pytest.mark.parametrize("stack", [False, True], ids=["our_ckpt_slot", "released_model_file"])
def test_released_checkpoint_scores_the_sample_file_as_torchscript_and_state_dict(
        sarvlm_csv: Path, released: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: bool):
    env = {"SARVLM_CSV": sarvlm_csv, "SARVLM_IMAGES": sarvlm_csv, "EVAL_OUT": tmp_path}
    suite = ["--config", str(PAPER / "eval_retrieval.yaml")]
    if stack:
        suite += ["--config", str(PAPER / "models" / "sarclip_released.yaml")]
    values = {}
    for kind, path in released.items():
        rows = _evaluate([*suite, *TINY, "--model.pretrained", str(path), "--figures", "false"], monkeypatch, env)
        assert {r["protocol"] for r in rows} == {f"file:{SAMPLE_NAME}"}
        assert {r["extra"]["num_images"] for r in rows} == {SAMPLE_SIZE}
        assert {r["extra"]["num_captions"] for r in rows} == {SAMPLE_SIZE}  # one caption per image
        assert {r["config"]["model"]["force_quick_gelu"] for r in rows} == {False if stack else None}
        values[kind] = {r["metric"]: r["value"] for r in rows}
    assert {"i2t_R@1", "t2i_R@10", "mean_recall"} <= set(values["torchscript"])
    assert values["torchscript"] == values["state_dict"]  # the same weights, whichever form they came in
    assert len(read_results(tmp_path / "results.jsonl")) == 2 * len(values["torchscript"])


def _class_folders(root: Path, classes: list[str], rgb: bool = False) -> None:
    rng = np.random.default_rng(0)
    for i, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for j in range(2):
            pixels = rng.integers(0, 255, (20, 20, 3) if rgb else (20, 20), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}_{j}.{'jpg' if rgb else 'png'}")


def test_zeroshot_rows_name_the_protocol_the_prompt_names_and_the_templates(
        released: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lightning_sarclip.data.templates import get_templates

    data = tmp_path / "sar"
    _class_folders(data / "SARATR-X" / "MSTAR_SOC" / "TEST", ["2S1", "ZSU_23_4"])
    _class_folders(data / "SARATR-X" / "New_FUSAR" / "Val", ["BulkCarrier", "Fishing"])
    model = [*TINY, "--model.pretrained", str(released["state_dict"]), "--figures", "false"]
    rows = _evaluate(["--config", str(PAPER / "eval_zeroshot.yaml"), *model], monkeypatch,
                     {"SAR_DATA": data, "EVAL_OUT": tmp_path / "out"})
    top1 = {r["dataset"]: r for r in rows if r["metric"] == "top1"}
    assert set(top1) == {"mstar_soc", "new_fusar_val"}
    mstar = top1["mstar_soc"]
    assert mstar["protocol"] == FOLDER_NAMES
    assert mstar["classnames"] == ["2S1", "ZSU_23_4"]  # the folder names as spelled, not "ZSU-23-4"
    assert mstar["templates"] == get_templates("sar_opt") and len(mstar["templates"]) == 15
    assert mstar["config"]["dataset"]["prompt_names"] is False and mstar["config"]["dataset"]["templates"] == "sar_opt"
    # Our protocol on the same data keeps its own column in the report.
    ours = _evaluate(["--config", str(PAPER / "eval_zeroshot.yaml"), *model, "--datasets",
                      f"[{{name: mstar_soc, source: class_folder, root: {data}/SARATR-X/MSTAR_SOC/TEST, split: all, "
                      "templates: sar_opt}]"], monkeypatch, {"SAR_DATA": data, "EVAL_OUT": tmp_path / "out"})
    assert {r["protocol"] for r in ours} == {"all"}
    labels = set(dataset_labels([*rows, *ours]).values())
    assert {"mstar_soc (all)", f"mstar_soc (all, {FOLDER_NAMES})"} <= labels


def test_optical_retention_feeds_rgb_to_a_three_channel_model(
        released: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "sar"
    _class_folders(data / "NWPU-RESISC45" / "test", ["airplane", "sea_ice"], rgb=True)
    rows = _evaluate(["--config", str(PAPER / "eval_optical.yaml"), *TINY, "--model.pretrained",
                      str(released["state_dict"]), "--figures", "false"], monkeypatch,
                     {"SAR_DATA": data, "EVAL_OUT": tmp_path / "out"})
    top1 = next(r for r in rows if r["metric"] == "top1")
    assert top1["extra"]["in_chans"] == 3 and top1["extra"]["num_classes"] == 45
    assert top1["protocol"] == FOLDER_NAMES and "sea_ice" in top1["classnames"]
