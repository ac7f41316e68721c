"""Folder trees -> shards: DomainBed's seeded 20% hold-out per domain, class order, bytes, bad files."""
import json
import os
import tarfile
from collections import Counter

import pytest

from clipood_zoo.data import convert
from clipood_zoo.data.converters import convert_domainbed, convert_imagefolder
from clipood_zoo.data.info import read_dataset_info
from clipood_zoo.data.synthetic import make_image_tree
from clipood_zoo.errors import ConfigError, DatasetError

DOMAINS = ["sketch", "art_painting", "photo"]  # written unsorted on purpose
CLASSES = ["owl", "cat", "dog"]
PER_CLASS = [10, 7, 12]  # per domain: 30, 21, 36 images


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("domainbed")
    make_image_tree(root, DOMAINS, CLASSES, PER_CLASS)
    return root


def _members(out_dir, split):
    """{(domain, source path): (class index, json)} read straight from the tars."""
    info = read_dataset_info(out_dir)
    found = {}
    for name in info.split(split).filenames:
        with tarfile.open(out_dir / name) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar}
        for fname in files:
            if fname.endswith(".json"):
                key = fname[:-5]
                meta = json.loads(files[fname])
                found[(meta["domain"], meta["path"])] = (int(files[key + ".cls"]), meta, files.get(key + ".png"))
    return found


def test_domainbed_split(tree, tmp_path):
    report = convert_domainbed(tree, tmp_path / "a", seed=0, shard_size=16)
    info = read_dataset_info(tmp_path / "a")
    assert info.domains == ("art_painting", "photo", "sketch")
    assert info.classes == ("cat", "dog", "owl")
    train, val = _members(tmp_path / "a", "train"), _members(tmp_path / "a", "val")
    assert not set(train) & set(val)
    sizes = {d: n * len(CLASSES) for d, n in zip(DOMAINS, PER_CLASS)}
    assert Counter(d for d, _ in val) == {d: int(n * 0.2) for d, n in sizes.items()}
    assert Counter(d for d, _ in train) == {d: n - int(n * 0.2) for d, n in sizes.items()}
    for (domain, path), (label, meta, _) in {**train, **val}.items():
        assert info.classes[label] == meta["classname"] == path.split("/")[0]
        assert (tree / domain / path).is_file()
    assert report.splits["val"].num_samples == len(val) and report.skipped == []
    assert max(info.split("train").shard_lengths) == 16


def test_split_depends_on_seed_only(tree, tmp_path, monkeypatch):
    convert_domainbed(tree, tmp_path / "a", seed=0)
    convert_domainbed(tree, tmp_path / "c", seed=1)
    real_scandir = os.scandir

    class ReversedScandir:  # a filesystem that lists entries in the opposite order
        def __init__(self, path="."):
            self._it = real_scandir(path)
            self._entries = sorted(self._it, key=lambda e: e.name, reverse=True)

        def __iter__(self):
            return self

        def __next__(self):
            if not self._entries:
                raise StopIteration
            return self._entries.pop(0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._it.close()

    monkeypatch.setattr(os, "scandir", ReversedScandir)
    convert_domainbed(tree, tmp_path / "b", seed=0)
    monkeypatch.undo()
    val_a, val_b, val_c = (set(_members(tmp_path / x, "val")) for x in "abc")
    assert val_a == val_b
    assert val_a != val_c and len(val_a) == len(val_c)
    assert (tmp_path / "a" / "val-000000.tar").read_bytes() == (tmp_path / "b" / "val-000000.tar").read_bytes()


def test_bytes_kept_or_reencoded_and_bad_files_skipped(tmp_path):
    src = tmp_path / "src"
    make_image_tree(src, ["d0", "d1"], ["x", "y"], 2, fmt="jpg")
    make_image_tree(src, ["d1"], ["y"], 1, fmt="bmp")  # img_000.bmp: not stored as-is
    (src / "d0" / "x" / "broken.png").write_bytes(b"not an image")
    (src / "d0" / "x" / "notes.txt").write_text("ignored, not an image extension")
    report = convert_domainbed(src, tmp_path / "out", holdout_fraction=0.0)
    assert report.skipped == ["d0/x/broken.png"]
    assert set(report.splits) == {"train"}  # nothing held out: no val split
    members = _members(tmp_path / "out", "train")
    assert len(members) == 9
    bmp = members[("d1", "y/img_000.bmp")][2]
    assert bmp is not None and bmp.startswith(b"\x89PNG")
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        jpgs = {m.name for m in tar if m.name.endswith(".jpg")}
        first = sorted(jpgs)[0]
        meta = json.loads(tar.extractfile(first[:-4] + ".json").read())
        assert tar.extractfile(first).read() == (src / meta["domain"] / meta["path"]).read_bytes()
    assert len(jpgs) == 8


def test_missing_class(tmp_path):
    make_image_tree(tmp_path / "src", ["d0"], ["x", "y"], 2)
    make_image_tree(tmp_path / "src", ["d1"], ["x"], 2)
    with pytest.raises(DatasetError, match=r"classes missing from some domains: \{'d1': \['y'\]\}"):
        convert_domainbed(tmp_path / "src", tmp_path / "out")
    convert_domainbed(tmp_path / "src", tmp_path / "out", allow_missing_classes=True)
    assert read_dataset_info(tmp_path / "out").count("train", domains=[1], classes=[1]) == 0


def test_base_new(tree, tmp_path):
    convert_domainbed(tree, tmp_path / "out", base_classes=["owl", "cat"])
    info = read_dataset_info(tmp_path / "out")
    assert info.class_subset("base") == (0, 2) and info.class_subset("new") == (1,)
    with pytest.raises(ConfigError, match="not class folders"):
        convert_domainbed(tree, tmp_path / "bad", base_classes=["horse"])


def test_imagefolder(tmp_path):
    make_image_tree(tmp_path / "train", [""], CLASSES, 5)
    make_image_tree(tmp_path / "val", [""], CLASSES, 2)
    convert_imagefolder(tmp_path / "train", tmp_path / "out", domain_name="toy", holdout_fraction=0)
    convert_imagefolder(tmp_path / "val", tmp_path / "out", domain_name="toy", holdout_fraction=1)
    info = read_dataset_info(tmp_path / "out")
    assert info.domains == ("toy",) and info.classes == ("cat", "dog", "owl")
    assert (info.split("train").num_samples, info.split("val").num_samples) == (15, 6)
    assert {p for _, p in _members(tmp_path / "out", "val")} == {f"{c}/img_00{i}.png" for c in CLASSES for i in (0, 1)}


def test_cli(tree, tmp_path, capsys):
    assert convert.main(["domainbed", str(tree), str(tmp_path / "out"), "--holdout-fraction", "0.5",
                         "--seed", "3", "--shard-size", "10", "--base-classes", "cat,dog"]) == 0
    info = read_dataset_info(tmp_path / "out")
    assert info.split("val").num_samples == 15 + 10 + 18 and max(info.split("train").shard_lengths) == 10
    assert info.class_subset("new") == (2,)
    assert "val: 43 samples" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        convert.main(["domainbed", str(tree), str(tmp_path / "x"), "--domain-name", "nope"])
    with pytest.raises(SystemExit) as e:
        convert.main(["imagefolder", str(tmp_path / "missing"), str(tmp_path / "y")])
    assert e.value.code == 2 and "missing is not a folder" in capsys.readouterr().err
