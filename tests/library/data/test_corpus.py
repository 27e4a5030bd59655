"""build-corpus: every source's fixtures -> shards + manifest + stats; leakage, variants, resume after kill -9."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from lightning_sarclip.commands.build_corpus import config_from_args
from lightning_sarclip.data.corpus import build_corpus, decode_png, perceptual_hash, read_shard
from lightning_sarclip.data.corpus_config import CorpusConfig, CorpusSource
from lightning_sarclip.data.samplers import WeightedEpochSampler
from lightning_sarclip.training.datamodules import CorpusDataModule
from tests.conftest import REPO_ROOT, TEST_ARCH

FIXTURES = REPO_ROOT / "experiments" / "corpus" / "fixtures.yaml"


@pytest.fixture(scope="module")
def built(fixture_corpus) -> tuple[Path, dict]:
    """The fixtures corpus and its summary (finalising an already built corpus only re-reads it)."""
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        summary = build_corpus(config_from_args(["--config", str(FIXTURES), "--output", str(fixture_corpus)]))
    finally:
        os.chdir(cwd)
    return fixture_corpus, summary


def test_every_source_of_the_fixtures_config_lands_in_the_corpus(built):
    out, summary = built
    configured = {s["name"] for s in yaml.safe_load(FIXTURES.read_text())["sources"]}
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    assert set(manifest.source) == configured
    assert list((out / "shards").glob("shard-*.arrow"))
    stats = (out / "stats.md").read_text()
    for name in configured:
        assert f"| {name} |" in stats
    assert "# Train Imgs" in stats and "**total**" in stats
    # Every pair points at a real shard row whose caption it names.
    row = manifest.iloc[len(manifest) // 2]
    shard = read_shard(out / "shards" / row["shard"])
    assert shard.column("source_id")[int(row["row"])].as_py() == row["source_id"]
    assert len(shard.column("captions")[int(row["row"])].as_py()) > int(row["caption_index"])
    image = decode_png(shard.column("png")[int(row["row"])].as_py())
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1 and max(image.shape) <= 64
    assert {"general", "complex", "absolute", "relative", "source"} <= set(manifest.caption_style)


def test_no_image_of_a_test_split_reaches_train(built):
    out, _ = built
    kept = pq.read_table(out / "manifest.parquet").to_pandas().query("status == 'kept'")
    test_hashes = set(kept.query("split == 'test'").image_hash)
    assert not test_hashes & set(kept.query("split != 'test'").image_hash)
    test_groups = set(kept.query("split == 'test'").group)
    assert not test_groups & set(kept.query("split != 'test'").group)


def test_held_out_variants_hold_nothing_of_the_held_out_source(built):
    out, summary = built
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    for name, source in (("wo_mstar", "mstar"), ("wo_opensarship", "opensarship")):
        variant = pq.read_table(out / "variants" / f"{name}.parquet").to_pandas()
        assert len(variant) == summary["variants"][name] > 0
        assert source not in set(variant.source)
        held_groups = set(manifest[manifest.source == source].group)
        assert not held_groups & set(variant.group)


def _copy_class_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Two class-folder datasets holding the same images in swapped splits, one copy slightly perturbed."""
    a = tmp_path / "a"
    shutil.copytree(REPO_ROOT / "tests" / "data" / "class_folder" / "split_layout", a)
    b = tmp_path / "b"
    b.mkdir()
    for split, other in (("train", "test"), ("test", "train"), ("val", "val")):
        if (a / split).exists():
            shutil.copytree(a / split, b / other)
    for path in sorted(b.rglob("*.png")):
        pixels = np.asarray(Image.open(path)).copy()
        pixels.flat[0] = 255 - pixels.flat[0]  # a re-encoded copy: not byte-identical, perceptually the same
        Image.fromarray(pixels).save(path)
    return a, b


def test_swapped_splits_of_near_duplicates_never_leak(tmp_path):
    a, b = _copy_class_folder(tmp_path)
    config = CorpusConfig(output=str(tmp_path / "out"), max_side=64, sources=[
        CorpusSource(name="class_folder", root=str(a)), CorpusSource(name="class_folder", root=str(b)),
    ])
    summary = build_corpus(config)
    manifest = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pandas()
    assert summary["status"]["leak"] > 0
    kept = manifest.query("status == 'kept'")
    assert not set(kept.query("split == 'test'").group) & set(kept.query("split != 'test'").group)
    # Every image of a test split is still there, as test.
    assert set(manifest.query("split == 'test'").group) <= set(kept.query("split == 'test'").group)


def test_perceptual_hash_is_robust_to_small_changes_and_separates_images():
    rng = np.random.default_rng(0)
    image = rng.random((1, 64, 64)).astype(np.float32)
    noisy = np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1).astype(np.float32)
    other = rng.random((1, 64, 64)).astype(np.float32)
    assert bin(perceptual_hash(image) ^ perceptual_hash(noisy)).count("1") <= 3
    assert bin(perceptual_hash(image) ^ perceptual_hash(other)).count("1") > 10


def _synthetic_config(out: Path, root: Path, n: int = 60) -> list[str]:
    config = {
        "output": str(out), "shard_size": 10, "max_side": 32,
        "sources": [{"name": "synthetic", "root": str(root), "options": {"num_samples": n, "image_size": 32}}],
        "held_out": {"wo_synthetic": ["synthetic"]},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--config", str(path)]


#: run build-corpus in a child that stops for good after its third shard is on disk and says so: the kill then
#: always lands between shards 3 and 4, never by timing luck
_PAUSE_AFTER_THIRD_SHARD = """
import sys, threading
from lightning_sarclip.data import corpus
flush, written = corpus._flush, []
def flush_then_pause(*args, **kwargs):
    flush(*args, **kwargs)
    written.append(1)
    if len(written) == 3:
        print("three shards written", flush=True)
        threading.Event().wait()
corpus._flush = flush_then_pause
from lightning_sarclip.commands.build_corpus import main
main(sys.argv[1:])
"""


def test_resume_after_kill_gives_the_same_manifest(tmp_path):
    straight = tmp_path / "straight"
    build_corpus(config_from_args(_synthetic_config(straight, tmp_path, n=200)))

    killed = tmp_path / "killed"
    args = [sys.executable, "-c", _PAUSE_AFTER_THIRD_SHARD, *_synthetic_config(killed, tmp_path, n=200)]
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().strip() == "three shards written", "the build ended before its 3rd shard"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    state = killed / "build_state.json"
    assert not (killed / "manifest.parquet").exists()
    done_before = state.read_text().count('"file"')
    assert done_before == 3

    summary = build_corpus(config_from_args(_synthetic_config(killed, tmp_path, n=200)))
    assert summary["images_this_run"] == 600 - done_before * 10
    a = pq.read_table(straight / "manifest.parquet")
    b = pq.read_table(killed / "manifest.parquet")
    assert a.equals(b)
    assert sorted(p.name for p in (killed / "shards").iterdir()) == sorted(p.name for p in (straight / "shards").iterdir())


def test_a_different_config_in_the_same_output_is_refused(tmp_path):
    build_corpus(config_from_args(_synthetic_config(tmp_path / "c", tmp_path, n=5)))
    with pytest.raises(ValueError, match="different configuration"):
        build_corpus(config_from_args(_synthetic_config(tmp_path / "c", tmp_path, n=6)))


def test_bad_source_entries_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown SAR source 'mstarr'"):
        build_corpus(CorpusConfig(output=str(tmp_path / "o1"), sources=[CorpusSource(name="mstarr", root=str(tmp_path))]))
    empty = tmp_path / "empty_table.csv"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img.png")
    empty.write_text("imgpath,caption,split\nimg.png,a caption,test\n")
    with pytest.raises(ValueError, match="yielded no records"):
        build_corpus(CorpusConfig(output=str(tmp_path / "o2"), sources=[
            CorpusSource(name="image_caption_table", root=str(empty), options={"split_column": "split"},
                         splits=["train"])]))


def test_weighted_sampler_is_deterministic_and_follows_weights():
    weights = [1.0] * 10 + [9.0] * 10
    a = list(WeightedEpochSampler(weights, 20, 2000, seed=1))
    assert a == list(WeightedEpochSampler(weights, 20, 2000, seed=1))
    sampler = WeightedEpochSampler(weights, 20, 2000, seed=1)
    sampler.set_epoch(1)
    assert list(sampler) != a
    heavy = sum(i >= 10 for i in a) / len(a)
    assert 0.85 < heavy < 0.95
    assert sorted(WeightedEpochSampler(None, 20, seed=0)) == list(range(20))


@pytest.mark.parametrize("num_samples", [7, 20, 45])
def test_unweighted_sampler_yields_its_length(num_samples):
    sampler = WeightedEpochSampler(None, 20, num_samples, seed=4)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == num_samples
    for start in range(0, num_samples, 20):  # each permutation of the epoch holds an item at most once
        chunk = drawn[start:start + 20]
        assert len(set(chunk)) == len(chunk)
    if num_samples >= 20:
        assert set(drawn) == set(range(20))
    assert drawn == list(WeightedEpochSampler(None, 20, num_samples, seed=4))
    sampler.set_epoch(1)
    assert list(sampler) != drawn


def test_sampler_refuses_an_empty_epoch():
    with pytest.raises(ValueError, match="num_samples"):
        WeightedEpochSampler(None, 20, -3)


@pytest.mark.parametrize("per_epoch", ["fewer", "more"])
def test_samples_per_epoch_sizes_the_schedule_as_run(built, per_epoch):
    import lightning.pytorch as pl

    from lightning_sarclip.training.module import SARCLIPModule

    out, _ = built
    probe = CorpusDataModule(root=str(out), tokenizer=TEST_ARCH, image_size=32)
    probe.setup("fit")
    images = len(probe.datasets["train"])
    samples = images // 2 if per_epoch == "fewer" else images * 2 + 3
    data = CorpusDataModule(root=str(out), samples_per_epoch=samples, batch_size=4, image_size=32,
                            tokenizer=TEST_ARCH, augment=False)
    seen = {}

    class Count(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["estimated"] = trainer.estimated_stepping_batches

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[Count()])
    trainer.fit(SARCLIPModule(model_name=TEST_ARCH, lr=1e-4, warmup_steps=1), datamodule=data)
    assert seen["estimated"] == trainer.global_step == 2 * (samples // 4)


def test_corpus_datamodule_batches_and_weights(built):
    out, _ = built
    data = CorpusDataModule(root=str(out), variant="wo_mstar", source_weights={"sardet100k": 5.0}, batch_size=4,
                            image_size=32, tokenizer=TEST_ARCH)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["text"].shape == (4, 16)
    val = next(iter(data.val_dataloader()))
    assert val["text"].shape[1] == 5
    assert "mstar" not in set(data.datasets["train"].sources)
    bad = CorpusDataModule(root=str(out), source_weights={"nope": 1.0}, tokenizer=TEST_ARCH, image_size=32)
    bad.setup("fit")
    with pytest.raises(ValueError, match="not in the train split"):
        bad.train_dataloader()


def test_fit_on_the_fixture_corpus_with_the_cli(built, tmp_path):
    from lightning_sarclip.commands import main

    out, _ = built
    config = tmp_path / "corpus_data.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "lightning_sarclip.training.CorpusDataModule",
        "init_args": {"root": str(out), "batch_size": 4, "image_size": 32, "num_workers": 0},
    }}))
    main(["fit", "--config", str(REPO_ROOT / "experiments" / "quickstart.yaml"), "--config", str(config),
          "--model.init_args.model_name", TEST_ARCH, "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1",
          "--trainer.enable_progress_bar", "false"])


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "experiments" / "corpus").glob("*.yaml")), ids=lambda p: p.name)
def test_corpus_configs_parse_and_name_registered_sources(path, monkeypatch):
    from lightning_sarclip.data.sources import get_source

    monkeypatch.setenv("SAR_DATA", "/data/sar")
    config = config_from_args(["--config", str(path)])
    for source in config.sources:
        get_source(source.name)
        assert "${" not in source.root
    for held in config.held_out.values():
        assert set(held) <= {s.name for s in config.sources}


def test_webdataset_shards(tmp_path):
    import tarfile

    args = _synthetic_config(tmp_path / "wds", tmp_path, n=6)
    summary = build_corpus(config_from_args([*args, "--format", "webdataset"]))
    tars = sorted((tmp_path / "wds" / "shards").glob("*.tar"))
    assert tars and summary["images"] == 18
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
    assert names[0].endswith(".png") and names[1].endswith(".json") and names[0][:-4] == names[1][:-5]


def test_sampler_shards_deterministically_across_ranks():
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    weights = [1.0] * 30 + [3.0] * 30
    shards = []
    for rank in range(2):
        wrapper = DistributedSamplerWrapper(WeightedEpochSampler(weights, 60, 40, seed=3), num_replicas=2, rank=rank,
                                            shuffle=False)
        wrapper.set_epoch(2)
        shards.append(list(wrapper))
    again = DistributedSamplerWrapper(WeightedEpochSampler(weights, 60, 40, seed=3), num_replicas=2, rank=0,
                                      shuffle=False)
    again.set_epoch(2)
    assert list(again) == shards[0]
    assert len(shards[0]) == len(shards[1]) == 20
    epoch_draws = WeightedEpochSampler(weights, 60, 40, seed=3)
    epoch_draws.set_epoch(2)
    assert sorted(shards[0] + shards[1]) == sorted(epoch_draws)  # the ranks split one epoch's draws
