"""validate.py scoring several splits and several weights in one call: the same rows and predictions as one
call per split / per weights, keyed as the module docstring says."""
import json

import pytest

import validate
from clipood_zoo import save_pretrained
from clipood_zoo.models import build_classifier
from tests.conftest import TINY_CONFIG
from tests.test_validate_open_set import CFG
from tests.test_validate_open_set import setup  # noqa: F401  (the fixture)


def call(root, tmp_path, tag, *extra):
    """validate.py's rows and predictions file for one call."""
    preds = tmp_path / f"{tag}.json"
    rows = validate.main(["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--data-dir", str(root / "in"),
                          "--workers", "0", "--ood-classes", "new", "--predictions-file", str(preds), *extra])
    return rows, json.loads(preds.read_text())


@pytest.fixture(scope="module")
def second_checkpoint(setup):
    model = build_classifier("clipood-test-tiny", class_names=["cat", "dog", "fish", "owl"])
    model.pretrained_cfg = dict(CFG)
    save_pretrained(model, setup / "ckpt2", model_name="clipood-test-tiny")
    return setup / "ckpt2"


def test_two_splits_in_one_call_equal_two_single_split_calls(setup, tmp_path):
    ckpt = ["--checkpoint", str(setup / "ckpt")]
    both, both_preds = call(setup, tmp_path, "both", *ckpt, "--split", "val", "train")
    (val,), val_preds = call(setup, tmp_path, "val", *ckpt, "--split", "val")
    (train,), train_preds = call(setup, tmp_path, "train", *ckpt, "--split", "train")
    assert both == [val, train] and [r["split"] for r in both] == ["val", "train"]
    assert val["num_samples"] == 36 and "ood_auroc_mcm" in train
    assert val_preds["split"] == "val" and list(val_preds["models"]) == ["clipood-test-tiny"]  # single-split format
    assert both_preds["split"] == ["val", "train"]
    assert both_preds["models"] == {"clipood-test-tiny|split=val": val_preds["models"]["clipood-test-tiny"],
                                    "clipood-test-tiny|split=train": train_preds["models"]["clipood-test-tiny"]}
    assert val_preds["models"]["clipood-test-tiny"]["split"] == "val"


def test_named_weights_in_one_call_equal_one_call_per_checkpoint(setup, second_checkpoint, tmp_path):
    rows, preds = call(setup, tmp_path, "both", "--checkpoint", str(setup / "ckpt"), str(second_checkpoint),
                       "--weights-names", "selected", "last", "--split", "val")
    (first,), first_preds = call(setup, tmp_path, "a", "--checkpoint", str(setup / "ckpt"))
    (second,), second_preds = call(setup, tmp_path, "b", "--checkpoint", str(second_checkpoint))
    assert rows == [{**first, "weights": "selected"}, {**second, "weights": "last"}]
    assert first["top1"] != second["top1"] or first["ood_auroc_mcm"] != second["ood_auroc_mcm"]  # two models
    assert preds["models"] == {"clipood-test-tiny|weights=selected": {**first_preds["models"]["clipood-test-tiny"],
                                                                       "weights": "selected"},
                               "clipood-test-tiny|weights=last": {**second_preds["models"]["clipood-test-tiny"],
                                                                   "weights": "last"}}


@pytest.mark.parametrize("extra, message", [
    (["--split", "val", "test"], "--split test: {info} has no such split; its splits are train, val."),
    (["--checkpoint", "{ckpt}", "--weights-names", "a", "b"], "--weights-names gives 2 name(s) for 1 set(s)"),
    (["--checkpoint", "{ckpt}", "{ckpt}", "--weights-names", "a", "a"], "--weights-names must differ"),
])
def test_bad_splits_and_weights_names_exit_2_naming_the_problem(setup, tmp_path, capsys, extra, message):
    extra = [e.format(ckpt=setup / "ckpt") for e in extra]
    with pytest.raises(SystemExit) as exc:
        call(setup, tmp_path, "x", *extra)
    assert exc.value.code == 2
    assert message.format(info=setup / "in" / "_info.json") in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
