"""``evaluate``'s command line: what the suite file says and what the user overrides."""

from __future__ import annotations

from lightning_sarclip.commands.evaluate import config_from_args
from tests.conftest import REPO_ROOT

SUITE = str(REPO_ROOT / "experiments" / "eval" / "quickstart.yaml")


def test_suite_name_labels_the_suites_own_model():
    assert config_from_args(["--config", SUITE]).model.name == "quickstart"


def test_another_model_from_the_command_line_is_not_labelled_with_the_suites_name():
    for flag in (["--model.pretrained", "runs/other/checkpoints/last.ckpt"],
                 ["--model.pretrained=runs/other/checkpoints/last.ckpt"]):
        assert config_from_args(["--config", SUITE, *flag]).model.name is None  # derived from the model


def test_an_explicit_name_wins():
    config = config_from_args(["--config", SUITE, "--model.pretrained", "x.ckpt", "--model.name", "mine"])
    assert config.model.name == "mine"
