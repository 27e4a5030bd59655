"""Caption settings reach every place captions are made: SourceDataset/SourceDataModule, evaluate, build-corpus.

What the settings do is tested in test_captions.py; here only that each path hands them to its captioner.
"""

from __future__ import annotations

import pytest

from lightning_sarclip.data import corpus
from lightning_sarclip.data.corpus_config import (
    CorpusConfig,
    CorpusConfigError,
    CorpusSource,
    validate_config,
)
from lightning_sarclip.data.listing import SourceListing
from lightning_sarclip.data.source_dataset import SourceDataset
from tests.conftest import FIXTURES, TEST_ARCH

CLASS_FOLDER = FIXTURES / "class_folder" / "split_layout"


@pytest.mark.parametrize("drop", [True, False])
def test_source_paths_hand_drop_prompt_like_to_the_captioner(drop):
    from lightning_sarclip.eval.evaluate import DatasetSpec, _prepare_source
    from lightning_sarclip.training.datamodules import SourceDataModule

    dataset = SourceDataset("class_folder", str(CLASS_FOLDER), "train", image_size=8, drop_prompt_like=drop)
    assert dataset.captioner.drop_prompt_like is drop
    data = SourceDataModule(source="class_folder", root=str(CLASS_FOLDER), drop_prompt_like=drop, image_size=8,
                            tokenizer=TEST_ARCH)
    data.setup("fit")
    assert data.datasets["train"].captioner.drop_prompt_like is drop
    spec = DatasetSpec(name="cf", source="class_folder", root=str(CLASS_FOLDER), task="retrieval",
                       drop_prompt_like=drop)
    assert _prepare_source(spec, 8, 1).images.captioner.drop_prompt_like is drop


def test_the_corpus_config_hands_drop_prompt_like_to_the_captioner(tmp_path):
    spec = CorpusSource(name="class_folder", root=str(CLASS_FOLDER), splits=["train"])
    listing = SourceListing("class_folder", CLASS_FOLDER, "train")
    on = CorpusConfig(output=str(tmp_path / "on"), sources=[spec])
    off = CorpusConfig(output=str(tmp_path / "off"), sources=[spec], drop_prompt_like=False)
    assert corpus.corpus_captioner(on, spec, listing).drop_prompt_like is True
    assert corpus.corpus_captioner(off, spec, listing).drop_prompt_like is False
    # a build made with one setting is not resumed with the other; the default keeps older builds' hash
    assert corpus._config_hash(on) != corpus._config_hash(off)
    with pytest.raises(CorpusConfigError, match="drop_prompt_like: expected true or false"):
        validate_config(CorpusConfig(output=str(tmp_path / "bad"), sources=[spec], drop_prompt_like="yes"))
