"""``evaluate``: class-name files, suite parsing, input checks and an end-to-end run on a trained checkpoint."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import torch

from lightning_sarclip.commands import evaluate as evaluate_command
from lightning_sarclip.data.sources import SOURCES, get_source
from lightning_sarclip.data.templates import get_templates
from lightning_sarclip.eval import evaluate as ev
from lightning_sarclip.eval.results import read_results
from lightning_sarclip.models.loading import checkpoint_hash
from tests.conftest import REPO_ROOT, TEST_ARCH

SUITES = sorted((REPO_ROOT / "experiments" / "eval").glob("*.yaml"))
BASELINES = sorted((REPO_ROOT / "experiments" / "eval" / "baselines").glob("*.yaml"))
CLASS_FOLDER = REPO_ROOT / "tests" / "data" / "class_folder" / "split_layout"


# ---------------------------------------------------------------------------------------------- class names
@pytest.mark.parametrize("path", sorted(ev.CLASSNAMES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_classnames_file_shape(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"dataset", "classnames", "prompt_names", "source"}
    assert len(data["classnames"]) == len(data["prompt_names"]) == len(set(data["classnames"]))
    assert all(isinstance(n, str) and n.strip() for n in data["classnames"] + data["prompt_names"])
    assert data["source"].strip() and data["dataset"].strip()


def test_classnames_order_equals_reader_order() -> None:
    """A file named after a reader must list that reader's classes in the reader's label order."""
    get_source("mstar")  # fills the registry
    checked = []
    for name in ev.builtin_classnames():
        if name not in SOURCES:
            assert "UNCONFIRMED" in ev.load_classnames_file(name)["source"], f"{name}: no reader, so unconfirmed"
            continue
        fixed = list(get_source(name).classnames)
        assert fixed, f"{name}: reader has no fixed class list"
        assert ev.load_classnames_file(name)["classnames"] == fixed, name
        checked.append(name)
    assert {"mstar", "sample", "opensarship", "fusar_ship", "atrnet_star", "sar_aircraft", "sen12ms",
            "synthetic"} <= set(checked)
    counts = {n: len(ev.load_classnames_file(n)["classnames"]) for n in checked}
    assert (counts["mstar"], counts["sample"], counts["fusar_ship"], counts["atrnet_star"], counts["sar_aircraft"],
            counts["synthetic"]) == (10, 10, 15, 40, 7, 5)


def test_json_data_ships_with_the_package() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = REPO_ROOT / "lightning_sarclip"
    data_files = [*ev.CLASSNAMES_DIR.glob("*.json"), package / "eval" / "published.json"]
    for file in data_files:
        relative = file.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns["lightning_sarclip"]), relative


def test_match_labels_is_loose_but_unambiguous() -> None:
    names = ["2S1", "BRDM_2", "ZSU_23_4"]
    assert ev.match_labels(["zsu_23_4", "brdm-2", "2S1"], names, "x") == {"zsu_23_4": 2, "brdm-2": 1, "2S1": 0}
    with pytest.raises(ValueError, match=r"do not cover the dataset's labels \['T72'\]"):
        ev.match_labels(["2S1", "T72"], names, "x")


# ---------------------------------------------------------------------------------------------- suites
@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.stem)
def test_every_suite_parses(suite: Path) -> None:
    config = evaluate_command.config_from_args(["--config", str(suite)])
    assert config.datasets and config.output.endswith("results.jsonl")
    for spec in config.datasets:
        if spec.source != ev.CORPUS_SOURCE:
            get_source(spec.source)
        if spec.task != "retrieval":
            get_templates(spec.templates)
        if isinstance(spec.classnames, str):
            ev.load_classnames_file(spec.classnames)
        assert "${" not in spec.root


@pytest.mark.parametrize("baseline", BASELINES, ids=lambda p: p.stem)
def test_baselines_stack_on_a_suite(baseline: Path) -> None:
    suite = REPO_ROOT / "experiments" / "eval" / "sar_zeroshot.yaml"
    config = evaluate_command.config_from_args(["--config", str(suite), "--config", str(baseline)])
    assert config.model.model_name and config.model.pretrained and config.model.name
    assert len(config.datasets) == len(evaluate_command.config_from_args(["--config", str(suite)]).datasets)


def test_suite_roots_follow_sar_data_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAR_DATA", "/mnt/sar")
    suite = str(REPO_ROOT / "experiments" / "eval" / "sar_zeroshot.yaml")
    config = evaluate_command.config_from_args(["--config", suite, "--model.pretrained", "x.ckpt", "--device", "cpu"])
    assert config.model.pretrained == "x.ckpt" and config.device == "cpu"
    mstar = next(d for d in config.datasets if d.name == "mstar_soc")
    assert mstar.root == "/mnt/sar/MSTAR" and mstar.templates == "sar_opt" and mstar.split == "test"
    held = evaluate_command.config_from_args(["--config", str(REPO_ROOT / "experiments" / "eval" / "heldout_mstar.yaml")])
    assert "wo_mstar" in held.model.pretrained and [d.source for d in held.datasets] == ["mstar"]


def _suite(tmp_path: Path, datasets: list[dict], model: dict | None = None) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps({"output": str(tmp_path / "out" / "results.jsonl"),
                                "model": model or {"model_name": TEST_ARCH, "allow_random_weights": True},
                                "datasets": datasets}))
    return path


def test_a_model_without_weights_is_refused_unless_allowed(tmp_path: Path) -> None:
    good = {"name": "cf", "source": "class_folder", "root": str(CLASS_FOLDER), "split": "test"}
    suite = _suite(tmp_path, [good], model={"model_name": TEST_ARCH})
    with pytest.raises(ValueError, match=r"randomly initialised.*--model.pretrained.*--model.allow_random_weights"):
        evaluate_command.main(["--config", str(suite)])
    assert not (tmp_path / "out").exists()


def test_bad_inputs_fail_before_anything_is_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before every dataset was checked")

    monkeypatch.setattr(ev, "embed_images", no_embedding)
    good = {"name": "cf", "source": "class_folder", "root": str(CLASS_FOLDER), "split": "test"}
    cases = [
        ({"name": "bad", "source": "no_such_source", "root": "."}, ValueError, "unknown SAR source 'no_such_source'"),
        ({"name": "bad", "source": "mstar", "root": str(tmp_path / "missing")}, FileNotFoundError, "does not exist"),
        ({"name": "bad", "source": "class_folder", "root": str(CLASS_FOLDER), "split": "train", "classnames": "mstar"},
         ValueError, r"do not cover the dataset's labels \['Tanker', 'bulk_carrier'\]"),
        ({"name": "bad", "source": "class_folder", "root": str(CLASS_FOLDER), "classnames": "nope"},
         ValueError, "class-name file 'nope' not found"),
        ({"name": "bad", "source": "class_folder", "root": str(CLASS_FOLDER), "task": "everything"},
         ValueError, "task must be one of"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            evaluate_command.main(["--config", str(_suite(tmp_path, [good, bad]))])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_sarclip.commands import main

    tmp = tmp_path_factory.mktemp("run")
    main(["fit", "--config", str(REPO_ROOT / "experiments" / "quickstart.yaml"), "--model.init_args.model_name",
          TEST_ARCH, "--data.init_args.image_size", "32", "--data.init_args.num_train", "16",
          "--data.init_args.num_val", "8", "--data.init_args.num_test", "8", "--data.init_args.batch_size", "4",
          "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--run_root", str(tmp)])
    return tmp / "quickstart" / "checkpoints" / "last.ckpt"


def test_quickstart_suite_end_to_end(trained_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from lightning_sarclip.commands import main

    results = tmp_path / "eval" / "results.jsonl"
    main(["evaluate", "--config", str(REPO_ROOT / "experiments" / "eval" / "quickstart.yaml"),
          "--model.pretrained", str(trained_checkpoint), "--model.name", "quickstart", "--output", str(results)])
    rows = read_results(results)
    by_metric = {(r["task"], r["metric"]): r for r in rows}
    assert set(by_metric) == {("zeroshot", m) for m in ("top1", "top3", "top5", "mean_per_class")} | {
        ("retrieval", m) for m in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
                                   "mean_recall")}
    top1 = by_metric[("zeroshot", "top1")]
    assert top1["model"] == "quickstart" and top1["dataset"] == "synthetic_test" and top1["split"] == "test"
    assert top1["checkpoint_hash"] == checkpoint_hash(trained_checkpoint)
    assert top1["classnames"] == ["ship", "vehicle", "aircraft", "building", "bridge"]
    assert top1["templates"] == get_templates("sar")
    assert top1["extra"]["num_images"] == 250 and top1["extra"]["num_captions"] == 1250
    assert top1["extra"]["num_classes"] == 5 and top1["config"]["dataset"]["source"] == "synthetic"
    assert by_metric[("zeroshot", "top5")]["value"] == pytest.approx(1.0)  # 5 classes: top-5 always hits
    retrieval = [by_metric[("retrieval", m)]["value"] for m in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1",
                                                                "t2i_R@5", "t2i_R@10")]
    assert by_metric[("retrieval", "mean_recall")]["value"] == pytest.approx(sum(retrieval) / 6)
    confusion = json.loads((results.parent / "confusion" / "quickstart" / "synthetic_test.json").read_text())
    matrix = torch.tensor(confusion["matrix"])
    assert matrix.sum() == 250 and matrix.diagonal().sum() / 250 == pytest.approx(top1["value"])
    assert json.loads((results.parent / "templates" / "synthetic_test.json").read_text())["templates"] == \
        get_templates("sar")
    assert "synthetic_test" in capsys.readouterr().out
    from PIL import Image

    for kind in ("confusion", "tsne", "retrieval_i2t"):
        with Image.open(results.parent / "figures" / "quickstart" / f"synthetic_test_{kind}.png") as figure:
            assert figure.size[0] > 300 and figure.size[1] > 300


def test_class_folder_zeroshot_and_retrieval_match_a_direct_computation(
        trained_checkpoint: Path, tmp_path: Path) -> None:
    from lightning_sarclip.data.source_dataset import SourceDataset
    from lightning_sarclip.eval.zeroshot import build_zeroshot_classifier
    from lightning_sarclip.models.loading import load_model

    suite = _suite(tmp_path, [{"name": "chips", "source": "class_folder", "root": str(CLASS_FOLDER),
                               "split": "train", "task": "both", "templates": "simple", "batch_size": 3,
                               "n_captions": 2}], model={"pretrained": str(trained_checkpoint), "name": "ours"})
    evaluate_command.main(["--config", str(suite)])
    rows = read_results(tmp_path / "out" / "results.jsonl")
    values = {(r["task"], r["metric"]): r["value"] for r in rows}
    assert values[("zeroshot", "top5")] is None  # 3 classes: top-5 is undefined, written as null

    loaded = load_model(pretrained=str(trained_checkpoint))
    data = SourceDataset("class_folder", str(CLASS_FOLDER), "train", image_size=loaded.image_size, in_chans=1)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    features = loaded.encode_image(images)
    prompts = ["BMP2", "tanker", "bulk carrier"]  # pretty_classname of the folder names
    classifier = build_zeroshot_classifier(loaded.encode_text, loaded.tokenizer, prompts, ["a photo of {}."])
    predictions = (features @ classifier).argmax(1)
    targets = torch.tensor([data[i]["label"] for i in range(len(data))])
    assert values[("zeroshot", "top1")] == pytest.approx((predictions == targets).float().mean().item())
    assert rows[0]["extra"]["num_images"] == len(data) == 8
    assert rows[0]["classnames"] == prompts and rows[0]["extra"]["labels"] == ["BMP2", "Tanker", "bulk_carrier"]
    retrieval = next(r for r in rows if r["task"] == "retrieval")
    assert retrieval["extra"]["num_captions"] <= 2 * len(data)


def test_probes_train_on_the_train_split_and_write_rows(trained_checkpoint: Path, tmp_path: Path) -> None:
    from lightning_sarclip.commands import main

    suite = _suite(tmp_path, [{"name": "chips", "source": "class_folder", "root": str(CLASS_FOLDER),
                               "split": "test", "task": "zeroshot", "batch_size": 4,
                               "probes": ["linear", "knn", "kshot"], "kshot_shots": [1, 2]}],
                   model={"pretrained": str(trained_checkpoint), "name": "ours"})
    main(["evaluate", "--config", str(suite), "--figures", "false"])
    rows = read_results(tmp_path / "out" / "results.jsonl")
    tasks = {(r["task"], r["metric"]) for r in rows}
    assert {("linear_probe", "top1"), ("knn", "top1"), ("kshot", "1shot_top1"), ("kshot", "2shot_top1")} <= tasks
    probe = next(r for r in rows if r["task"] == "linear_probe" and r["metric"] == "top1")
    assert probe["extra"]["train_split"] == "train" and probe["extra"]["num_train"] > 0
    assert 0.0 <= probe["value"] <= 1.0
    bad = _suite(tmp_path, [{"name": "chips", "source": "class_folder", "root": str(CLASS_FOLDER),
                             "probes": ["svm"]}])
    with pytest.raises(ValueError, match="unknown probes"):
        main(["evaluate", "--config", str(bad)])


def test_wise_ft_path_ends_at_both_models(trained_checkpoint: Path, tmp_path: Path) -> None:
    from lightning_sarclip.commands import main
    from lightning_sarclip.models.loading import load_model

    # The "zero-shot" weights: the same architecture with other (random) weights, saved as a plain file.
    zeroshot = load_model(TEST_ARCH, allow_random_weights=True).model
    path = tmp_path / "zeroshot.pt"
    torch.save(zeroshot.state_dict(), path)
    datasets = [{"name": "chips", "source": "class_folder", "root": str(CLASS_FOLDER), "split": "test",
                 "task": "zeroshot", "batch_size": 4}]
    suite = _suite(tmp_path, datasets, model={"pretrained": str(trained_checkpoint), "name": "ft",
                                              "wiseft_from": str(path), "wiseft_alphas": [0.0, 0.5, 1.0]})
    main(["evaluate", "--config", str(suite), "--figures", "false"])
    rows = {(r["task"], r["metric"]): r["value"] for r in read_results(tmp_path / "out" / "results.jsonl")}
    assert rows[("wiseft", "top1@alpha=1")] == pytest.approx(rows[("zeroshot", "top1")])
    # alpha = 0 is the zero-shot model: evaluate it directly for comparison.
    (tmp_path / "z").mkdir()
    direct = _suite(tmp_path / "z", datasets, model={"model_name": TEST_ARCH, "pretrained": str(path), "name": "zs"})
    main(["evaluate", "--config", str(direct), "--figures", "false"])
    zs = {(r["task"], r["metric"]): r["value"] for r in read_results(tmp_path / "z" / "out" / "results.jsonl")}
    assert rows[("wiseft", "top1@alpha=0")] == pytest.approx(zs[("zeroshot", "top1")])
    assert ("wiseft", "mean_per_class@alpha=0.5") in rows
