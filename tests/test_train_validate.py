"""train.py and validate.py end to end on shards written here: export/reload, exact resume, DDP, errors."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file
from timm.data import create_transform, resolve_data_config

import train
import validate
from tests.conftest import TINY_CONFIG, train_args
from clipood_zoo import load_weights
from clipood_zoo.data import count_samples
from clipood_zoo.data.synthetic import write_synthetic_dataset
from clipood_zoo.models import build_classifier

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(root, per_class=8, shard_size=6)
    return root


def test_train_exports_bma_weights_that_validate_scores_like_an_independent_count(shards, tmp_path):
    result = train.main(train_args(shards, tmp_path, "--steps", "4"))
    run_dir = tmp_path / "run"
    assert {"model.safetensors", "config.json", "README.md", "checkpoint.pt", "summary.csv"} <= set(os.listdir(run_dir))
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    exported = load_file(run_dir / "model.safetensors")
    for key, value in checkpoint["average"].items():  # the export is the BMA average, not the last weights
        torch.testing.assert_close(exported[key], value)
    assert not torch.equal(checkpoint["average"]["visual.conv1.weight"], checkpoint["model"]["visual.conv1.weight"])
    card = (run_dir / "README.md").read_text()
    assert "train.py" in card and "source_top1" in card
    assert result["step"] == 4

    rows = validate.main(["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--checkpoint", str(run_dir),
                          "--data-dir", str(shards), "--workers", "0", "--results-file", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == rows

    # independent count: read every shard with plain webdataset and classify one image at a time
    model = build_classifier("clipood-test-tiny", num_classes=4)
    load_weights(model, run_dir)
    model.pretrained_cfg = {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0,
                            "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
    transform = create_transform(**resolve_data_config({}, model=model))
    info = json.loads((shards / "_info.json").read_text())
    correct, total, per_domain = 0, 0, {}
    model.eval()
    for shard in info["splits"]["val"]["filenames"]:
        for sample in wds.WebDataset(str(shards / shard), shardshuffle=False):
            label = int(sample["cls"])
            image = Image.open(__import__("io").BytesIO(sample["png"])).convert("RGB")
            with torch.no_grad():
                pred = model(transform(image)[None]).argmax(1).item()
            domain = json.loads(sample["json"])["domain"]
            hit = int(pred == label)
            correct, total = correct + hit, total + 1
            c, n = per_domain.get(domain, (0, 0))
            per_domain[domain] = (c + hit, n + 1)
    (row,) = rows
    assert row["num_samples"] == total
    assert row["top1"] == pytest.approx(100 * correct / total, abs=1e-3)
    for domain, (c, n) in per_domain.items():
        assert row[f"top1_{domain}"] == pytest.approx(100 * c / n, abs=1e-3)
    assert row["hm"] == pytest.approx(2 * row["base_top1"] * row["new_top1"] / (row["base_top1"] + row["new_top1"]),
                                      abs=1e-2)
    for field in validate.TIMM_FIELDS:
        assert field in row


def test_resume_mid_epoch_ends_with_the_uninterrupted_weights(shards, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train.main(train_args(shards, straight, "--steps", "9", "--checkpoint-interval", "3"))

    killed = tmp_path / "killed"
    real_save = train.Run.save

    def save_then_die(self):
        real_save(self)
        if self.step == 5:
            raise KeyboardInterrupt  # the process dies right after the step-5 checkpoint

    monkeypatch.setattr(train.Run, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.main(train_args(shards, killed, "--steps", "9", "--checkpoint-interval", "5"))
    monkeypatch.setattr(train.Run, "save", real_save)
    first = torch.load(killed / "run" / "checkpoint.pt", weights_only=True)
    updates_per_epoch = count_samples(shards, "train", ["art", "photo"], "base") // 4
    assert first["step"] == 5 and 5 % updates_per_epoch != 0  # mid-epoch: the resume must replay batches
    train.main(train_args(shards, killed, "--steps", "9", "--resume", str(killed / "run" / "checkpoint.pt")))

    a = torch.load(straight / "run" / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "run" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 9
    for part in ("model", "average"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert load_file(straight / "run" / "model.safetensors").keys() == load_file(killed / "run" / "model.safetensors").keys()


def test_two_process_ddp_with_gloo_ends_with_identical_weights_and_logs_the_mean_loss_once(shards, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(REPO / "train.py"), *train_args(shards, tmp_path, "--steps", "3", "--train-classes", "all",
                                               "--log-level", "DEBUG")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (digests,) = re.findall(r"final weights digest per rank: (.*)", proc.stderr)
    assert len(digests.split()) == 2 and len(set(digests.split())) == 1
    assert "2 processes" in proc.stderr
    # one "Train:" line per logged step, from rank 0, with the mean of the ranks' own losses (logged at DEBUG)
    logged = re.findall(r"\[rank (\d)\]: Train: \d+ \[(\d+)/3 .*Loss: ([\d.]+)", proc.stderr)
    assert [(rank, int(step)) for rank, step, _ in logged] == [("0", 1), ("0", 2), ("0", 3)]
    per_rank: dict = {}
    for rank, step, loss in re.findall(r"rank (\d) loss at step (\d+): ([\d.]+)", proc.stderr):
        per_rank.setdefault(int(step), {})[rank] = float(loss)
    for _, step, loss in logged:
        assert set(per_rank[int(step)]) == {"0", "1"}
        assert float(loss) == pytest.approx(sum(per_rank[int(step)].values()) / 2, abs=1e-4)
    assert per_rank[1]["0"] != per_rank[1]["1"]  # the ranks saw different batches: the mean is not one rank's loss


@pytest.mark.parametrize("extra,message", [
    (["--holdout", "watercolour"], "its domains are ['art', 'photo', 'sketch']"),
    (["-b", "0"], "--batch-size must be > 0"),
    (["--method", "magic"], "unknown --method 'magic'"),
    (["--bma-beta", "-1"], "--bma-beta"),
    (["--fsdp", "--export-ema", "0.5"], "--fsdp works with BMA or the last weights"),
    (["--fsdp"], "--fsdp shards the model over processes: start the run with torchrun"),
])
def test_bad_arguments_fail_early_with_a_clear_message(shards, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        train.main(train_args(shards, tmp_path, "--steps", "2", *extra))
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_validate_base_classes_only_and_wildcards(shards, tmp_path, capsys):
    with pytest.raises(SystemExit):  # the toy family classifies other classes and has no text tower
        validate.main(["--model", "testzoo_tiny_toy_a", "--data-dir", str(shards), "--workers", "0"])
    assert "classifies 4 classes" in capsys.readouterr().err
    rows = validate.main(["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--data-dir", str(shards),
                          "--workers", "0", "--classes", "base", "--results-file", str(tmp_path / "r.csv")])
    info = json.loads((shards / "_info.json").read_text())
    expected = sum(n for row in info["splits"]["val"]["domain_class_counts"] for c, n in enumerate(row)
                   if c in info["base_classes"])
    assert rows[0]["num_samples"] == expected
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert header[:9] == list(validate.TIMM_FIELDS)


@pytest.mark.parametrize("extra,average", [(["--method", "erm"], None), (["--model-ema", "--model-ema-decay", "0.5"],
                                                                          "ModelEmaV3")])
def test_erm_exports_last_weights_and_ema_is_an_option(shards, tmp_path, extra, average):
    train.main(train_args(shards, tmp_path, "--steps", "3", *extra))
    run_dir = tmp_path / "run"
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    exported = load_file(run_dir / "model.safetensors")
    recipe = json.loads((run_dir / "config.json").read_text())["pretrained_cfg"]["recipe"]
    assert recipe["weight_average"] == (average or "last")
    source = checkpoint["model"] if average is None else checkpoint["average"]
    for key, value in source.items():
        torch.testing.assert_close(exported[key], value)
    if average is not None:
        assert not torch.equal(checkpoint["average"]["visual.conv1.weight"], checkpoint["model"]["visual.conv1.weight"])


def test_amp_channels_last_compile_and_grad_accumulation_run_on_cpu(shards, tmp_path):
    """The GPU flags take the same code path on CPU (bf16 autocast; the 'eager' compile backend keeps it fast)."""
    result = train.main(train_args(shards, tmp_path, "--steps", "2", "--amp", "--amp-dtype", "bfloat16",
                                   "--channels-last", "--torchcompile", "eager", "--grad-accum-steps", "2"))
    assert result["step"] == 2
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["model"]["visual.conv1.weight"].dtype == torch.float32  # autocast, not a bf16 model
    assert all(torch.isfinite(v).all() for v in checkpoint["average"].values() if v.is_floating_point())
    rows = validate.main(["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--checkpoint",
                          str(tmp_path / "run"), "--data-dir", str(shards), "--workers", "0", "--amp",
                          "--channels-last", "--torchcompile", "eager"])
    assert rows[0]["num_samples"] > 0


def test_validate_scores_declared_eval_classes_only(tmp_path, monkeypatch):
    """A dataset declaring ``eval_classes`` (ImageNet-A/-R style) is scored with the argmax over those classes,
    and validate.py parses its ``_info.json`` once: the loaded DatasetInfo is what the loader gets."""
    from clipood_zoo import save_pretrained
    from clipood_zoo.data import info as info_module
    from clipood_zoo.data.protocols._common import add_info_fields

    data = tmp_path / "data"
    write_synthetic_dataset(data, classes=("cat", "dog", "fish", "owl", "bee", "elk"), per_class=3,
                            splits=("val",), with_base_new=False)
    subset = [1, 3, 4]
    add_info_fields(data, eval_classes=subset)
    model = build_classifier("clipood-test-tiny", class_names=["cat", "dog", "fish", "owl", "bee", "elk"])
    model.pretrained_cfg = {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0,
                            "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
    save_pretrained(model, tmp_path / "ckpt")
    parsed = []
    real_parse = info_module.parse_dataset_info
    monkeypatch.setattr(info_module, "parse_dataset_info", lambda *a, **k: parsed.append(a[1]) or real_parse(*a, **k))
    (row,) = validate.main(["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--checkpoint",
                            str(tmp_path / "ckpt"), "--data-dir", str(data), "--workers", "0"])
    assert parsed == [data]
    transform = create_transform(**resolve_data_config({}, model=model))
    info = json.loads((data / "_info.json").read_text())
    correct = total = 0
    model.eval()
    for shard in info["splits"]["val"]["filenames"]:
        for sample in wds.WebDataset(str(data / shard), shardshuffle=False):
            label = int(sample["cls"])
            if label not in subset:
                continue
            image = Image.open(__import__("io").BytesIO(sample["png"])).convert("RGB")
            with torch.no_grad():
                logits = model(transform(image)[None])[0]
            correct += subset[int(logits[subset].argmax())] == label
            total += 1
    assert row["eval_classes"] == 3 and row["num_samples"] == total
    assert row["top1"] == pytest.approx(100 * correct / total, abs=1e-3)


def test_train_scores_the_held_out_domain_over_declared_eval_classes(tmp_path):
    """train.py's held-out evaluation reads ``eval_classes`` from the DatasetInfo, as validate.py does: only
    those classes' samples are scored (2 of the 4 classes here), not every held-out sample."""
    from clipood_zoo.data.protocols._common import add_info_fields

    data = tmp_path / "data"
    write_synthetic_dataset(data, per_class=2, shard_size=4)
    add_info_fields(data, eval_classes=[1, 3])
    result = train.main(train_args(data, tmp_path, "--steps", "1", "--train-classes", "all"))
    assert result["target_num_samples"] == 2 * 2  # sketch, val split: 2 classes x 2 images
    assert "target_hm" not in result  # a class subset is scored instead of the base/new split
