"""Packaging promises: the library imports without the trainer; configs stack and interpolate."""

import subprocess
import sys

import yaml

from tests.conftest import REPO_ROOT, TEST_ARCH


def test_library_imports_without_lightning():
    code = (
        "import sys\n"
        "from lightning_sarclip.models import create_model\n"
        "from lightning_sarclip.losses import InfoNCELoss\n"
        "from lightning_sarclip.eval import recall_at_k, classification_metrics, build_zeroshot_classifier\n"
        "create_model('SARCLIP-ViT-Test-32')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_configs_stack_and_interpolate(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text(
        "trainer:\n  max_epochs: 3\n"
        "model:\n  init_args:\n    model_name: " + TEST_ARCH + "\n    warmup_steps: ${trainer.max_epochs}\n"
        "data:\n  init_args:\n    image_size: 32\n"
    )
    printed = subprocess.run(
        [sys.executable, "-m", "lightning_sarclip", "fit", "--config", "experiments/quickstart.yaml",
         "--config", str(override), "--print_config"],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    ).stdout
    config = yaml.safe_load(printed)
    assert config["trainer"]["max_epochs"] == 3  # the later file wins
    assert config["model"]["init_args"]["warmup_steps"] == 3  # interpolated
    assert config["model"]["init_args"]["model_name"] == TEST_ARCH
    assert config["data"]["init_args"]["num_train"] == 2000  # untouched keys come from the first file
