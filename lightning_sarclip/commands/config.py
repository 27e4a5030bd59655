"""Config files for the commands that are not Lightning runs (build-corpus, evaluate, curriculum).

They use the same machinery as the training CLI (jsonargparse, OmegaConf interpolation such as
``${oc.env:SAR_DATA,/data/sar}``, stackable ``--config`` files, ``--field value`` overrides), parsed into plain
dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def parse_dataclass_config(cls: type[T], args: list[str], prog: str) -> T:
    """Parse ``--config file.yaml`` (repeatable; later files win) plus overrides into an instance of ``cls``.

    Nested dataclass fields (also inside lists) are built from the parsed dictionaries.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, parser_mode="omegaconf")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (may be given several times)")
    parser.add_class_arguments(cls, None)
    values = parser.parse_args(args).as_dict()
    values.pop("config", None)
    values.pop("__path__", None)
    return _build(cls, values)


def _build(cls: type[T], values: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    return cls(**{name: _convert(hints.get(name, Any), value) for name, value in values.items()})


def _convert(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return _build(annotation, value)
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return [_convert(item, v) for v in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return _build(option, value)
    return value
