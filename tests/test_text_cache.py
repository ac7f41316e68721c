"""clipood_zoo.models.text_cache: a frozen text tower's embeddings are encoded once per content, never wrongly reused."""
import logging

import pytest
import torch

import clipood_zoo.models.classifier as classifier
from clipood_zoo.models.factory import build_classifier
from clipood_zoo.models.text_cache import CACHE_ENV, cache_dir

NAMES = ["cat", "dog", "bird"]
CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "text_embeddings"


@pytest.fixture
def encodes(monkeypatch):
    """The prompts open_clip encodes, call by call (the real encoder runs)."""
    calls, real = [], classifier.build_zero_shot_classifier

    def counting(model, tokenizer, names, templates, **kw):
        calls.append((list(names), list(templates)))
        return real(model, tokenizer, names, templates, **kw)
    monkeypatch.setattr(classifier, "build_zero_shot_classifier", counting)
    return calls


def tower(seed=0):
    torch.manual_seed(seed)
    return build_classifier("clipood-test-tiny", class_names=NAMES, with_text_tower=True).text_tower


def test_the_same_prompts_through_the_same_weights_are_encoded_once(cache, encodes):
    text = tower()
    first = text.class_embeddings(NAMES, ["a {}.", "an {} icon."], CPU)
    again = text.class_embeddings(NAMES, ["a {}.", "an {} icon."], CPU)
    assert len(encodes) == 1 and torch.equal(first, again)
    assert len(list(cache.glob("*.safetensors"))) == 1
    fresh = tower()  # another tower object with the same weights: a hit too
    assert torch.equal(fresh.class_embeddings(NAMES, ["a {}.", "an {} icon."], CPU), first) and len(encodes) == 1


def test_other_prompts_or_other_weights_are_encoded_again(cache, encodes):
    text = tower()
    base = text.class_embeddings(NAMES, ["a {}."], CPU)
    other_template = text.class_embeddings(NAMES, ["a drawing of a {}."], CPU)
    other_names = text.class_embeddings(NAMES[:2], ["a {}."], CPU)
    other_weights = tower(seed=1).class_embeddings(NAMES, ["a {}."], CPU)
    assert len(encodes) == 4 and len(list(cache.glob("*.safetensors"))) == 4
    assert not torch.allclose(base, other_template) and not torch.allclose(base, other_weights)
    assert other_names.shape == (2, base.shape[1])


def test_the_same_weights_in_another_structure_or_under_autocast_are_encoded_again(cache, encodes):
    """Keys cover what changes the encoding besides the weights: the modules (QuickGELU for GELU, as open_clip's
    force_quick_gelu builds) and autocast."""
    from open_clip.transformer import QuickGELU

    text = tower()
    gelu = text.class_embeddings(NAMES, ["a {}."], CPU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        text.class_embeddings(NAMES, ["a {}."], CPU)
    other = tower()  # the same weights
    for block in other.model.transformer.resblocks:
        block.mlp.gelu = QuickGELU()
    quick = other.class_embeddings(NAMES, ["a {}."], CPU)
    assert len(encodes) == 3 and not torch.allclose(gelu, quick)


def test_entries_are_keyed_by_the_prompts_so_callable_templates_share_them_with_format_strings(cache, encodes):
    """open_clip's template sets are lambdas (CLIP's 80 ImageNet prompts): the key is the prompts they render."""
    text = tower()
    formatted = text.class_embeddings(NAMES, ["a {}.", "an {} icon."], CPU)
    called = text.class_embeddings(NAMES, [lambda c: f"a {c}.", lambda c: f"an {c} icon."], CPU)
    assert len(encodes) == 1 and torch.equal(formatted, called)
    text.class_embeddings(NAMES, [lambda c: f"a {c}!", lambda c: f"an {c} icon."], CPU)
    assert len(encodes) == 2


def test_an_unreadable_entry_is_encoded_again_and_replaced(cache, encodes, caplog):
    text = tower()
    expected = text.class_embeddings(NAMES, ["a {}."], CPU)
    (entry,) = cache.glob("*.safetensors")
    entry.write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING):
        assert torch.equal(text.class_embeddings(NAMES, ["a {}."], CPU), expected)
    assert len(encodes) == 2 and f"text embedding cache entry {entry} is unreadable" in caplog.text
    assert torch.equal(text.class_embeddings(NAMES, ["a {}."], CPU), expected) and len(encodes) == 2  # replaced


def test_an_unwritable_cache_never_fails_the_encoding(tmp_path, monkeypatch, encodes, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker))  # its text_embeddings/ folder cannot be made
    with caplog.at_level(logging.WARNING):
        embedded = tower().class_embeddings(NAMES, ["a {}."], CPU)
    assert embedded.shape[0] == 3 and "text embeddings not cached: cannot write" in caplog.text
    assert f"set {CACHE_ENV} to a writable folder" in caplog.text


def test_an_empty_setting_turns_the_cache_off_and_the_default_is_the_users_cache(tmp_path, monkeypatch, encodes):
    monkeypatch.setenv(CACHE_ENV, "")
    assert cache_dir() is None
    text = tower()
    for _ in range(2):
        text.class_embeddings(NAMES, ["a {}."], CPU)
    assert len(encodes) == 2
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "clipood_zoo" / "text_embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == type(tmp_path).home() / ".cache" / "clipood_zoo" / "text_embeddings"
