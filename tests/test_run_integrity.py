"""A training run does what it says or says why not: planned steps, resumes, run folders, locks, records.

Each case asserts the exact outcome: exit code, the words of the message, and what is (or is not) on disk.
Preemption (SIGTERM/SIGINT) and save-order cases that need the uninterrupted reference run live in
tests/test_faults.py next to the kill/resume test.
"""
import csv
import errno
import io
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import warnings
import zlib

import pytest
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

import clipood_zoo.fileio
import train
import validate
from clipood_zoo.checkpoint import load_checkpoint
from clipood_zoo.data import create_loader, read_dataset_info
from clipood_zoo.data.synthetic import image_bytes, write_synthetic_dataset
from clipood_zoo.errors import ConfigError
from clipood_zoo.hub import sha256_file
from clipood_zoo.methods import TrainStep
from clipood_zoo.metrics import AccuracyMeter
from clipood_zoo.models.classifier import ClipoodClassifier
from tests.conftest import TINY_ARCH, TINY_CONFIG, train_args
from tests.test_faults import REPO, ENV, exits_with

# 16 base-class training samples of the sources / batch 4: 4 batches (optimizer steps) an epoch


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(root, per_class=4, shard_size=6)
    return root


def _no_heavy_work(monkeypatch):
    """Fail the test if a model is built: the refusals below must come before any heavy work."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were refused")
    monkeypatch.setattr(train, "model_for_dataset", refuse)
    monkeypatch.setattr(validate, "model_for_dataset", refuse)


# ------------------------------------------------------------------------------- planned optimizer steps

def test_resume_with_another_schedule_is_refused_naming_the_argument(shards, tmp_path, capsys):
    train.main(train_args(shards, tmp_path, "--steps", "4"))
    run = tmp_path / "run"
    before = (run / "checkpoint.pt").read_bytes()
    err = exits_with(train.main, train_args(shards, tmp_path, "--steps", "12", "--lr", "2e-3", "--resume", str(run)),
                     capsys)
    assert err.startswith(f"train.py: error: cannot resume {run} with other arguments than its run's: ")
    assert "--steps 4 -> 12; --lr 0.001 -> 0.002." in err and "learning-rate schedule and the weight average" in err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_resume_asking_for_averages_its_checkpoint_never_kept_is_refused(shards, tmp_path, capsys):
    """A checkpoint of an older train.py records no --export-bma-betas: the averages it would need are not in it."""
    train.main(train_args(shards, tmp_path, "--steps", "4", "--method", "clipood"))
    run = tmp_path / "run"
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    del state["run_args"]["--export-bma-betas"], state["bmas"]
    torch.save(state, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    err = exits_with(train.main, train_args(shards, tmp_path, "--steps", "4", "--method", "clipood",
                                            "--export-bma-betas", "0.25", "--resume", str(run)), capsys)
    assert err.startswith(f"train.py: error: {run} was written with no --export-bma-betas; resume with the run's own flags")
    assert (run / "checkpoint.pt").read_bytes() == before


def test_grad_accumulation_longer_than_an_epoch_is_refused_before_training(shards, tmp_path, capsys):
    err = exits_with(train.main, train_args(shards, tmp_path, "--steps", "2", "--grad-accum-steps", "50"), capsys)
    assert ("train.py: error: --grad-accum-steps 50 takes 50 batches per optimizer step, but an epoch of the 'train' "
            "split has 4 batch(es) of 4 (16 samples over 1 process(es)): no optimizer step could be made") in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing trained, nothing exported


def test_an_epoch_short_of_its_planned_steps_stops_before_exporting(shards, tmp_path, capsys, monkeypatch):
    real = train.Run.batches

    def two_batches(self):
        for i, batch in enumerate(real(self)):
            if i == 2:
                return
            yield batch

    monkeypatch.setattr(train.Run, "batches", two_batches)
    err = exits_with(train.main, train_args(shards, tmp_path, "--steps", "6"), capsys)
    assert ("train.py: error: epoch 0 ended at optimizer step 2 but step 4 was planned (4 per epoch, 6 in all): the "
            "training data ran out. Nothing was exported from this epoch") in err
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not (run / train.RESULT_NAME).exists()


def test_without_a_validation_split_no_best_score_is_made_up(shards, tmp_path):
    result = train.main(train_args(shards, tmp_path, "--steps", "6", "--val-split", "missing"))
    assert "best_source_top1" not in result and "source_top1" not in result and result["step"] == 6
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["step"] == 6 and "source_top1" not in config["train_results"]  # the last of 2 evaluations
    assert "The weights at step 6 (no validation split to select on)." in (run / "README.md").read_text()
    assert load_checkpoint(run)["best"] is None
    assert json.loads((run / train.RESULT_NAME).read_text()) == result


# ------------------------------------------------------------------------------------- run folders

def test_seeds_get_their_own_folders_and_a_finished_run_needs_overwrite(shards, tmp_path, capsys):
    def args(seed, *extra):  # the default run folder name
        argv = train_args(shards, tmp_path, "--steps", "2", "--seed", str(seed), *extra)
        i = argv.index("--experiment")
        return argv[:i] + argv[i + 2:]

    first = train.main(args(1))
    second = train.main(args(2))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"{TINY_ARCH}-clipood-sketch-base-seed1", f"{TINY_ARCH}-clipood-sketch-base-seed2"]
    assert first["output"] != second["output"]
    run = tmp_path / names[0]
    exported = (run / "model.safetensors").read_bytes()
    err = exits_with(train.main, args(1), capsys)
    assert (f"train.py: error: the run folder {run} already holds a finished run; pass --overwrite to replace it, or "
            "choose another --seed or --experiment") in err
    assert (run / "model.safetensors").read_bytes() == exported
    (run / train.RESULT_NAME).unlink()  # as if killed before its end: continuing it is --resume's job
    err = exits_with(train.main, args(1), capsys)
    assert f"already holds an unfinished run (continue it with --resume {run})" in err
    (run / "checkpoint-0.pt").write_bytes(b"the replaced run's")
    (run / train.EMA_DIR).mkdir()  # a sub-folder export of the replaced run (--export-ema), which this run lacks
    (run / train.EMA_DIR / "model.safetensors").write_bytes(b"the replaced run's")
    (run / train.bma_dir(0.25)).mkdir()  # and one of its --export-bma-betas averages
    again = train.main(args(1, "--overwrite"))
    assert again["output"] == first["output"] and (run / train.RESULT_NAME).exists()
    assert not (run / "checkpoint-0.pt").exists()  # nothing of the replaced run is left to be mistaken for this one
    assert not (run / train.EMA_DIR).exists() and not (run / "bma_beta0.25").exists()


@pytest.mark.parametrize("experiment", ["../../x", "..", "a/b", ""])
def test_experiment_must_stay_inside_output(shards, tmp_path, capsys, experiment):
    err = exits_with(train.main, train_args(shards, tmp_path / "out", "--steps", "2", "--experiment", experiment), capsys)
    assert f"train.py: error: --experiment must be a folder name (the run folder inside --output), got {experiment!r}" in err
    assert not (tmp_path / "x").exists()


def test_run_folder_symlinked_out_of_output_is_refused(shards, tmp_path, capsys, monkeypatch):
    _no_heavy_work(monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run").symlink_to(elsewhere)
    err = exits_with(train.main, train_args(shards, tmp_path / "out", "--steps", "2"), capsys)
    assert f"the run folder {tmp_path / 'out' / 'run'} is a symlink or leads outside --output" in err
    assert list(elsewhere.iterdir()) == []


def test_planted_symlinks_in_the_run_folder_are_replaced_not_followed(shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victims = {}
    for name in ("args.json", "summary.csv", "config.json", "model.safetensors", train.RESULT_NAME):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("keep me\n")
        (run / name).symlink_to(victims[name])
    victim_dir = tmp_path / "victim-dir"  # a planted link in place of the last-weights sub-folder
    victim_dir.mkdir()
    (run / train.LAST_DIR).symlink_to(victim_dir, target_is_directory=True)
    train.main(train_args(shards, tmp_path, "--steps", "2"))
    for name, victim in victims.items():
        assert victim.read_text() == "keep me\n", name
        assert not (run / name).is_symlink() and (run / name).is_file(), name
    assert list(victim_dir.iterdir()) == []
    assert not (run / train.LAST_DIR).is_symlink() and (run / train.LAST_DIR / "model.safetensors").is_file()
    assert json.loads((run / "args.json").read_text())["steps"] == 2


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_unwritable_output_is_refused_before_any_model_is_built(shards, tmp_path, capsys, monkeypatch, where):
    _no_heavy_work(monkeypatch)
    (tmp_path / "file").write_text("")
    output = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "sub", "read_only": tmp_path}[where]
    if where == "read_only":  # what the kernel answers on a read-only mount (root ignores permission bits)
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(clipood_zoo.fileio.tempfile, "TemporaryFile", read_only)
    err = exits_with(train.main, train_args(shards, output, "--steps", "2"), capsys)
    if where == "file":
        assert f"train.py: error: --output {output} is not a folder; pass a folder" in err
    else:
        reason = "Not a directory" if where == "under_file" else "Read-only file system"
        assert f"train.py: error: --output {output} cannot be written to ({reason}); pass a writable folder" in err


@pytest.mark.parametrize("where", ["dir", "under_file"])
def test_unwritable_results_file_is_refused_before_evaluating(shards, tmp_path, capsys, monkeypatch, where):
    _no_heavy_work(monkeypatch)
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    results = tmp_path / "dir" if where == "dir" else tmp_path / "file" / "r.csv"
    err = exits_with(validate.main, ["--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--data-dir", str(shards),
                                     "--results-file", str(results)], capsys)
    if where == "dir":
        assert f"validate.py: error: --results-file {results} is a folder; pass a file name" in err
    else:
        assert f"validate.py: error: the folder of --results-file {results.parent} is not a folder" in err


def test_a_second_run_in_a_locked_folder_is_refused_and_a_stale_lock_taken_over(shards, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from clipood_zoo.fileio import FolderLock; "
                               f"lock = FolderLock({str(run)!r}).acquire(); print('locked', flush=True); sys.stdin.read()"],
        cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        err = exits_with(train.main, train_args(shards, tmp_path, "--steps", "2"), capsys)
        assert f"train.py: error: {run} is in use by another process (PID {holder.pid}); wait for it to end" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.communicate("", timeout=60)  # the holder ends; its lock file (with its PID) stays behind
    assert (run / ".lock").read_text() == f"{holder.pid}\n"
    result = train.main(train_args(shards, tmp_path, "--steps", "2"))
    assert result["step"] == 2


# ------------------------------------------------------------------------------------------- records

def test_config_records_what_was_loaded_as_the_starting_point(shards, tmp_path):
    train.main(train_args(shards, tmp_path / "a", "--steps", "2"))
    first = tmp_path / "a" / "run"
    cfg = json.loads((first / "config.json").read_text())["pretrained_cfg"]
    assert cfg["initial_weights"] == "random init" and cfg["clip_pretrained"] is None
    train.main(train_args(shards, tmp_path / "b", "--steps", "2", "--checkpoint", str(first)))
    cfg = json.loads((tmp_path / "b" / "run" / "config.json").read_text())["pretrained_cfg"]
    weights = first / "model.safetensors"
    assert cfg["initial_weights"] == [{"file": str(weights.resolve()), "sha256": sha256_file(weights)}]
    assert cfg["clip_pretrained"] is None


def test_summary_has_one_row_per_evaluation_after_a_resume(shards, tmp_path, monkeypatch):
    real_save = train.Run.save

    def die_after_first_evaluation(self):
        if self.next_epoch == 1:
            raise KeyboardInterrupt  # after epoch 0's summary row, before its end-of-epoch checkpoint
        real_save(self)

    monkeypatch.setattr(train.Run, "save", die_after_first_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train.main(train_args(shards, tmp_path, "--steps", "6"))
    monkeypatch.setattr(train.Run, "save", real_save)
    run = tmp_path / "run"
    with open(run / "summary.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0"]
    train.main(train_args(shards, tmp_path, "--steps", "6", "--resume", str(run)))
    with open(run / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert load_file(run / "model.safetensors").keys()


# ------------------------------------------------------------------------------ data that cannot train

def _copy_dataset(src, dst, split=None, relabel=None, empty=False):
    """A copy of a synthetic dataset whose ``split`` shards get every label replaced, or are emptied."""
    shutil.copytree(src, dst)
    if split is None:
        return dst
    info = json.loads((dst / "_info.json").read_text())
    for name in info["splits"][split]["filenames"]:
        if empty:
            (dst / name).write_bytes(b"")
            continue
        samples = list(wds.WebDataset(str(dst / name), shardshuffle=False))
        with wds.TarWriter(str(dst / name)) as w:
            for sample in samples:
                w.write({k: (relabel if k == "cls" else v) for k, v in sample.items() if k not in ("__url__", "__local_path__")})
    return dst


def test_train_split_with_every_label_out_of_range_ends_with_a_bounded_error(shards, tmp_path, capsys):
    data = _copy_dataset(shards, tmp_path / "data", "train", relabel=b"9")
    err = exits_with(train.main, train_args(data, tmp_path, "--steps", "2"), capsys)
    assert ("train.py: error: 1000 samples in a row were skipped without a usable one (skipped so far: "
            "{'bad_label': 1000}; the last: class index 9 out of range [0, 4)") in err
    assert "this data cannot be used" in err and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_train_split_of_empty_shards_ends_with_a_bounded_error(shards, tmp_path, capsys):
    data = _copy_dataset(shards, tmp_path / "data", "train", empty=True)
    err = exits_with(train.main, train_args(data, tmp_path, "--steps", "2"), capsys)
    run = int(re.search(r"train.py: error: (\d+) samples in a row were skipped without a usable one \(skipped so far: "
                        r"\{'missing_from_shard': \1\}", err).group(1))
    assert 1000 <= run < 1000 + 6  # bounded: the shard that crossed the limit holds at most 6 samples


def test_evaluation_data_with_no_usable_sample_is_an_error(shards, tmp_path, capsys):
    data = _copy_dataset(shards, tmp_path / "data", "val", relabel=b"-1")
    err = exits_with(validate.main, ["--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--data-dir", str(data),
                                     "--workers", "0"], capsys)
    assert (f"validate.py: error: {TINY_ARCH}: the evaluation data yielded no usable sample: every one was skipped as "
            "bad") in err


def _sparse_member(name, realsize, data=b"0"):
    """A GNU sparse tar member: ``len(data)`` bytes stored, ``realsize`` bytes (zeros, then data) when extracted."""
    h = bytearray(512)
    for offset, value in ((0, name.encode()), (100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"),
                          (124, b"%011o\0" % len(data)), (136, b"%011o\0" % 0), (156, b"S"), (257, b"ustar  \0"),
                          (386, b"%011o\0" % (realsize - len(data))), (398, b"%011o\0" % len(data)),
                          (483, b"%011o\0" % realsize), (148, b" " * 8)):
        h[offset:offset + len(value)] = value
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + data.ljust(512, b"\0")


def _png_header_only(width, height):
    """A PNG whose header says ``width`` x ``height`` (grayscale) over a few bytes of pixel data."""
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + body)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_oversized_members_and_images_are_skipped_unread_and_counted(shards, tmp_path, caplog):
    data = _copy_dataset(shards, tmp_path / "data")
    meta = json.dumps({"domain": "art", "classname": "cat"}).encode()
    members = io.BytesIO()
    with tarfile.open(fileobj=members, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, body in (("sparse.json", meta), ("sparse.png", image_bytes((0, 0, 0))),
                           ("bomb.cls", b"0"), ("bomb.json", meta), ("bomb.png", _png_header_only(13000, 13000))):
            member = tarfile.TarInfo(name)
            member.size = len(body)
            tar.addfile(member, io.BytesIO(body))
    shard = _sparse_member("sparse.cls", 3 * 2**30) + members.getvalue()
    (data / "val-big.tar").write_bytes(shard)
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:  # a 3 GiB member (when read) in a shard of 11 KB
        assert tar.getmember("sparse.cls").size == 3 * 2**30 and len(shard) < 12_000
    raw = json.loads((data / "_info.json").read_text())
    val = raw["splits"]["val"]
    val["filenames"].append("val-big.tar"), val["shard_lengths"].append(2)
    val.pop("domain_class_counts"), val.pop("shard_domains")
    val["num_samples"] += 2
    (data / "_info.json").write_text(json.dumps(raw))
    loader = create_loader(data, "val", transform=transforms.ToTensor(), batch_size=8, is_training=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = sum(len(target) for _, target, _ in loader)
    assert n == val["num_samples"] - 2
    assert loader.skipped.as_dict()["too_large"] == 2 and loader.skipped.total == 2
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "tar member sparse.cls is 3221225472 bytes, over the limit of 67108864 (not read" in caplog.text
    assert "image of 13000x13000 pixels is over the limit of 67108864 (not decoded" in caplog.text


def test_caps_are_train_flags(shards, tmp_path, capsys):
    err = exits_with(train.main, train_args(shards, tmp_path, "--steps", "2", "--max-image-pixels", "10"), capsys)
    assert "1000 samples in a row were skipped without a usable one (skipped so far: {'too_large': 1000}" in err
    assert "image of 8x8 pixels is over the limit of 10 (not decoded; raise max_image_pixels" in err
    err = exits_with(train.main, train_args(shards, tmp_path, "--steps", "2", "--max-member-bytes", "0"), capsys)
    assert "train.py: error: --max-member-bytes must be > 0, got 0" in err


def test_caps_are_validate_flags(shards, capsys):
    argv = ["--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--data-dir", str(shards), "--workers", "0"]
    err = exits_with(validate.main, argv + ["--max-image-pixels", "10"], capsys)
    assert "validate.py: error: " in err and "the evaluation data yielded no usable sample" in err
    err = exits_with(validate.main, argv + ["--max-member-bytes", "0"], capsys)
    assert "validate.py: error: --max-member-bytes must be > 0, got 0" in err
    (row,) = validate.main(argv + ["--max-image-pixels", "64"])  # the 8x8 images fit: all of them scored
    assert row["num_samples"] == read_dataset_info(shards).split("val").num_samples


# ------------------------------------------------------------------------------ metrics and classes

def test_nonfinite_logits_are_never_correct_and_are_counted():
    torch.manual_seed(0)
    logits = torch.randn(12, 6)
    target = torch.randint(0, 6, (12,))
    logits[[1, 4]] = float("nan")
    logits[7, 2] = float("inf")
    logits[9, 0] = -float("inf")
    meter = AccuracyMeter(base_classes=[0, 1, 2], new_classes=[3, 4, 5])
    meter.update(logits, target)
    out = meter.compute()
    finite = [i for i in range(12) if i not in (1, 4, 7, 9)]  # independent count, one sample at a time
    top1 = sum(int(logits[i].argmax() == target[i]) for i in finite)
    top5 = sum(int(target[i] in logits[i].topk(5).indices) for i in finite)
    base = [i for i in range(12) if target[i] < 3]
    base_top1 = sum(int(i in finite and logits[i, :3].argmax() == target[i]) for i in base)
    assert out["nonfinite_logits"] == 4 and out["num_samples"] == 12
    assert out["top1"] == round(100 * top1 / 12, 3) and out["top5"] == round(100 * top5 / 12, 3)
    assert out["base_top1"] == round(100 * base_top1 / len(base), 3)
    meter = AccuracyMeter()
    meter.update(torch.full((5, 6), float("nan")), torch.arange(5))
    assert meter.compute()["top5"] == 0.0  # topk ranks NaN first: unguarded, this was 100%


def test_validate_reports_samples_with_nonfinite_logits(shards, monkeypatch, caplog):
    monkeypatch.setattr(ClipoodClassifier, "forward_head", lambda self, x, pre_logits=False: torch.full(
        (x.shape[0], self.num_classes), float("nan")))
    (row,) = validate.main(["--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--data-dir", str(shards),
                            "--workers", "0"])
    assert row["nonfinite_logits"] == row["num_samples"] == 48 and row["top1"] == row["top5"] == 0.0
    assert f"{TINY_ARCH}: 48 of 48 samples had NaN/inf logits (counted as wrong)" in caplog.text


@pytest.mark.parametrize("names,templates,message", [
    (["cat"], [], "set_classes needs at least one template"),
    (["cat"], ["a photo of a {1}."], "template 'a photo of a {1}.' is not a format string with one {} for the class "
                                     "name (IndexError: "),
    (["cat"], ["a {name}."], "template 'a {name}.' is not a format string with one {} for the class name (KeyError: "),
    (["cat"], ["a photo."], "template 'a photo.' has no {} for the class name"),
    (["cat"], ["a {}.", lambda c: c], "templates must be all format strings or all callables"),
    (["cat"], [3], "template 3 (int) is neither a format string nor a callable"),
    ([1, 2], None, "class name 0 is 1 (int); every class name must be a non-empty string"),
    (["cat", None], None, "class name 1 is None (NoneType)"),
    (["cat", " "], None, "class name 1 is ' ' (str)"),
    ("cat", None, "class_names must be a list of names, got the string 'cat'"),
    ([], None, "set_classes needs at least one class name"),
])
def test_set_classes_refuses_bad_names_and_templates(tiny_model, names, templates, message):
    before = tiny_model.head.weight.clone()
    with pytest.raises(ConfigError) as info:
        tiny_model.set_classes(names, templates)
    assert message in str(info.value)
    assert torch.equal(tiny_model.head.weight, before)


def test_an_empty_batch_is_a_clear_error(tiny_model):
    with pytest.raises(ConfigError, match=r"an empty batch \(images of shape \(0, 3, 32, 32\)\): pass at least one image"):
        tiny_model(torch.zeros(0, 3, 32, 32))


# ------------------------------------------------------------------------------------------ disk use

def test_a_finished_run_keeps_its_export_and_drops_the_resume_checkpoint(shards, tmp_path):
    argv = [a for a in train_args(shards, tmp_path, "--steps", "2") if a != "--keep-checkpoint"]
    train.main(argv)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".lock", "README.md", "args.json", "config.json", "last", "model.safetensors", train.RESULT_NAME,
        "summary.csv"]
    assert sorted(p.name for p in (tmp_path / "run" / "last").iterdir()) == ["README.md", "config.json",
                                                                          "model.safetensors"]


@pytest.mark.parametrize("validation", [True, False])
def test_checkpoint_hist_keeps_the_best_evaluated_checkpoints(shards, tmp_path, validation):
    extra = [] if validation else ["--val-split", "missing"]
    train.main(train_args(shards, tmp_path, "--steps", "8", "--checkpoint-hist", "1", *extra))
    run = tmp_path / "run"
    with open(run / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    ranked = sorted(rows, key=lambda r: (float(r["eval_source_top1"]) if validation else 0.0, int(r["epoch"])),
                    reverse=True)
    kept = sorted(int(r["epoch"]) for r in ranked[:1])
    assert sorted(p.name for p in run.glob("checkpoint-*.pt")) == [f"checkpoint-{e}.pt" for e in kept]
    for epoch in kept:  # each is the state evaluated at the end of that epoch, resumable
        state = load_checkpoint(run / f"checkpoint-{epoch}.pt")
        assert (state["step"], state["epoch"]) == (4 * (epoch + 1), epoch)


class _Clock:
    """A monotonic clock that moves only when told: 1 s per training forward, 10 s per evaluation."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


def test_logged_images_per_second_are_averaged_over_the_run(shards, tmp_path, monkeypatch, caplog):
    clock = _Clock()
    real_forward, real_evaluate = TrainStep.forward, train.evaluate

    def forward(self, images, target):
        clock.now += 1.0
        return real_forward(self, images, target)

    def evaluate(*args, **kwargs):
        clock.now += 10.0
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "time", clock)
    monkeypatch.setattr(TrainStep, "forward", forward)
    monkeypatch.setattr(train, "evaluate", evaluate)
    caplog.set_level(logging.INFO, logger="train")
    train.main(train_args(shards, tmp_path, "--steps", "6", "--val-split", "missing"))
    rates = [float(r) for r in re.findall(r"Train: \d+ \[\d/6 .* ([\d.]+) img/s", caplog.text)]
    # batch 4: 4 img/s while training; after epoch 0's evaluation (10 s) 20 images in 15 s, then 24 in 16 s,
    # not a rate restarted at the epoch (4.0)
    assert rates == [4.0, 4.0, 4.0, 4.0, round(20 / 15, 1), 24 / 16]


def test_train_num_samples_sets_the_epoch_and_is_a_defining_argument(shards, tmp_path, capsys):
    result = train.main(train_args(shards, tmp_path, "--epochs", "2", "--train-num-samples", "8"))
    assert result["step"] == 4  # 8 samples / batch 4 = 2 optimizer steps an epoch, 2 epochs
    with open(tmp_path / "run" / "summary.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    err = exits_with(train.main, train_args(shards, tmp_path, "--epochs", "2", "--train-num-samples", "12",
                                            "--resume", str(tmp_path / "run")), capsys)
    assert "--train-num-samples 8 -> 12" in err
