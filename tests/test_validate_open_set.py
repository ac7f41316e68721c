"""validate.py --ood-data / --ood-classes new against scores computed image by image from the raw shards."""
import io
import json

import pytest
import torch
import webdataset as wds
from PIL import Image
from timm.data import create_transform, resolve_data_config

import validate
from clipood_zoo import load_weights, save_pretrained
from clipood_zoo.data.synthetic import write_synthetic_dataset
from clipood_zoo.models import build_classifier
from tests.conftest import TINY_CONFIG
from tests.test_open_set_metrics import brute_auroc, brute_fpr95

CFG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0,
       "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("openset")
    write_synthetic_dataset(root / "in", per_class=3, shard_size=7)
    write_synthetic_dataset(root / "out", classes=("bird", "cow", "eel"), domains=("toy",), per_class=4, shard_size=7)
    model = build_classifier("clipood-test-tiny", class_names=["cat", "dog", "fish", "owl"])
    model.pretrained_cfg = dict(CFG)
    save_pretrained(model, root / "ckpt", model_name="clipood-test-tiny")
    return root


def hand_scores(root, data, checkpoint, keep_classes, columns):
    """(MCM, energy) of every val sample of ``keep_classes``, one image at a time, logits over ``columns``."""
    model = build_classifier("clipood-test-tiny", num_classes=4)
    load_weights(model, checkpoint)
    model.eval()
    transform = create_transform(**resolve_data_config({}, model=type("M", (), {"pretrained_cfg": CFG})()))
    info = json.loads((data / "_info.json").read_text())
    mcm, energy = [], []
    for shard in info["splits"]["val"]["filenames"]:
        for sample in wds.WebDataset(str(data / shard), shardshuffle=False):
            if keep_classes is not None and int(sample["cls"]) not in keep_classes:
                continue
            image = Image.open(io.BytesIO(sample["png"])).convert("RGB")
            with torch.no_grad():
                logits = model(transform(image)[None])[0, columns].double()
            mcm.append((logits.exp().max() / logits.exp().sum()).item())
            energy.append(logits.exp().sum().log().item())
    return torch.tensor(mcm), torch.tensor(energy)


def run_validate(root, *extra):
    (row,) = validate.main(["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--checkpoint",
                            str(root / "ckpt"), "--data-dir", str(root / "in"), "--workers", "0", *extra])
    return row


def check(row, in_scores, out_scores):
    for i, name in enumerate(("mcm", "energy")):
        assert row[f"ood_auroc_{name}"] == pytest.approx(100 * brute_auroc(in_scores[i], out_scores[i]), abs=1e-3)
        assert row[f"ood_fpr95_{name}"] == pytest.approx(100 * brute_fpr95(in_scores[i], out_scores[i]), abs=1e-3)
    assert row["ood_samples"] == len(out_scores[0])


def test_ood_data_scores_the_other_dataset_as_the_open_set(setup):
    row = run_validate(setup, "--ood-data", str(setup / "out"))
    everything = [0, 1, 2, 3]
    in_scores = hand_scores(setup, setup / "in", setup / "ckpt", None, everything)
    out_scores = hand_scores(setup, setup / "out", setup / "ckpt", None, everything)
    check(row, in_scores, out_scores)
    assert row["num_samples"] == len(in_scores[0]) == 3 * 4 * 3 and row["ood_samples"] == 4 * 3
    assert "top1" in row and row["ood"] == str(setup / "out")


def test_ood_classes_new_scores_both_sides_over_the_base_classes(setup):
    row = run_validate(setup, "--ood-classes", "new")
    in_scores = hand_scores(setup, setup / "in", setup / "ckpt", {0, 1}, [0, 1])
    out_scores = hand_scores(setup, setup / "in", setup / "ckpt", {2, 3}, [0, 1])
    check(row, in_scores, out_scores)
    assert row["classes"] == "all" and row["ood"] == "new classes"
    assert row["num_samples"] == 3 * 4 * 3 and {"base_top1", "new_top1", "hm"} <= set(row)  # accuracy: every class
    assert row == {**run_validate(setup), **{k: row[k] for k in row if k.startswith("ood")}}  # the same pass


def test_open_set_errors_exit_2_with_the_reason(setup, capsys):
    with pytest.raises(SystemExit) as exc:
        run_validate(setup, "--ood-classes", "new", "--classes", "new")
    assert exc.value.code == 2
    assert "validate.py: error: --ood-classes new treats the new classes as the open set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_validate(setup, "--ood-classes", "new", "--classes", "base")
    assert exc.value.code == 2 and "drop --classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_validate(setup, "--ood-classes", "new", "--ood-data", str(setup / "out"))
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
