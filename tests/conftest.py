"""Shared test set-up: offline hub, CPU only, tiny registered architectures, and the fixtures several test files use.

Paths: import ``REPO_ROOT`` / ``FIXTURES`` from here instead of counting ``Path(__file__).parents`` (test files move
with the package layout, see tests/README.md).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lightning_sarclip.models.registry import register_model_configs  # noqa: E402

register_model_configs()

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
FIXTURES = TESTS_DIR / "data"  # the committed dataset fixtures, tests/data/<dataset>/ (built by their data.py)
REAL_SAR = REPO_ROOT.parent / "shared" / "real_sar"
TEST_ARCH = "SARCLIP-ViT-Test-32"


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixture_corpus(tmp_path_factory) -> Path:
    """The corpus built from every source's committed fixtures (experiments/corpus/fixtures.yaml), once per session."""
    from lightning_sarclip.commands.build_corpus import config_from_args
    from lightning_sarclip.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "fixtures"
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the config's roots are relative to the repository
    try:
        build_corpus(config_from_args(["--config", "experiments/corpus/fixtures.yaml", "--output", str(out)]))
    finally:
        os.chdir(cwd)
    return out


def train_tiny_checkpoint(run_root: Path) -> Path:
    """One epoch of the quickstart recipe on the 32 px test architecture (a few seconds on 2 cores)."""
    from lightning_sarclip.commands import main as cli_main

    cli_main([
        "fit", "--config", str(REPO_ROOT / "experiments" / "quickstart.yaml"),
        "--model.init_args.model_name", TEST_ARCH,
        "--data.init_args.image_size", "32", "--data.init_args.num_train", "16",
        "--data.init_args.num_val", "8", "--data.init_args.num_test", "8",
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
        "--run_root", str(run_root),
    ])
    ckpt = run_root / "quickstart" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny quickstart checkpoint, trained once per test session (export, embed, predict and load_model share it)."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("runs"))
