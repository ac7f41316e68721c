"""--clip-pretrained: a local open_clip file loads, a tag offline fails at once with one line, and
weights trained with QuickGELU are built with QuickGELU (no download anywhere: open_clip's tables are local)."""
import open_clip
import open_clip.pretrained
import pytest
import torch
from open_clip.transformer import QuickGELU

import validate
from clipood_zoo.data.synthetic import write_synthetic_dataset
from clipood_zoo.errors import ConfigError
from clipood_zoo.models import build_classifier
from clipood_zoo.models.text_towers import resolve_clip_weights
from tests.conftest import TINY_ARCH, TINY_CONFIG


@pytest.fixture
def clip_file(tmp_path):
    """An open_clip checkpoint of the tiny arch, random weights, saved as open_clip saves its own."""
    torch.manual_seed(5)
    clip = open_clip.create_model(TINY_ARCH)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), path)
    return path, clip.state_dict()


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, QuickGELU) for m in model.modules())


def test_a_local_checkpoint_file_loads_its_weights(clip_file):
    path, state = clip_file
    model = build_classifier(TINY_ARCH, class_names=["cat", "dog"], clip_pretrained=str(path))
    assert torch.equal(model.visual.conv1.weight, state["visual.conv1.weight"])
    assert model.head.logit_scale.item() == pytest.approx(state["logit_scale"].item(), rel=1e-5)
    assert not _uses_quick_gelu(model)  # a file says nothing about its activation: the arch's own (GELU)


def test_validate_takes_a_checkpoint_file(clip_file, tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data)
    rows = validate.main(["--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--clip-pretrained", str(clip_file[0]),
                          "--data-dir", str(data), "--workers", "0"])
    assert rows[0]["num_samples"] == 36


def test_a_tag_offline_exits_2_with_one_line_naming_the_file_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too; explicit here because it is the point
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    data = tmp_path / "data"
    write_synthetic_dataset(data)
    with pytest.raises(SystemExit) as e:
        validate.main(["--model", "ViT-B-16", "--clip-pretrained", "openai", "--data-dir", str(data),
                       "--workers", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("validate.py: error: cannot fetch open_clip's ViT-B-16 'openai' weights from "
                          "timm/vit_base_patch16_clip_224.openai/ (HF_HUB_OFFLINE is set")
    assert err.endswith("pass --clip-pretrained /path/to/open_clip_pytorch_model.bin")


def test_neither_a_tag_nor_a_file_lists_the_tags(tmp_path):
    with pytest.raises(ConfigError, match=r"'nope' is neither a file nor an open_clip tag of ViT-B-16 \(tags: .*openai"):
        resolve_clip_weights("ViT-B-16", "nope")
    with pytest.raises(ConfigError, match="neither a file"):
        resolve_clip_weights("ViT-B-16", str(tmp_path / "missing.bin"))


def test_openai_weights_are_built_with_quick_gelu(clip_file, monkeypatch):
    # open_clip's own table: OpenAI's ViT-B-16 weights need QuickGELU though the ViT-B-16 config has GELU
    assert open_clip.pretrained.get_pretrained_cfg("ViT-B-16", "openai")["quick_gelu"] is True
    assert not open_clip.get_model_config("ViT-B-16").get("quick_gelu", False)
    # a tag of the tiny arch declared as open_clip declares 'openai', its file in an HF cache made here
    path, state = clip_file
    cache = path.parent / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(path.read_bytes())
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("0123abc")
    tags = {"fake_openai": {"hf_hub": "org/tiny/", "quick_gelu": True}, "fake_gelu": {"hf_hub": "org/tiny/"}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_ARCH, tags)
    assert resolve_clip_weights(TINY_ARCH, "fake_openai", str(cache)) == (
        str(snapshot / "open_clip_pytorch_model.bin"), True)
    quick = build_classifier(TINY_ARCH, class_names=["cat", "dog"], clip_pretrained="fake_openai", cache_dir=str(cache))
    assert _uses_quick_gelu(quick.visual)
    assert torch.equal(quick.visual.conv1.weight, state["visual.conv1.weight"])
    gelu = build_classifier(TINY_ARCH, class_names=["cat"], clip_pretrained="fake_gelu", cache_dir=str(cache))
    assert not _uses_quick_gelu(gelu)


def test_no_network_without_hf_hub_offline_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "https://127.0.0.1:9")  # nothing listens: refused
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(ConfigError, match=r"\(127\.0\.0\.1 is not reachable: .*pass --clip-pretrained /path/to/"):
        resolve_clip_weights("ViT-B-16", "openai", cache_dir=str(tmp_path))
