"""A dataset is data: names that came with it are opened only as files under its folder, never run.

Every case puts a command that would create a marker file into a name the dataset controls (a shard in
``_info.json``, an image path in a converter's list) and asserts the exact error and that the marker is
absent. The shard is also written under its literal name, so what stops it is the check and not a
missing file.
"""
import json
import os

import pytest

import clipood_zoo.data.info
import train
import validate
from clipood_zoo.data import create_loader, read_dataset_info
from clipood_zoo.data.protocols import base2new, domainbed
from clipood_zoo.data.synthetic import image_bytes, write_synthetic_dataset
from clipood_zoo.errors import DatasetError
from tests.conftest import TINY_CONFIG, train_args
from tests.test_protocols_base2new import _eurosat

MARKER = "PWNED"
PIPE = f"pipe:cat val-000000.tar; touch {MARKER}"
MALICIOUS = [
    (PIPE, "it is a URL or command"),
    ("file:val-000000.tar", "it is a URL or command"),
    ("http://127.0.0.1:9/val-000000.tar", "it is a URL or command"),
    ("s3://bucket/val-000000.tar", "it is a URL or command"),
    ("../val-000000.tar", "it must be a path inside the dataset folder"),
    ("/etc/passwd", "it must be a path inside the dataset folder"),
    (f"val-000000.tar; touch {MARKER}", "a shard name may hold only letters, digits"),
    (f"val-000000.tar|touch {MARKER}", "a shard name may hold only letters, digits"),
    ("-", "a shard name may hold only letters, digits"),  # gopen reads '-' as stdin
    ("C:\\shards\\val-000000.tar", "a shard name may hold only letters, digits"),
]


def _dataset_naming(root, name):
    """A synthetic dataset whose val split's only shard is called ``name`` in _info.json (and on disk when it can be)."""
    write_synthetic_dataset(root, per_class=1, splits=("train", "val"), shard_size=100)
    raw = json.loads((root / "_info.json").read_text())
    if "/" not in name and name != "..":
        os.replace(root / "val-000000.tar", root / name)
    raw["splits"]["val"]["filenames"] = [name]
    (root / "_info.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("name,problem", MALICIOUS)
def test_unsafe_shard_names_are_refused_up_front(tmp_path, monkeypatch, name, problem):
    _dataset_naming(tmp_path, name)
    monkeypatch.chdir(tmp_path)  # '--data-dir .' is how the pipe: name was seen to run
    with pytest.raises(DatasetError) as e:
        read_dataset_info(".")
    assert f"shard name {name!r} is refused: {problem}" in str(e.value)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("name,problem", [MALICIOUS[0], MALICIOUS[4], MALICIOUS[6]])
def test_validate_and_train_exit_2_and_run_nothing(tmp_path, monkeypatch, capsys, name, problem):
    data = tmp_path / "data"
    data.mkdir()
    _dataset_naming(data, name)
    monkeypatch.chdir(data)
    for main, argv in ((validate.main, ["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG,
                                        "--data-dir", ".", "--workers", "0"]),
                       (train.main, train_args(".", tmp_path / "out", "--steps", "1"))):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        script = "validate.py" if main is validate.main else "train.py"
        assert err.startswith(f"{script}: error: ") and f"is refused: {problem}" in err
    assert not (data / MARKER).exists() and not (tmp_path / "out").exists()


def test_a_name_that_slipped_through_is_still_only_read_as_a_file(tmp_path, monkeypatch):
    """Defence in depth: with the name check switched off, the loader opens the literal file, runs nothing."""
    _dataset_naming(tmp_path, PIPE)
    monkeypatch.setattr(clipood_zoo.data.info, "check_shard_name", lambda name: None)
    monkeypatch.chdir(tmp_path)
    loader = create_loader(".", "val", transform=lambda im: im.size[0], batch_size=100, is_training=False,
                           strict=True)
    (batch,) = list(loader)
    assert len(batch[1]) == 12 == loader.num_samples  # the whole shard, read from the file named PIPE
    assert not (tmp_path / MARKER).exists()


def test_a_shard_linked_outside_the_folder_is_refused_a_linked_folder_is_fine(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, per_class=1, splits=("val",), shard_size=100)
    (tmp_path / "elsewhere.tar").write_bytes((data / "val-000000.tar").read_bytes())
    (tmp_path / "linked").symlink_to(data, target_is_directory=True)
    assert read_dataset_info(tmp_path / "linked").split("val").num_samples == 12
    (data / "val-000000.tar").unlink()
    (data / "val-000000.tar").symlink_to(tmp_path / "elsewhere.tar")
    with pytest.raises(DatasetError, match=r"links to files outside .*\['val-000000.tar'\]; copy them into"):
        read_dataset_info(data)


@pytest.mark.parametrize("listed", ["../secret.jpg", "/etc/passwd"])
def test_coop_split_file_cannot_name_files_outside_the_images(tmp_path, listed):
    root = tmp_path / "eurosat"
    split = _eurosat(root, train=1, val=1, test=1, short_class=0)
    (root / "secret.jpg").write_bytes(image_bytes((4, 5, 6), "jpg"))
    split["test"].append([listed, 0, split["test"][0][2]])
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(DatasetError, match=rf"lists path\(s\) outside .*2750: \[{listed!r}\]"):
        base2new.convert("eurosat", root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_terra_annotations_cannot_name_files_outside_the_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "secret.jpg").write_bytes(image_bytes((4, 5, 6), "jpg"))
    data = {"categories": [{"id": 0, "name": "bird"}], "annotations": [{"image_id": "i", "category_id": 0}],
            "images": [{"id": "i", "file_name": "../secret.jpg", "location": "38"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"names '../secret.jpg', outside .*images"):
        domainbed.organize_terraincognita(images, tmp_path / "ann.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()
