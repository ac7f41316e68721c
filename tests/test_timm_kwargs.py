"""Zoo models built by timm's own scripts: the kwargs timm's train.py and validate.py pass, with their timm meaning.

The kwargs below are what those scripts (pytorch-image-models, train.py / validate.py ``create_model(...)``)
pass with their argparse defaults, after timm.create_model drops the ``None`` ones: train.py passes
``in_chans=3`` (``--in-chans`` unset) and ``drop_rate=0.0`` (``--drop`` default), ``checkpoint_path=''``
(``--initial-checkpoint`` unset); validate.py passes ``in_chans=3``. ``--num-classes``/``--drop-path``/``--gp``
and ``--img-size`` are the options a fine-tuning user sets.
"""
import pytest
import timm
import torch
from timm.data import resolve_data_config

import clipood_zoo
from clipood_zoo import ConfigError, save_pretrained
from clipood_zoo.models import ClipoodClassifier

TRAIN_PY = dict(in_chans=3, num_classes=None, drop_rate=0.0, drop_path_rate=None, drop_block_rate=None,
                global_pool=None, bn_momentum=None, bn_eps=None, scriptable=None, checkpoint_path="")
VALIDATE_PY = dict(num_classes=None, in_chans=3, global_pool=None, scriptable=None)
ONE_PER_FAMILY = ["clip_vitt_emoji", "clipood_vitb16_pacs_art", "clipood_vitb16_imagenet", "clipood_vitb16_b2n_eurosat",
                  "testzoo_tiny_toy_a"]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_family_builds_with_timm_scripts_kwargs_and_runs(name):
    cfg = clipood_zoo.get_pretrained_cfg(name)
    for kwargs in (TRAIN_PY, VALIDATE_PY):
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        assert isinstance(model, ClipoodClassifier) and model.num_classes == cfg.num_classes
        size = resolve_data_config({}, model=model)["input_size"]
        with torch.no_grad():
            assert model(torch.randn(1, *size)).shape == (1, cfg.num_classes)


def test_fine_tuning_kwargs_new_head_pool_and_image_size_keep_the_loaded_weights():
    ref = clipood_zoo.create_model("clip_vitt_emoji", pretrained=True).eval()
    model = timm.create_model("clip_vitt_emoji", pretrained=True, **{**TRAIN_PY, "num_classes": 10,
                              "global_pool": "token", "img_size": 48}).eval()
    assert model.num_classes == 10 and model.class_names == []
    assert torch.equal(model.visual.conv1.weight, ref.visual.conv1.weight)
    assert model.visual.positional_embedding.shape == (1 + 6 * 6, ref.visual.positional_embedding.shape[1])
    assert model.pretrained_cfg["input_size"] == (3, 48, 48) and model.pretrained_cfg["num_classes"] == 10
    assert resolve_data_config({}, model=model)["input_size"] == (3, 48, 48)
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)
    same_size = timm.create_model("clip_vitt_emoji", pretrained=True, img_size=40).eval()
    x = torch.randn(2, 3, 40, 40)
    assert torch.equal(same_size(x), ref(x))  # resampling to the native grid is the identity


@pytest.mark.parametrize("kwargs,message", [
    (dict(in_chans=1), "cannot take in_chans=1: CLIP image towers take 3-channel RGB images"),
    (dict(drop_path_rate=0.1), "cannot take drop_path_rate=0.1: open_clip's ViT image tower (clipood-test-tiny) has no "
                               "drop_path"),
    (dict(drop_rate=0.2), "cannot take drop_rate=0.2: open_clip's ViT image tower (clipood-test-tiny) has no drop"),
    (dict(drop_block_rate=0.1), "cannot take drop_block_rate=0.1: a ViT has no convolutional feature maps"),
    (dict(bn_eps=1e-3), "cannot take bn_eps=0.001: a ViT has no convolutional feature maps or batch norm"),
    (dict(features_only=True), "cannot take features_only=True: the open_clip image tower has no multi-scale"),
    (dict(global_pool="max"), "cannot take global_pool='max': the image tower pools with 'token' or 'avg'"),
    (dict(output_stride=16), "does not take output_stride; clipood models take timm's num_classes, in_chans"),
])
def test_unsupported_kwargs_are_clear_errors_naming_what_is_supported(kwargs, message):
    for create in (clipood_zoo.create_model, timm.create_model):
        with pytest.raises(ConfigError) as info:
            create("testzoo_tiny_toy_a", **kwargs)
        assert message in str(info.value) and "num_classes" in str(info.value) and "img_size" in str(info.value)


def test_pretrained_cfg_agrees_with_the_loaded_model():
    for name in clipood_zoo.list_pretrained("*emoji*"):
        model = clipood_zoo.create_model(name, pretrained=True)
        scale = float(model.head.logit_scale.exp())
        assert clipood_zoo.get_pretrained_cfg(name).logit_scale == pytest.approx(scale, rel=1e-4), name
        assert model.pretrained_cfg["logit_scale"] == pytest.approx(scale, rel=1e-6)
        assert model.pretrained_cfg["num_classes"] == model.num_classes == len(model.pretrained_cfg["label_names"])


def test_timm_load_pretrained_and_checkpoint_path_of_a_save_pretrained_folder(tmp_path):
    ref = clipood_zoo.create_model("clip_vitt_emoji", pretrained=True)
    model = timm.create_model("clip_vitt_emoji")
    timm.models.load_pretrained(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    assert model.pretrained_cfg["logit_scale"] == pytest.approx(float(ref.head.logit_scale.exp()))

    trained = clipood_zoo.create_model("testzoo_tiny_toy_a", with_text_tower=True)
    trained.set_classes(["zebra", "tram", "kite"])
    save_pretrained(trained, tmp_path)
    for path in (tmp_path, tmp_path / "model.safetensors"):
        loaded = timm.create_model("testzoo_tiny_toy_a", checkpoint_path=str(path))
        assert loaded.class_names == ["zebra", "tram", "kite"] and loaded.pretrained_cfg["num_classes"] == 3
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(clipood_zoo.WeightsNotFoundError, match="save_pretrained"):
        timm.create_model("testzoo_tiny_toy_a", checkpoint_path=str(tmp_path / "missing"))
