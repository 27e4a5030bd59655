"""Shared test set-up: offline hub, CPU only, tiny registered architectures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lightning_sarclip.models.registry import register_model_configs  # noqa: E402

register_model_configs()

REPO_ROOT = Path(__file__).resolve().parents[1]
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
