"""ClipoodClassifier: logits equal open_clip's encode_image/encode_text by hand; the text tower stays frozen."""
import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipood_zoo import ConfigError, create_model
from clipood_zoo.models import build_classifier
from tests.conftest import TINY_ARCH, TINY_CLASSES

TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")


def test_logits_equal_hand_computation_from_open_clip(tiny_model):
    model = tiny_model
    model.set_classes(TINY_CLASSES, TEMPLATES)
    reference = open_clip.create_model(TINY_ARCH)
    reference.load_state_dict(model.text_tower.model.state_dict(), strict=False)  # the text weights
    reference.visual.load_state_dict(model.visual.state_dict())
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        image_features = F.normalize(reference.encode_image(images), dim=-1)
        class_embeddings = []
        for name in TINY_CLASSES:
            per_template = F.normalize(reference.encode_text(tokenizer([t.format(name) for t in TEMPLATES])), dim=-1)
            class_embeddings.append(F.normalize(per_template.mean(0), dim=-1))
        expected = 20.0 * image_features @ torch.stack(class_embeddings).T  # the toy cfg's logit scale
        logits = model.eval()(images)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert model.class_names == list(TINY_CLASSES) and model.templates == TEMPLATES


def test_text_tower_gets_no_gradients_and_is_not_in_the_weights(tiny_model):
    model = tiny_model
    model.set_classes(TINY_CLASSES)
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(-1).mean()
    loss.backward()
    text_params = list(model.text_tower.model.parameters())
    assert text_params and all(not p.requires_grad and p.grad is None for p in text_params)
    assert all(p.grad is not None for p in model.visual.parameters() if p.requires_grad)
    assert set(k.split(".")[0] for k in model.state_dict()) == {"visual", "head"}
    param_ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in param_ids for p in text_params)
    assert not model.head.weight.requires_grad


def test_copies_share_the_frozen_text_tower(tiny_model):
    clone = copy.deepcopy(tiny_model)
    assert clone.text_tower is tiny_model.text_tower
    assert clone.visual is not tiny_model.visual


def test_timm_head_interface(tiny_model):
    model = tiny_model
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features)
    embedded = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(2))
    assert model.get_classifier() is model.head
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(x).shape == (2, 7) and model.class_names == []
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), embedded)


def test_set_classes_needs_the_text_tower():
    model = create_model("testzoo_tiny_toy_a")
    assert model.text_tower is None
    with pytest.raises(ConfigError, match="text tower"):
        model.set_classes(["cat"])


def test_class_names_must_match_embeddings():
    with pytest.raises(ConfigError, match="class names"):
        from clipood_zoo.models import ClipoodClassifier
        ClipoodClassifier(torch.nn.Identity(), torch.randn(3, 4), class_names=["a", "b"])


def test_unknown_open_clip_arch():
    with pytest.raises(ConfigError, match="open_clip architecture"):
        build_classifier("ViT-B-161", num_classes=3)


def test_set_classes_with_open_clips_template_set(tiny_model):
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    tiny_model.set_classes(["cat", "dog"], "simple_imagenet")
    by_name = tiny_model.head.weight.clone()
    tiny_model.set_classes(["cat", "dog"], SIMPLE_IMAGENET_TEMPLATES)
    torch.testing.assert_close(tiny_model.head.weight, by_name)
    assert len(tiny_model.templates) == len(SIMPLE_IMAGENET_TEMPLATES)
    with pytest.raises(ConfigError, match="unknown template set"):
        tiny_model.set_classes(["cat"], "imagenet_80")
