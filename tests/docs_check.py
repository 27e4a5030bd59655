"""The documentation check behind ``tests/test_docs.py``: what the Markdown files promise about the repository.

:func:`check_markdown` reads Markdown files and returns every problem at once, as :class:`Problem` (file, line,
what is wrong and what was expected):

1. **links**: a relative link ``[text](path)`` / ``[text](path#anchor)`` (and ``[ref]: path``) must name a file or
   folder inside the repository, relative to the Markdown file's folder; an anchor into a Markdown file must be
   one of its headings (GitHub's slugs). ``http(s):``/``mailto:`` links are not fetched.
2. **paths in code**: a token of inline code or of a fenced block that starts with a top-level folder
   (:data:`REPO_PREFIXES`) or is a top-level file (:data:`TOP_LEVEL_FILES`) must exist. In ``docs/`` and
   ``README.md``, module paths relative to the package (``training/module.py``, ``data/sources/``) must exist
   under ``lightning_sarclip/``. Placeholders (:data:`PLACEHOLDER_MARKS`) and what a run creates
   (:data:`CREATED_OUTPUTS`) are not checked. Any ``name.md`` mentioned must be a file of the repository
   (relative to the Markdown file or the root), so notes kept outside it are not cited.
3. **configs**: every ``experiments/**.yaml`` named must parse with ``yaml.safe_load``; every ``--config X`` of a
   command must exist (relative to the repository root, where the commands are run).
4. **commands**: command lines of shell blocks (``bash``/``sh``/``shell``/``console``, or untagged blocks whose
   lines start with a command) and of inline code: ``python -m lightning_sarclip <command>`` /
   ``lightning-sarclip <command>`` (also after ``srun``, ``apptainer exec``, ``docker run <image>``) must name a
   known command; ``make <target>`` a target of the Makefile. With ``parse_commands=True`` each distinct command
   line is also given to its command's own parser, in this process, without running it
   (:func:`parse_command`). What is substituted for placeholders is in :func:`_substitute`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

#: Top-level folders whose paths the docs name; a code token starting with one of them must exist.
REPO_PREFIXES = ("experiments/", "lightning_sarclip/", "docs/", "data_cards/", "tests/", "benchmarks/", ".ci/")
#: Top-level files the docs name by their bare name.
TOP_LEVEL_FILES = ("Makefile", "Dockerfile", "pyproject.toml")
#: Subpackages of lightning_sarclip that docs/ and README.md name relative to the package (``training/module.py``).
PACKAGE_PREFIXES = ("commands/", "training/", "models/", "data/", "eval/", "utils/")
#: A token holding one of these is a placeholder or a pattern (``<name>``, ``{a,b}``, ``*.yaml``, ``...``, ``$VAR``).
PLACEHOLDER_MARKS = ("<", ">", "{", "}", "*", "...", "\u2026", "$")
#: What a command creates, as the docs name it (an output need not exist in a checkout); never checked as a path:
CREATED_OUTPUTS = (
    "runs/",      # run directories of fit/curriculum/sweep and evaluate's results (README, docs/evaluation.md)
    "exported/",  # export's --out folder (README: exported/quickstart)
    "reports/",   # report's --out folder (docs/evaluation.md)
    ".venv/",     # the virtual environment `make install` creates (README: .venv/bin/tensorboard, .venv/bin/pip)
    ".whl/",      # the wheels benchmarks/gpu_wheels.sh downloads (README)
)
#: Markdown files that a command writes (``report``'s tables, docs/evaluation.md), named without their folder.
CREATED_MARKDOWN = ("report.md", "retrieval.md", "zeroshot.md")
#: Fenced-block languages that hold shell command lines.
SHELL_LANGUAGES = ("bash", "sh", "shell", "console", "zsh")
#: Line starts that make an untagged fenced block a shell block.
COMMAND_STARTS = ("python -m lightning_sarclip", "lightning-sarclip", "make ")
#: Shell variables given a value when a documented command line is parsed (Slurm's, in docs/docker.md).
SHELL_VARIABLES = {"SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS_PER_NODE": "1"}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing a Markdown file gets wrong."""

    file: Path
    line: int
    message: str

    def format(self, root: Path) -> str:
        try:
            name = self.file.resolve().relative_to(root.resolve())
        except ValueError:
            name = self.file
        return f"{name}:{self.line}: {self.message}"


@dataclasses.dataclass
class CodeText:
    """Inline code (``fenced=False``) or one line of a fenced block, with where it is."""

    text: str
    line: int
    fenced: bool
    language: str = ""


@dataclasses.dataclass
class Command:
    """A documented ``python -m lightning_sarclip <name> <argv...>`` line."""

    file: Path
    line: int
    text: str
    name: str
    argv: list[str]
    env: dict[str, str]
    fenced: bool


@dataclasses.dataclass
class Markdown:
    path: Path
    lines: list[str]
    codes: list[CodeText]
    prose: list[tuple[int, str]]  # (line, paragraph text with code spans blanked), for links
    blocks: list[tuple[int, str, list[str]]]  # (line of the first content line, language, lines)
    headings: list[str]


def markdown_files(root: Path) -> list[Path]:
    """README.md, docs/*.md and data_cards/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "data_cards").glob("*.md"))]


# ---------------------------------------------------------------------------------------------- reading Markdown
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def read_markdown(path: Path) -> Markdown:
    lines = path.read_text(encoding="utf-8").splitlines()
    codes: list[CodeText] = []
    blocks: list[tuple[int, str, list[str]]] = []
    prose_lines: list[tuple[int, str]] = []
    fence: str | None = None
    language = ""
    block: list[str] = []
    start = 0
    for number, line in enumerate(lines, 1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence, language, block, start = match.group(1), match.group(2).lower(), [], number + 1
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                blocks.append((start, language, block))
                codes += [CodeText(text, start + i, True, language) for i, text in enumerate(block)]
                fence = None
            else:
                block.append(line)
            continue
        prose_lines.append((number, line))
    headings = [m.group(2) for _, line in prose_lines if (m := _HEADING.match(line))]
    prose: list[tuple[int, str]] = []
    for first, paragraph in _paragraphs(prose_lines):
        for span in _CODE_SPAN.finditer(paragraph):
            content = span.group(2).replace("\n", " ")
            if content.startswith(" ") and content.endswith(" ") and content.strip():
                content = content[1:-1]
            codes.append(CodeText(content, first + paragraph.count("\n", 0, span.start()), False))
        blanked = _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), paragraph)
        prose.append((first, blanked))
    return Markdown(path, lines, codes, prose, blocks, headings)


def _paragraphs(lines: Sequence[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Runs of consecutive non-blank lines (a code span never crosses a blank line)."""
    current: list[str] = []
    first = 0
    previous = -1
    for number, line in lines:
        if not line.strip() or number != previous + 1:
            if current:
                yield first, "\n".join(current)
            current = []
        if line.strip():
            if not current:
                first = number
            current.append(line)
        previous = number
    if current:
        yield first, "\n".join(current)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: formatting removed, lower case, punctuation dropped, spaces -> ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(headings: Iterable[str]) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in headings:
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


# ---------------------------------------------------------------------------------------------- the checks
_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)", re.IGNORECASE)  # http:, https:, mailto:, ftp: ...


def check_links(doc: Markdown, root: Path) -> list[Problem]:
    problems = []
    for first, paragraph in doc.prose:
        targets = [(m.start(), m.group(1)) for m in _LINK.finditer(paragraph)]
        targets += [(m.start(1), m.group(1)) for m in _REFERENCE.finditer(paragraph)]
        for position, target in targets:
            line = first + paragraph.count("\n", 0, position)
            problem = _check_link(doc, root, target)
            if problem:
                problems.append(Problem(doc.path, line, problem))
    return problems


def _check_link(doc: Markdown, root: Path, target: str) -> str | None:
    if not target or _EXTERNAL.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    if not path_part:  # a heading of this file
        known = anchors(doc.headings)
        return None if anchor in known else (
            f"link to #{anchor}: no such heading in this file (expected one of: {', '.join(sorted(known))})")
    resolved = (doc.path.parent / path_part).resolve()
    try:
        resolved.relative_to(root.resolve())
    except ValueError:
        return f"link to {target}: it leaves the repository (expected a file inside it, or a public URL)"
    if not resolved.exists():
        try:
            folder = doc.path.parent.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            folder = str(doc.path.parent)
        where = "the repository root" if folder == "." else f"{folder}/"
        return f"link to {target}: {path_part} does not exist (expected a file relative to {where})"
    if anchor and resolved.suffix == ".md":
        known = anchors(read_markdown(resolved).headings)
        if anchor not in known:
            return f"link to {target}: {path_part} has no heading #{anchor} (expected one of: {', '.join(sorted(known))})"
    return None


_PATH_TOKEN = re.compile(
    r"(?<![\w./\-:$@~])("
    + "|".join(re.escape(p) for p in REPO_PREFIXES)
    + r")([^\s`'\"(),;\[\]|=]*)"
)
_TOP_FILE_TOKEN = re.compile(r"(?<![\w./\-:$@~])(" + "|".join(re.escape(f) for f in TOP_LEVEL_FILES)
                             + r")(?![\w.\-/])")
_PACKAGE_TOKEN = re.compile(r"(?<![\w./\-:$@~])((?:" + "|".join(re.escape(p) for p in PACKAGE_PREFIXES)
                            + r")[^\s`'\"(),;\[\]|=]*)")


def is_placeholder(token: str) -> bool:
    return any(mark in token for mark in PLACEHOLDER_MARKS) or "/path/to/" in token


def is_created_output(token: str) -> bool:
    return token.startswith(CREATED_OUTPUTS)


def repo_path_tokens(text: str) -> list[str]:
    """Tokens of ``text`` that name a repository path (placeholders and outputs left out)."""
    tokens = [m.group(1) + m.group(2) for m in _PATH_TOKEN.finditer(text)]
    tokens += [m.group(1) for m in _TOP_FILE_TOKEN.finditer(text)]
    return [t.rstrip(".:") for t in tokens if not is_placeholder(t) and not is_created_output(t)]


def check_paths(doc: Markdown, root: Path, package_relative: bool) -> list[Problem]:
    problems = []
    for code in doc.codes:
        for token in repo_path_tokens(code.text):
            path = root / token
            if not path.exists():
                problems.append(Problem(doc.path, code.line, f"`{token}` does not exist (expected a path in the "
                                        "repository; a placeholder is written <...>, an output goes in CREATED_OUTPUTS of tests/docs_check.py)"))
            elif path.suffix in (".yaml", ".yml") and token.startswith("experiments/"):
                error = yaml_error(path)
                if error:
                    problems.append(Problem(doc.path, code.line, f"`{token}` is not valid YAML: {error}"))
        if not package_relative:
            continue
        for match in _PACKAGE_TOKEN.finditer(code.text):
            token = match.group(1).rstrip(".:")
            if is_placeholder(token) or not (token.endswith((".py", "/")) and token.count("/") >= 1):
                continue
            if not (root / "lightning_sarclip" / token).exists():
                problems.append(Problem(doc.path, code.line, f"`{token}` does not exist under lightning_sarclip/ "
                                        "(expected a module path relative to the package)"))
    return problems


_MD_MENTION = re.compile(r"(?<![\w./\-:~@$<>])(\w[\w./-]*\.md)(?![\w/-])")


def check_markdown_mentions(doc: Markdown, root: Path) -> list[Problem]:
    """A ``name.md`` named anywhere (prose or code) must be a Markdown file of the repository: notes kept outside it
    (``paper.md``, ``DESIGN.md``) are not something a reader can open."""
    problems = []
    for number, line in enumerate(doc.lines, 1):
        line = re.sub(r"\]\([^)]*\)|^\s{0,3}\[[^\]]+\]:.*", "]", line)  # link targets: check_links reports them
        for match in _MD_MENTION.finditer(line):
            name = match.group(1)
            if name in CREATED_MARKDOWN or is_placeholder(name) or is_created_output(name):
                continue
            if not ((doc.path.parent / name).is_file() or (root / name).is_file()):
                problems.append(Problem(doc.path, number, f"`{name}` is not a file of the repository (expected a "
                                        "Markdown file in it; cite a public source, e.g. a paper or URL, or state "
                                        "the fact instead)"))
    return problems


def yaml_error(path: Path) -> str | None:
    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return " ".join(str(err).split())
    return None


def makefile_targets(root: Path) -> set[str]:
    makefile = root / "Makefile"
    if not makefile.is_file():
        return set()
    targets = set()
    for line in makefile.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([^\s:#=][^:=]*?)\s*::?(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(t for t in match.group(1).split() if not t.startswith("."))  # not .PHONY
    return targets


# ---------------------------------------------------------------------------------------------- commands
_PYTHON = re.compile(r"^(?:.*/)?(?:python3?(?:\.\d+)?|\$PYTHON|\$\{PYTHON\})$")


def command_lines(doc: Markdown) -> Iterator[tuple[int, str, bool]]:
    """``(line, command text, fenced)`` for each command line of a shell block and each inline-code command."""
    for start, language, lines in doc.blocks:
        stripped = [line.strip() for line in lines]
        shell = language in SHELL_LANGUAGES or (
            not language and any(s.removeprefix("$ ").startswith(COMMAND_STARTS) for s in stripped))
        if not shell:
            continue
        pending, first = "", start
        for offset, line in enumerate(lines):
            text = line.strip()
            if language == "console":  # output lines have no prompt
                if not pending and not text.startswith("$ "):
                    continue
            text = text.removeprefix("$ ")
            if not pending:
                first = start + offset
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            full = (pending + text).strip()
            pending = ""
            if full and not full.startswith("#"):
                yield first, full, True
        if pending.strip():
            yield first, pending.strip(), True
    for code in doc.codes:
        if not code.fenced and (_program_index(_words(code.text)) is not None or code.text.startswith("make ")):
            yield code.line, code.text, False


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return text.split()


def _program_index(words: Sequence[str]) -> int | None:
    """Index of the first argument after ``python -m lightning_sarclip`` / ``lightning-sarclip`` / the image."""
    for i, word in enumerate(words):
        if _PYTHON.match(word) and words[i + 1:i + 3] == ["-m", "lightning_sarclip"]:
            return i + 3
        # the script, not an image name (`docker build -t lightning-sarclip .`)
        if word == "lightning-sarclip" and (i == 0 or not words[i - 1].startswith("-") or "=" in words[i - 1]):
            return i + 1
        # docker run ... lightning-sarclip:<tag> <command> ...: the image's ENTRYPOINT is python -m lightning_sarclip
        if re.fullmatch(r"lightning-sarclip:[\w.-]+", word) and words[:2] == ["docker", "run"]:
            return i + 1
    return None


def _simple_commands(words: list[str]) -> Iterator[list[str]]:
    current: list[str] = []
    for word in words:
        if word in ("&&", "||", ";", "|", "&"):
            if current:
                yield current
            current = []
        else:
            current.append(word)
    if current:
        yield current


def find_commands(doc: Markdown, targets: set[str], known: Sequence[str]) -> tuple[list[Command], list[Problem]]:
    """The documented lightning_sarclip commands of ``doc``, and problems found without parsing them."""
    commands, problems = [], []
    for line, text, fenced in command_lines(doc):
        try:
            words = shlex.split(text, comments=True)
        except ValueError as err:
            if fenced:
                problems.append(Problem(doc.path, line, f"`{text}` is not a valid shell line: {err}"))
            continue
        for simple in _simple_commands(words):
            env = {}
            while simple and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", simple[0]):
                key, _, value = simple.pop(0).partition("=")
                env[key] = value
            if not simple:
                continue
            if simple[0] == "make":
                # targets: the words that are not options, option values (-C dir, -f file, -j N) or VAR=value
                values = {i + 1 for i, w in enumerate(simple) if w in ("-C", "-f", "-j", "-I", "-o", "-W")}
                for target in (w for i, w in enumerate(simple) if i and i not in values
                               and not w.startswith("-") and "=" not in w):
                    if target not in targets:
                        problems.append(Problem(doc.path, line, f"`make {target}`: no such target in the Makefile "
                                                f"(expected one of: {', '.join(sorted(targets))})"))
                continue
            index = _program_index(simple)
            if index is None:
                continue
            argv = [w for w in simple[index:] if w not in ("--verbose", "--debug")]
            if not argv or argv[0] in ("-h", "--help", "--version"):
                continue
            name, rest = argv[0], argv[1:]
            if name not in known:
                problems.append(Problem(doc.path, line, f"`{name}` is not a lightning_sarclip command (expected one "
                                        f"of: {', '.join(known)})"))
                continue
            commands.append(Command(doc.path, line, text, name, rest, env, fenced))
    return commands, problems


def config_values(argv: Sequence[str]) -> list[str]:
    values = []
    for i, word in enumerate(argv):
        if word == "--config" and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif word.startswith("--config="):
            values.append(word.split("=", 1)[1])
    return values


def check_command_configs(command: Command, root: Path) -> tuple[list[Problem], bool]:
    """Problems of the ``--config`` files of ``command`` not already reported as paths in code, and whether every
    one of them exists and parses (else the command is not given to its parser)."""
    problems, ok = [], True
    for value in config_values(command.argv):
        if is_placeholder(value) or value.startswith("-"):
            continue
        path = root / value
        # check_paths reports a missing repository path, and bad YAML under experiments/, at the line naming it
        named = repo_path_tokens(value) == [value]
        if not path.is_file():
            ok = False
            if not (named and not path.exists()):
                problems.append(Problem(command.file, command.line, f"`{command.name} --config {value}`: the config "
                                        "file does not exist (expected a file relative to the repository root)"))
        elif path.suffix in (".yaml", ".yml") and (error := yaml_error(path)):
            ok = False
            if not (named and value.startswith("experiments/")):
                problems.append(Problem(command.file, command.line, f"`--config {value}` is not valid YAML: {error}"))
    return problems, ok


# ---------------------------------------------------------------------------------------------- parsing commands
class _Parsed(Exception):
    """Raised in place of a command's work once its arguments have been parsed."""


def _raise_parsed(*args: Any, **kwargs: Any) -> None:
    raise _Parsed()


def _argparse_only(module_name: str) -> Callable[[list[str]], None]:
    """Run ``main(argv)`` of an argparse command and stop right after ``parse_args`` succeeds."""

    def parse(argv: list[str]) -> None:
        import importlib

        module = importlib.import_module(module_name)
        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
            namespace = original(self, *args, **kwargs)
            if type(self) is argparse.ArgumentParser:
                raise _Parsed()
            return namespace

        with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
            module.main(argv)

    return parse


def _parse_lightning(name: str) -> Callable[[list[str]], None]:
    def parse(argv: list[str]) -> None:
        from lightning_sarclip.commands.fit import SARCLIPCLI

        # --print_config: LightningCLI parses everything (configs, class paths, links) and prints, building nothing.
        SARCLIPCLI(args=[name, *argv, "--print_config"])

    return parse


def _parse_evaluate(argv: list[str]) -> None:
    from lightning_sarclip.commands.evaluate import config_from_args

    config_from_args(argv)  # the suite's dataclasses + the static checks (check_config); loads nothing


def _parse_build_corpus(argv: list[str]) -> None:
    from lightning_sarclip.commands.build_corpus import config_from_args

    config_from_args(argv)


def _parse_curriculum(argv: list[str]) -> None:
    from lightning_sarclip.commands.curriculum import config_from_args

    config_from_args(argv)


def _parse_sweep(argv: list[str]) -> None:
    from lightning_sarclip.commands import sweep

    with mock.patch.object(sweep, "write_sweep", _raise_parsed):  # main maps its flags, parses, then writes
        sweep.main(argv)


def _parse_embed(argv: list[str]) -> None:
    from lightning_sarclip.commands import embed
    from lightning_sarclip.models import loading

    with mock.patch.object(loading, "load_model", _raise_parsed):  # after parse_args and embed's own checks
        embed.main(argv)


#: command -> a function that parses its arguments as the command does, without doing the work.
PARSERS: dict[str, Callable[[list[str]], None]] = {
    **{name: _parse_lightning(name) for name in ("fit", "validate", "test", "predict")},
    "evaluate": _parse_evaluate,
    "build-corpus": _parse_build_corpus,
    "curriculum": _parse_curriculum,
    "sweep": _parse_sweep,
    "report": _argparse_only("lightning_sarclip.commands.report"),
    "export": _argparse_only("lightning_sarclip.commands.export"),
    "embed": _parse_embed,
}


def _substitute(argv: Sequence[str], scratch: Path) -> list[str] | None:
    """The arguments to parse, or ``None`` when a placeholder cannot stand for anything (then only the command name
    and its existing configs are checked).

    * ``$SLURM_NNODES`` and the other :data:`SHELL_VARIABLES` -> ``1``;
    * optional groups ``[--option value]`` (and ``[...]``) are left out;
    * a ``--config`` value with a placeholder (``experiments/eval/<suite>.yaml``), ``...`` and any other ``$VAR``
      -> not parsed;
    * any other argument with ``<...>`` or ``/path/to/`` (``runs/eval/<suite>/results.jsonl``) -> a path under
      the scratch folder.
    """
    out = []
    optional = False
    for i, word in enumerate(argv):
        if optional or word == "[...]" or word.startswith("[-"):
            optional = not word.endswith("]")
            continue
        for variable, value in SHELL_VARIABLES.items():
            word = word.replace(f"${{{variable}}}", value).replace(f"${variable}", value)
        if "..." in word or "\u2026" in word or "$" in word:
            return None
        if "<" in word or ">" in word or "/path/to/" in word:
            if i > 0 and argv[i - 1] == "--config":
                return None
            word = str(scratch / re.sub(r"[^\w.-]+", "_", word))
        out.append(word)
    return out


def parse_command(command: Command, root: Path, scratch: Path) -> str | None:
    """``None`` when the command's parser accepts the documented arguments, else its error message."""
    argv = _substitute(command.argv, scratch)
    if argv is None:
        return None
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(root)  # configs are named relative to the repository root
    try:
        # sys.argv: LightningCLI warns when given args while sys.argv holds arguments (pytest's)
        with mock.patch.dict(os.environ, command.env), mock.patch.object(sys, "argv", sys.argv[:1]), \
                contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            PARSERS[command.name](argv)
    except _Parsed:
        return None
    except SystemExit as exit_:
        if exit_.code in (0, None):
            return None
        return _last_error(stderr.getvalue()) or str(exit_.code)
    except (ValueError, TypeError, KeyError, OSError) as err:
        return " ".join(f"{type(err).__name__}: {err}".split())
    finally:
        os.chdir(cwd)
    return None


def _last_error(text: str) -> str:
    """The parser's message: from its last ``error:`` line to the end (jsonargparse explains on further lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.lower().startswith(("error:", "usage error"))
              or ": error:" in line]
    message = " ".join(lines[starts[-1]:] if starts else lines[-1:])
    return message if len(message) <= 600 else message[:600] + " ..."


# ---------------------------------------------------------------------------------------------- all of it
def check_markdown(files: Iterable[Path], root: Path, *, parse_commands: bool = True,
                   scratch: Path | None = None) -> list[Problem]:
    """Every problem of ``files`` (links, named paths, configs, commands), sorted by file and line."""
    from lightning_sarclip.commands import COMMANDS

    root = Path(root).resolve()
    targets = makefile_targets(root)
    problems: list[Problem] = []
    commands: list[Command] = []
    for path in files:
        path = Path(path).resolve()
        doc = read_markdown(path)
        in_docs = path.parent == root / "docs" or path == root / "README.md"
        problems += check_links(doc, root)
        problems += check_paths(doc, root, package_relative=in_docs)
        problems += check_markdown_mentions(doc, root)
        found, found_problems = find_commands(doc, targets, tuple(COMMANDS))
        problems += found_problems
        for command in found:
            config_problems, configs_ok = check_command_configs(command, root)
            problems += config_problems
            if configs_ok:  # a missing or broken config is reported once, not again by the parser
                commands.append(command)
    if parse_commands:
        problems += parse_commands_once(commands, root, scratch or Path(tempfile.gettempdir()) / "docs_check")
    return sorted(set(problems), key=lambda p: (str(p.file), p.line, p.message))


def parse_commands_once(commands: Sequence[Command], root: Path, scratch: Path) -> list[Problem]:
    """Parse each distinct command line once (by command, arguments and environment); report every place."""
    results: dict[tuple, str | None] = {}
    problems = []
    for command in commands:
        if not command.argv and not command.fenced:  # a mention (`python -m lightning_sarclip curriculum`)
            continue
        key = (command.name, tuple(command.argv), tuple(sorted(command.env.items())))
        if key not in results:
            results[key] = parse_command(command, root, scratch)
        if results[key]:
            problems.append(Problem(command.file, command.line, f"`{command.name} {' '.join(command.argv)}`: its "
                                    f"parser refuses it: {results[key]} (expected arguments the command accepts)"))
    return problems


def documented_fields(path: Path, heading: str) -> set[str]:
    """Names in backticks that start a table row's first cell or a list item, in the section under ``heading``
    (up to the next heading of any level)."""
    names: set[str] = set()
    inside = False
    fence: str | None = None
    for line in read_markdown(path).lines:
        opening = _FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)[0]
            continue
        if fence is not None:
            fence = None if line.strip().startswith(fence * 3) else fence
            continue
        match = _HEADING.match(line)
        if match:
            inside = match.group(2).strip() == heading
            continue
        if not inside:
            continue
        row = re.match(r"^\s*\|([^|]*)\|", line)
        if row:
            names.update(re.findall(r"`([\w.-]+)`", row.group(1)))
        item = re.match(r"^\s*[-*]\s+((?:`[\w.-]+`(?:,\s*)?)+)", line)
        if item:
            names.update(re.findall(r"`([\w.-]+)`", item.group(1)))
    return names
