"""``python -m lightning_sarclip evaluate --config experiments/eval/<suite>.yaml``: any checkpoint, many datasets.

Why a standalone command (and not ``trainer.test``): baselines (OpenAI CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP,
CAESAR SARCLIP) are plain open_clip checkpoints with no Lightning module, and the paper's tables compare them
with ours on the same datasets, templates and class names. So one config names a model (anything
:func:`~lightning_sarclip.models.loading.load_model` loads) and a list of datasets (any registered source, or a built
corpus), and every number goes to ``results.jsonl`` (:mod:`lightning_sarclip.eval.results`) with what is needed to
reproduce it. ``report`` turns those rows into tables.

Per dataset:

* **zero-shot**: a classifier from the class names' prompt names x the templates (open_clip / CLIP_benchmark
  semantics, logits ``100 * img @ W``); metrics ``top1``, ``top3``, ``top5`` (null when K > classes) and
  ``mean_per_class``; the confusion matrix (rows: true class) is saved as JSON.
* **retrieval**: every image against every caption of every image (``i2t_R@K``, ``t2i_R@K``, ``mean_recall``);
  an image is a hit when any of its captions is in the top K. ``protocol: sample`` scores the paper's protocol
  instead: ``sample_size`` (5,000) unique images of the split with one caption each, drawn by ``seed`` and written
  to ``retrieval_samples/`` next to the results, or exactly the images and captions of a ``sample_file``
  (:mod:`lightning_sarclip.eval.retrieval_sample`). Rows name the protocol (``all``, ``sample5000``,
  ``file:<name>``), so ``report`` keeps them apart; zero-shot rows say ``folder_names`` when the prompts hold the
  class names as the dataset spells them (``prompt_names: false``, the paper's protocol) instead of ours.

Every check that can fail (unknown source, missing root, unreadable template or class-name file, class names
that do not cover the dataset's labels) runs for all datasets before the first image is embedded.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_sarclip.data.listing import DETECTION_MODES
from lightning_sarclip.data.templates import get_templates
from lightning_sarclip.eval.classification import classification_metrics, confusion_matrix
from lightning_sarclip.eval.results import append_results, metrics_table
from lightning_sarclip.eval.retrieval import recall_at_k
from lightning_sarclip.eval.zeroshot import build_zeroshot_classifier, zeroshot_logits
from lightning_sarclip.utils.atomic import atomic_write_json
from lightning_sarclip.utils.run_dir import RunDirectory

log = logging.getLogger("lightning_sarclip")

TASKS = ("zeroshot", "retrieval", "both")
#: Retrieval protocols: every caption of every image, or a sample of unique images with one caption each.
PROTOCOLS = ("all", "sample")
MULTI_LABEL = ("skip", "first")
#: The built-in class-name files (``<reader name>.json``), shipped as package data.
CLASSNAMES_DIR = Path(__file__).with_name("classnames")
#: ``source:`` value that reads a corpus built by ``build-corpus`` instead of a registered source.
CORPUS_SOURCE = "corpus"


# ---------------------------------------------------------------------------------------------- config
@dataclass
class ModelSpec:
    """The model to evaluate; the fields are :func:`~lightning_sarclip.models.loading.load_model`'s.

    Args:
        model_name: open_clip architecture (not needed for our ``.ckpt``, whose hyper-parameters name it).
        pretrained: open_clip tag, ``hf-hub:`` id, checkpoint file or our Lightning ``.ckpt``.
        name: the model's name in results and reports (default: derived from ``model_name`` and ``pretrained``).
        in_chans, channel_mode, image_size, image_mean, image_std: SAR input settings (default: the
            checkpoint's, else 1 channel and the architecture's).
        force_quick_gelu: towers with QuickGELU (OpenAI's activation) instead of the architecture's GELU; ``null``:
            as our ``.ckpt``'s run was built, else as the open_clip tag says (GELU for files). Set it as the weights
            were trained: the baselines and the training recipes they are compared with must agree.
        wiseft_from: the zero-shot weights (open_clip tag or file of the same architecture) to interpolate
            with ``pretrained`` (the fine-tuned ones) for WiSE-FT; every dataset is then also evaluated at each
            of ``wiseft_alphas`` (0 = zero-shot weights, 1 = fine-tuned), as ``task: wiseft`` rows.
        allow_random_weights: evaluate an architecture without weights (a random baseline); without it a model
            with no ``pretrained`` (and no ``hf-hub:``/``local-dir:`` name) is refused.
    """

    model_name: str | None = None
    pretrained: str | None = None
    name: str | None = None
    in_chans: int | None = None
    channel_mode: str | None = None
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    force_quick_gelu: bool | None = None
    wiseft_from: str | None = None
    wiseft_alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    allow_random_weights: bool = False


@dataclass
class DatasetSpec:
    """One dataset of a suite.

    Args:
        name: the dataset's name in results (``mstar_soc``, ``fusar_ship`` ...).
        source: registered source (``mstar``, ``class_folder``, ``image_caption_table`` ...) or ``corpus``.
        root: the dataset's folder (checked when the suite runs, not when it is parsed).
        split: split to evaluate (``test``, ``val``, ``all`` ...); with ``split_fractions``, the part of the split
            made on the fly (``train``, ``val`` or ``test``).
        split_fractions, split_seed, split_group_by: for a source without official splits, split its images as
            ``SourceDataModule`` does with the same settings (:func:`~lightning_sarclip.data.splits.made_part`), so
            a run trained on such a source is scored on its own held-out part; ``null``: read ``split`` as is.
        task: ``zeroshot``, ``retrieval`` or ``both``.
        templates: template set (``sar``, ``optical``, ``sar_opt``, ``isprs``, ``simple``), a JSON file or a list.
        classnames: a built-in class-name file (``mstar``, ``fusar_ship`` ...), a JSON file of the same shape, or
            a list of names; default: the built-in file named after the source when it covers the labels, else
            the dataset's own class names.
        prompt_names: put the file's natural-language ``prompt_names`` into prompts (``False``: the raw names).
        present_classes_only: drop classes without any image from the classifier (OpenSARShip's 20 AIS groups).
        multi_label: images with several labels: ``skip`` them (zero-shot) or score their ``first`` label (the
            dominant land-cover class for SEN12MS).
        detection: detection sources become ``chips`` (one crop per box, labelled) or ``whole`` images.
        source_options: extra arguments of the source reader (``{product: Patch_Cal}``; for ``corpus``:
            ``variant`` and ``sources``).
        policy: conversion policy overriding the source's default.
        n_captions: generated captions per image for retrieval (captions a dataset ships are all kept, each once).
        drop_prompt_like: drop generated retrieval captions that equal a zero-shot prompt (as in training; see
            :mod:`lightning_sarclip.data.captions`).
        max_images: evaluate a seeded random subset of this many images.
        protocol: retrieval over ``all`` the split's images and captions, or a ``sample`` of unique images with one
            caption each (the paper's ``val_uni_image_and_caption_sample_5000.csv``); ``sample`` needs
            ``task: retrieval``.
        sample_size: images of a drawn sample (capped at the split's unique images, with a warning); the sample
            and each image's caption are drawn by ``seed`` and written to ``retrieval_samples/`` next to the
            results.
        sample_file: with ``protocol: sample``, score exactly this file's images and captions instead of drawing
            (an ``imgpath,caption`` CSV written by an earlier evaluation, or SARVLM's released one).
        batch_size: images (and captions) per forward pass.
        seed: seed of the subset and of generated captions.
        probes: frozen-feature probes to run besides zero-shot: ``linear`` (logistic regression, C chosen on a
            validation part of the train split), ``knn`` (k=20 cosine), ``kshot`` (linear probe on
            ``kshot_shots`` examples per class, 3 trials); trained on ``probe_train_split`` of the same source.
    """

    name: str
    source: str
    root: str
    split: str = "test"
    split_fractions: list[float] | dict[str, float] | None = None
    split_seed: int = 0
    split_group_by: str | None = None
    task: str = "zeroshot"
    templates: str | list[str] = "sar"
    classnames: str | list[str] | None = None
    prompt_names: bool = True
    present_classes_only: bool = False
    multi_label: str = "skip"
    detection: str = "chips"
    source_options: dict[str, Any] = field(default_factory=dict)
    policy: str | dict | None = None
    n_captions: int = 5
    drop_prompt_like: bool = True
    max_images: int | None = None
    protocol: str = "all"
    sample_size: int = 5000
    sample_file: str | None = None
    batch_size: int = 64
    probes: list[str] = field(default_factory=list)
    probe_train_split: str = "train"
    kshot_shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seed: int = 0


@dataclass
class EvalConfig:
    """A suite: one model, where results go, the datasets."""

    output: str
    datasets: list[DatasetSpec]
    model: ModelSpec = field(default_factory=ModelSpec)
    device: str = "cpu"
    num_workers: int = 0
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    figures: bool = True
    max_tsne_points: int = 2000


def check_config(config: EvalConfig) -> None:
    """Static checks (no file access): task names, unique dataset names, positive sizes."""
    if not config.datasets:
        raise ValueError("evaluate: the suite lists no datasets")
    from lightning_sarclip.models.factory import has_weights

    model = config.model
    if model is not None and not model.allow_random_weights and not has_weights(model.model_name or "",
                                                                                 model.pretrained):
        raise ValueError(
            "evaluate: model.pretrained is not set, so the model would be evaluated with randomly initialised "
            "weights; set --model.pretrained (our .ckpt, an open_clip tag, a checkpoint file or an hf-hub: id), "
            "or --model.allow_random_weights true for a random baseline"
        )
    names = [d.name for d in config.datasets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"evaluate: dataset names must be unique, repeated: {duplicates}")
    for spec in config.datasets:
        check_dataset_spec(spec)


def check_dataset_spec(spec: DatasetSpec) -> None:
    """Static checks of one dataset entry (no file access), shared by ``evaluate`` and the fit-time callback."""
    where = f"dataset {spec.name!r}"
    if spec.task not in TASKS:
        raise ValueError(f"{where}: task must be one of {TASKS}, got {spec.task!r}")
    if spec.multi_label not in MULTI_LABEL:
        raise ValueError(f"{where}: multi_label must be one of {MULTI_LABEL}, got {spec.multi_label!r}")
    if spec.detection not in DETECTION_MODES:
        raise ValueError(f"{where}: detection must be one of {DETECTION_MODES}, got {spec.detection!r}")
    for key in ("batch_size", "n_captions"):
        if getattr(spec, key) < 1:
            raise ValueError(f"{where}: {key} must be >= 1, got {getattr(spec, key)}")
    if spec.max_images is not None and spec.max_images < 1:
        raise ValueError(f"{where}: max_images must be >= 1 or null, got {spec.max_images}")
    _check_protocol(spec, where)
    if spec.split_fractions is not None:
        from lightning_sarclip.data.splits import PARTS, check_fractions

        check_fractions(spec.split_fractions, f"{where}: split_fractions")
        if spec.split not in PARTS:
            raise ValueError(f"{where}: with split_fractions, split must be one of {list(PARTS)}, got {spec.split!r}")
        if spec.source == "corpus":
            raise ValueError(f"{where}: a corpus has its own splits; split_fractions is for a source without them")


def _check_protocol(spec: DatasetSpec, where: str) -> None:
    if spec.protocol not in PROTOCOLS:
        raise ValueError(f"{where}: protocol must be one of {PROTOCOLS}, got {spec.protocol!r}")
    if spec.sample_size < 1:
        raise ValueError(f"{where}: sample_size must be >= 1, got {spec.sample_size}")
    if spec.protocol == "all":
        if spec.sample_file is not None:
            raise ValueError(f"{where}: sample_file {spec.sample_file!r} is read with protocol: sample "
                             "(protocol is 'all')")
        return
    if spec.task != "retrieval":
        raise ValueError(f"{where}: protocol 'sample' is a retrieval protocol; expected task: retrieval, got "
                         f"{spec.task!r} (add another entry for zero-shot)")
    if spec.max_images is not None:
        raise ValueError(f"{where}: protocol 'sample' draws its own subset; expected max_images: null, got "
                         f"{spec.max_images} (set sample_size instead)")


# ---------------------------------------------------------------------------------------------- class names
@dataclass
class ClassNames:
    """Label names (as the dataset spells them) and the names put into prompts, in classifier order."""

    names: list[str]
    prompts: list[str]
    origin: str


def builtin_classnames() -> list[str]:
    """Names of the shipped class-name files (``mstar``, ``fusar_ship`` ...)."""
    return sorted(p.stem for p in CLASSNAMES_DIR.glob("*.json"))


def load_classnames_file(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A class-name file by built-in name or path, checked: ``classnames`` and ``prompt_names`` of equal length."""
    spec = os.fspath(name_or_path)
    path = CLASSNAMES_DIR / f"{spec}.json" if (CLASSNAMES_DIR / f"{spec}.json").is_file() else Path(spec)
    if not path.is_file():
        raise ValueError(f"class-name file {spec!r} not found: give a path to a JSON file or one of the built-in "
                         f"names {builtin_classnames()}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"could not read class names from {str(path)!r}: {err}") from None
    names = data.get("classnames") if isinstance(data, dict) else data
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path}: expected {{'classnames': [non-empty strings], 'prompt_names': [...]}} or a list")
    prompts = data.get("prompt_names", names) if isinstance(data, dict) else names
    if not isinstance(prompts, list) or len(prompts) != len(names):
        raise ValueError(f"{path}: prompt_names must list one name per class ({len(names)}), got {prompts!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return {"dataset": data.get("dataset") if isinstance(data, dict) else None, "classnames": names,
            "prompt_names": prompts, "source": data.get("source") if isinstance(data, dict) else None,
            "path": str(path)}


def _key(name: str) -> str:
    """Matching key of a label: case and punctuation free, so folder ``zsu_23_4`` finds ``ZSU_23_4``."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def match_labels(labels: Sequence[str], classnames: Sequence[str], where: str) -> dict[str, int]:
    """``label -> index in classnames``: exact name first, else the unique case/punctuation-free match."""
    exact = {name: i for i, name in enumerate(classnames)}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(classnames):
        loose.setdefault(_key(name), []).append(i)
    mapping, missing = {}, []
    for label in labels:
        if label in exact:
            mapping[label] = exact[label]
        elif len(loose.get(_key(label), [])) == 1:
            mapping[label] = loose[_key(label)][0]
        else:
            missing.append(label)
    if missing:
        raise ValueError(f"{where}: the class names do not cover the dataset's labels {sorted(missing)} "
                         f"(class names: {list(classnames)})")
    return mapping


def resolve_classnames(spec: DatasetSpec, labels: Sequence[str], dataset_classnames: Sequence[str]) -> ClassNames:
    """The classifier's classes for ``spec``: a named/explicit list, the source's built-in file, or the dataset's."""
    from lightning_sarclip.data.captions import pretty_classname

    where = f"dataset {spec.name!r}"
    if isinstance(spec.classnames, list):
        names = [str(n) for n in spec.classnames]
        match_labels(labels, names, where)
        return ClassNames(names, names, "config list")
    if isinstance(spec.classnames, str):
        data = load_classnames_file(spec.classnames)
        match_labels(labels, data["classnames"], f"{where} (class names from {data['path']})")
        prompts = data["prompt_names"] if spec.prompt_names else data["classnames"]
        return ClassNames(list(data["classnames"]), list(prompts), data["path"])
    if spec.source in builtin_classnames():
        data = load_classnames_file(spec.source)
        try:
            match_labels(labels, data["classnames"], where)
        except ValueError:
            pass  # another label set of the same reader (e.g. sen12ms scheme=full): use the dataset's own names
        else:
            prompts = data["prompt_names"] if spec.prompt_names else data["classnames"]
            return ClassNames(list(data["classnames"]), list(prompts), data["path"])
    names = list(dataset_classnames) or sorted(set(labels))
    match_labels(labels, names, where)
    prompts = [pretty_classname(n) for n in names] if spec.prompt_names else names
    return ClassNames(names, prompts, "dataset")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class PreparedDataset:
    """Everything a dataset's evaluation needs, built before any embedding."""

    spec: DatasetSpec
    images: Dataset  # index -> {"image": (C, S, S) [0, 1], ...}
    captions: list[list[str]] | None  # per image, retrieval only
    labels: list[str | None]  # per image: the scored label, or None (not scored)
    classes: ClassNames | None  # zero-shot only
    templates: list[str] | None  # zero-shot only
    ids: list[str] = field(default_factory=list)  # per image: source_id (a source) or record key (a corpus)
    id_aliases: list[str | None] = field(default_factory=list)  # per image: another name a sample file may use
    protocol: str = "all"  # retrieval protocol of the rows: all, sample<N> or file:<name>
    sample_file: str | None = None  # the sample file read, or written by ``evaluate``

    @property
    def targets(self) -> torch.Tensor:
        assert self.classes is not None
        index = match_labels(sorted({x for x in self.labels if x is not None}), self.classes.names, self.spec.name)
        return torch.tensor([index[x] if x is not None else -1 for x in self.labels], dtype=torch.long)


def _unique(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip()))


def _subset(count: int, max_images: int | None, seed: int) -> list[int]:
    if max_images is None or max_images >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), max_images))


def _check_root(spec: DatasetSpec) -> None:
    if not Path(spec.root).expanduser().exists():
        raise FileNotFoundError(f"dataset {spec.name!r}: root {spec.root} does not exist (suites read roots under "
                                "$SAR_DATA; set it, or override the root)")


def _prepare_source(spec: DatasetSpec, image_size: int, in_chans: int) -> PreparedDataset:
    from lightning_sarclip.data.listing import SourceListing
    from lightning_sarclip.data.source_dataset import SourceDataset

    made = spec.split_fractions is not None  # a part of a split made on the fly, as SourceDataModule makes it
    listing = SourceListing(spec.source, spec.root, "all" if made else spec.split, options=spec.source_options,
                            policy=spec.policy, detection=spec.detection)
    records = list(listing.records())
    if made:
        from lightning_sarclip.data.splits import made_part

        records = made_part(records, spec.split, spec.split_fractions, spec.split_seed, spec.split_group_by,
                            where=f"dataset {spec.name!r} ({spec.source} at {spec.root})")
    records = [records[i] for i in _subset(len(records), spec.max_images, spec.seed)]
    if not records:
        raise ValueError(f"dataset {spec.name!r}: source {spec.source!r} at {spec.root} has no images in split "
                         f"{spec.split!r}")
    dataset = SourceDataset.from_listing(listing, records, spec.split, image_size=image_size, in_chans=in_chans,
                                         captioner=listing.captioner(n_captions=spec.n_captions, seed=spec.seed,
                                                                     drop_prompt_like=spec.drop_prompt_like),
                                         n_captions=spec.n_captions, classnames=listing.classnames or None)
    labels = [r.label if len(r.labels) == 1 or spec.multi_label == "skip" else (r.labels[0] if r.labels else None)
              for r in records]
    captions = None
    if spec.task != "zeroshot":
        captions = [_unique(dataset.captioner.captions(r)) for r in records]
    return _finish(spec, dataset, captions, labels, listing.classnames, [r.source_id for r in records],
                   [r.metadata.get("imgpath") for r in records])


def _prepare_corpus(spec: DatasetSpec, image_size: int, in_chans: int) -> PreparedDataset:
    from lightning_sarclip.data.corpus import read_shard
    from lightning_sarclip.data.corpus_dataset import CorpusDataset

    options = dict(spec.source_options)
    unknown = set(options) - {"variant", "sources"}
    if unknown:
        raise ValueError(f"dataset {spec.name!r}: corpus options are 'variant' and 'sources', got {sorted(unknown)}")
    corpus = CorpusDataset(spec.root, spec.split, image_size=image_size, in_chans=in_chans, augment=False,
                           eval_captions=1, **options)
    keep = _subset(len(corpus), spec.max_images, spec.seed)
    corpus.items = [corpus.items[i] for i in keep]
    shards: dict[str, Any] = {}
    captions, labels, ids = [], [], []
    for shard, row, _, kept in corpus.items:
        table = shards.setdefault(shard, read_shard(Path(spec.root) / "shards" / shard))
        texts = table.column("captions")[row].as_py()
        captions.append(_unique([texts[i] for i, _ in kept]))
        names = table.column("labels")[row].as_py()
        labels.append(names[0] if len(names) == 1 or (names and spec.multi_label == "first") else None)
        # the record key: source ids are unique per source only
        ids.append(f"{table.column('source')[row].as_py()}:{table.column('source_id')[row].as_py()}")
    return _finish(spec, corpus, captions if spec.task != "zeroshot" else None, labels, corpus.classnames, ids)


def _finish(spec: DatasetSpec, images: Dataset, captions: list[list[str]] | None, labels: list[str | None],
            dataset_classnames: Sequence[str], ids: list[str], id_aliases: list[str | None] | None = None,
            ) -> PreparedDataset:
    classes = templates = None
    if spec.task != "retrieval":
        present = sorted({x for x in labels if x is not None})
        if not present:
            raise ValueError(f"dataset {spec.name!r}: no image has a single class label, so zero-shot cannot be "
                             "scored (use task: retrieval, or multi_label: first)")
        classes = resolve_classnames(spec, present, dataset_classnames)
        if spec.present_classes_only:
            used = set(match_labels(present, classes.names, spec.name).values())
            keep = [i for i in range(len(classes.names)) if i in used]
            classes = ClassNames([classes.names[i] for i in keep], [classes.prompts[i] for i in keep], classes.origin)
        templates = get_templates(spec.templates)
    if captions is not None:
        empty = [i for i, c in enumerate(captions) if not c]
        if empty:
            raise ValueError(f"dataset {spec.name!r}: images without captions at positions {empty[:10]}")
    return _sampled(PreparedDataset(spec, images, captions, labels, classes, templates, ids, list(id_aliases or [])))


def _sampled(prepared: PreparedDataset) -> PreparedDataset:
    """``prepared`` as its retrieval protocol scores it: unchanged (``all``), or the sample's images with one caption
    each (drawn, or read from ``sample_file``)."""
    from lightning_sarclip.eval.retrieval_sample import draw_sample, read_sample, select_sample

    spec = prepared.spec
    if spec.protocol == "all":
        return prepared
    where = f"dataset {spec.name!r} ({spec.source} at {spec.root}, split {spec.split!r})"
    assert prepared.captions is not None  # protocol sample is task retrieval (check_dataset_spec)
    if spec.sample_file is not None:
        rows = read_sample(spec.sample_file)
        positions = select_sample(prepared.ids, rows, spec.sample_file, where, prepared.id_aliases)
        captions = [caption for _, caption in rows]
        protocol, sample_file = f"file:{Path(spec.sample_file).name}", spec.sample_file
    else:
        positions, captions = draw_sample(prepared.ids, prepared.captions, spec.sample_size, spec.seed, where)
        protocol, sample_file = f"sample{len(positions)}", None
    return replace(prepared, images=Subset(prepared.images, positions), captions=[[c] for c in captions],
                   labels=[prepared.labels[p] for p in positions], ids=[prepared.ids[p] for p in positions],
                   id_aliases=[prepared.id_aliases[p] for p in positions] if prepared.id_aliases else [],
                   protocol=protocol, sample_file=sample_file)


def write_retrieval_sample(output_dir: Path, prepared: PreparedDataset) -> PreparedDataset:
    """Write a drawn sample as ``retrieval_samples/<dataset>_<protocol>_seed<seed>.csv`` (a sample read from a file
    is already one); returns ``prepared`` naming the file, which its rows then carry."""
    from lightning_sarclip.eval.retrieval_sample import write_sample

    if prepared.protocol == "all" or prepared.sample_file is not None:
        return prepared
    assert prepared.captions is not None
    spec = prepared.spec
    path = output_dir / "retrieval_samples" / f"{_slug(spec.name)}_{prepared.protocol}_seed{spec.seed}.csv"
    write_sample(path, prepared.ids, [caps[0] for caps in prepared.captions])
    log.info("evaluate: retrieval sample of %s written to %s", spec.name, path)
    return replace(prepared, sample_file=str(path))


def prepare_dataset(spec: DatasetSpec, image_size: int, in_chans: int) -> PreparedDataset:
    """List the dataset's images, captions and labels and resolve its class names and templates (no pixels)."""
    _check_root(spec)
    if spec.source == CORPUS_SOURCE:
        return _prepare_corpus(spec, image_size, in_chans)
    return _prepare_source(spec, image_size, in_chans)


def check_sources(config: EvalConfig) -> None:
    """Checks that need no model: known sources, existing roots, readable templates and class-name files."""
    from lightning_sarclip.data.sources import get_source

    for spec in config.datasets:
        if spec.source != CORPUS_SOURCE:
            try:
                get_source(spec.source)
            except ValueError as err:
                raise ValueError(f"dataset {spec.name!r}: {err} (or '{CORPUS_SOURCE}' for a built corpus)") from None
        _check_root(spec)
        if spec.task != "retrieval":
            get_templates(spec.templates)
            if isinstance(spec.classnames, str):
                load_classnames_file(spec.classnames)
        unknown = set(spec.probes) - set(PROBES)
        if unknown:
            raise ValueError(f"dataset {spec.name!r}: unknown probes {sorted(unknown)}; expected {PROBES}")
        if spec.probes and spec.task == "retrieval":
            raise ValueError(f"dataset {spec.name!r}: probes need class labels (task zeroshot or both)")
        if spec.sample_file is not None:
            from lightning_sarclip.eval.retrieval_sample import read_sample

            read_sample(spec.sample_file)  # a missing or malformed sample fails before the model loads


# ---------------------------------------------------------------------------------------------- embedding
def _images_only(batch: list[dict[str, Any]]) -> torch.Tensor:
    return torch.stack([item["image"] for item in batch])


def embed_images(model: Any, images: Dataset, batch_size: int, num_workers: int = 0) -> torch.Tensor:
    """``(N, D)`` L2-normalised image embeddings on the CPU, in dataset order (``model.encode_image``)."""
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_images_only)
    with torch.no_grad():
        return torch.cat([model.encode_image(batch.to(model.device)).float().cpu() for batch in loader])


def embed_texts(model: Any, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """``(M, D)`` L2-normalised text embeddings on the CPU (``model.tokenizer`` and ``model.encode_text``)."""
    with torch.no_grad():
        out = [model.encode_text(model.tokenizer(list(texts[i:i + batch_size])).to(model.device)).float().cpu()
               for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- evaluation
def default_model_name(spec: ModelSpec, loaded_name: str) -> str:
    """``ViT-L-14 (openai)``, ``ViT-L-14 (RemoteCLIP-ViT-L-14)``, ``quickstart/last`` for ``runs/quickstart/...``."""
    if spec.name:
        return spec.name
    if not spec.pretrained:
        return f"{loaded_name} (random init)"
    path = Path(spec.pretrained)
    run = RunDirectory.of_checkpoint(path)
    if path.suffix == ".ckpt" and run is not None:
        return f"{run.name}/{path.stem}"
    if spec.pretrained.startswith("hf-hub:") or path.suffix:
        return f"{loaded_name} ({path.stem})"
    return f"{loaded_name} ({spec.pretrained})"


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "_", text).strip("_") or "model"


def evaluate_dataset(model: Any, prepared: PreparedDataset, ks: Sequence[int], num_workers: int = 0,
                     image_features: torch.Tensor | None = None) -> dict[str, Any]:
    """Embed one dataset and compute its metrics: ``{"zeroshot": {...}, "retrieval": {...}, "confusion": ...}``.

    The one evaluation path: ``evaluate`` calls it with a loaded checkpoint, the fit-time
    :class:`~lightning_sarclip.training.callbacks.EvalSuiteCallback` with the module being trained (and the image
    features its ranks embedded and gathered, in dataset order). ``model`` needs ``encode_image`` and
    ``encode_text`` (L2-normalised features), ``tokenizer`` and ``device``.
    """
    spec = prepared.spec
    if image_features is None:
        image_features = embed_images(model, prepared.images, spec.batch_size, num_workers)
    image_features = image_features.float().cpu()
    out: dict[str, Any] = {"num_images": int(image_features.shape[0])}
    if prepared.classes is not None:
        targets = prepared.targets
        scored = targets >= 0
        classifier = build_zeroshot_classifier(model.encode_text, model.tokenizer, prepared.classes.prompts,
                                               prepared.templates, batch_size=max(spec.batch_size, 64),
                                               device=model.device).cpu()
        logits = zeroshot_logits(image_features[scored], classifier)
        out["_scored"] = (image_features[scored], targets[scored])
        out["zeroshot"] = classification_metrics(logits, targets[scored], topk=(1, 3, 5))
        out["confusion"] = confusion_matrix(logits, targets[scored], len(prepared.classes.names)).tolist()
        out["num_scored"] = int(scored.sum())
    if prepared.captions is not None:
        texts = [t for caps in prepared.captions for t in caps]
        text_to_image = torch.arange(len(prepared.captions)).repeat_interleave(
            torch.tensor([len(c) for c in prepared.captions]))
        text_features = embed_texts(model, texts, spec.batch_size)
        out["retrieval"] = recall_at_k(image_features, text_features, text_to_image, ks=tuple(ks))
        out["num_captions"] = len(texts)
        out["_retrieval"] = (image_features, text_features, texts, text_to_image)
    return out


#: ``protocol`` of zero-shot rows whose prompts hold the class names as the dataset spells them (``prompt_names:
#: false``): SARVLM's protocol, which fills the templates with the ImageFolder's folder names.
FOLDER_NAMES = "folder_names"


def zeroshot_protocol(spec: DatasetSpec) -> str:
    """``all`` (our prompts: natural-language prompt names) or :data:`FOLDER_NAMES`, so ``report`` never merges a
    paper-protocol score with ours; the templates themselves are in every row (``templates``, ``config``)."""
    return "all" if spec.prompt_names else FOLDER_NAMES


def result_rows(config: EvalConfig, loaded: Any, model_label: str, prepared: PreparedDataset,
                metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``results.jsonl`` rows of one dataset's metrics."""
    spec = prepared.spec
    common = {
        "model": model_label, "checkpoint": loaded.checkpoint, "checkpoint_hash": loaded.checkpoint_hash,
        "dataset": spec.name, "split": spec.split, "protocol": prepared.protocol,
        "config": {"model": asdict(config.model), "dataset": asdict(spec), "device": config.device,
                   "ks": list(config.ks)},
    }
    extra = {"num_images": metrics["num_images"], "num_captions": metrics.get("num_captions", 0),
             "num_classes": len(prepared.classes.names) if prepared.classes else 0, "source": spec.source,
             "image_size": loaded.image_size, "in_chans": loaded.in_chans}
    rows = []
    for metric, value in metrics.get("zeroshot", {}).items():
        rows.append({**common, "task": "zeroshot", "protocol": zeroshot_protocol(spec), "metric": metric,
                     "value": value,
                     "templates": prepared.templates, "classnames": prepared.classes.prompts,
                     "extra": {**extra, "num_scored": metrics["num_scored"], "labels": prepared.classes.names}})
    retrieval = dict(metrics.get("retrieval", {}))
    # Counts, not recalls: they describe the rows (how many queries had exact ties) instead of being rows.
    tied = {key: retrieval.pop(key) for key in ("i2t_tied_queries", "t2i_tied_queries") if key in retrieval}
    sample = {"sample_file": prepared.sample_file} if prepared.sample_file else {}
    for metric, value in retrieval.items():
        rows.append({**common, "task": "retrieval", "metric": metric, "value": value, "templates": None,
                     "classnames": None, "extra": {**extra, **tied, **sample}})
    for task, values in metrics.get("probes", {}).items():
        for metric, value in values.items():
            rows.append({**common, "task": task, "metric": metric, "value": value, "templates": None,
                         "classnames": prepared.classes.names,
                         "extra": {**extra, "train_split": spec.probe_train_split,
                                   "num_train": metrics.get("num_probe_train")}})
    return rows


def write_side_files(output_dir: Path, model_label: str, prepared: PreparedDataset, metrics: dict[str, Any]) -> None:
    """Class names, templates and confusion matrix next to ``results.jsonl`` (what the rows summarise)."""
    if prepared.classes is None:
        return
    name = _slug(prepared.spec.name)
    atomic_write_json(output_dir / "classnames" / f"{name}.json",
                {"dataset": prepared.spec.name, "classnames": prepared.classes.names,
                 "prompt_names": prepared.classes.prompts, "source": prepared.classes.origin})
    atomic_write_json(output_dir / "templates" / f"{name}.json", {"templates": prepared.templates})
    atomic_write_json(output_dir / "confusion" / _slug(model_label) / f"{name}.json",
                {"model": model_label, "dataset": prepared.spec.name, "split": prepared.spec.split,
                 "classnames": prepared.classes.names, "rows": "true class", "columns": "predicted class",
                 "matrix": metrics["confusion"]})


PROBES = ("linear", "knn", "kshot")


def probe_dataset(loaded: Any, prepared: PreparedDataset, metrics: dict[str, Any], num_workers: int = 0,
                  ) -> dict[str, dict[str, float]]:
    """Linear / kNN / k-shot probes on frozen image features: train split of the same source -> this split."""
    from lightning_sarclip.eval.probes import knn_classify, kshot_probe, linear_probe

    spec = prepared.spec
    unknown = set(spec.probes) - set(PROBES)
    if unknown:
        raise ValueError(f"dataset {spec.name!r}: unknown probes {sorted(unknown)}; expected {PROBES}")
    if not spec.probes:
        return {}
    if prepared.classes is None:
        raise ValueError(f"dataset {spec.name!r}: probes need class labels (task zeroshot or both)")
    train_spec = replace(spec, split=spec.probe_train_split, task="zeroshot", max_images=None, probes=[])
    train = prepare_dataset(train_spec, loaded.image_size, loaded.in_chans)
    index = match_labels(sorted({x for x in train.labels if x is not None}), prepared.classes.names, spec.name)
    train_targets = torch.tensor([index[x] if x is not None else -1 for x in train.labels])
    train_features = embed_images(loaded, train.images, spec.batch_size, num_workers)[train_targets >= 0]
    train_targets = train_targets[train_targets >= 0]
    test_features, test_targets = metrics["_scored"]
    num_classes = len(prepared.classes.names)
    out: dict[str, dict[str, float]] = {}
    if "linear" in spec.probes:
        result = linear_probe(train_features, train_targets, test_features, test_targets, num_classes=num_classes)
        out["linear_probe"] = {"top1": result["top1"], "mean_per_class": result["mean_per_class"]}
    if "knn" in spec.probes:
        result = knn_classify(train_features, train_targets, test_features, test_targets, num_classes=num_classes)
        out["knn"] = {"top1": result["top1"], "mean_per_class": result["mean_per_class"]}
    if "kshot" in spec.probes:
        result = kshot_probe(train_features, train_targets, test_features, test_targets,
                             shots=tuple(spec.kshot_shots), num_classes=num_classes)
        out["kshot"] = {f"{k}shot_{m}": float(v[m]) for k, v in result.items() for m in ("top1", "mean_per_class")}
    metrics["num_probe_train"] = int(len(train_targets))
    return out


def write_figures(output_dir: Path, model_label: str, prepared: PreparedDataset, metrics: dict[str, Any],
                  max_tsne_points: int = 2000, seed: int = 0) -> list[Path]:
    """Confusion matrix, t-SNE of the image embeddings by class, and image->text retrieval examples (PNG)."""
    from lightning_sarclip.eval.figures import (
        confusion_matrix_figure,
        retrieval_examples_figure,
        retrieval_positives,
        tsne_figure,
    )

    folder = output_dir / "figures" / _slug(model_label)
    name = _slug(prepared.spec.name)
    written: list[Path] = []
    if "confusion" in metrics:
        path = folder / f"{name}_confusion.png"
        confusion_matrix_figure(torch.tensor(metrics["confusion"]), prepared.classes.names,
                                title=f"{model_label} on {prepared.spec.name} (zero-shot)", path=path)
        written.append(path)
        features, targets = metrics["_scored"]
        if len(features) >= 5:
            keep = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:max_tsne_points]
            path = folder / f"{name}_tsne.png"
            tsne_figure(features[keep], targets[keep], prepared.classes.names, seed=seed, num_threads=1,
                        perplexity=min(30.0, len(keep) - 1.0), path=path)
            written.append(path)
    if "_retrieval" in metrics:
        image_features, text_features, texts, text_to_image = metrics["_retrieval"]
        queries = list(range(min(6, len(image_features))))
        images = [prepared.images[i]["image"] for i in queries]
        path = folder / f"{name}_retrieval_i2t.png"
        retrieval_examples_figure(images, texts, image_features[queries] @ text_features.T, k=5,
                                  positives=retrieval_positives(text_to_image, "i2t")[: len(queries)],
                                  title=f"{model_label}: image -> text on {prepared.spec.name}", path=path)
        written.append(path)
    return written


def run_wise_ft(config: EvalConfig, loaded: Any, model_label: str, prepared: list[PreparedDataset]
                ) -> list[dict[str, Any]]:
    """Evaluate every dataset along the WiSE-FT path between ``wiseft_from`` and the evaluated weights."""
    from lightning_sarclip.eval.probes import evaluate_wise_ft
    from lightning_sarclip.models.loading import load_model

    spec = config.model
    zeroshot = load_model(loaded.name, spec.wiseft_from, in_chans=loaded.in_chans, channel_mode=spec.channel_mode,
                          image_size=loaded.image_size, image_mean=spec.image_mean, image_std=spec.image_std,
                          force_quick_gelu=spec.force_quick_gelu)
    finetuned_state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    rows: list[dict[str, Any]] = []

    def evaluate_all(model: Any) -> dict[str, Any]:
        return {item.spec.name: evaluate_dataset(loaded, item, config.ks, config.num_workers) for item in prepared}

    points = evaluate_wise_ft(loaded.model, zeroshot.model.state_dict(), finetuned_state,
                              [float(a) for a in spec.wiseft_alphas], evaluate_all)
    for point in points:
        alpha = point["alpha"]
        for item in prepared:
            metrics = point[item.spec.name]
            values = {**metrics.get("zeroshot", {}), **metrics.get("retrieval", {})}
            for base in result_rows(config, loaded, model_label, item, {**metrics, "probes": {}}):
                if base["metric"] in values:
                    rows.append({**base, "task": "wiseft", "metric": f"{base['metric']}@alpha={alpha:g}",
                                 "extra": {**base["extra"], "alpha": alpha, "wiseft_from": spec.wiseft_from}})
    append_results(Path(config.output), rows)
    return rows


def summary_table(results: list[tuple[str, str, dict[str, Any]]]) -> str:
    """The datasets' main metrics side by side (:func:`~lightning_sarclip.eval.results.metrics_table`)."""
    columns = {}
    for name, task, metrics in results:
        values = {"task": task, "images": metrics["num_images"]}
        values.update({k: v for k, v in metrics.get("zeroshot", {}).items()})
        values.update(metrics.get("retrieval", {}))
        columns[name] = values
    return metrics_table(columns)


def run(config: EvalConfig) -> list[dict[str, Any]]:
    """Check everything, load the model, prepare every dataset, then embed and write rows dataset by dataset."""
    from lightning_sarclip.models.loading import load_model

    check_sources(config)
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = config.model
    loaded = load_model(spec.model_name, spec.pretrained, in_chans=spec.in_chans, channel_mode=spec.channel_mode,
                        image_size=spec.image_size, image_mean=spec.image_mean, image_std=spec.image_std,
                        force_quick_gelu=spec.force_quick_gelu, device=device,
                        allow_random_weights=spec.allow_random_weights)
    model_label = default_model_name(spec, loaded.name)
    prepared = [prepare_dataset(d, loaded.image_size, loaded.in_chans) for d in config.datasets]
    output = Path(config.output)
    all_rows: list[dict[str, Any]] = []
    summary = []
    prepared = [write_retrieval_sample(output.parent, item) for item in prepared]
    for item in prepared:
        log.info("evaluate: %s on %s (%s, %d images)", model_label, item.spec.name, item.spec.task, len(item.images))
        metrics = evaluate_dataset(loaded, item, config.ks, config.num_workers)
        metrics["probes"] = probe_dataset(loaded, item, metrics, config.num_workers)
        rows = result_rows(config, loaded, model_label, item, metrics)
        append_results(output, rows)
        write_side_files(output.parent, model_label, item, metrics)
        if config.figures:
            for path in write_figures(output.parent, model_label, item, metrics, config.max_tsne_points):
                log.info("evaluate: figure %s", path)
        all_rows.extend(rows)
        summary.append((item.spec.name, item.spec.task, metrics))
    if spec.wiseft_from:
        all_rows.extend(run_wise_ft(config, loaded, model_label, prepared))
    print(f"{model_label} ({loaded.checkpoint or 'no checkpoint'}) -> {output}")
    print(summary_table(summary))
    return all_rows
