"""create_loader: every sample once with its label and domain, filters, workers/ranks, bad data."""
import json
import tarfile
from collections import Counter

import pytest
import torch
import webdataset as wds
from torchvision.transforms.functional import pil_to_tensor

from clipood_zoo.data.pipeline import count_samples, create_loader
from clipood_zoo.data.synthetic import decode_color, image_bytes, write_synthetic_dataset
from clipood_zoo.errors import ConfigError, DatasetError

DOMAINS = ("art", "photo", "sketch")
CLASSES = ("cat", "dog", "fish", "owl")
PER_CLASS = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    write_synthetic_dataset(root, DOMAINS, CLASSES, PER_CLASS, shard_size=5)  # 36 samples, 8 shards a split
    return root


def _expected(domains=DOMAINS, classes=range(len(CLASSES))):
    """Independent list of (class, domain, index) that the synthetic writer produced."""
    return Counter((c, DOMAINS.index(d), i) for d in domains for c in classes for i in range(PER_CLASS))


def _load(data_dir, split="val", **kw):
    kw = {"batch_size": 4, "is_training": False, **kw}
    return create_loader(data_dir, split, transform=pil_to_tensor, **kw)


def _seen(loader):
    """Counter of (target, domain_idx, image index) over all batches, checking the pixels agree."""
    seen = Counter()
    for images, targets, domains in loader:
        assert images.shape[1:] == (3, 8, 8) and targets.dtype == domains.dtype == torch.long
        for image, t, d in zip(images, targets.tolist(), domains.tolist()):
            rgb = image[:, 0, 0].tolist()
            assert decode_color(rgb) == (t, d)
            seen[(t, d, rgb[2])] += 1
    return seen


@pytest.mark.parametrize("split", ["train", "val"])
def test_round_trip(data_dir, split):
    loader = _load(data_dir, split)
    assert _seen(loader) == _expected()
    assert loader.num_samples == 36 and len(loader) == 9
    assert loader.skipped.total == 0


@pytest.mark.parametrize("domains, classes", [
    (["photo"], None), (["sketch", "art"], "base"), (None, [3, 1]), (["photo"], "new"),
])
def test_filters(data_dir, domains, classes):
    class_ids = {"base": [0, 1], "new": [2, 3]}.get(classes, classes) if isinstance(classes, str) else classes
    class_ids = range(4) if class_ids is None else class_ids
    expected = _expected(domains or DOMAINS, class_ids)
    assert _seen(_load(data_dir, domains=domains, classes=classes)) == expected
    assert count_samples(data_dir, "val", domains, classes) == sum(expected.values())


def test_relabel_classes(data_dir):
    targets = torch.cat([t for _, t, _ in _load(data_dir, classes=[3, 1], relabel_classes=True)])
    assert Counter(targets.tolist()) == {0: 9, 1: 9}  # class 3 -> 0, class 1 -> 1


def test_count_without_recorded_counts_scans_shards(data_dir, tmp_path):
    for f in data_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    raw = json.loads((tmp_path / "_info.json").read_text())
    for s in raw["splits"].values():
        del s["domain_class_counts"], s["shard_domains"]
    (tmp_path / "_info.json").write_text(json.dumps(raw))
    assert count_samples(tmp_path, "val", ["art", "photo"], [0, 2]) == 12
    assert _seen(_load(tmp_path, domains=["art", "photo"], classes=[0, 2])) == _expected(["art", "photo"], [0, 2])


@pytest.mark.parametrize("domains", [None, ["photo", "sketch"]])
def test_two_workers_see_each_sample_once(data_dir, domains):
    assert _seen(_load(data_dir, num_workers=2, domains=domains)) == _expected(domains or DOMAINS)


@pytest.mark.parametrize("is_training", [False, True])
def test_ranks_partition_the_split(data_dir, monkeypatch, is_training):
    seen = Counter()
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))  # read by webdataset's split_by_node
        monkeypatch.setenv("WORLD_SIZE", "2")
        part = _seen(_load(data_dir, num_workers=2, is_training=is_training, drop_last=False))
        assert 0 < sum(part.values()) < 36
        seen += part
    assert seen == _expected()


def _order(data_dir, epoch, **kw):
    loader = _load(data_dir, "train", is_training=True, drop_last=False, seed=7, shuffle_buffer=10, **kw)
    loader.set_epoch(epoch)
    return [(t, d) for _, targets, domains in loader for t, d in zip(targets.tolist(), domains.tolist())]


def test_training_epochs_are_seeded_shuffles(data_dir):
    first = _order(data_dir, 0)
    assert Counter(first) == Counter((c, d) for c, d, _ in _expected().elements())
    assert _order(data_dir, 0) == first
    assert _order(data_dir, 1) != first
    assert Counter(_order(data_dir, 1)) == Counter(first)
    assert first != sorted(first)


def test_resampled_training_has_fixed_epoch_length(data_dir):
    loader = _load(data_dir, "train", is_training=True, resampled=True, num_workers=2, batch_size=5)
    batches = [t for _, t, _ in loader]
    assert len(batches) == len(loader) == 8  # 36 // 5 = 7 per rank, rounded up to 4 per worker
    assert all(len(t) == 5 for t in batches)


def test_bad_filters_and_arguments(data_dir):
    with pytest.raises(ConfigError, match=r"unknown domain 'clipart'.*\['art', 'photo', 'sketch'\]"):
        _load(data_dir, domains=["clipart"])
    with pytest.raises(ConfigError, match="resampled=True is for training"):
        _load(data_dir, resampled=True)
    with pytest.raises(DatasetError, match="no split 'test'"):
        _load(data_dir, "test")


@pytest.fixture
def bad_dir(tmp_path):
    """The synthetic val split plus one shard of broken samples listed in _info.json."""
    write_synthetic_dataset(tmp_path, DOMAINS, CLASSES, PER_CLASS, splits=("val",), shard_size=5)
    good = image_bytes((0, 0, 0))
    meta = json.dumps({"domain": "art", "classname": "cat"}).encode()
    bad = [
        {"__key__": "bad-image", "png": b"not a png", "cls": b"0", "json": meta},
        {"__key__": "no-cls", "png": good, "json": meta},
        {"__key__": "big-cls", "png": good, "cls": b"9", "json": meta},
        {"__key__": "alien", "png": good, "cls": b"0", "json": json.dumps({"domain": "mars"}).encode()},
        {"__key__": "no-json", "png": good, "cls": b"0"},
        {"__key__": "no-image", "cls": b"0", "json": meta},
    ]
    with wds.TarWriter(str(tmp_path / "val-bad.tar")) as w:
        for sample in bad:
            w.write(sample)
    raw = json.loads((tmp_path / "_info.json").read_text())
    split = raw["splits"]["val"]
    split["filenames"].insert(0, "val-bad.tar")
    split["shard_lengths"].insert(0, len(bad))
    split["num_samples"] += len(bad)
    del split["domain_class_counts"], split["shard_domains"]
    (tmp_path / "_info.json").write_text(json.dumps(raw))
    return tmp_path


def test_bad_samples_skipped_and_counted(bad_dir):
    loader = _load(bad_dir, num_workers=2)
    assert _seen(loader) == _expected()
    assert loader.skipped.as_dict() == {"no_image": 1, "bad_label": 2, "bad_meta": 1, "unknown_domain": 1,
                                        "bad_image": 1, "missing_from_shard": 0, "too_large": 0}
    assert loader.skipped.total == 6


def test_strict_raises_with_shard_and_key(bad_dir):
    with pytest.raises(DatasetError, match=r"val-bad.tar, sample key 'bad-image'"):
        _seen(_load(bad_dir, strict=True))


def test_truncated_shard(data_dir, tmp_path):
    for f in data_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    shard = tmp_path / "val-000001.tar"
    with tarfile.open(shard) as tar:
        second_image = [m for m in tar if m.name.endswith(".png")][1]
    shard.write_bytes(shard.read_bytes()[:second_image.offset_data + 10])  # cut inside the 2nd image
    loader = _load(tmp_path)
    seen = _seen(loader)
    assert sum(seen.values()) == 32 and set(seen) < set(_expected())
    assert loader.skipped.as_dict()["missing_from_shard"] == 3
    assert loader.skipped.total == 4  # plus the cut sample, which lost its image
    with pytest.raises(DatasetError, match="val-000001.tar"):
        _seen(_load(tmp_path, strict=True))


def test_epoch_samples_sets_the_length_of_a_resampled_epoch(tmp_path):
    """open_clip's --train-num-samples: an epoch of a resampled stream is as long as asked, not one pass."""
    write_synthetic_dataset(tmp_path, per_class=2, shard_size=5)
    def loader(**kwargs):
        return create_loader(tmp_path, "train", transform=pil_to_tensor, batch_size=4, is_training=True, **kwargs)
    assert len(loader(resampled=True, epoch_samples=40)) == 10
    assert sum(len(t) for _, t, _ in loader(resampled=True, epoch_samples=40)) == 40
    with pytest.raises(ConfigError, match=r"epoch_samples \(--train-num-samples\) must be >= 1 and needs resampled=True"):
        loader(resampled=False, epoch_samples=40)
    with pytest.raises(ConfigError, match="must be >= 1"):
        loader(resampled=True, epoch_samples=0)
