"""Weights: save/load round trips, weights/ and HF-hub resolution offline, and every refusal."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import scan_cache_dir
from huggingface_hub.file_download import repo_folder_name
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


def fake_hub_cache(cache, repo_id, folder):
    """What an online download of ``folder``'s files from ``repo_id`` leaves in a huggingface_hub cache: blobs
    named by their hash, a snapshot of links to them, and refs/main; huggingface_hub's scan must see the repo."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in sorted(Path(folder).iterdir()):
        blob = repo / "blobs" / sha256_file(file)
        shutil.copy(file, blob)
        (repo / "snapshots" / commit / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (scanned,) = scan_cache_dir(cache).repos
    assert scanned.repo_id == repo_id and len(scanned.refs["main"].files) == len(list(Path(folder).iterdir()))
    return cache


def test_hub_weights_come_from_the_cache_offline(tmp_path):
    model = trained_toy()
    save_file(model.state_dict(), str((tmp_path / "repo").mkdir() or tmp_path / "repo" / "model.safetensors"))
    cache = fake_hub_cache(tmp_path / "hf", tiny_family.HUB_ID, tmp_path / "repo")
    loaded = create_model("testzoo_tiny_toy_hub", pretrained=True, cache_dir=str(cache)).eval()
    torch.testing.assert_close(loaded(IMAGES), model(IMAGES))


@pytest.mark.parametrize("create", [create_model, timm.create_model], ids=["clipood_zoo", "timm"])
def test_hf_hub_id_loads_that_repos_weights_never_the_local_file(tmp_path, monkeypatch, create):
    """push_to_hub's folder, seen through a hub cache, built from its config.json, never from weights/."""
    local = trained_toy()
    shipped = tmp_path / "weights"
    save_file(local.state_dict(), str(shipped.mkdir() or shipped / tiny_family.SHIPPED_FILE))
    monkeypatch.setenv("CLIPOOD_WEIGHTS_DIR", str(shipped))  # the registry's own weights for that name
    mine = trained_toy()
    mine.reset_classifier(3)
    mine.class_names = ["zebra", "tram", "kite"]
    save_pretrained(mine, tmp_path / "repo", model_name="testzoo_tiny_toy_shipped")
    cache = fake_hub_cache(tmp_path / "hf", "me/mod", tmp_path / "repo")

    loaded = create("hf-hub:me/mod", pretrained=True, cache_dir=str(cache)).eval()
    assert type(loaded).__name__ == "ClipoodClassifier" and loaded.class_names == ["zebra", "tram", "kite"]
    for key, value in mine.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded(IMAGES), mine(IMAGES))
    assert loaded.pretrained_cfg["hf_hub_id"] == "me/mod" and loaded.pretrained_cfg.get("file") is None

    untrained = create("hf-hub:me/mod", cache_dir=str(cache))  # timm's meaning: the repo's architecture, no weights
    assert untrained.num_classes == 3 and not torch.equal(untrained.visual.conv1.weight, mine.visual.conv1.weight)


@pytest.mark.parametrize("create", [create_model, timm.create_model], ids=["clipood_zoo", "timm"])
def test_hf_hub_missing_repo_or_file_offline_is_one_line_naming_it(tmp_path, create):
    with pytest.raises(WeightsNotFoundError) as info:
        create("hf-hub:nobody/nothing", pretrained=True, cache_dir=str(tmp_path / "empty"))
    message = str(info.value)
    assert "\n" not in message and "'config.json'" in message and "'nobody/nothing'" in message
    assert "HF_HUB_OFFLINE is set" in message

    save_pretrained(trained_toy(), tmp_path / "repo")
    (tmp_path / "repo" / "model.safetensors").unlink()
    cache = fake_hub_cache(tmp_path / "hf", "me/no-weights", tmp_path / "repo")
    with pytest.raises(WeightsNotFoundError) as info:
        create("hf-hub:me/no-weights", pretrained=True, cache_dir=str(cache))
    message = str(info.value)
    assert "\n" not in message and "'model.safetensors'" in message and "'me/no-weights'" in message


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


def test_weights_file_is_read_once_and_the_hashed_bytes_are_the_loaded_ones(tmp_path, monkeypatch):
    import builtins
    import io

    path = save_pretrained(trained_toy(), tmp_path)
    opened = []
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        opened.append(Path(file) if isinstance(file, (str, Path)) else file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path)
    assert opened.count(path) == 1


def test_config_with_a_name_per_row_missing_is_refused(tmp_path):
    save_pretrained(trained_toy(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["pretrained_cfg"]["label_names"] = ["cat", "dog"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError) as info:
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'config.json'} lists 2 label_names but model.safetensors's "
                                      "head has 4 rows; the config belongs to other weights.")


def test_config_naming_another_architecture_than_its_tensors_is_refused(tmp_path):
    save_pretrained(trained_toy(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architecture"] = config["pretrained_cfg"]["architecture"] = "clip_vitt_emoji"
    del config["pretrained_cfg"]["clip_arch"]  # the registry then says what clip_vitt_emoji is
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError) as info:
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'config.json'} says its weights are 'clip_vitt_emoji' (open_clip "
                                      "ViT-T-8-40-MiniLM) but model.safetensors holds clipood-test-tiny tensors")


SAVE_IN_A_FRESH_PROCESS = """
import sys, torch
import tests.conftest  # registers the tiny open_clip architecture and the testzoo_* family
import clipood_zoo
torch.manual_seed(0)
model = clipood_zoo.create_model("testzoo_tiny_toy_a")
clipood_zoo.save_pretrained(model, sys.argv[1])
"""


def test_same_tensors_give_the_same_file_bytes_in_every_process(tmp_path):
    """safetensors writes __metadata__ in hash-map order; save_pretrained's bytes (and sha256) must not vary."""
    import os
    import subprocess
    import sys

    model = trained_toy()
    in_process = {save_pretrained(model, tmp_path / "again").read_bytes() for _ in range(10)}
    assert len(in_process) == 1  # (raw safetensors.save gives several orders in 10 calls)
    repo = Path(__file__).resolve().parent.parent
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", SAVE_IN_A_FRESH_PROCESS, str(tmp_path / seed)], check=True, env=env,
                       cwd=repo)
    files = [(tmp_path / seed / "model.safetensors").read_bytes() for seed in ("1", "2")]
    assert files[0] == files[1]
    header = json.loads(files[0][8:8 + int.from_bytes(files[0][:8], "little")])
    assert list(header["__metadata__"]) == ["architecture", "format"]


@pytest.mark.parametrize("create", [create_model, timm.create_model], ids=["clipood_zoo", "timm"])
def test_local_dir_id_loads_that_folder(tmp_path, monkeypatch, create):
    mine = trained_toy()
    save_pretrained(mine, tmp_path / "mine", model_name="testzoo_tiny_toy_shipped")
    monkeypatch.chdir(tmp_path)  # a relative path, as users type it
    loaded = create("local-dir:mine", pretrained=True).eval()
    assert torch.equal(loaded(IMAGES), mine(IMAGES))


@pytest.mark.parametrize("create", [create_model, timm.create_model], ids=["clipood_zoo", "timm"])
def test_hub_copy_of_a_shipped_model_with_changed_weights_loads_the_copy(tmp_path, create):
    """The reported case: a shipped name (a weights/ file and a registry sha256) re-published with changed weights."""
    shipped = create_model("clip_vitt_emoji", pretrained=True).eval()
    changed = create_model("clip_vitt_emoji", pretrained=True).eval()
    with torch.no_grad():
        changed.visual.proj.mul_(-1.0)
    save_pretrained(changed, tmp_path / "repo")
    cache = fake_hub_cache(tmp_path / "hf", "me/mod", tmp_path / "repo")
    loaded = create("hf-hub:me/mod", pretrained=True, cache_dir=str(cache)).eval()
    images = torch.randn(2, 3, 40, 40)
    assert torch.equal(loaded.visual.proj, changed.visual.proj)
    assert torch.equal(loaded(images), changed(images)) and not torch.equal(loaded(images), shipped(images))


@pytest.mark.parametrize("create", [create_model, timm.create_model], ids=["clipood_zoo", "timm"])
def test_hub_repo_of_another_image_size_rebuilds_that_tower(tmp_path, create):
    """A model made with img_size=48 (the registry's tower is 32 px) comes back at 48 px with its own embedding."""
    mine = create_model("testzoo_tiny_toy_a", img_size=48).eval()
    with torch.no_grad():
        mine.visual.positional_embedding.normal_()
    save_pretrained(mine, tmp_path / "repo")
    assert json.loads((tmp_path / "repo" / "config.json").read_text())["model_args"] == {"img_size": 48}
    cache = fake_hub_cache(tmp_path / "hf", "me/big", tmp_path / "repo")
    loaded = create("hf-hub:me/big", pretrained=True, cache_dir=str(cache)).eval()
    assert loaded.pretrained_cfg["input_size"] == (3, 48, 48)
    assert torch.equal(loaded.visual.positional_embedding, mine.visual.positional_embedding)
    images = torch.randn(2, 3, 48, 48)
    assert torch.equal(loaded(images), mine(images))
