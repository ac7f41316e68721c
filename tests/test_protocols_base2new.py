"""Base-to-new: CoOp's split files, Dassl's few-shot draw, base/new halves, shards, registry entries."""
import json
import random
import tarfile
from collections import Counter

import pytest

import clipood_zoo
from clipood_zoo.data.info import read_dataset_info
from clipood_zoo.data.protocols import base2new as B
from clipood_zoo.data.synthetic import image_bytes
from clipood_zoo.errors import DatasetError

EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake"]


def _eurosat(root, train=20, val=6, test=3, short_class=3):
    """CoOp's eurosat/: 2750/<Folder>/<Folder>_<n>.jpg + split_zhou_EuroSAT.json (class 3 has few train images)."""
    split = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(EUROSAT):
        (root / "2750" / folder).mkdir(parents=True)
        n = 0
        for s, count in (("train", 5 if label == short_class else train), ("val", val), ("test", test)):
            for _ in range(count):
                n += 1
                rel = f"{folder}/{folder}_{n}.jpg"
                (root / "2750" / rel).write_bytes(image_bytes((label * 20, n, 0), "jpg"))
                split[s].append([rel, label, f"{folder} land"])
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return split


def test_read_split_file_and_checks(tmp_path):
    split = _eurosat(tmp_path / "eurosat")
    read = B.read_split_file(tmp_path / "eurosat" / "split_zhou_EuroSAT.json")
    assert [len(read[s]) for s in ("train", "val", "test")] == [len(split[s]) for s in ("train", "val", "test")]
    assert read["val"][0] == B.Entry("AnnualCrop/AnnualCrop_21.jpg", 0, "AnnualCrop land")
    assert B.class_names(read)[9] == "SeaLake land"
    bad = dict(split, test=split["test"] + [["x.jpg", 0, "other name"]])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="label 0 is called both"):
        B.read_split_file(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(DatasetError, match="'train', 'val' and 'test'"):
        B.read_split_file(tmp_path / "bad.json")


def _dassl_reference(entries, k, seed):
    """Dassl's generate_fewshot_dataset as written, on the global random seeded like CoOp's set_random_seed."""
    from collections import defaultdict
    random.seed(seed)
    tracker = defaultdict(list)
    for item in entries:
        tracker[item.label].append(item)
    out = []
    for label, items in tracker.items():
        out.extend(random.sample(items, k) if len(items) >= k else items)
    return out


def test_fewshot_is_daSSL_per_seed():
    entries = [B.Entry(f"{c}/{i}.jpg", c, str(c)) for i in range(30) for c in (2, 0, 1)]  # interleaved labels
    entries += [B.Entry(f"3/{i}.jpg", 3, "3") for i in range(4)]  # fewer than k: all kept
    a = B.fewshot(entries, 16, random.Random(1))
    assert a == B.fewshot(entries, 16, random.Random(1))
    assert a != B.fewshot(entries, 16, random.Random(2))
    assert Counter(e.label for e in a) == {0: 16, 1: 16, 2: 16, 3: 4}
    assert [e.label for e in a][:16] == [2] * 16  # labels in order of first appearance
    assert len(set(a)) == len(a)
    assert a == _dassl_reference(entries, 16, 1)
    assert B.fewshot(entries, 0, random.Random(0)) == entries


def test_base_new_halves():
    assert B.base_new_split(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    base, new = B.base_new_split(37)
    assert len(base) == 19 and len(new) == 18 and base[-1] == 18  # ceil(n / 2) base classes
    assert len(B.base_new_split(1000)[0]) == 500


def _read(out_dir, split):
    info = read_dataset_info(out_dir)
    found = []
    for name in info.split(split).filenames:
        with tarfile.open(out_dir / name) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar}
        for f, data in files.items():
            if f.endswith(".json"):
                found.append((json.loads(data)["path"], int(files[f[:-5] + ".cls"])))
    return found


def test_convert_eurosat(tmp_path):
    split = _eurosat(tmp_path / "data" / "eurosat")
    B.convert("eurosat", tmp_path / "data", tmp_path / "out", shots=16, seed=1, shard_size=50)
    info = read_dataset_info(tmp_path / "out")
    assert info.domains == ("eurosat",) and info.classes[0] == "AnnualCrop land"
    assert info.base_classes == (0, 1, 2, 3, 4) and info.new_classes == (5, 6, 7, 8, 9)
    train, val, test = (_read(tmp_path / "out", s) for s in ("train", "val", "test"))
    assert Counter(label for _, label in train) == {c: (5 if c == 3 else 16) for c in range(10)}
    assert Counter(label for _, label in val) == {c: 4 for c in range(10)}
    assert sorted(test) == sorted((p, label) for p, label, _ in split["test"])
    listed = {p: label for s in split.values() for p, label, _ in s}
    assert all(listed[p] == label for p, label in train + val)  # labels as in the split file
    assert {p for p, _ in train} <= {p for p, _, _ in split["train"]}
    # The draw is CoOp's: train with k shots, then val with min(k, 4) from the same generator.
    rng = random.Random(1)
    entries = B.read_split_file(tmp_path / "data" / "eurosat" / "split_zhou_EuroSAT.json")
    expect_train = [e.path for e in B.fewshot(entries["train"], 16, rng)]
    expect_val = [e.path for e in B.fewshot(entries["val"], 4, rng)]
    assert sorted(p for p, _ in train) == sorted(expect_train) and sorted(p for p, _ in val) == sorted(expect_val)
    raw = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert raw["protocol"] == "base2new" and raw["fewshot_seed"] == 1 and raw["template"].startswith("a centered")


def test_missing_images_and_class_count(tmp_path):
    split = _eurosat(tmp_path / "eurosat")
    (tmp_path / "eurosat" / "2750" / split["test"][0][0]).unlink()
    with pytest.raises(DatasetError, match=r"missing 1 image file\(s\)"):
        B.convert("eurosat", tmp_path / "eurosat", tmp_path / "out")
    with pytest.raises(DatasetError, match="CoOp's has 37"):
        (tmp_path / "eurosat" / "split_zhou_OxfordPets.json").write_text(
            (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").read_text())
        B.convert("oxford_pets", tmp_path / "eurosat", tmp_path / "out2")


def test_fgvc_aircraft_reader(tmp_path):
    (tmp_path / "variants.txt").write_text("707-320\nA300B4\nDC-3\n")
    for s, lines in (("train", ["1025794 707-320", "1340192 DC-3"]), ("val", ["0056978 A300B4"]),
                     ("test", ["0062765 DC-3"])):
        (tmp_path / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    read = B.read_fgvc_aircraft(tmp_path)
    assert read["train"] == [B.Entry("1025794.jpg", 0, "707-320"), B.Entry("1340192.jpg", 2, "DC-3")]
    assert B.class_names(read) == ["707-320", "A300B4", "DC-3"]


def test_registry_family():
    names = clipood_zoo.list_models("clipood_vitb16_b2n_*")
    assert len(names) == 11 and not clipood_zoo.list_pretrained("clipood_vitb16_b2n_*")
    cfg = clipood_zoo.get_pretrained_cfg("clipood_vitb16_b2n_fgvc_aircraft")
    assert cfg.num_classes == 100 and cfg.label_names is None and cfg.dataset == "fgvc_aircraft"
    assert cfg.recipe["lr"] == 5e-6 and cfg.recipe["batch_size"] == 36 and cfg.recipe["bma_beta"] == 0.1
    assert cfg.recipe["steps"] == 5000 and cfg.templates == ("a photo of a {}, a type of aircraft.",)
    assert "--train-classes base" in cfg.train_command
    assert clipood_zoo.get_pretrained_cfg("clipood_vitb16_b2n_imagenet").label_names[0] == "tench"
