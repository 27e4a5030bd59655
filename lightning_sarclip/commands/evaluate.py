"""``python -m lightning_sarclip evaluate --config experiments/eval/<suite>.yaml``: evaluate one model on a suite.

Parses the suite (stackable ``--config`` files, ``--section.field value`` overrides) into an
:class:`~lightning_sarclip.eval.evaluate.EvalConfig`, checks it, and runs :func:`~lightning_sarclip.eval.evaluate.run`.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning_sarclip.commands.config import parse_dataclass_config
from lightning_sarclip.eval.evaluate import EvalConfig, ModelSpec, check_config, run

log = logging.getLogger("lightning_sarclip")


def config_from_args(args: list[str]) -> EvalConfig:
    """Parse ``--config suite.yaml`` (stackable: later files win) plus ``--section.field value`` overrides."""
    config = parse_dataclass_config(EvalConfig, args, "python -m lightning_sarclip evaluate")
    if config.model is None:
        config.model = ModelSpec()
    if config.model.name is not None and _given(args, "--model.pretrained", "--model.model_name") \
            and not _given(args, "--model.name"):
        # A suite's `name:` labels the model it names; another model from the command line is another name.
        log.info("--model.pretrained/--model.model_name given: the model is named after them, not %r (set "
                 "--model.name to choose)", config.model.name)
        config.model.name = None
    check_config(config)
    return config


def _given(args: list[str], *flags: str) -> bool:
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in args for flag in flags)


def main(args: list[str]) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run(config_from_args(args))
