"""_info.json validation: every broken folder fails up front with the file and the fix in the message."""
import json

import pytest

from clipood_zoo.data.info import read_dataset_info
from clipood_zoo.data.synthetic import write_synthetic_dataset
from clipood_zoo.errors import ConfigError, DatasetError


@pytest.fixture
def dataset(tmp_path):
    write_synthetic_dataset(tmp_path, per_class=1)
    return tmp_path


def _edit_info(root, edit):
    raw = json.loads((root / "_info.json").read_text())
    edit(raw)
    (root / "_info.json").write_text(json.dumps(raw))


def test_reads_what_the_writer_wrote(dataset):
    info = read_dataset_info(dataset)
    assert info.classes == ("cat", "dog", "fish", "owl")
    assert info.domains == ("art", "photo", "sketch")
    assert set(info.splits) == {"train", "val"}
    assert info.split("train").num_samples == 12 == sum(info.split("train").shard_lengths)
    assert info.class_subset("base") == (0, 1) and info.class_subset("new") == (2, 3)
    assert info.class_subset("all") == (0, 1, 2, 3)
    assert info.domain_index("photo") == 1
    assert info.count("train", domains=[1], classes=[0, 3]) == 2


def test_missing_info_file(tmp_path):
    with pytest.raises(DatasetError, match=r"_info.json.*clipood_zoo.data.convert"):
        read_dataset_info(tmp_path)


def test_bad_json(dataset):
    (dataset / "_info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_dataset_info(dataset)


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.pop("domains"), r"missing key\(s\) \['domains'\]"),
    (lambda raw: raw["splits"]["train"].pop("shard_lengths"), r"split 'train' is missing key"),
    (lambda raw: raw.update(base_classes=[0, 9]), r"'base_classes' has indices \[9\] out of range"),
    (lambda raw: raw.update(new_classes=[0, 2]), r"classes \[0\] are in both"),
    (lambda raw: raw["splits"]["train"].update(num_samples=99), "num_samples 99 != sum of shard_lengths"),
    (lambda raw: raw["splits"]["train"]["shard_domains"][0].append(7), "shard_domains' has indices"),
    (lambda raw: raw["splits"]["train"]["filenames"].__setitem__(0, "../x.tar"), "inside the dataset folder"),
])
def test_invalid_fields(dataset, edit, message):
    _edit_info(dataset, edit)
    with pytest.raises(DatasetError, match=message) as e:
        read_dataset_info(dataset)
    assert str(dataset / "_info.json") in str(e.value)


def test_shard_missing_on_disk(dataset):
    (dataset / "val-000001.tar").unlink()
    with pytest.raises(DatasetError, match=r"split 'val' lists shard\(s\) missing on disk: \['val-000001.tar'\]"):
        read_dataset_info(dataset)


def test_unknown_split_lists_splits(dataset):
    with pytest.raises(DatasetError, match=r"no split 'test'; it has \['train', 'val'\]"):
        read_dataset_info(dataset).split("test")


def test_unknown_domain_lists_domains(dataset):
    with pytest.raises(ConfigError, match=r"unknown domain 'clipart'.*\['art', 'photo', 'sketch'\]"):
        read_dataset_info(dataset).domain_index("clipart")


def test_class_subset_without_base_new(tmp_path):
    info = write_synthetic_dataset(tmp_path, per_class=1, splits=("train",), with_base_new=False)
    assert info.class_subset("all") == (0, 1, 2, 3)
    with pytest.raises(DatasetError, match="defines no base/new split"):
        info.class_subset("base")
    with pytest.raises(ConfigError, match="must be one of"):
        info.class_subset("novel")


def test_class_indices_validated(dataset):
    info = read_dataset_info(dataset)
    assert info.class_indices([3, 1]) == (3, 1)
    with pytest.raises(ConfigError, match=r"class indices \[4\] out of range"):
        info.class_indices([0, 4])


def test_eval_classes_is_a_dataset_info_field_and_round_trips(dataset):
    assert read_dataset_info(dataset).eval_classes is None
    _edit_info(dataset, lambda raw: raw.update(eval_classes=[3, 1]))
    info = read_dataset_info(dataset)
    assert info.eval_classes == (3, 1)
    assert info.to_json()["eval_classes"] == [3, 1]


@pytest.mark.parametrize("value, problem", [([1, 4], r"out of range \[0, 4\)"), ([1, 1], "distinct"),
                                            ([], "non-empty"), (["1"], "list of integers")])
def test_bad_eval_classes_are_refused(dataset, value, problem):
    _edit_info(dataset, lambda raw: raw.update(eval_classes=value))
    with pytest.raises(DatasetError, match=rf"_info.json: .*{problem}"):
        read_dataset_info(dataset)
