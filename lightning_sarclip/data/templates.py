"""Prompt template sets for zero-shot classification, kept as data.

Why data and not code: the template set is part of an experiment's definition (the paper compares
SAR-specific, optical and mixed prompts), so each set is a named tuple of format strings that configs can
refer to by name, and users can supply their own as a JSON file without touching code.

Templates use a positional ``{}`` placeholder, filled with ``template.format(classname)``. CLIP_benchmark's
``{c}`` placeholder is accepted on input and normalised to ``{}``.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TEMPLATE_SETS", "get_templates", "normalize_template"]

_SAR_SPECIFIC: tuple[str, ...] = (
    "a SAR image of {}.",
    "a radar image of {}.",
    "a synthetic aperture radar image of {}.",
    "SAR imagery showing {}.",
    "a satellite SAR image of {}.",
    "radar remote sensing image of {}.",
)

_OPTICAL_SPECIFIC: tuple[str, ...] = (
    "a satellite image of {}.",
    "an aerial image of {}.",
    "an aerial photo of {}.",
    "a remote sensing image of {}.",
    "an overhead view of {}.",
    "a high-resolution satellite image of {}.",
)

#: Named template sets. ``sar_opt`` is the SAR-specific and optical-specific templates plus three generic
#: ones.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "sar": _SAR_SPECIFIC + ("{}.", "a photo of {}.", "an image of {}."),
    "optical": _OPTICAL_SPECIFIC + ("imagery showing {}.", "an image of {}.", "{}."),
    "sar_opt": _SAR_SPECIFIC + _OPTICAL_SPECIFIC + ("a photo of {}.", "an image of {}.", "{}."),
    "isprs": (
        "a SAR image of {}.",
        "a radar image showing {}.",
        "synthetic aperture radar image of {}.",
        "SAR land cover image of {}.",
        "{}.",
    ),
    "simple": ("a photo of {}.",),
}


def normalize_template(template: str) -> str:
    """Validate one template and return it with a single positional ``{}`` placeholder.

    Accepts exactly one bare ``{}`` or ``{c}`` placeholder (``{{``/``}}`` escapes are kept). Anything else
    (no placeholder, several placeholders, other field names such as ``{0}``/``{name}``, format specs,
    conversions or unbalanced braces) raises ``ValueError``, because ``template.format(classname)`` would
    fail or silently produce a prompt without the class name.
    """
    if not isinstance(template, str):
        raise ValueError(f"a template must be a string, got {type(template).__name__}: {template!r}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"template {template!r} is not a valid format string: {err}") from None
    out: list[str] = []
    placeholders = 0
    for literal, field, spec, conversion in parts:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        if field not in ("", "c") or spec or conversion:
            raise ValueError(
                f"template {template!r} has an unsupported placeholder; "
                "use '{}' or '{c}' for the class name"
            )
        placeholders += 1
        out.append("{}")
    if placeholders != 1:
        raise ValueError(
            f"template {template!r} must contain exactly one class-name placeholder ('{{}}' or '{{c}}'), "
            f"found {placeholders}"
        )
    return "".join(out)


def _load_json(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(
            f"template file {str(path)!r} does not exist (and it is not a known template set: "
            f"{', '.join(sorted(TEMPLATE_SETS))})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"could not read templates from {str(path)!r}: {err}") from None
    if isinstance(data, dict):
        if "templates" not in data:
            raise ValueError(
                f"template file {str(path)!r} holds a JSON object without a 'templates' key "
                f"(keys: {sorted(data)})"
            )
        data = data["templates"]
    if not isinstance(data, list):
        raise ValueError(
            f"template file {str(path)!r} must hold a list of template strings or {{'templates': [...]}}, "
            f"got {type(data).__name__}"
        )
    return data


def get_templates(name_or_path: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """Resolve a template specification to a validated list of ``{}`` templates.

    Args:
        name_or_path: one of
            * a set name from :data:`TEMPLATE_SETS` (``sar``, ``optical``, ``sar_opt``, ``isprs``,
              ``simple``);
            * a path to a JSON file holding a list of template strings, or an object with a
              ``"templates"`` list;
            * an explicit sequence of template strings.
            Templates may use ``{}`` or CLIP_benchmark's ``{c}``; they are returned using ``{}``.

    Raises:
        ValueError: unknown set name (the message lists the known ones), missing or malformed JSON file, an
            empty template list, or a template without exactly one class-name placeholder.
    """
    if isinstance(name_or_path, (str, os.PathLike)):
        spec = os.fspath(name_or_path)
        if isinstance(name_or_path, str) and spec in TEMPLATE_SETS:
            raw: Sequence[str] = TEMPLATE_SETS[spec]
            source = f"template set {spec!r}"
        elif not isinstance(name_or_path, str) or spec.lower().endswith(".json") or Path(spec).exists():
            raw = _load_json(Path(spec))
            source = f"template file {spec!r}"
        else:
            raise ValueError(
                f"unknown template set {spec!r}; known sets: {', '.join(sorted(TEMPLATE_SETS))} "
                "(or pass a path to a .json file, or a list of templates)"
            )
    elif isinstance(name_or_path, Sequence):
        raw = name_or_path
        source = "template list"
    else:
        raise ValueError(
            "templates must be a set name, a JSON path or a list of strings, "
            f"got {type(name_or_path).__name__}"
        )
    if len(raw) == 0:
        raise ValueError(f"{source} is empty")
    return [normalize_template(t) for t in raw]
