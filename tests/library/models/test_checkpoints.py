"""Checkpoint reading/loading: every on-disk format, shape adaptation, key reporting and every failure mode.

All models are the tiny registered ``SARCLIP-ViT-Test-32`` (32 px, embed 32) so the whole file runs in seconds.
"""

from __future__ import annotations

import copy
import enum
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from lightning_sarclip.models.checkpoints import CheckpointError, LoadReport, load_checkpoint, read_state_dict
from lightning_sarclip.models.registry import register_model_configs
from tests.helpers import save_torchscript

ARCH = "SARCLIP-ViT-Test-32"
OPENAI_EXTRAS = {"input_resolution", "context_length", "vocab_size"}

register_model_configs()


def _clip(seed: int, **overrides) -> torch.nn.Module:
    """A tiny CLIP; ``overrides`` patch its config (e.g. a different embed_dim) for mismatch tests."""
    torch.manual_seed(seed)
    if not overrides:
        return open_clip.create_model(ARCH).eval()
    cfg = copy.deepcopy(open_clip.get_model_config(ARCH))
    for key, value in overrides.items():
        section, _, name = key.rpartition("__")
        (cfg[section] if section else cfg)[name] = value
    return open_clip.model.CLIP(**cfg).eval()


@pytest.fixture
def source() -> torch.nn.Module:
    """A model whose every tensor differs from a fresh one (noise also moves LayerNorm ones/zeros, logit_scale)."""
    model = _clip(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


@pytest.fixture
def target() -> torch.nn.Module:
    return _clip(1)


def _assert_all_differ(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    same = [k for k in sa if torch.equal(sa[k], sb[k])]
    assert not same, f"fixtures should differ everywhere, equal: {same}"


def _assert_all_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"not loaded: {different}"


# ------------------------------------------------------------------------------------------- file writers


def _raw(model: torch.nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def _open_clip_train(model: torch.nn.Module, path: Path) -> None:
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save(
        {"epoch": 3, "name": "run", "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
        path,
    )


def _model_key(model: torch.nn.Module, path: Path) -> None:
    torch.save({"model": model.state_dict(), "epoch": 1}, path)


def _ddp(model: torch.nn.Module, path: Path) -> None:
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


def _compiled(model: torch.nn.Module, path: Path) -> None:
    # torch.compile wraps lazily; its state_dict already has the real `_orig_mod.` keys without compiling.
    state = torch.compile(model).state_dict()
    assert all(k.startswith("_orig_mod.") for k in state)
    torch.save(state, path)


def _safetensors(model: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


FORMATS: dict[str, tuple[str, Callable[[torch.nn.Module, Path], None]]] = {
    "raw_pt": ("w.pt", _raw),
    "raw_bin": ("pytorch_model.bin", _raw),
    "open_clip_train": ("epoch_3.pt", _open_clip_train),
    "model_key": ("w.pth", _model_key),
    "ddp_module_prefix": ("w.pt", _ddp),
    "compile_orig_mod_prefix": ("w.pt", _compiled),
    "safetensors": ("open_clip_model.safetensors", _safetensors),
    "safetensors_misnamed_bin": ("w.bin", _safetensors),
    "torchscript": ("ViT-Test.pt", save_torchscript),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_round_trips(fmt: str, source, target, tmp_path: Path, caplog) -> None:
    name, write = FORMATS[fmt]
    path = tmp_path / name
    write(source, path)

    read = read_state_dict(path)
    expected = source.state_dict()
    extra = {"attn_mask"} if fmt == "torchscript" else set()  # TorchScript saves non-persistent buffers too
    assert set(read) == set(expected) | extra
    assert all(torch.equal(read[k], expected[k]) for k in expected)

    _assert_all_differ(source, target)
    caplog.set_level(logging.INFO, logger="lightning_sarclip")
    report = load_checkpoint(target, path)
    _assert_all_equal(source, target)
    assert report.complete and not report.missing and not report.unexpected and not report.mismatched
    assert sorted(report.loaded) == sorted(expected)
    assert report.path == str(path)
    assert [r.levelno for r in caplog.records if r.name == "lightning_sarclip"] == [logging.INFO]
    if fmt == "torchscript":
        assert set(report.dropped) == OPENAI_EXTRAS | {"attn_mask"}
    if fmt == "ddp_module_prefix":
        assert report.stripped_prefix == "module."
    if fmt == "compile_orig_mod_prefix":
        assert report.stripped_prefix == "_orig_mod."


def test_torchscript_module_object_is_accepted(source, target, tmp_path: Path) -> None:
    """RemoteCLIP issue #8: users hand over the object torch.jit.load returned instead of a state_dict."""
    path = tmp_path / "jit.pt"
    save_torchscript(source, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, OpenAI files are not
        jit_module = torch.jit.load(str(path), map_location="cpu")
    report = load_checkpoint(target, jit_module)
    _assert_all_equal(source, target)
    assert report.path is None and report.complete


def test_in_memory_mapping(source, target) -> None:
    report = load_checkpoint(
        target, {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}
    )
    _assert_all_equal(source, target)
    assert report.path is None and report.stripped_prefix == "model."
    assert "<in-memory state_dict>" in report.summary()


# ------------------------------------------------------------------------------------- Lightning checkpoints


class _Mode(enum.Enum):
    SAR = "sar"


def _lightning_checkpoint(root: Path, with_odd_hparams: bool) -> tuple[Path, torch.nn.Module]:
    """Train one step with a real Trainer and return the checkpoint it wrote plus the trained module."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    class TinyCLIPModule(pl.LightningModule):
        def __init__(
            self, arch: str = ARCH, lr: float = 1e-2, data_root: Path | None = None, mode=None
        ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = open_clip.create_model(arch)

        def training_step(self, batch, batch_idx):
            image_features, text_features, logit_scale = self.model(*batch)
            logits = logit_scale * image_features @ text_features.T
            labels = torch.arange(len(logits))
            return torch.nn.functional.cross_entropy(logits, labels)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    hparams = {"data_root": Path("/data/sar"), "mode": _Mode.SAR} if with_odd_hparams else {}
    module = TinyCLIPModule(**hparams)
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, 1000, (4, 16)))
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        enable_checkpointing=True,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers / small-dataset advice is noise here
        trainer.fit(module, DataLoader(data, batch_size=4))
    (ckpt,) = sorted(root.rglob("*.ckpt"))
    return ckpt, module


@pytest.fixture(scope="module", params=[False, True], ids=["plain_hparams", "path_and_enum_hparams"])
def lightning_ckpt(request, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    return _lightning_checkpoint(tmp_path_factory.mktemp("pl"), request.param)


def test_lightning_checkpoint(lightning_ckpt, target) -> None:
    path, module = lightning_ckpt
    # Allowlist exactly what this test put into the hyper-parameters, to look at what Lightning wrote.
    with torch.serialization.safe_globals([type(Path()), _Mode]):
        raw = torch.load(path, map_location="cpu", weights_only=True)
    needs_placeholders = module.hparams.data_root is not None
    assert bool(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == needs_placeholders
    assert {"optimizer_states", "state_dict", "pytorch-lightning_version"} <= raw.keys()
    assert all(k.startswith("model.") for k in raw["state_dict"])

    read = read_state_dict(path)
    assert set(read) == set(module.model.state_dict())

    _assert_all_differ(module.model, target)
    report = load_checkpoint(target, path)
    _assert_all_equal(module.model, target)
    assert report.stripped_prefix == "model." and report.complete


def test_lightning_module_keeps_its_own_model_prefix(lightning_ckpt) -> None:
    """A target whose keys themselves start with ``model.`` must not get them stripped."""
    path, module = lightning_ckpt
    fresh = copy.deepcopy(module)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    report = load_checkpoint(fresh, path, strict=True)
    assert report.stripped_prefix is None and report.complete
    _assert_all_equal(module, fresh)


# ---------------------------------------------------------------------------------------- shape handling


def test_shape_mismatch_raises_with_key_and_shapes(tmp_path: Path, target) -> None:
    path = tmp_path / "embed16.pt"
    torch.save(_clip(2, embed_dim=16).state_dict(), path)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(target, path)
    message = str(err.value)
    assert str(path) in message
    assert "visual.proj: checkpoint (32, 16) vs model (32, 32)" in message
    assert "text_projection: checkpoint (32, 16) vs model (32, 32)" in message
    assert "allow_shape_mismatch=True" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), "model must be untouched"


def test_allow_shape_mismatch_loads_the_rest(tmp_path: Path, target, caplog) -> None:
    other = _clip(2, vision_cfg__width=48)  # wider vision tower: every visual tensor differs in shape
    path = tmp_path / "wide.pt"
    torch.save(other.state_dict(), path)
    before = copy.deepcopy(target.state_dict())
    caplog.set_level(logging.INFO, logger="lightning_sarclip")

    report = load_checkpoint(target, path, allow_shape_mismatch=True)

    skipped = {k for k, _, _ in report.mismatched}
    assert "visual.conv1.weight" in skipped
    assert ("visual.conv1.weight", (48, 3, 8, 8), (32, 3, 8, 8)) in report.mismatched
    assert not report.missing and not report.unexpected  # skipped keys are reported once, as mismatched
    assert not any(k.startswith("visual.") for k in report.loaded)
    loaded_state, other_state = target.state_dict(), other.state_dict()
    for key in loaded_state:
        expected = before[key] if key in skipped else other_state[key]
        assert torch.equal(loaded_state[key], expected), key
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "visual.conv1.weight: checkpoint (48, 3, 8, 8) vs model (32, 3, 8, 8)" in m for m in warnings_logged
    )


def test_image_positional_embedding_is_resized(source, tmp_path: Path) -> None:
    path = tmp_path / "w32.safetensors"
    _safetensors(source, path)
    torch.manual_seed(1)
    big = open_clip.create_model(ARCH, force_image_size=64)

    report = load_checkpoint(big, path)

    assert report.resized == [("visual.positional_embedding", (17, 32), (65, 32))]
    assert report.complete
    assert "visual.positional_embedding: (17, 32) -> (65, 32)" in report.summary()
    expected = {"visual.positional_embedding": source.visual.positional_embedding.detach().clone()}
    open_clip.model.resize_pos_embed(expected, big)
    assert torch.equal(big.visual.positional_embedding, expected["visual.positional_embedding"])
    src = source.state_dict()
    for key, value in big.state_dict().items():
        if key != "visual.positional_embedding":
            assert torch.equal(value, src[key]), key
    with torch.no_grad():  # the resized model runs at its own resolution
        assert big.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 32)


def test_fp16_checkpoint_positional_embedding_is_resized(source, tmp_path: Path) -> None:
    """OpenAI checkpoints are fp16; the grid interpolation must still work on CPU."""
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in source.state_dict().items()}, path)
    big = open_clip.create_model(ARCH, force_image_size=64)
    report = load_checkpoint(big, path)
    assert report.resized == [("visual.positional_embedding", (17, 32), (65, 32))]
    assert big.visual.positional_embedding.dtype == torch.float32
    assert torch.equal(big.visual.conv1.weight, source.visual.conv1.weight.half().float())


def test_text_positional_embedding_is_truncated(tmp_path: Path, target) -> None:
    long_context = _clip(3, text_cfg__context_length=24)
    path = tmp_path / "ctx24.pt"
    torch.save(long_context.state_dict(), path)

    report = load_checkpoint(target, path)

    assert report.resized == [("positional_embedding", (24, 32), (16, 32))]
    assert torch.equal(target.positional_embedding, long_context.positional_embedding[:16])
    assert report.complete


# -------------------------------------------------------------------------------------- key reporting


def test_missing_and_unexpected_keys_are_reported(source, target, tmp_path: Path, caplog) -> None:
    state = source.state_dict()
    del state["visual.ln_post.weight"]
    state["visual.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    caplog.set_level(logging.INFO, logger="lightning_sarclip")

    report = load_checkpoint(target, path)

    assert report.missing == ["visual.ln_post.weight"]
    assert report.unexpected == ["visual.extra_head.weight"]
    assert not report.complete
    (record,) = [r for r in caplog.records if r.name == "lightning_sarclip"]
    assert record.levelno == logging.WARNING
    assert (
        "visual.ln_post.weight" in record.getMessage() and "visual.extra_head.weight" in record.getMessage()
    )
    assert torch.equal(target.visual.conv1.weight, source.visual.conv1.weight)


def test_custom_logger_is_used(source, target, caplog) -> None:
    logger = logging.getLogger("my.app")
    caplog.set_level(logging.INFO, logger="my.app")
    load_checkpoint(target, source.state_dict(), logger=logger)
    assert [r.name for r in caplog.records if r.name in ("my.app", "lightning_sarclip")] == ["my.app"]


def test_strict_raises_and_leaves_model_untouched(source, target, tmp_path: Path) -> None:
    state = source.state_dict()
    del state["logit_scale"]
    state["bogus"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    before = copy.deepcopy(target.state_dict())

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(target, path, strict=True)

    assert "logit_scale" in str(err.value) and "bogus" in str(err.value) and str(path) in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    assert load_checkpoint(target, source.state_dict(), strict=True).complete


def test_summary_lists_everything() -> None:
    report = LoadReport(
        path="x.pt",
        loaded=["a", "b"],
        missing=["m1", "m2"],
        unexpected=["u1"],
        mismatched=[("k", (2, 3), (4, 3))],
        stripped_prefix="module.",
    )
    text = report.summary()
    assert "loaded 2 tensors" in text and "'a'" not in text
    for needle in ("m1", "m2", "u1", "k: checkpoint (2, 3) vs model (4, 3)", "module."):
        assert needle in text


# ------------------------------------------------------------------------------------------- bad inputs


class _Custom:
    """A class a weights-only unpickler must refuse to import."""

    def __init__(self) -> None:
        self.weight = torch.zeros(2)


class _Exec:
    """Unpickles by calling ``exec``: what a malicious checkpoint looks like."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _valid_bytes(tmp_path: Path) -> bytes:
    scratch = tmp_path / "scratch.pt"
    _raw(_clip(0), scratch)
    return scratch.read_bytes()


def _write_bad(kind: str, path: Path, tmp_path: Path) -> None:
    if kind == "missing":
        return
    if kind == "directory":
        path.mkdir()
        (path / "open_clip_model.safetensors").write_bytes(b"")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = _valid_bytes(tmp_path)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_safetensors":
        _safetensors(_clip(0), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_torchscript":
        save_torchscript(_clip(0), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random_bytes":
        path.write_bytes(
            torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
            .numpy()
            .tobytes()
        )
    elif kind == "list_pickle":
        torch.save([torch.zeros(2), torch.ones(2)], path)
    elif kind == "custom_class":
        torch.save(_Custom(), path)
    elif kind == "custom_class_legacy_format":
        torch.save(_Custom(), path, _use_new_zipfile_serialization=False)
    elif kind == "pickled_module":
        torch.save({"model": _clip(0)}, path)
    elif kind == "exec_payload":
        torch.save(_Exec(f"open({str(tmp_path / 'pwned')!r}, 'w').close()"), path)
    elif kind == "os_system_next_to_weights":
        torch.save({"state_dict": _clip(0).state_dict(), "x": _System(f"touch {tmp_path / 'pwned'}")}, path)
    elif kind == "mixed_values":
        torch.save({"visual.proj": torch.zeros(2), "epoch": 3}, path)
    else:  # pragma: no cover - a typo in the parametrisation
        raise AssertionError(kind)


BAD_FILES = {
    "missing": "checkpoint file not found",
    "directory": "directory",
    "empty": "empty",
    "truncated": "not a readable checkpoint",
    "truncated_safetensors": "not a readable safetensors file",
    "truncated_torchscript": "not a readable checkpoint",
    "random_bytes": "not a readable checkpoint",
    "list_pickle": "found list",
    "custom_class": "Only weights-only checkpoints are accepted",
    "custom_class_legacy_format": "Only weights-only checkpoints are accepted",
    "pickled_module": "Only weights-only checkpoints are accepted",
    "exec_payload": "Only weights-only checkpoints are accepted",
    "os_system_next_to_weights": "Only weights-only checkpoints are accepted",
    "mixed_values": "'epoch': int",
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_raise_checkpoint_error(kind: str, tmp_path: Path, target) -> None:
    path = tmp_path / f"bad_{kind}.pt"
    _write_bad(kind, path, tmp_path)
    for call in (lambda: read_state_dict(path), lambda: load_checkpoint(target, path)):
        with pytest.raises(CheckpointError) as err:
            call()
        assert str(path) in str(err.value)
        assert BAD_FILES[kind] in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_weights_only_error_explains_conversion(tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save(_Custom(), path)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert "_Custom" in str(err.value) and "torch.save(model.state_dict()" in str(err.value)


def test_foreign_objects_in_metadata_are_never_executed(source, target, tmp_path: Path) -> None:
    """Metadata that would run code is replaced by inert placeholders; the weights still load."""
    path = tmp_path / "meta.pt"
    marker = tmp_path / "pwned"
    torch.save(
        {"state_dict": source.state_dict(), "hyper_parameters": {"x": _Exec(f"open({str(marker)!r}, 'w')")}},
        path,
    )
    load_checkpoint(target, path)
    _assert_all_equal(source, target)
    assert not marker.exists()


def test_unsupported_checkpoint_argument(target) -> None:
    with pytest.raises(CheckpointError, match="got int"):
        load_checkpoint(target, 3)  # type: ignore[arg-type]
