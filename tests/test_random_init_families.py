"""The random-init path (no weights: smoke runs) builds and runs a model of every family over its dataset."""
from pathlib import Path

import pytest
import torch

import clipood_zoo
from clipood_zoo.cli_utils import model_for_dataset
from clipood_zoo.data.info import DatasetInfo
from clipood_zoo.errors import ConfigError
from clipood_zoo.evaluate import align_classes
from clipood_zoo.models import build_classifier
from tests.conftest import TINY_ARCH


def _info(classes, name="d"):
    return DatasetInfo(root=Path("/nonexistent"), name=name, classes=tuple(classes), domains=("a",), splits={})


def _family_entries():
    """One registered name per family (the prefix before the dataset / held-out part)."""
    families = {"clipood_vitb16_pacs_art", "clipood_vitb16_imagenet", "clipood_vitb16_b2n_oxford_pets",
                "clipood_vitt_emojidg_3d", "erm_vitt_emojidg_3d", "clip_vitt_emoji"}
    assert families <= set(clipood_zoo.list_models())
    return sorted(families)


@pytest.mark.parametrize("name", _family_entries())
def test_every_family_builds_without_weights_and_classifies_its_dataset(name):
    cfg = clipood_zoo.get_pretrained_cfg(name)
    classes = list(cfg.label_names) if cfg.label_names else [f"class {i}" for i in range(cfg.num_classes)]
    model = model_for_dataset(name, _info(classes))
    assert len(model.class_names) == len(classes)
    with torch.no_grad():
        logits = model(torch.randn(1, *cfg.input_size))
    assert logits.shape == (1, len(classes)) and torch.isfinite(logits).all()


def test_b2n_random_head_takes_the_datasets_class_names():
    model = model_for_dataset("clipood_vitb16_b2n_oxford_pets", _info([f"breed_{i}" for i in range(37)]))
    assert model.class_names == [f"breed {i}" for i in range(37)]  # prettified as prompts are


def test_b2n_random_head_of_the_wrong_size_is_refused():
    with pytest.raises(ConfigError, match="head of 37 classes has no class names"):
        model_for_dataset("clipood_vitb16_b2n_oxford_pets", _info(["a", "b"]))


def test_unnamed_head_says_why_it_cannot_be_aligned():
    model = build_classifier(TINY_ARCH, num_classes=4)
    model.pretrained_cfg = {"architecture": TINY_ARCH}
    with pytest.raises(ConfigError, match=rf"^{TINY_ARCH}'s head of 4 classes has no class names .*--clip-pretrained"):
        align_classes(model, _info(["a", "b", "c", "d"]))
