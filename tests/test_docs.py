"""The documentation is checked like code (README.md, docs/*.md, data_cards/*.md; the checker is tests/docs_check.py).

Links resolve, paths and configs named in code exist (and the configs parse), every documented
``python -m lightning_sarclip ...`` line names a known command and is accepted by that command's parser, ``make``
targets exist, and every field of the ``evaluate`` suite config and every ``embed`` option is in docs/evaluation.md.
A failure lists every problem as ``file:line: what is wrong (what was expected)``.
"""

import argparse
import dataclasses
import shutil
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import REPO_ROOT
from tests.docs_check import PARSERS, check_markdown, documented_fields, markdown_files

EVALUATION = REPO_ROOT / "docs" / "evaluation.md"


def _report(problems, root: Path) -> str:
    return f"{len(problems)} documentation problem(s):\n" + "\n".join(p.format(root) for p in problems)


def test_the_docs_have_no_broken_links_paths_configs_or_commands(tmp_path):
    files = markdown_files(REPO_ROOT)
    assert REPO_ROOT / "README.md" in files and EVALUATION in files and REPO_ROOT / "data_cards" / "mstar.md" in files
    problems = check_markdown(files, REPO_ROOT, scratch=tmp_path)
    assert not problems, _report(problems, REPO_ROOT)


def test_the_checker_knows_every_command():
    from lightning_sarclip.commands import COMMANDS, LIGHTNING_SUBCOMMANDS

    assert set(COMMANDS) == {"fit", "validate", "test", "predict", "evaluate", "report", "export", "embed",
                             "build-corpus", "curriculum", "sweep"}
    assert set(LIGHTNING_SUBCOMMANDS) <= set(COMMANDS)
    # a new command needs a way to parse its documented lines without running it (tests/docs_check.py, PARSERS)
    assert set(PARSERS) == set(COMMANDS)


PLANTED = """\
# Page

## A section

Fine: [other](other.md), [its heading](other.md#other-heading), [here](#a-section), [web](https://example.com/x.md),
[mail](mailto:someone@example.com), `experiments/quickstart.yaml`, `experiments/<name>.yaml`, `runs/quickstart/`.
[broken](missing.md)
[no such heading](#no-such-section) and [no such heading there](other.md#nope)
[outside](../../outside.md)
Named: `experiments/nothing.yaml`, `experiments/broken.yaml`, `lightning_sarclip/nothing.py`.
The internal notes in paper.md say so.

```bash
make quickstart
make deploy
python -m lightning_sarclip fit --config experiments/quickstart.yaml --trainer.max_epochs 2
python -m lightning_sarclip fitt --config experiments/quickstart.yaml
python -m lightning_sarclip evaluate --config experiments/eval/missing.yaml
python -m lightning_sarclip report --results r.jsonl --out reports/ --bogus 1
SAR_DATA=/data python -m lightning_sarclip fit --config experiments/quickstart.yaml \\
    --trainer.max_epochs many
cat tests/missing_fixture.py
python -m lightning_sarclip embed --ckpt a.ckpt --pretrained openai --images x/ --out e.parquet
```

Run `python -m lightning_sarclip evaluat` or `make deploy-all`.
"""

#: (line, a piece of the message) of every problem planted above, and nothing else
EXPECTED = [
    (7, "link to missing.md: missing.md does not exist"),
    (8, "link to #no-such-section: no such heading"),
    (8, "link to other.md#nope: other.md has no heading #nope"),
    (9, "link to ../../outside.md: it leaves the repository"),
    (10, "`experiments/nothing.yaml` does not exist"),
    (10, "`experiments/broken.yaml` is not valid YAML"),
    (10, "`lightning_sarclip/nothing.py` does not exist"),
    (11, "`paper.md` is not a file of the repository"),
    (15, "`make deploy`: no such target in the Makefile (expected one of: quickstart"),
    (17, "`fitt` is not a lightning_sarclip command (expected one of: fit, "),
    (18, "`experiments/eval/missing.yaml` does not exist"),
    (19, "`report --results r.jsonl --out reports/ --bogus 1`: its parser refuses it: "),
    (20, "--trainer.max_epochs many`: its parser refuses it: "),
    (22, "`tests/missing_fixture.py` does not exist"),
    (23, "`embed --ckpt a.ckpt --pretrained openai --images x/ --out e.parquet`: its parser refuses it: "),
    (26, "`evaluat` is not a lightning_sarclip command"),
    (26, "`make deploy-all`: no such target"),
]


def test_planted_problems_are_each_reported_with_file_and_line(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "experiments").mkdir()
    (root / "Makefile").write_text(".PHONY: quickstart\nquickstart:\n\techo run\n")
    shutil.copy(REPO_ROOT / "experiments" / "quickstart.yaml", root / "experiments" / "quickstart.yaml")
    (root / "experiments" / "broken.yaml").write_text("model: [1, 2\n")
    (root / "docs" / "other.md").write_text("# Other heading\n")
    page = root / "docs" / "page.md"
    page.write_text(PLANTED)

    problems = check_markdown([page, root / "docs" / "other.md"], root, scratch=tmp_path / "scratch")

    report = _report(problems, root)
    found = [(p.line, p.message) for p in problems]
    for line, piece in EXPECTED:
        assert any(n == line and piece in message for n, message in found), f"not reported: {line}: {piece}\n{report}"
    assert len(problems) == len(EXPECTED), report
    assert all(p.format(root).startswith(f"docs/page.md:{p.line}: ") for p in problems)
    refused = {p.line: p.message for p in problems if "parser refuses" in p.message}
    assert "unrecognized arguments: --bogus 1" in refused[19]
    assert 'Parser key "trainer.max_epochs"' in refused[20] and "Given value: many" in refused[20]
    assert "--ckpt and --pretrained" in refused[23]


@pytest.mark.parametrize(("spec", "heading"), [
    ("EvalConfig", "Evaluating any checkpoint"),
    ("ModelSpec", "Evaluating any checkpoint"),
    ("DatasetSpec", "Datasets"),
])
def test_every_field_of_the_evaluate_suite_is_documented(spec, heading):
    from lightning_sarclip.eval import evaluate

    fields = {field.name for field in dataclasses.fields(getattr(evaluate, spec))}
    missing = sorted(fields - documented_fields(EVALUATION, heading))
    assert not missing, (f"docs/evaluation.md, section '{heading}': no table row or list item for the {spec} "
                         f"field(s) {missing} (expected every field of lightning_sarclip.eval.evaluate.{spec})")


def test_every_embed_option_is_documented():
    from lightning_sarclip.commands import embed

    parsers = []

    def capture(self, *args, **kwargs):
        parsers.append(self)
        raise SystemExit(0)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), pytest.raises(SystemExit):
        embed.main([])
    options = {option for action in parsers[0]._actions for option in action.option_strings
               if option.startswith("--") and option != "--help"}
    assert "--channel-mode" in options
    missing = sorted(options - documented_fields(EVALUATION, "`embed`: embeddings as parquet"))
    assert not missing, f"docs/evaluation.md, section '`embed`: embeddings as parquet': options {missing} missing"


def test_shipped_files_cite_nothing_outside_the_repository():
    """Configs, class-name files and code comments cite public sources, never the team's internal notes."""
    import re

    internal = re.compile(r"(?<![\w/])(paper|datasets|anchors|DESIGN)\.md\b|\.\./shared/")
    offenders = []
    for folder in ("lightning_sarclip", "experiments", "benchmarks"):
        for path in sorted((REPO_ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".yaml", ".json", ".sh", ".md") and "__pycache__" not in path.parts:
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    if internal.search(line):
                        offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
