"""Scoring your own images of a model's classes: a DomainBed tree of EmojiDG renders, converted, validated.

The tree holds the mini subset's own 3d renders (bytes unchanged) under folder names with underscores, so
every score below must equal the score on the committed shards, computed independently by validate.py.
"""
import json
import logging
import tarfile
from pathlib import Path

import pytest

import validate
from clipood_zoo.data import convert, emojidg, read_dataset_info

REPO = Path(__file__).resolve().parent.parent
MINI = REPO / "datasets" / "emojidg-mini"
MODEL = "clipood_vitt_emojidg_3d"
ARGS = ["--model", MODEL, "--pretrained", "--workers", "0"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """src/3d/<class_name_with_underscores>/<key>.png for the 444 3d renders of the mini subset."""
    root = tmp_path_factory.mktemp("renders") / "src"
    for shard in sorted(MINI.glob("val-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                if not name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read())
                if meta["domain"] != "3d":
                    continue
                key = name[:-len(".json")]
                folder = root / "3d" / meta["classname"].replace(" ", "_")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{key}.png").write_bytes(tar.extractfile(members[f"{key}.png"]).read())
    return root


@pytest.fixture(scope="module")
def reference():
    """validate.py on the committed shards: all classes, and the base classes with the classifier restricted."""
    (all_row,) = validate.main([*ARGS, "--data-dir", str(MINI), "--domains", "3d"])
    (base_row,) = validate.main([*ARGS, "--data-dir", str(MINI), "--domains", "3d", "--classes", "base"])
    return all_row, base_row


def converted(tree, out, *extra):
    assert convert.main(["domainbed", str(tree), str(out), "--holdout-fraction", "1", *extra]) == 0
    return out


def test_sorted_folder_names_are_aligned_by_name_with_the_same_top1(tree, tmp_path, reference, caplog):
    out = converted(tree, tmp_path / "sorted")
    info = read_dataset_info(out)
    assert list(info.classes) == sorted(c.replace(" ", "_") for c in emojidg.CLASS_NAMES) != list(emojidg.CLASS_NAMES)
    with caplog.at_level(logging.INFO):
        (row,) = validate.main([*ARGS, "--data-dir", str(out)])
    assert "head rows selected and reordered by class name" in caplog.text
    assert row["num_samples"] == 444 and row["top1"] == reference[0]["top1"] and row["top5"] == reference[0]["top5"]


@pytest.mark.parametrize("how", ["--classes-from-model", "--classes"])
def test_converter_takes_the_models_class_order(tree, tmp_path, reference, how):
    order = tmp_path / "classes.txt"
    order.write_text("\n".join(emojidg.CLASS_NAMES) + "\n")
    out = converted(tree, tmp_path / "ordered", how, MODEL if how == "--classes-from-model" else str(order))
    info = read_dataset_info(out)
    assert [c.replace("_", " ") for c in info.classes] == list(emojidg.CLASS_NAMES)
    (row,) = validate.main([*ARGS, "--data-dir", str(out)])
    assert row["top1"] == reference[0]["top1"]


def test_a_subset_of_the_models_classes_selects_their_rows(tree, tmp_path, reference):
    """Only the base classes' folders: the head keeps those rows, which is validate.py's --classes base."""
    info = read_dataset_info(MINI)
    base = {emojidg.CLASS_NAMES[i].replace(" ", "_") for i in info.class_subset("base")}
    subset = tmp_path / "subset"
    for folder in (tree / "3d").iterdir():
        if folder.name in base:
            (subset / "3d" / folder.name).mkdir(parents=True)
            for f in folder.iterdir():
                (subset / "3d" / folder.name / f.name).write_bytes(f.read_bytes())
    out = converted(subset, tmp_path / "subset_wds")
    (row,) = validate.main([*ARGS, "--data-dir", str(out)])
    assert row["num_samples"] == reference[1]["num_samples"] == 222
    assert row["top1"] == reference[1]["top1"]


def test_class_order_that_misses_a_folder_is_a_clear_error(tree, tmp_path, capsys):
    order = tmp_path / "classes.txt"
    order.write_text("\n".join(emojidg.CLASS_NAMES[1:]) + "\n")
    with pytest.raises(SystemExit) as info:
        convert.main(["domainbed", str(tree), str(tmp_path / "out"), "--classes", str(order)])
    assert info.value.code == 2
    assert "class folders ['ant'] (+0 more) are not in the class order given (443 names" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
