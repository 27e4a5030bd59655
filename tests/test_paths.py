"""Every registered source, on its fixture, through every path that reads sources, yields the same items.

The reference is :class:`~lightning_sarclip.data.listing.SourceListing` built on its own for the same source, root,
split and options: ``load_image`` with the reader *instance*'s policy, the label's index in the instance's class list,
the captions of ``listing.captioner``. The paths checked against it:

1. ``SourceDataModule`` (``setup`` per stage, and a ``fast_dev_run`` fit through the real CLI for a few sources);
2. the fit-time ``EvalSuiteCallback`` (``prepared``);
3. ``evaluate`` (``prepare_dataset``, and one full ``run``), which must prepare exactly what the callback prepares;
4. ``build-corpus`` (the session's fixtures corpus, ``experiments/corpus/fixtures.yaml``).

Where a reader instance's policy differs from its class default (MSTAR's raw Phoenix layouts, SAMPLE's PNGs,
ATRNet-STAR slant range, FAIR-CSAR PNGs), the class default is shown to give other pixels, so a path that took the
class's policy instead of the instance's would fail here. The real raw MSTAR chip in ``../shared/real_sar`` is read
through ``SourceDataModule`` when present.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from lightning_sarclip.data.captions import STYLES
from lightning_sarclip.data.corpus import corpus_captioner, decode_png, read_shard, store_pixels
from lightning_sarclip.data.listing import SourceListing, model_input
from lightning_sarclip.data.records import SARRecord
from lightning_sarclip.data.source_dataset import SourceDataset
from lightning_sarclip.data.sources import get_source, list_sources
from lightning_sarclip.data.transforms import build_policy
from lightning_sarclip.eval.evaluate import DatasetSpec, EvalConfig, ModelSpec, prepare_dataset, run
from lightning_sarclip.training import SourceDataModule
from lightning_sarclip.training.callbacks import EvalSuiteCallback
from tests.conftest import REAL_SAR, REPO_ROOT, TEST_ARCH

DATA = REPO_ROOT / "tests" / "data"
FIXTURES_CONFIG = REPO_ROOT / "experiments" / "corpus" / "fixtures.yaml"
SIZE, CHANS = 32, 1
#: Datamodule caption settings, deliberately not the defaults (so a path that ignored them would differ).
DM_STYLES, DM_CAPTIONS, DM_SEED = ("general", "complex"), 3, 7
#: Evaluation caption settings (both for the callback and ``evaluate``).
EVAL_CAPTIONS, EVAL_SEED = 2, 3
RAW_MSTAR = REAL_SAR / "mstar_raw_sample_huangshaoyin" / "viewchip" / "HB14931.015"


@dataclass
class Case:
    """One source on one fixture: reader options, detection mode, what the reader instance must have resolved."""

    id: str
    source: str
    root: Path
    options: dict[str, Any] = field(default_factory=dict)
    detection: str = "whole"
    #: The instance's ``default_policy`` differs from the class's (the layout decides the conversion).
    instance_policy: bool = False
    #: Reader attributes the instance must have (e.g. the detected ``layout``).
    reader: dict[str, Any] = field(default_factory=dict)

    def listing(self, split: str = "all") -> SourceListing:
        return SourceListing(self.source, self.root, split, options=self.options, detection=self.detection)


CASES = [
    Case("mstar_sdms", "mstar", DATA / "mstar" / "sdms", {"layout": "sdms"}, instance_policy=True,
         reader={"layout": "sdms"}),
    Case("mstar_jpeg_folders", "mstar", DATA / "mstar" / "jpeg_folders", reader={"layout": "jpeg_folders"}),
    Case("mstar_raw_folders", "mstar", DATA / "mstar" / "raw_folders", instance_policy=True,
         reader={"layout": "raw_folders"}),
    Case("sample_mat", "sample", DATA / "sample", reader={"image": "mat"}),
    Case("sample_png_decibel", "sample", DATA / "sample", {"image": "png_decibel"}, instance_policy=True),
    Case("sample_png_qpm", "sample", DATA / "sample", {"image": "png_qpm", "subsets": ["real"]},
         instance_policy=True, reader={"subsets": ("real",)}),
    Case("atrnet_star_ground", "atrnet_star", DATA / "atrnet_star" / "ground"),
    Case("atrnet_star_slant", "atrnet_star", DATA / "atrnet_star" / "slant", instance_policy=True,
         reader={"product": "slant_range"}),
    Case("opensarship_uint8", "opensarship", DATA / "opensarship", {"product": "Patch_Uint8"}),
    Case("opensarship_cal", "opensarship", DATA / "opensarship", {"product": "Patch_Cal"}),
    Case("fusar_ship", "fusar_ship", DATA / "fusar_ship"),
    Case("sen12ms", "sen12ms", DATA / "sen12ms"),
    Case("sen12ms_full", "sen12ms", DATA / "sen12ms", {"scheme": "full"}),
    Case("sardet100k_whole", "sardet100k", DATA / "sardet100k" / "SARDet_100K"),
    Case("sardet100k_chips", "sardet100k", DATA / "sardet100k" / "SARDet_100K", detection="chips"),
    Case("sardet100k_both", "sardet100k", DATA / "sardet100k" / "SARDet_100K", detection="both"),
    Case("ssdd_whole", "ssdd", DATA / "ssdd"),
    Case("hrsid_whole", "hrsid", DATA / "hrsid" / "HRSID_JPG"),
    Case("hrsid_chips", "hrsid", DATA / "hrsid" / "HRSID_JPG", detection="chips"),
    Case("sar_ship_dataset_whole", "sar_ship_dataset", DATA / "sar_ship_dataset" / "ship_dataset_v0"),
    Case("sar_aircraft_whole", "sar_aircraft", DATA / "sar_aircraft" / "SAR-AIRcraft-1.0"),
    Case("sar_aircraft_chips", "sar_aircraft", DATA / "sar_aircraft" / "SAR-AIRcraft-1.0", detection="chips"),
    Case("fair_csar_whole", "fair_csar", DATA / "fair_csar" / "FAIR-CSAR"),
    Case("fair_csar_chips", "fair_csar", DATA / "fair_csar" / "FAIR-CSAR", detection="chips"),
    Case("fair_csar_png", "fair_csar", DATA / "fair_csar" / "FAIR-CSAR", {"image": "png"}, instance_policy=True),
    Case("sarlang", "sarlang", DATA / "sarlang" / "SARLANG-1M"),
    Case("image_caption_table", "image_caption_table", DATA / "image_caption_table" / "pairs.csv",
         {"split_column": "split"}),
    Case("class_folder_split", "class_folder", DATA / "class_folder" / "split_layout"),
    Case("class_folder_flat", "class_folder", DATA / "class_folder" / "flat_layout"),
    # No fixture: the scenes are generated, the root only has to exist.
    Case("synthetic", "synthetic", DATA, {"num_samples": 3, "image_size": 32}),
]
BY_ID = {case.id: case for case in CASES}
#: Sources fitted through the real CLI (``fast_dev_run``): raw Phoenix files with the instance policy, SLC ``.mat``
#: detection images, detection chips; and one without official splits, which must refuse to fit.
CLI_CASES = ["mstar_sdms", "fair_csar_whole", "sardet100k_chips", "opensarship_uint8"]


# ---------------------------------------------------------------------------------------------- helpers
def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def _label_index(record: SARRecord, classnames: list[str]) -> int:
    return classnames.index(record.label) if record.label in classnames else -1


def _fixed(captions: list[str], n: int) -> list[str]:
    assert captions, "the reference captioner wrote nothing"
    return [captions[i % len(captions)] for i in range(n)]


def _unique(captions: list[str]) -> list[str]:
    return list(dict.fromkeys(c.strip() for c in captions if c.strip()))


def _expected_image(listing: SourceListing, record: SARRecord) -> torch.Tensor:
    image = listing.load_image(record, SIZE, CHANS)
    assert image.shape == (CHANS, SIZE, SIZE) and image.dtype == torch.float32
    assert torch.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    return image


def _class_policy_differs(listing: SourceListing, record: SARRecord) -> bool:
    """Whether converting ``record`` with the reader *class*'s default policy gives other pixels (or fails)."""
    try:
        other = model_input(record, build_policy(listing.source_cls.default_policy), SIZE, CHANS)
    except ValueError:  # e.g. IntegerScale refuses raw magnitude
        return True
    return not torch.equal(other, listing.load_image(record, SIZE, CHANS))


def _expected_split(available: set[str], split: str) -> str | None:
    """The documented stage mapping of ``SourceDataModule``: val <-> test fallback, then ``all``; no train fallback."""
    if split in available:
        return split
    if split == "train":
        return None
    return next((s for s in {"val": ("test", "all"), "test": ("val", "all")}[split] if s in available), None)


def _split_error(available: set[str], split: str) -> str:
    if split == "train":
        return "corpus builder" if available == {"all"} else "has no train split"
    return f"has no '{split}' split"


def _eval_split(case: Case) -> str:
    return "test" if "test" in {r.split for r in case.listing().records()} else "all"


def _eval_entry(case: Case) -> dict[str, Any]:
    """An ``evaluate`` / callback dataset entry: zero-shot and retrieval when images have single labels."""
    split = _eval_split(case)
    labelled = any(r.label is not None for r in case.listing(split).records())
    return {"name": case.id, "source": case.source, "root": str(case.root), "split": split,
            "task": "both" if labelled else "retrieval", "source_options": dict(case.options),
            "detection": case.detection, "n_captions": EVAL_CAPTIONS, "seed": EVAL_SEED, "templates": "sar",
            "batch_size": 4}


@pytest.fixture(scope="module")
def module():
    from lightning_sarclip.training.module import SARCLIPModule

    return SARCLIPModule(model_name=TEST_ARCH, image_size=SIZE)


# ---------------------------------------------------------------------------------------------- coverage
def test_the_matrix_covers_every_registered_source_and_layout():
    assert {case.source for case in CASES} == set(list_sources())
    layouts = {case.listing().reader.layout for case in CASES if case.source == "mstar"}
    assert layouts == {"sdms", "jpeg_folders", "raw_folders"}
    assert {case.listing().reader.image for case in CASES if case.source == "sample"} == {
        "mat", "png_decibel", "png_qpm"}
    assert {c.detection for c in CASES if get_source(c.source).task == "detection"} == {"whole", "chips", "both"}
    assert {"fair_csar_whole", "fair_csar_chips", "fair_csar_png", "opensarship_uint8"} <= set(BY_ID)
    # The corpus config lists every source that has a fixture (all but the generated one).
    configured = {entry["name"] for entry in yaml.safe_load(FIXTURES_CONFIG.read_text())["sources"]}
    assert configured == set(list_sources()) - {"synthetic"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_listing_answers_with_the_reader_instance(case: Case):
    listing = case.listing()
    reader = listing.reader
    records = list(listing.records())
    assert records, f"{case.id}: the fixture yields no records"
    assert listing.policy_spec == reader.default_policy
    assert listing.classnames == list(reader.classnames or [])
    for name, value in case.reader.items():
        assert getattr(reader, name) == value, name
    if case.instance_policy:
        # The point of the instance contract: the class default is another conversion for this layout.
        assert listing.policy_spec != listing.source_cls.default_policy
        assert _class_policy_differs(listing, records[0]), f"{case.id}: the class policy gives the same pixels"
    else:
        assert listing.policy_spec == listing.source_cls.default_policy
    if listing.is_detection and case.detection == "chips":
        assert all(r.label in listing.classnames for r in records)  # chips are labelled like classification chips
    elif listing.is_detection and case.detection == "whole":
        assert all(r.label is None for r in records) and any(r.boxes for r in records)  # captioned by objects
    elif listing.is_detection:
        assert {r.label is None for r in records} == {True, False}  # both: whole images and labelled chips


def test_a_class_level_policy_would_be_caught_for_mstar_sdms():
    """The check of every path compares with ``load_image`` under the instance's policy; here is why it can fail."""
    listing = BY_ID["mstar_sdms"].listing()
    assert listing.source_cls.default_policy == "integer"
    assert listing.policy_spec == {"name": "db_window", "low_db": -40.0, "high_db": 10.0}
    record = next(iter(listing.records()))
    with pytest.raises(ValueError, match="IntegerScale"):
        model_input(record, build_policy("integer"), SIZE, CHANS)
    # And a policy that does run (any other window) gives other pixels than the instance's.
    other = model_input(record, build_policy({"name": "db_window", "low_db": -30.0, "high_db": 0.0}), SIZE, CHANS)
    assert not torch.equal(other, listing.load_image(record, SIZE, CHANS))


# ---------------------------------------------------------------------------------------------- path 1
def _check_dataset(dataset: SourceDataset, case: Case, split: str, classnames: list[str], styles, n: int,
                   seed: int, part: set[str] | None = None) -> None:
    """``dataset`` holds exactly the records of ``case`` listed for ``split`` (or, for a part of a split made on the
    fly, ``part``'s keys of them), as the reference makes them."""
    reference = case.listing(split)
    records = list(reference.records())
    if part is not None:
        by_key = {r.key: r for r in records}
        assert {r.key for r in dataset.records} == part
        records = [by_key[r.key] for r in dataset.records]
    assert [r.key for r in dataset.records] == [r.key for r in records]
    assert dataset.listing.policy_spec == reference.policy_spec
    captioner = reference.captioner(styles, n, seed)
    for i, record in enumerate(records):
        item = dataset[i]
        assert torch.equal(item["image"], _expected_image(reference, record)), (case.id, record.key)
        assert item["captions"] == _fixed(captioner.captions(record), n), (case.id, record.key)
        assert item["label"] == _label_index(record, classnames), (case.id, record.key)
        assert item["index"] == i


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_source_datamodule_items_are_the_listing_items(case: Case):
    everything = list(case.listing().records())
    available = {r.split for r in everything}
    classnames = case.listing().classnames or sorted({x for r in everything for x in r.labels})
    dm = SourceDataModule(source=case.source, root=str(case.root), source_options=case.options,
                          detection=case.detection, image_size=SIZE, in_chans=CHANS, n_captions=DM_CAPTIONS,
                          seed=DM_SEED, caption_styles=DM_STYLES)
    if available == {"all"}:  # no official splits: made on the fly, each part read as the listing reads it
        _check_made_split(case, everything, classnames)
        return
    mapped = {split: _expected_split(available, split) for split in ("train", "val", "test")}
    if mapped["train"] is not None and mapped["val"] is not None:
        dm.setup("fit")
        assert set(dm.datasets) == {"train", "val"}
    else:
        missing = "train" if mapped["train"] is None else "val"
        with pytest.raises(ValueError, match=re.escape(_split_error(available, missing))):
            dm.setup("fit")
    assert dm.listing.policy_spec == case.listing().policy_spec
    for split, source_split in mapped.items():
        if source_split is None:
            with pytest.raises(ValueError, match=re.escape(_split_error(available, split))):
                dm.build_dataset(split)
            continue
        dataset = dm.datasets[split] if split in dm.datasets else dm.build_dataset(split)
        assert dataset.classnames == classnames
        _check_dataset(dataset, case, source_split, classnames, DM_STYLES, DM_CAPTIONS, DM_SEED)
    # The plain constructor is the same path.
    split = next(s for s in mapped.values() if s is not None)
    direct = SourceDataset(case.source, str(case.root), split, image_size=SIZE, in_chans=CHANS,
                           n_captions=DM_CAPTIONS, seed=DM_SEED, caption_styles=DM_STYLES,
                           source_options=case.options, detection=case.detection)
    _check_dataset(direct, case, split, direct.classnames, DM_STYLES, DM_CAPTIONS, DM_SEED)


def _check_made_split(case: Case, everything: list[SARRecord], classnames: list[str]) -> None:
    dm = SourceDataModule(source=case.source, root=str(case.root), source_options=case.options,
                          detection=case.detection, image_size=SIZE, in_chans=CHANS, n_captions=DM_CAPTIONS,
                          seed=DM_SEED, caption_styles=DM_STYLES, split_fractions={"train": 0.5, "val": 0.5})
    per_class = Counter(r.labels[0] if r.labels else None for r in everything)
    if max(per_class.values()) == 1:  # every class keeps its one image for training: nothing to validate on
        with pytest.raises(ValueError, match="left both val and test empty"):
            dm.setup("fit")
        return
    dm.setup("fit")
    parts = {split: {r.key for r in dm.datasets[split].records} for split in ("train", "val")}
    assert parts["train"] and parts["val"] and not parts["train"] & parts["val"], case.id
    assert parts["train"] | parts["val"] == {r.key for r in everything}, case.id  # test's share is 0 here
    for split, keys in parts.items():
        assert dm.datasets[split].classnames == classnames
        _check_dataset(dm.datasets[split], case, "all", classnames, DM_STYLES, DM_CAPTIONS, DM_SEED, part=keys)


@pytest.mark.parametrize("case_id", CLI_CASES)
def test_fast_dev_run_fit_through_the_cli_reads_with_the_instance_policy(case_id, tmp_path, monkeypatch):
    from lightning_sarclip.commands import main

    case = BY_ID[case_id]
    reference = case.listing()
    available = {r.split for r in reference.records()}
    calls: list[tuple[str, Any, str, str]] = []
    load_array = SourceListing.load_array  # every image read of a listing passes it (load_image included)

    def spy(self, record, in_chans):
        calls.append((self.source, self.policy_spec, record.key, record.split))
        return load_array(self, record, in_chans)

    monkeypatch.setattr(SourceListing, "load_array", spy)
    argv = ["fit", "--config", str(REPO_ROOT / "experiments" / "quickstart.yaml"),
            "--model.init_args.model_name", TEST_ARCH,
            "--data", "lightning_sarclip.training.SourceDataModule",
            "--data.init_args.source", case.source, "--data.init_args.root", str(case.root),
            "--data.init_args.source_options", yaml.safe_dump(case.options, default_flow_style=True).strip(),
            "--data.init_args.detection", case.detection,
            "--data.init_args.image_size", str(SIZE), "--data.init_args.batch_size", "2",
            "--data.init_args.eval_batch_size", "2", "--data.init_args.num_workers", "0",
            "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false", "--run_root", str(tmp_path)]
    if available == {"all"}:  # split on the fly (half and half, so that a tiny fixture has a val part)
        argv += ["--data.init_args.split_fractions", "{train: 0.5, val: 0.5}"]
    main(argv)
    assert calls, "the fit read no image through the listing"
    assert {c[0] for c in calls} == {case.source}
    assert all(c[1] == reference.policy_spec for c in calls)  # the instance's policy, not the class's
    seen_splits = {c[3] for c in calls}
    if available == {"all"}:  # the made parts hold the source's own 'all' records
        assert seen_splits == {"all"} and len({c[2] for c in calls}) > 1
    else:
        assert "train" in seen_splits and _expected_split(available, "val") in seen_splits
    keys = {r.key for r in reference.records()}
    assert {c[2] for c in calls} <= keys


# ---------------------------------------------------------------------------------------------- paths 2 and 3
def _check_prepared(prepared, case: Case, entry: dict[str, Any]) -> None:
    reference = case.listing(entry["split"])
    records = list(reference.records())
    assert [r.key for r in prepared.images.records] == [r.key for r in records]
    assert prepared.labels == [r.label for r in records]
    classnames = reference.classnames or sorted({x for r in records for x in r.labels})
    captioner = reference.captioner(STYLES, EVAL_CAPTIONS, EVAL_SEED)
    for i, record in enumerate(records):
        item = prepared.images[i]
        assert torch.equal(item["image"], _expected_image(reference, record)), (case.id, record.key)
        assert item["captions"] == _fixed(captioner.captions(record), EVAL_CAPTIONS)
        assert item["label"] == _label_index(record, classnames)
    if entry["task"] == "retrieval":
        assert prepared.classes is None
    else:
        targets = prepared.targets.tolist()
        for record, target in zip(records, targets, strict=True):
            if record.label is None:
                assert target == -1
            else:
                assert target >= 0 and _norm(prepared.classes.names[target]) == _norm(record.label), record.key
    assert prepared.captions == [_unique(captioner.captions(r)) for r in records]


def _same_prepared(a, b) -> None:
    assert (a.labels, a.captions, a.classes, a.templates) == (b.labels, b.captions, b.classes, b.templates)
    assert len(a.images) == len(b.images)
    for i in range(len(a.images)):
        x, y = a.images[i], b.images[i]
        assert torch.equal(x["image"], y["image"])
        assert (x["captions"], x["label"], x["index"]) == (y["captions"], y["label"], y["index"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fit_time_callback_and_evaluate_prepare_the_listing_items(case: Case, module):
    entry = _eval_entry(case)
    callback = EvalSuiteCallback(datasets=[entry], print_table=False)
    from_callback = callback.prepared(callback.datasets[0], module)
    _check_prepared(from_callback, case, entry)
    from_evaluate = prepare_dataset(DatasetSpec(**entry), SIZE, CHANS)
    _check_prepared(from_evaluate, case, entry)
    _same_prepared(from_callback, from_evaluate)


def test_evaluate_run_scores_mstar_sdms_with_the_raw_policy(tmp_path, monkeypatch):
    """The whole ``evaluate`` command path (model loading, embedding, rows) reads with the instance policy."""
    case = BY_ID["mstar_sdms"]
    policies: list[Any] = []
    load_array = SourceListing.load_array  # every image read of a listing passes it (load_image included)

    def spy(self, record, in_chans):
        policies.append(self.policy_spec)
        return load_array(self, record, in_chans)

    monkeypatch.setattr(SourceListing, "load_array", spy)
    entry = _eval_entry(case)
    config = EvalConfig(output=str(tmp_path / "results.jsonl"), datasets=[DatasetSpec(**entry)],
                        model=ModelSpec(model_name=TEST_ARCH, image_size=SIZE, allow_random_weights=True), ks=[1, 2],
                        figures=False)
    rows = run(config)
    n = len(list(case.listing(entry["split"]).records()))
    assert {row["task"] for row in rows} == {"zeroshot", "retrieval"}
    assert all(row["extra"]["num_images"] == n for row in rows)
    assert all(math.isfinite(row["value"]) for row in rows if row["value"] is not None)
    assert policies and all(p == case.listing().policy_spec for p in policies)


# ---------------------------------------------------------------------------------------------- path 4
@pytest.fixture(scope="module")
def corpus(fixture_corpus) -> tuple[Any, dict[tuple[str, str], dict[str, Any]]]:
    """The fixtures corpus config (roots made absolute) and its shard rows by ``(source, source_id)``."""
    from lightning_sarclip.commands.build_corpus import config_from_args

    config = config_from_args(["--config", str(FIXTURES_CONFIG), "--output", str(fixture_corpus)])
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((fixture_corpus / "shards").glob("shard-*.arrow")):
        table: pa.Table = read_shard(path)
        for row in table.to_pylist():
            key = (row["source"], row["source_id"])
            assert key not in rows, f"{key} stored twice"
            rows[key] = row
    return config, rows


def _corpus_ids() -> list[str]:
    entries = yaml.safe_load(FIXTURES_CONFIG.read_text())["sources"]
    return [f"{i}-{e['name']}-{Path(e['root']).name}" for i, e in enumerate(entries)]


@pytest.mark.parametrize("index", range(len(_corpus_ids())), ids=_corpus_ids())
def test_build_corpus_stores_the_listing_conversion_and_captions(index, corpus):
    config, rows = corpus
    spec = config.sources[index]
    root = Path(spec.root) if os.path.isabs(spec.root) else REPO_ROOT / spec.root
    checked = 0
    class_policy_caught = False
    for split in spec.splits or list(get_source(spec.name).splits):
        listing = SourceListing(spec.name, root, split, options=spec.options, policy=spec.policy,
                                detection=spec.detection)
        captioner = corpus_captioner(config, spec, listing)
        for record in listing.records():
            row = rows.get((record.source, record.source_id))
            assert row is not None, f"{record.key} is not in the corpus"
            stored = decode_png(row["png"])
            pixels = store_pixels(record, listing.policy, config.max_side)
            assert np.array_equal(stored, pixels.astype(np.float32) / 255.0), record.key
            assert row["channels"] == pixels.shape[0]
            pairs = captioner.captions_with_styles(record)
            assert row["captions"] == [c for c, _ in pairs] and row["styles"] == [s for _, s in pairs], record.key
            assert row["labels"] == (list(record.labels) or sorted({b.label for b in record.boxes}))
            if record.split == "all":  # split by the builder (a stable hash), never left as 'all'
                assert row["split"] in ("train", "val", "test")
            else:
                assert row["split"] == record.split
            if listing.policy_spec != listing.source_cls.default_policy and not class_policy_caught:
                try:
                    other = store_pixels(record, build_policy(listing.source_cls.default_policy), config.max_side)
                except ValueError:
                    class_policy_caught = True
                else:
                    class_policy_caught = not np.array_equal(other, pixels)
                assert class_policy_caught, f"{record.key}: the class policy stores the same pixels"
            checked += 1
    assert checked, f"{spec.name} at {spec.root}: nothing checked"


# ---------------------------------------------------------------------------------------------- real data
def test_real_raw_mstar_chip_reads_through_the_datamodule(tmp_path):
    """The original Phoenix file (SLICY, 15 deg) in its SDMS CD place, linked (never copied) from shared/."""
    if not RAW_MSTAR.is_file():
        pytest.skip(f"real MSTAR raw sample not present at {RAW_MSTAR}")
    cd = tmp_path / "MSTAR_PUBLIC_TARGETS_CHIPS_T72_BMP2_BTR70_SLICY" / "TARGETS" / "TEST" / "15_DEG" / "SLICY"
    cd.mkdir(parents=True)
    (cd / RAW_MSTAR.name).symlink_to(RAW_MSTAR)
    # SLICY is no SOC class: only protocol 'all' keeps it. The link leads outside the root: allowed by name.
    options = {"layout": "sdms", "protocol": "all", "allowed_roots": [str(RAW_MSTAR.parent)]}
    dm = SourceDataModule(source="mstar", root=str(tmp_path), source_options=options, image_size=SIZE,
                          in_chans=CHANS, tokenizer=TEST_ARCH, eval_batch_size=1)
    with pytest.raises(ValueError, match="left both val and test empty"):  # one image: it is the train part
        dm.setup("fit")
    dataset = dm.build_dataset("train")
    assert len(dataset) == 1
    record = dataset.records[0]
    assert record.label == "SLICY" and record.metadata["depression_deg"] == 15 and record.size == (54, 54)
    item = dataset[0]
    image = item["image"]
    assert image.shape == (CHANS, SIZE, SIZE) and torch.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.01
    reference = SourceListing("mstar", tmp_path, "all", options=options)
    assert reference.policy_spec == {"name": "db_window", "low_db": -40.0, "high_db": 10.0}
    assert torch.equal(image, reference.load_image(record, SIZE, CHANS))
    assert _class_policy_differs(reference, record)
    assert item["label"] == -1  # SLICY is not among the 10 SOC classes
    dm.datasets["test"] = dataset  # through the evaluation loader's collate
    batch = next(iter(dm.test_dataloader()))
    assert torch.equal(batch["image"][0], image)
    # Under the SOC protocol the calibration target is skipped, so the source has no records at all.
    soc = SourceDataModule(source="mstar", root=str(tmp_path), image_size=SIZE,
                           source_options={"layout": "sdms", "allowed_roots": [str(RAW_MSTAR.parent)]})
    with pytest.raises(ValueError, match="has no records"):
        soc.setup("test")
