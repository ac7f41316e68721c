"""Weights: save/load round trips, weights/ and HF-hub resolution offline, and every refusal."""
import json

import pytest
import torch
from safetensors.torch import save_file

import clipood_zoo
from clipood_zoo import (UnsafeWeightsError, WeightsError, WeightsIntegrityError, WeightsMismatchError,
                         WeightsNotFoundError, create_model, save_pretrained)
from clipood_zoo.hub import sha256_file
from tests import tiny_family

IMAGES = torch.randn(2, 3, 32, 32)


def trained_toy():
    model = create_model("testzoo_tiny_toy_a")
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_save_pretrained_round_trip(tmp_path):
    model = trained_toy()
    path = save_pretrained(model, tmp_path / "out", card_sections={"Results": "top1 12.5 on toy"})
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.safetensors", "config.json", "README.md"}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["sha256"] == sha256_file(path)
    assert config["pretrained_cfg"]["label_names"] == list(tiny_family.CLASS_NAMES)
    assert "file" not in config["pretrained_cfg"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "testzoo_tiny_toy_a" in card and "top1 12.5 on toy" in card and config["sha256"] in card

    for source in (tmp_path / "out", path):  # the folder or the file
        loaded = create_model("testzoo_tiny_toy_a", checkpoint_path=source).eval()
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        torch.testing.assert_close(loaded(IMAGES), model(IMAGES), rtol=0, atol=0)


def test_fp16_export_loads_into_fp32_model(tmp_path):
    model = trained_toy()
    save_pretrained(model, tmp_path, dtype=torch.float16)
    loaded = create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path).eval()
    assert loaded.visual.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(loaded(IMAGES), model(IMAGES), rtol=2e-2, atol=2e-2)


def test_checkpoint_with_other_classes_resizes_head_and_reads_names(tmp_path):
    source = create_model("testzoo_tiny_toy_a", with_text_tower=True)
    source.set_classes(["zebra", "tram", "kite"])
    save_pretrained(source, tmp_path)
    loaded = create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path)
    assert loaded.num_classes == 3 and loaded.class_names == ["zebra", "tram", "kite"]
    torch.testing.assert_close(loaded.head.weight, source.head.weight)


def test_shipped_weights_dir_and_sha256(tmp_path, monkeypatch):
    model = trained_toy()
    shipped = tmp_path / "weights"
    save_file(model.state_dict(), str(shipped.mkdir() or shipped / tiny_family.SHIPPED_FILE))
    monkeypatch.setenv("CLIPOOD_WEIGHTS_DIR", str(shipped))
    assert "testzoo_tiny_toy_shipped" in clipood_zoo.list_pretrained("testzoo_*")
    loaded = create_model("testzoo_tiny_toy_shipped", pretrained=True).eval()
    torch.testing.assert_close(loaded(IMAGES), model(IMAGES))

    digest = sha256_file(shipped / tiny_family.SHIPPED_FILE)
    create_model("testzoo_tiny_toy_shipped", pretrained=True, pretrained_cfg_overlay={"sha256": digest})
    wrong = "0" * 64
    with pytest.raises(WeightsIntegrityError) as info:
        create_model("testzoo_tiny_toy_shipped", pretrained=True, pretrained_cfg_overlay={"sha256": wrong})
    assert wrong in str(info.value) and digest in str(info.value)


def test_missing_shipped_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPOOD_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=tiny_family.SHIPPED_FILE) as info:
        create_model("testzoo_tiny_toy_shipped", pretrained=True)
    assert "CLIPOOD_WEIGHTS_DIR" in str(info.value)


def test_hub_offline_without_cache_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        create_model("testzoo_tiny_toy_hub", pretrained=True, cache_dir=str(tmp_path))
    message = str(info.value)
    assert tiny_family.HUB_ID in message and "model.safetensors" in message and "HF_HUB_OFFLINE" in message


def test_hub_weights_come_from_the_cache_offline(tmp_path):
    """The huggingface_hub cache layout, written by hand: what a past online download leaves behind."""
    model = trained_toy()
    repo = tmp_path / ("models--" + tiny_family.HUB_ID.replace("/", "--"))
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(model.state_dict(), str(snapshot / "model.safetensors"))
    loaded = create_model("testzoo_tiny_toy_hub", pretrained=True, cache_dir=str(tmp_path)).eval()
    torch.testing.assert_close(loaded(IMAGES), model(IMAGES))


def test_pickles_are_refused_unless_trusted(tmp_path):
    model = trained_toy()
    pickle_path = tmp_path / "model.pth"
    torch.save(model.state_dict(), pickle_path)
    with pytest.raises(UnsafeWeightsError, match="allow_pickle=True"):
        create_model("testzoo_tiny_toy_a", checkpoint_path=pickle_path)
    loaded = create_model("testzoo_tiny_toy_a", checkpoint_path=pickle_path, allow_pickle=True).eval()
    torch.testing.assert_close(loaded(IMAGES), model(IMAGES))


def test_truncated_file_is_refused(tmp_path):
    path = save_pretrained(trained_toy(), tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="truncated or corrupted"):
        create_model("testzoo_tiny_toy_a", checkpoint_path=path)


def test_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    state = trained_toy().state_dict()
    state["visual.conv1.weight"] = torch.zeros(8, 3, 4, 4)
    state["visual.extra"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(WeightsMismatchError) as info:
        create_model("testzoo_tiny_toy_a", checkpoint_path=path)
    assert "visual.conv1.weight" in str(info.value) and "visual.extra" in str(info.value)


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="save_pretrained"):
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path / "nope.safetensors")


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    import huggingface_hub

    uploaded = {}

    def fake_upload_folder(self, repo_id, folder_path, commit_message):
        uploaded.update(repo_id=repo_id, files=sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir()))
        return "https://huggingface.co/org/repo/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, private, exist_ok: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    url = clipood_zoo.push_to_hub(trained_toy(), "org/repo")
    assert url.endswith("/1")
    assert uploaded == {"repo_id": "org/repo", "files": ["README.md", "config.json", "model.safetensors"]}
