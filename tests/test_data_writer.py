"""Shard writing: names, sizes, merged _info.json, and atomicity when a write fails half-way."""
import json
import tarfile

import pytest
import webdataset as wds

from clipood_zoo.data.info import read_dataset_info
from clipood_zoo.data.synthetic import color_for, image_bytes
from clipood_zoo.data.writer import Sample, write_split
from clipood_zoo.errors import DatasetError

CLASSES = ("a", "b", "c")
DOMAINS = ("d0", "d1")


def _samples(n, prefix="s"):
    return [Sample(f"{prefix}{i:03d}", image_bytes(color_for(i % 3, i % 2, i)), "png", i % 3, DOMAINS[i % 2],
                   meta={"path": f"p{i}.png"}) for i in range(n)]


def _write(root, split, samples, **kw):
    return write_split(root, split, samples, name="toy", classes=CLASSES, domains=DOMAINS, **kw)


def _snapshot(root):
    return {p.name: p.read_bytes() for p in root.iterdir()}


def test_shards_and_info(tmp_path):
    info = _write(tmp_path, "train", _samples(11), max_samples_per_shard=4)
    assert info.filenames == ("train-000000.tar", "train-000001.tar", "train-000002.tar")
    assert info.shard_lengths == (4, 4, 3) and info.num_samples == 11
    assert info.domain_class_counts == ((2, 2, 2), (2, 2, 1))
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("s001.json").read())
        assert tar.extractfile("s001.cls").read() == b"1"
    assert names[:3] == ["s000.cls", "s000.json", "s000.png"]
    assert meta == {"domain": "d1", "classname": "b", "path": "p1.png"}
    raw = json.loads((tmp_path / "_info.json").read_text())
    assert raw["splits"]["train"]["filenames"] == list(info.filenames)  # timm's format
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_info.json", *info.filenames]


def test_readable_by_webdataset(tmp_path):
    samples = _samples(6)
    info = _write(tmp_path, "train", samples, max_samples_per_shard=4)
    urls = [str(tmp_path / f) for f in info.filenames]
    got = {s["__key__"]: s["png"] for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())}
    assert got == {s.key: s.image for s in samples}  # bytes stored as given


def test_splits_merge_and_rewrite_removes_stale_shards(tmp_path):
    _write(tmp_path, "train", _samples(9), max_samples_per_shard=3)
    _write(tmp_path, "val", _samples(2, "v"))
    assert set(read_dataset_info(tmp_path).splits) == {"train", "val"}
    _write(tmp_path, "train", _samples(4), max_samples_per_shard=3)
    info = read_dataset_info(tmp_path)
    assert info.split("train").shard_lengths == (3, 1) and info.split("val").num_samples == 2
    assert not (tmp_path / "train-000002.tar").exists()


def test_failure_mid_write_keeps_previous_dataset(tmp_path, monkeypatch):
    _write(tmp_path, "train", _samples(6), max_samples_per_shard=2)
    before = _snapshot(tmp_path)
    written = []
    real_write = wds.TarWriter.write

    def failing_write(self, obj):
        if len(written) == 5:  # the third shard of the rewrite, after two complete ones
            raise OSError("disk full")
        written.append(obj["__key__"])
        return real_write(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, "train", _samples(8, "new"), max_samples_per_shard=2)
    assert _snapshot(tmp_path) == before  # same files, same bytes, no temporaries
    assert read_dataset_info(tmp_path).split("train").num_samples == 6


def test_failure_writing_info_keeps_previous_dataset(tmp_path, monkeypatch):
    _write(tmp_path, "train", _samples(4))
    before = (tmp_path / "_info.json").read_bytes()
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        _write(tmp_path, "val", _samples(2, "v"))
    assert (tmp_path / "_info.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("sample, message", [
    (Sample("a.b", b"x", "png", 0, "d0"), "no dots"),
    (Sample("k", b"x", "gif", 0, "d0"), "image_format must be one of"),
    (Sample("k", b"x", "png", 3, "d0"), r"label 3 out of range"),
    (Sample("k", b"x", "png", 0, "d9"), r"domain 'd9' is not one of \['d0', 'd1'\]"),
])
def test_bad_sample_rejected(tmp_path, sample, message):
    with pytest.raises(DatasetError, match=message):
        _write(tmp_path, "train", [sample])
    assert list(tmp_path.iterdir()) == []


def test_duplicate_key_and_empty_split(tmp_path):
    with pytest.raises(DatasetError, match="used twice"):
        _write(tmp_path, "train", _samples(2) + _samples(1))
    with pytest.raises(DatasetError, match="no samples"):
        _write(tmp_path, "train", [])


def test_other_dataset_in_folder_refused(tmp_path):
    _write(tmp_path, "train", _samples(2))
    with pytest.raises(DatasetError, match="different classes"):
        write_split(tmp_path, "val", _samples(2), name="toy", classes=("a", "b", "z"), domains=DOMAINS)
