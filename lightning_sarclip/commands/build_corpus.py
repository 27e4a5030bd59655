"""``python -m lightning_sarclip build-corpus --config experiments/corpus/<name>.yaml``: build an image-text corpus.

Parses the config (stackable ``--config`` files, ``--field value`` overrides, OmegaConf interpolation) into a
:class:`~lightning_sarclip.data.corpus_config.CorpusConfig` and runs
:func:`~lightning_sarclip.data.corpus.build_corpus`, which checks the whole config and lists every source before it
writes anything. A config's problems (all of
them) and a resume refused because the sources changed end the command with their message, not a traceback:
they are the user's to fix, not the program's.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning_sarclip.commands.config import parse_dataclass_config
from lightning_sarclip.data.corpus import build_corpus
from lightning_sarclip.data.corpus_config import CorpusConfig, CorpusConfigError
from lightning_sarclip.data.corpus_report import report_markdown
from lightning_sarclip.data.corpus_resume import SourceChangedError


def config_from_args(args: list[str]) -> CorpusConfig:
    """Parse ``--config corpus.yaml`` (stackable) plus ``--field value`` overrides into a :class:`CorpusConfig`."""
    return parse_dataclass_config(CorpusConfig, args, "python -m lightning_sarclip build-corpus")


def status_line(summary: dict[str, Any]) -> str:
    """The one-line result: counts, decisions, variants, replaced non-finite pixels, the caption rewriter's calls and
    cached answers (when the config has one) and the output folder."""
    rewriter = summary.get("rewriter")
    rewrites = f", rewriter {rewriter['calls']} calls + {rewriter['cached']} cached" if rewriter else ""
    return (f"{summary['images']} images, {summary['pairs']} pairs, status {summary['status']}, "
            f"variants {summary['variants']}, {summary['nonfinite_pixels_replaced']} non-finite pixels replaced"
            f"{rewrites} -> {summary['output']}")


def main(args: list[str]) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = config_from_args(args)
    try:
        summary = build_corpus(config)
    except (CorpusConfigError, SourceChangedError) as err:
        raise SystemExit(f"build-corpus: {err}") from err
    print(report_markdown(summary["stats"], config.reference, summary["leakage"]), end="")
    print(status_line(summary))
    return summary
