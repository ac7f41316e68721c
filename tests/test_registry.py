"""Registry: names, cfgs and errors, in clipood_zoo and through timm's own create_model."""
import pytest
import timm
import torch

import clipood_zoo
from clipood_zoo import ConfigError, UnknownModelError, WeightsNotFoundError
from clipood_zoo.data.catalog import DOMAINBED, DOMAINNET, IMAGENET
from clipood_zoo.data.protocols.base2new import DATASETS as B2N_DATASETS
from clipood_zoo.models import ClipoodClassifier


def test_every_domainbed_domain_and_imagenet_is_registered():
    names = clipood_zoo.list_models("clipood_vitb16_*")
    expected = {f"clipood_vitb16_{ds.name}_{d.slug}" for ds in DOMAINBED.values() for d in ds.domains}
    expected.add("clipood_vitb16_imagenet")
    expected |= {f"clipood_vitb16_b2n_{name}" for name in B2N_DATASETS}
    assert set(names) == expected
    assert len(clipood_zoo.list_models("clipood_vitb16_domainnet_*")) == 6
    assert clipood_zoo.list_models("*pacs*") == [f"clipood_vitb16_pacs_{d}" for d in ("art", "cartoon", "photo", "sketch")]


def test_paper_scale_entries_have_no_weights_so_are_not_pretrained():
    pretrained = clipood_zoo.list_pretrained()
    assert not [n for n in pretrained if n.startswith("clipood_vitb16_")]
    assert all(clipood_zoo.is_model(n) for n in pretrained)


def test_domainnet_sketch_is_a_vitb16_with_345_named_classes():
    model = clipood_zoo.create_model("clipood_vitb16_domainnet_sketch")
    assert isinstance(model, ClipoodClassifier)
    assert model.num_classes == 345 and len(model.class_names) == 345
    assert model.class_names[3] == "aircraft carrier" and model.class_names[-1] == "zigzag"
    assert model.visual.conv1.kernel_size == (16, 16) and model.visual.conv1.out_channels == 768
    assert len(model.visual.transformer.resblocks) == 12
    assert model.num_features == 512
    assert model.pretrained_cfg["architecture"] == "clipood_vitb16_domainnet_sketch"
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 345)


def test_imagenet_entry_uses_open_clips_class_names():
    cfg = clipood_zoo.get_pretrained_cfg("clipood_vitb16_imagenet")
    assert cfg.num_classes == 1000 and cfg.label_names == IMAGENET.class_names
    assert cfg.recipe["bma_beta"] == 0.1 and cfg.recipe["batch_size"] == 36


def test_cfg_holds_the_paper_recipe_and_is_a_copy():
    cfg = clipood_zoo.get_pretrained_cfg("clipood_vitb16_domainnet_real")
    assert (cfg.recipe["lr"], cfg.recipe["epochs"], cfg.recipe["batch_size"]) == (1e-5, 20, 60)
    assert cfg.heldout_domain == "real" and cfg.dataset == "domainnet" and cfg.clip_arch == "ViT-B-16"
    assert cfg.label_names == DOMAINNET.class_names
    cfg.recipe["lr"] = 1.0
    assert clipood_zoo.get_pretrained_cfg("clipood_vitb16_domainnet_real").recipe["lr"] == 1e-5
    pacs = clipood_zoo.get_pretrained_cfg("clipood_vitb16_pacs_photo")
    assert (pacs.recipe["lr"], pacs.recipe["batch_size"], pacs.recipe["steps"]) == (5e-6, 36, 5000)


def test_timm_create_model_builds_zoo_models():
    model = timm.create_model("clipood_vitb16_vlcs_labelme")
    assert isinstance(model, ClipoodClassifier) and model.num_classes == 5
    assert "clipood_vitb16_vlcs_labelme" in timm.list_models("clipood_*")


def test_unknown_name_lists_the_closest():
    with pytest.raises(UnknownModelError, match="clipood_vitb16_pacs_sketch") as info:
        clipood_zoo.create_model("clipood_vitb16_pacs_skech")
    assert isinstance(info.value, ValueError)
    assert not clipood_zoo.is_model("clipood_vitb16_pacs_skech")
    with pytest.raises(UnknownModelError):
        clipood_zoo.get_pretrained_cfg("resnet50")  # a timm name, but not a zoo name


def test_pretrained_without_published_weights_says_how_to_make_them():
    with pytest.raises(WeightsNotFoundError) as info:
        clipood_zoo.create_model("clipood_vitb16_officehome_realworld", pretrained=True)
    message = str(info.value)
    assert "no published weights" in message and "python train.py --model clipood_vitb16_officehome_realworld" in message
    assert "'Real World'" in message and "checkpoint_path=" in message


def test_unknown_keyword_is_a_clear_error():
    with pytest.raises(ConfigError, match="drop_rate"):
        clipood_zoo.create_model("testzoo_tiny_toy_a", drop_rate=0.1)


def test_overlay_replaces_cfg_fields():
    model = clipood_zoo.create_model("testzoo_tiny_toy_a", pretrained_cfg_overlay={"logit_scale": 7.0})
    assert model.head.logit_scale.exp().item() == pytest.approx(7.0)
    assert model.pretrained_cfg["logit_scale"] == pytest.approx(7.0)


def test_a_shipped_fine_tune_says_its_selected_recipe_and_its_own_command(monkeypatch):
    """The manifest's recipe values and train.py command of a shipped study run win over v1's fixed recipe;
    an unshipped fine-tune of a v1 method keeps v1's, another has no command; every method of the study has a
    name per held-out style."""
    from clipood_zoo.models import emoji

    command = "python train.py --model clip_vitt_emoji --pretrained --method lp_ft --lr 3e-05 --steps 3000"
    monkeypatch.setitem(emoji.SHIPPED, "lp_ft_vitt_emojidg_line",
                        {"recipe": {"lr": 3e-5, "steps": 3000}, "train_command": command})
    cfg = emoji._cfg("lp_ft_vitt_emojidg_line", "line", "lp_ft")
    assert (cfg.recipe["lr"], cfg.recipe["steps"], cfg.recipe["method"], cfg.train_command) == (3e-5, 3000, "lp_ft", command)
    monkeypatch.delitem(emoji.SHIPPED, "wise_ft_vitt_emojidg_3d", raising=False)  # as if it were not shipped
    v1 = emoji._cfg("wise_ft_vitt_emojidg_3d", "3d", "wise_ft")
    assert (v1.recipe["lr"], v1.recipe["steps"]) == (emoji.RECIPE["lr"], emoji.RECIPE["steps"])
    assert "--method wise_ft --steps 300" in v1.train_command
    unshipped = emoji._cfg("clipood_wise_ft_vitt_emojidg_3d", "3d", "clipood_wise_ft")  # not a train.py method
    assert unshipped.train_command is None and "CLIPood + WiSE-FT fine-tune" in unshipped.description
    names = set(clipood_zoo.list_models("*_vitt_emojidg_*"))
    assert names == {f"{m}_vitt_emojidg_{d}" for m in emoji.METHOD_LABELS for d in ("3d", "flat", "mono", "line")}
