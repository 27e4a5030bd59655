"""The commands layer: what a user types. Each command parses, checks and dispatches; the work happens below.

``python -m lightning_sarclip <command> ...`` (or the ``lightning-sarclip`` script) looks the command up in
:data:`COMMANDS` and imports only that command's module, so ``report --help`` does not pay for Lightning.
The ``--help`` of the LightningCLI commands is kept on disk once rendered (:mod:`.help_cache`).
``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands (:mod:`.fit`).
"""

from __future__ import annotations

import importlib
import sys

from lightning_sarclip.commands import help_cache

#: name -> (module with ``main(argv)``, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("lightning_sarclip.commands.fit", "train a model (LightningCLI; --config experiments/<name>.yaml)"),
    "validate": ("lightning_sarclip.commands.fit", "run the validation loop of a config on a checkpoint"),
    "test": ("lightning_sarclip.commands.fit", "run the test loop of a config on a checkpoint"),
    "predict": ("lightning_sarclip.commands.fit", "zero-shot labels for a folder of images (experiments/predict.yaml)"),
    "build-corpus": ("lightning_sarclip.commands.build_corpus", "build an image-text corpus from dataset roots"),
    "evaluate": ("lightning_sarclip.commands.evaluate", "zero-shot / retrieval / probes of a checkpoint on a suite"),
    "report": ("lightning_sarclip.commands.report", "paper-shaped tables from results.jsonl"),
    "export": ("lightning_sarclip.commands.export", "a checkpoint as a folder that open_clip loads"),
    "embed": ("lightning_sarclip.commands.embed", "image or text embeddings to a parquet file"),
    "curriculum": ("lightning_sarclip.commands.curriculum", "multi-stage training (two-stage domain transfer)"),
    "sweep": ("lightning_sarclip.commands.sweep", "an ablation grid as a Slurm array"),
}

#: Subcommands that LightningCLI itself parses (it needs the subcommand name in argv).
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def usage() -> str:
    from lightning_sarclip import __version__

    width = max(len(name) for name in COMMANDS)
    lines = [f"lightning_sarclip {__version__}: SAR vision-language (CLIP) models with PyTorch Lightning",
             "", "usage: python -m lightning_sarclip <command> [options]   (or: lightning-sarclip <command> ...)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    lines += ["", "'<command> --help' lists a command's options; --version prints the version.",
              "Every command also takes --verbose (all library messages) and --debug (tracebacks of errors)."]
    return "\n".join(lines)


#: options every command accepts (anywhere on the line); see :mod:`.console`
GLOBAL_FLAGS = ("--verbose", "--debug")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m lightning_sarclip`` and the ``lightning-sarclip`` script.

    Called with ``argv`` (from Python, e.g. tests) it runs the command as a library call: logging, warnings and
    exceptions are left as they are. From the command line (``argv=None``) it configures the console (quiet unless
    ``--verbose``) and turns errors from our own checks into one message (tracebacks with ``--debug``).
    """
    from_shell = argv is None
    args = list(sys.argv[1:] if argv is None else argv)
    verbose, debug = "--verbose" in args, "--debug" in args
    args = [a for a in args if a not in GLOBAL_FLAGS]
    if not from_shell:
        _run(args, from_shell=False)
        return
    from lightning_sarclip.commands import console

    console.configure(verbose=verbose or debug)
    sys.argv = [sys.argv[0], *args]  # LightningCLI reads sys.argv itself
    try:
        _run(args, from_shell=True)
    except console.CHECK_ERRORS as error:
        if not console.raised_by_our_check(error):
            raise
        console.report_error(error, debug)


def _run(args: list[str], from_shell: bool) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    if args[0] == "--version":
        from lightning_sarclip import __version__

        print(f"lightning_sarclip {__version__}")
        return
    name = args[0]
    if name not in COMMANDS:
        raise SystemExit(f"unknown command {name!r}; the commands are: {', '.join(COMMANDS)}\n\n{usage()}")
    if from_shell and name in LIGHTNING_SUBCOMMANDS and help_cache.asks_for_help(args):
        text = help_cache.cached(args)
        if text is not None:  # rendering it needs Lightning (~9 s of imports); see help_cache
            sys.stdout.write(text)
            return
        help_cache.render_and_store(args, lambda: _run_command(name, args, from_shell))
        return
    _run_command(name, args, from_shell)


def _run_command(name: str, args: list[str], from_shell: bool) -> None:
    module = importlib.import_module(COMMANDS[name][0])
    if from_shell:
        from lightning_sarclip.commands import console

        console.adopt_library_loggers()
    if name in LIGHTNING_SUBCOMMANDS:
        module.main(None if from_shell else args)  # LightningCLI reads sys.argv when given None (no warning)
    else:
        module.main(args[1:])
