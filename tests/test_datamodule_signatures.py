"""Datamodule subclasses declare only what they add and pass the rest of :class:`SARDataModule` on as ``**kwargs``.

LightningCLI (jsonargparse's AST resolver, following ``super().__init__(..., **kwargs)``) must still offer every
base argument on each subclass, with the base's type, default and docstring help; ``--print_config`` must
round-trip; and the CLI links (data ``image_size``/``in_chans`` -> model, model ``model_name`` -> data
``tokenizer``) must reach every subclass.
"""

from __future__ import annotations

import inspect
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from lightning_sarclip.commands.fit import SARCLIPCLI
from lightning_sarclip.training.datamodules import (
    CorpusDataModule,
    SARDataModule,
    SourceDataModule,
    SyntheticSARDataModule,
)
from lightning_sarclip.training.prediction import ImageFolderPredictDataModule
from tests.conftest import REPO_ROOT, TEST_ARCH

#: Each subclass's own parameters, in order (everything else of SARDataModule comes through ``**kwargs``).
OWN_PARAMETERS: dict[type[SARDataModule], list[str]] = {
    SyntheticSARDataModule: ["num_train", "num_val", "num_test", "n_captions", "looks", "seed",
                             "batch_size", "image_size"],
    SourceDataModule: ["source", "root", "n_captions", "seed", "caption_styles", "drop_prompt_like", "policy",
                       "source_options", "detection", "split_fractions", "split_seed", "split_group_by", "augment",
                       "cache_images"],
    CorpusDataModule: ["root", "variant", "source_weights", "samples_per_epoch", "augment", "eval_captions", "seed"],
    ImageFolderPredictDataModule: ["folder", "recursive", "extensions", "image_size", "policy", "detect_mstar"],
}
#: Base arguments a subclass re-declares, and why: a different default or type (the value it then has).
OVERRIDDEN: dict[type[SARDataModule], dict[str, object]] = {
    SyntheticSARDataModule: {"batch_size": 64, "image_size": 64},  # small procedural scenes
    SourceDataModule: {},
    CorpusDataModule: {},
    ImageFolderPredictDataModule: {"image_size": None},  # None: the input size of the model being run
}
#: Base arguments the subclass fixes itself (not offered on the command line).
FIXED_BY_SUBCLASS = {"dataset_class", "dataset_kwargs"}
#: Required init_args of each subclass (values need not exist on disk: nothing is read at construction).
MINIMAL: dict[type[SARDataModule], dict[str, str]] = {
    SyntheticSARDataModule: {},
    SourceDataModule: {"source": "class_folder", "root": "tests/data/class_folder/split_layout"},
    CorpusDataModule: {"root": "corpus"},
    ImageFolderPredictDataModule: {"folder": "images"},
}
SUBCLASSES = list(OWN_PARAMETERS)
BASE_PARAMETERS = {
    name: param for name, param in inspect.signature(SARDataModule.__init__).parameters.items()
    if name != "self" and name not in FIXED_BY_SUBCLASS
}


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _ids(cls: type) -> str:
    return cls.__name__


def _class_parser(cls: type) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    return parser


def _action(parser: ArgumentParser, name: str):
    return parser._option_string_actions[f"--data.{name}"]


def _print_config(args: list[str]) -> str:
    printed = io.StringIO()
    with redirect_stdout(printed), pytest.raises(SystemExit) as exit_info:
        SARCLIPCLI(args=[*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return printed.getvalue()


# ---------------------------------------------------------------------------------------------- (a) signatures
@pytest.mark.parametrize("cls", SUBCLASSES, ids=_ids)
def test_subclass_declares_only_its_own_parameters_and_kwargs(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params[:-1]] == OWN_PARAMETERS[cls]
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params[:-1])
    # A base argument is re-declared only to change its default (or type), never just to pass it on.
    redeclared = {p.name: p.default for p in params[:-1] if p.name in BASE_PARAMETERS}
    assert redeclared == OVERRIDDEN[cls]
    for name, default in redeclared.items():
        assert default != BASE_PARAMETERS[name].default or (
            inspect.signature(cls.__init__).parameters[name].annotation != BASE_PARAMETERS[name].annotation
        )


@pytest.mark.parametrize("cls", SUBCLASSES, ids=_ids)
def test_docstring_points_to_the_base_for_other_arguments(cls):
    assert "Other arguments: see :class:`SARDataModule`" in inspect.getdoc(cls)


@pytest.mark.parametrize("cls", SUBCLASSES, ids=_ids)
def test_base_arguments_still_work_as_keywords(cls, tmp_path):
    init = {k: str(tmp_path / v) if k in ("root", "folder") else v for k, v in MINIMAL[cls].items()}
    dm = cls(**init, batch_size=3, eval_batch_size=5, num_workers=2, image_size=40, in_chans=2,
             tokenizer=TEST_ARCH, pin_memory=True)
    assert (dm.batch_size, dm.eval_batch_size, dm.num_workers) == (3, 5, 2)
    assert (dm.image_size, dm.in_chans, dm.tokenizer_name, dm.pin_memory) == (40, 2, TEST_ARCH, True)
    assert dm.hparams["batch_size"] == 3 and dm.hparams["in_chans"] == 2
    with pytest.raises(TypeError):
        cls(**init, not_an_argument=1)
    with pytest.raises(ValueError, match="batch_size"):
        cls(**init, batch_size=0)


# ------------------------------------------------------------------------------------ (b) what the parser sees
@pytest.mark.parametrize("cls", SUBCLASSES, ids=_ids)
def test_parser_offers_every_base_argument_with_the_bases_type_default_and_help(cls):
    parser, base = _class_parser(cls), _class_parser(SARDataModule)
    defaults = parser.get_defaults().data
    expected = [*OWN_PARAMETERS[cls], *(n for n in BASE_PARAMETERS if n not in OWN_PARAMETERS[cls])]
    assert list(vars(defaults)) == expected
    for name, param in BASE_PARAMETERS.items():
        action = _action(parser, name)
        if name in OVERRIDDEN[cls]:
            assert getattr(defaults, name) == OVERRIDDEN[cls][name], name
            assert action.help, f"{cls.__name__} re-declares {name} without documenting it"
            continue
        assert getattr(defaults, name) == param.default, name
        assert action.help == _action(base, name).help, name  # the base docstring's help
        assert type(action) is type(_action(base, name))
        assert getattr(action, "_typehint", None) == getattr(_action(base, name), "_typehint", None), name
    for name in FIXED_BY_SUBCLASS:
        assert f"--data.{name}" not in parser._option_string_actions


@pytest.mark.parametrize("cls", SUBCLASSES, ids=_ids)
def test_parser_checks_the_types_of_forwarded_arguments(cls):
    parser = _class_parser(cls)
    required = [f"--data.{k}={v}" for k, v in MINIMAL[cls].items()]
    cfg = parser.parse_args([*required, "--data.batch_size=7", "--data.eval_batch_size=null",
                             "--data.tokenizer=null", "--data.pin_memory=true", "--data.in_chans=2"])
    assert (cfg.data.batch_size, cfg.data.eval_batch_size, cfg.data.tokenizer) == (7, None, None)
    assert cfg.data.pin_memory is True and cfg.data.in_chans == 2
    for bad in ("--data.batch_size=many", "--data.num_workers=1.5", "--data.pin_memory=maybe"):
        with pytest.raises(Exception):  # noqa: B017, PT011 - jsonargparse's ArgumentError
            parser.parse_args([*required, bad])


# ---------------------------------------------------------------------------------- (c) --print_config round trip
def _source_config(tmp_path: Path) -> Path:
    return _write(tmp_path / "source.yaml", SourceDataModule, MINIMAL[SourceDataModule])


def _corpus_config(tmp_path: Path) -> Path:
    return _write(tmp_path / "corpus.yaml", CorpusDataModule, {"root": str(tmp_path / "corpus"), "variant": "wo_mstar"})


def _write(path: Path, cls: type, init_args: dict) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1},
        "model": {"class_path": "lightning_sarclip.training.module.SARCLIPModule",
                  "init_args": {"model_name": TEST_ARCH}},
        "data": {"class_path": _class_path(cls),
                 "init_args": {**init_args, "batch_size": 8, "image_size": 32, "num_workers": 1}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


ROUND_TRIPS = {
    "quickstart": lambda tmp: ["fit", "--config", str(REPO_ROOT / "experiments" / "quickstart.yaml")],
    "source": lambda tmp: ["fit", "--config", str(_source_config(tmp))],
    "corpus": lambda tmp: ["fit", "--config", str(_corpus_config(tmp))],
    "predict": lambda tmp: ["predict", "--config", str(REPO_ROOT / "experiments" / "predict.yaml"),
                            "--data.init_args.folder", str(tmp / "images")],
}
ROUND_TRIP_CLASSES = {"quickstart": SyntheticSARDataModule, "source": SourceDataModule,
                      "corpus": CorpusDataModule, "predict": ImageFolderPredictDataModule}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_print_config_lists_every_base_argument_and_round_trips(name, tmp_path):
    args = ROUND_TRIPS[name](tmp_path)
    printed = _print_config(args)
    config = yaml.safe_load(printed)
    data = config["data"]
    assert data["class_path"].rsplit(".", 1)[-1] == ROUND_TRIP_CLASSES[name].__name__
    # Every base argument is printed, except tokenizer: a link target, derived from model_name.
    assert set(BASE_PARAMETERS) - {"tokenizer"} <= set(data["init_args"])
    assert "tokenizer" not in data["init_args"]
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert yaml.safe_load(_print_config([args[0], "--config", str(again)])) == config


def test_print_config_keeps_the_values_given(tmp_path):
    config = yaml.safe_load(_print_config(ROUND_TRIPS["source"](tmp_path)))["data"]["init_args"]
    assert config["source"] == "class_folder" and config["batch_size"] == 8 and config["num_workers"] == 1
    assert config["image_size"] == 32 and config["in_chans"] == 1 and config["eval_batch_size"] is None
    quick = yaml.safe_load(_print_config(ROUND_TRIPS["quickstart"](tmp_path)))["data"]["init_args"]
    assert (quick["batch_size"], quick["eval_batch_size"], quick["image_size"]) == (64, 125, 64)


# ---------------------------------------------------------------------------------------------------- (d) links
@pytest.mark.parametrize("cls", SUBCLASSES, ids=_ids)
def test_links_reach_every_subclass(cls, tmp_path):
    init = [f"--data.init_args.{k}={tmp_path / v if k in ('root', 'folder') else v}" for k, v in MINIMAL[cls].items()]
    cli = SARCLIPCLI(args=[
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--model.init_args.model_name", TEST_ARCH,
        "--data", _class_path(cls), *init,
        "--data.init_args.image_size", "32", "--data.init_args.in_chans", "2",
        "--run_root", str(tmp_path / "runs"),
    ], run=False)
    assert isinstance(cli.datamodule, cls)
    assert cli.model.hparams.image_size == cli.datamodule.image_size == 32
    assert cli.model.hparams.in_chans == cli.datamodule.in_chans == 2
    assert cli.datamodule.tokenizer_name == cli.model.hparams.model_name == TEST_ARCH
