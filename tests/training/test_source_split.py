"""``SourceDataModule`` on a source without official splits: a seeded, stratified, group-safe split made on the fly
(:mod:`lightning_sarclip.data.splits`), saved as ``split.json`` in the run directory and checked when a run finds it.

One real CLI ``fit`` (``fast_dev_run``) on a flat class folder writes the file; a second start of the same run after
an image was added stops with an error naming it. Everything else drives the datamodule (a stub trainer stands in
for the run directory) or the pure split function.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.splits import UNLABELLED, part_counts, stratified_split
from lightning_sarclip.training import SourceDataModule
from tests.conftest import FIXTURES, REPO_ROOT, TEST_ARCH

FLAT = FIXTURES / "class_folder" / "flat_layout"  # ship: 2 images, oil_tank: 1
SPLIT_LAYOUT = FIXTURES / "class_folder" / "split_layout"
#: The flat folder built per test: class -> images (a one-image class included).
SIZES = {"ship": 10, "oil_tank": 6, "tanker": 1}


def _records(sizes: dict[str, int], **metadata) -> list[SARRecord]:
    return [SARRecord("class_folder", f"{label}/{i:03d}.png", "all", ImageRef(f"{label}/{i:03d}.png"),
                      labels=[] if label == UNLABELLED else [label], metadata=dict(metadata))
            for label, n in sizes.items() for i in range(n)]


def _ids(parts: dict[str, list[SARRecord]]) -> dict[str, list[str]]:
    return {part: [r.source_id for r in records] for part, records in parts.items()}


def _flat_folder(root: Path, sizes: dict[str, int] = SIZES) -> Path:
    """``<root>/<class>/<k>.png`` copies of the committed flat fixture's chips."""
    chips = sorted(FLAT.rglob("*.png"))
    for label, n in sizes.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            shutil.copyfile(chips[i % len(chips)], root / label / f"{i:03d}.png")
    return root


def _dm(root: Path, **kwargs) -> SourceDataModule:
    return SourceDataModule(**{"source": "class_folder", "root": str(root), "n_captions": 2, "image_size": 32,
                               **kwargs})


def _attach(dm: SourceDataModule, run_dir: Path, rank_zero: bool = True) -> SourceDataModule:
    """What ``setup`` reads of a trainer: its run directory and whether this is global rank 0."""
    dm.trainer = SimpleNamespace(default_root_dir=str(run_dir), is_global_zero=rank_zero)
    return dm


# ---------------------------------------------------------------------------------------------- the split function
def test_each_class_is_split_by_its_fractions_and_a_one_image_class_is_train():
    parts = stratified_split(_records({"a": 10, "b": 7, "c": 3, "d": 1, UNLABELLED: 4}), (0.8, 0.1, 0.1), seed=0)
    counts = part_counts(parts)
    assert counts["train"] == {UNLABELLED: 3, "a": 8, "b": 5, "c": 3, "d": 1}
    for label, n in {"a": 10, "b": 7, "c": 3, "d": 1, UNLABELLED: 4}.items():
        per_part = [counts[p].get(label, 0) for p in ("train", "val", "test")]
        assert sum(per_part) == n
        assert all(abs(k - n * f) < 1 for k, f in zip(per_part, (0.8, 0.1, 0.1), strict=True)), (label, per_part)
    assert {p: len(r) for p, r in parts.items()} == {"train": 20, "val": 3, "test": 2}  # 25 records apportioned
    # A single image stays in train even when val is the larger share.
    assert _ids(stratified_split(_records({"a": 1}), (0.3, 0.4, 0.3))) == {"train": ["a/000.png"], "val": [],
                                                                           "test": []}


def test_many_small_classes_still_give_val_and_test_their_share():
    parts = stratified_split(_records({f"c{i:02d}": 3 for i in range(20)}), (0.8, 0.1, 0.1), seed=1)
    assert {p: len(r) for p, r in parts.items()} == {"train": 48, "val": 6, "test": 6}
    assert all(n >= 2 for n in part_counts(parts)["train"].values())


def test_the_split_depends_on_records_and_seed_not_on_listing_order():
    records = _records({"a": 12, "b": 9, "c": 4})
    reference = _ids(stratified_split(records, (0.6, 0.2, 0.2), seed=3))
    for shuffle_seed in range(3):
        shuffled = records[:]
        random.Random(shuffle_seed).shuffle(shuffled)
        assert _ids(stratified_split(shuffled, (0.6, 0.2, 0.2), seed=3)) == reference
    other = _ids(stratified_split(records, (0.6, 0.2, 0.2), seed=4))
    assert other != reference
    assert {p: len(ids) for p, ids in other.items()} == {p: len(ids) for p, ids in reference.items()}
    assert all(ids == sorted(ids) for ids in reference.values())


def test_groups_stay_in_one_part():
    # Object chips follow their image; a group_by key (SAMPLE's measured/simulated pair_id) keeps pairs together.
    chips = [SARRecord("hrsid", f"img{i // 3}#{i % 3}", "all", ImageRef("x"), labels=["ship"],
                       metadata={"parent_id": f"img{i // 3}"}) for i in range(30)]
    pairs = [SARRecord("sample", f"{kind}/{i}", "all", ImageRef("x"), labels=["t72" if i % 2 else "bmp2"],
                       metadata={"pair_id": i}) for i in range(20) for kind in ("real", "synth")]
    for records, group_by, key in ((chips, None, "parent_id"), (pairs, "pair_id", "pair_id")):
        parts = stratified_split(records, (0.6, 0.2, 0.2), seed=0, group_by=group_by)
        where = {r.metadata[key]: part for part, rs in parts.items() for r in rs}
        assert all(where[r.metadata[key]] == part for part, rs in parts.items() for r in rs)
        assert all(parts.values())
    with pytest.raises(ValueError, match="group_by='pair_idx': no record has this metadata key"):
        stratified_split(pairs, (0.6, 0.2, 0.2), group_by="pair_idx")


@pytest.mark.parametrize(("fractions", "problem"), [
    ((0.9, 0.2, -0.1), "finite number >= 0"),
    ((0.0, 0.5, 0.5), "train must be > 0"),
    ((0.8, 0.1, 0.05), "sums to 0.95"),
    ((0.8, 0.2), "got (0.8, 0.2)"),
    ({"train": 0.8, "valid": 0.2}, "unknown keys ['valid']"),
])
def test_invalid_fractions_are_refused_at_construction(fractions, problem):
    with pytest.raises(ValueError, match=r"split_fractions: expected the train, val and test shares") as error:
        _dm(FLAT, split_fractions=fractions)
    assert problem in str(error.value)
    assert _dm(FLAT, split_fractions={"train": 0.9, "val": 0.1}).split_fractions == {"train": 0.9, "val": 0.1,
                                                                                     "test": 0.0}


# ---------------------------------------------------------------------------------------------- the datamodule
def test_a_source_with_official_splits_ignores_the_fractions(caplog):
    dm = _dm(SPLIT_LAYOUT, split_fractions=(0.5, 0.25, 0.25))
    with caplog.at_level(logging.WARNING, logger="lightning_sarclip"):
        dm.setup("fit")
        dm.setup("test")
    assert caplog.text.count("split_fractions ignored") == 1
    assert {r.split for r in dm.datasets["val"].records} == {"val"}
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["test"]) == 2
    with pytest.raises(RuntimeError, match="official splits"):
        dm.split_manifest()


def test_without_a_trainer_the_flat_folder_is_split_but_nothing_is_saved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _flat_folder(tmp_path / "chips")
    dm = _dm(root)
    dm.setup(None)
    sizes = {split: len(dm.datasets[split]) for split in ("train", "val", "test")}
    assert sizes == {"train": 13, "val": 2, "test": 2}
    assert part_counts({s: dm.datasets[s].records for s in sizes})["train"] == {"oil_tank": 4, "ship": 8, "tanker": 1}
    assert dm.classnames == ["oil_tank", "ship", "tanker"]
    assert not list(tmp_path.rglob("split.json"))
    # The committed three-image fixture leaves val and test empty by default: said plainly.
    with pytest.raises(ValueError, match=r"left both val and test empty \(3 records, 2 classes"):
        _dm(FLAT).setup("fit")
    tiny = _dm(FLAT, split_fractions=(0.34, 0.33, 0.33))
    tiny.setup("fit")
    assert (len(tiny.datasets["train"]), len(tiny.datasets["val"])) == (2, 1)


def test_the_run_directory_split_is_used_and_checked(tmp_path):
    root = _flat_folder(tmp_path / "chips")
    run = tmp_path / "run"
    _attach(_dm(root), run, rank_zero=False).setup("fit")
    assert not (run / "split.json").exists()  # only global rank 0 writes
    first = _attach(_dm(root), run)
    first.setup("fit")
    saved = json.loads((run / "split.json").read_text())
    assert saved["parts"] == {s: [r.source_id for r in first._made[s]] for s in ("train", "val", "test")}
    # A resumed run uses the file's parts, not a fresh split: move one train image to val in the file.
    moved = saved["parts"]["train"].pop(0)
    saved["parts"]["val"].append(moved)
    (run / "split.json").write_text(json.dumps(saved))
    resumed = _attach(_dm(root), run)
    resumed.setup("validate")
    assert moved in [r.source_id for r in resumed.datasets["val"].records]
    with pytest.raises(ValueError, match=r"split\.json holds this run's split, made with other settings: seed 0 "):
        _attach(_dm(root, split_seed=1), run).setup("fit")
    (root / "ship" / "003.png").unlink()
    with pytest.raises(ValueError, match=r"no longer lists the records this run was split with: 1 removed "
                                         r"\(e\.g\. \['ship/003\.png'\]\)"):
        _attach(_dm(root), run).setup("test")


# ---------------------------------------------------------------------------------------------- through the CLI
def test_fit_through_the_cli_splits_a_flat_folder_and_a_changed_folder_stops_the_run(tmp_path):
    from lightning_sarclip.commands import main

    root = _flat_folder(tmp_path / "chips")
    argv = ["fit", "--config", str(REPO_ROOT / "experiments" / "quickstart.yaml"), "--name", "flat",
            "--model.init_args.model_name", TEST_ARCH,
            "--data", "lightning_sarclip.training.SourceDataModule",
            "--data.init_args.source", "class_folder", "--data.init_args.root", str(root),
            "--data.init_args.split_fractions", "[0.7, 0.2, 0.1]", "--data.init_args.split_seed", "5",
            "--data.init_args.image_size", "32", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0", "--trainer.callbacks", "[]",
            "--run_root", str(tmp_path / "runs"), "--trainer.fast_dev_run", "1",
            "--trainer.enable_progress_bar", "false"]
    main(argv)
    path = tmp_path / "runs" / "flat" / "split.json"
    saved = json.loads(path.read_text())
    assert {k: saved[k] for k in ("version", "source", "root", "seed", "group_by", "records")} == {
        "version": 1, "source": "class_folder", "root": str(root.resolve()), "seed": 5, "group_by": None,
        "records": 17}
    assert saved["fractions"] == {"train": 0.7, "val": 0.2, "test": 0.1}
    assert saved["counts"] == {"train": {"oil_tank": 4, "ship": 7, "tanker": 1}, "val": {"oil_tank": 1, "ship": 2},
                               "test": {"oil_tank": 1, "ship": 1}}
    assert sorted(i for ids in saved["parts"].values() for i in ids) == sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    # The run resumed after an image was added: the saved split no longer fits, nothing trains.
    shutil.copyfile(root / "ship" / "000.png", root / "ship" / "new.png")
    with pytest.raises(ValueError, match=rf"{path}: .* 1 added \(e\.g\. \['ship/new\.png'\]\)"):
        main([*argv, "--ckpt_path", "last"])


def test_evaluate_scores_the_part_the_datamodule_held_out(tmp_path):
    """``evaluate`` with the run's split settings reads exactly the records ``SourceDataModule`` served for that
    stage (one split function); on a source with official splits, or with a part that does not exist, it refuses."""
    from lightning_sarclip.eval.evaluate import DatasetSpec, _prepare_source, check_dataset_spec

    root = _flat_folder(tmp_path / "chips")
    dm = _dm(root, split_fractions=(0.6, 0.2, 0.2), split_seed=3)
    dm.setup(None)
    for part in ("train", "val", "test"):
        spec = DatasetSpec(name="held", source="class_folder", root=str(root), split=part,
                           split_fractions=[0.6, 0.2, 0.2], split_seed=3)
        check_dataset_spec(spec)
        prepared = _prepare_source(spec, 32, 1)
        assert [r.source_id for r in prepared.images.records] == [r.source_id for r in dm.datasets[part].records]
    other_seed = _prepare_source(DatasetSpec(name="held", source="class_folder", root=str(root), split="test",
                                             split_fractions=[0.6, 0.2, 0.2], split_seed=4), 32, 1)
    assert [r.source_id for r in other_seed.images.records] != [r.source_id for r in dm.datasets["test"].records]
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test'\], got 'all'"):
        check_dataset_spec(DatasetSpec(name="held", source="class_folder", root=str(root), split="all",
                                       split_fractions=[0.6, 0.2, 0.2]))
    with pytest.raises(ValueError, match=r"has \['test', 'train', 'val'\] \(name one of them as the split instead\)"):
        _prepare_source(DatasetSpec(name="held", source="class_folder", root=str(SPLIT_LAYOUT), split="test",
                                    split_fractions=[0.6, 0.2, 0.2]), 32, 1)
