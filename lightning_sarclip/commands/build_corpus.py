"""``python -m lightning_sarclip build-corpus --config experiments/corpus/<name>.yaml``: build an image-text corpus.

Parses the config (stackable ``--config`` files, ``--field value`` overrides, OmegaConf interpolation) into a
:class:`~lightning_sarclip.data.corpus.CorpusConfig` and runs :func:`~lightning_sarclip.data.corpus.build_corpus`.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning_sarclip.commands.config import parse_dataclass_config
from lightning_sarclip.data.corpus import CorpusConfig, build_corpus, stats_markdown


def config_from_args(args: list[str]) -> CorpusConfig:
    """Parse ``--config corpus.yaml`` (stackable) plus ``--field value`` overrides into a :class:`CorpusConfig`."""
    return parse_dataclass_config(CorpusConfig, args, "python -m lightning_sarclip build-corpus")


def main(args: list[str]) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = config_from_args(args)
    summary = build_corpus(config)
    print(stats_markdown(summary["stats"]), end="")
    print(f"{summary['images']} images, {summary['pairs']} pairs, status {summary['status']}, "
          f"variants {summary['variants']} -> {summary['output']}")
    return summary
