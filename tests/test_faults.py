"""Faults: bad weights, bad arguments, bad data, killed runs, NaN losses, concurrent readers.

Each case asserts the exact outcome: the error type and the words of its message (the input and the fix),
the skip counts, the exit code, or the weights. Cases already covered elsewhere are not repeated here:
tests/test_hub.py (plain pickle refused/allowed, truncated safetensors, wrong shapes, sha256 of a cfg file,
missing weights/ file, hub offline), tests/test_train_validate.py (unknown holdout/method, -b 0,
--bma-beta -1, an in-process interruption right after a save), tests/test_data_pipeline.py (the loader's
skip reasons), tests/test_data_info.py (_info.json fields) and tests/test_bma.py (ModelBma arguments).
"""
import errno
import io
import json
import logging
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import webdataset as wds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

import clipood_zoo
import clipood_zoo.checkpoint
import train
import validate
from tests.conftest import TINY_CONFIG, train_args
from clipood_zoo import create_model, save_pretrained
from clipood_zoo.checkpoint import load_checkpoint
from clipood_zoo.data.info import parse_dataset_info, read_dataset_info
from clipood_zoo.data.pipeline import BadSample, SkipCounter, _decode, _SkipPolicy
from clipood_zoo.data.synthetic import image_bytes, write_synthetic_dataset
from clipood_zoo.errors import (DatasetError, UnsafeWeightsError, WeightsError,
                                WeightsIntegrityError, WeightsMismatchError)
from clipood_zoo.fileio import atomic_write
from clipood_zoo.methods import TrainStep
from tests import tiny_family

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TRAIN_ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the threads of the in-process reference run: same float sums
STEPS = 6  # 16 base-class training samples of the sources / batch 4 = 4 steps an epoch: two epochs


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(root, per_class=4, shard_size=6)
    return root


def exits_with(main, argv, capsys, code=2):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == code
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- weights

class Payload:
    """Unpickling this runs a shell command that creates ``marker``; it must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name,writer", [
    ("evil.pth", lambda obj, path: path.write_bytes(pickle.dumps(obj))),  # a raw pickle
    ("evil.bin", lambda obj, path: torch.save(obj, path)),  # torch's zip container
    ("evil.safetensors", lambda obj, path: torch.save(obj, path)),  # a pickle under a safetensors name
])
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_malicious_pickle_is_never_executed(tmp_path, name, writer, allow_pickle):
    marker = tmp_path / "payload-ran"
    path = tmp_path / name
    writer({"visual.conv1.weight": Payload(marker)}, path)
    with pytest.raises(UnsafeWeightsError) as info:
        create_model("testzoo_tiny_toy_a", checkpoint_path=path, allow_pickle=allow_pickle)
    message = str(info.value)
    assert str(path) in message
    if name.endswith(".safetensors"):
        assert "holds a pickle" in message and "allow_pickle=True" in message
    elif allow_pickle:
        assert "weights_only=True" in message and "never unpickled" in message
    else:
        assert "allow_pickle=True" in message
    assert not marker.exists()


def test_malicious_checkpoint_is_not_resumed(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"model": Payload(marker), "step": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(WeightsError, match=r"checkpoint.pt is not a readable train.py checkpoint.*start again"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_empty_and_foreign_files(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty.safetensors is not a readable safetensors file.*it is empty"):
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path / "empty.safetensors")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UnsafeWeightsError, match=r"empty.pth cannot be read.*empty or truncated"):
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path / "empty.pth", allow_pickle=True)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=r"list.pth holds a list, not a state dict"):
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path / "list.pth", allow_pickle=True)
    state = create_model("testzoo_tiny_toy_a").state_dict()
    save_file({**state, "visual.conv1.weight": state["visual.conv1.weight"].to(torch.int32)}, tmp_path / "int.st")
    with pytest.raises(WeightsMismatchError, match=r"visual.conv1.weight: file dtype torch.int32 vs model torch.float32"):
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path / "int.st")
    save_file({**state, "visual.proj": torch.full_like(state["visual.proj"], float("nan"))}, tmp_path / "nan.st")
    with pytest.raises(WeightsError, match=r"nan.st holds NaN/inf values in 1 tensor\(s\) \(visual.proj\)"):
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path / "nan.st")


@pytest.mark.parametrize("config,problem", [
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    (b"[1, 2]", "is not a save_pretrained() config"),
    (b'{"pretrained_cfg": "cat"}', "is not a save_pretrained() config"),
    (b'{"pretrained_cfg": {"label_names": 4}}', "is not a save_pretrained() config"),
])
def test_config_json_that_is_not_a_config(tmp_path, config, problem):
    save_pretrained(create_model("testzoo_tiny_toy_a"), tmp_path)
    (tmp_path / "config.json").write_bytes(config)
    with pytest.raises(WeightsError) as info:
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path)
    assert f"{tmp_path / 'config.json'} {problem}" in str(info.value)
    assert "re-export it with save_pretrained()" in str(info.value)


def test_flipped_bit_in_a_saved_folder_fails_its_recorded_sha256(tmp_path):
    path = save_pretrained(create_model("testzoo_tiny_toy_a"), tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())["sha256"]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError) as info:
        create_model("testzoo_tiny_toy_a", checkpoint_path=tmp_path)
    assert recorded in str(info.value) and str(path) in str(info.value)


def test_validate_refuses_a_pickle_checkpoint(shards, tmp_path, capsys):
    torch.save({}, tmp_path / "model.pth")
    err = exits_with(validate.main, ["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--checkpoint",
                                     str(tmp_path / "model.pth"), "--data-dir", str(shards)], capsys)
    assert f"{tmp_path / 'model.pth'} is a pickle" in err and "allow_pickle=True" in err


# ------------------------------------------------------------------------------------ names and arguments

def _empty_base(root):
    write_synthetic_dataset(root, per_class=1, splits=("train", "val"))
    raw = json.loads((root / "_info.json").read_text())
    raw.update(base_classes=[], new_classes=[0, 1, 2, 3])
    (root / "_info.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("extra,message", [
    (["--model", "clipood-test-tinyy"], "Unknown open_clip architecture 'clipood-test-tinyy'; closest: clipood-test-tiny"),
    (["--steps", "0"], "--steps must be > 0, got 0"),
    (["--lr", "nan"], "--lr must be > 0, got nan"),
    (["--bma-beta", "nan"], "--bma-beta must be > 0 (or 0 to disable BMA), got nan"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--margin-lambda", "-1"], "--margin-lambda must be >= 0, got -1.0"),
    (["--amp", "--amp-dtype", "float16", "--temperature", "1e-5"], "beyond float16's 65504"),
    (["EMPTY_BASE"], "has an empty 'base_classes' list"),
])
def test_train_refuses_bad_arguments_with_exit_code_2(shards, tmp_path, capsys, extra, message):
    data = shards
    if extra == ["EMPTY_BASE"]:
        data, extra = tmp_path / "data", []
        _empty_base(data)
    err = exits_with(train.main, train_args(data, tmp_path, "--steps", "2", *extra), capsys)
    assert err.startswith("train.py: error: ") and message in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("argv,message", [
    (["--model", "testzoo_tiny_toy_b"], "Closest names: testzoo_tiny_toy_hub, testzoo_tiny_toy_a"),
    (["--model", "clipood-test-tiny", "-b", "0"], "--batch-size must be >= 1, got 0"),
    (["--model", "clipood-test-tiny", "--classes", "new", "EMPTY_BASE"], "has an empty 'new_classes' list"),
])
def test_validate_refuses_bad_arguments_with_exit_code_2(shards, tmp_path, capsys, argv, message):
    data = shards
    if "EMPTY_BASE" in argv:
        data = tmp_path / "data"
        _empty_base(data)
        raw = json.loads((data / "_info.json").read_text())
        raw.update(base_classes=[0, 1, 2, 3], new_classes=[])
        (data / "_info.json").write_text(json.dumps(raw))
        argv = argv[:-1]
    err = exits_with(validate.main, [*argv, "--model-config", TINY_CONFIG, "--data-dir", str(data)], capsys)
    assert err.startswith("validate.py: error: ") and message in err


# ------------------------------------------------------------------------------------------------- data

def _bad_dataset(root):
    """Synthetic shards; val: a shard of bad samples, a shard cut mid-tar, a shard that _info.json says is 2
    samples longer than it is; train: an undecodable sample at the end of every shard (training draws shards)."""
    write_synthetic_dataset(root, per_class=4, shard_size=6)
    meta = lambda name: json.dumps({"domain": "art", "classname": name}).encode()  # noqa: E731
    good = image_bytes((0, 0, 0))
    bad = [
        {"__key__": "undecodable", "png": b"\x89PNG\r\n\x1a\n not really", "cls": b"0", "json": meta("cat")},
        {"__key__": "no-cls", "png": good, "json": meta("cat")},
        {"__key__": "cls-out-of-range", "png": good, "cls": b"7", "json": meta("cat")},
        {"__key__": "cls-says-dog-json-says-cat", "png": good, "cls": b"1", "json": meta("cat")},
    ]
    raw = json.loads((root / "_info.json").read_text())
    with wds.TarWriter(str(root / "val-bad.tar")) as w:
        for sample in bad:
            w.write(sample)
    val = raw["splits"]["val"]
    val["filenames"].append("val-bad.tar")
    val["shard_lengths"].append(len(bad))
    train = raw["splits"]["train"]
    for i, name in enumerate(train["filenames"]):
        with tarfile.open(root / name, "a") as tar:
            for ext, data in (("png", b"GIF89a broken"), ("cls", b"0"), ("json", meta("cat"))):
                member = tarfile.TarInfo(f"bad-{i}.{ext}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        train["shard_lengths"][i] += 1
    for s in (train, val):
        s.pop("domain_class_counts"), s.pop("shard_domains")
    val["shard_lengths"][2] += 2  # _info.json disagrees with the shard
    for s in raw["splits"].values():
        s["num_samples"] = sum(s["shard_lengths"])
    (root / "_info.json").write_text(json.dumps(raw))
    shard = root / "val-000001.tar"
    with tarfile.open(shard) as tar:
        second_image = [m for m in tar if m.name.endswith(".png")][1]
    shard.write_bytes(shard.read_bytes()[:second_image.offset_data + 10])  # cut inside the 2nd image


# one full pass over the bad val split: 4 bad samples; the cut shard keeps 1 of its 6 samples whole (4 never
# read, 1 without its image); the overstated shard is 2 short
VAL_SKIPS = {"no_image": 1, "bad_label": 3, "bad_meta": 0, "unknown_domain": 0, "bad_image": 1,
             "missing_from_shard": 6, "too_large": 0}
VAL_GOOD = 3 * 4 * 4 - 5


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    _bad_dataset(root)
    return root


def test_validate_skips_and_counts_bad_samples(bad_shards, caplog):
    caplog.set_level(logging.WARNING)
    (row,) = validate.main(["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--data-dir",
                            str(bad_shards), "--workers", "0"])
    assert row["num_samples"] == VAL_GOOD  # only whole, correctly labelled samples are scored
    total = sum(VAL_SKIPS.values())
    assert f"clipood-test-tiny: skipped {total} bad samples: {VAL_SKIPS}" in caplog.text
    assert "cls-says-dog-json-says-cat" in caplog.text and "the shard and _info.json disagree" in caplog.text


def test_train_skips_and_counts_bad_samples(bad_shards, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    result = train.main(train_args(bad_shards, tmp_path, "--steps", "2"))
    assert result["step"] == 2 and result["skipped_train"] > 0
    # the source-domain validation and the held-out evaluation each read every val shard once; an image is
    # decoded only for samples that pass the domain/class filters, so the undecodable 'art' one counts once
    expected_eval = {"no_image": 2, "bad_label": 6, "bad_image": 1, "missing_from_shard": 12}
    assert result["skipped_eval"] == sum(expected_eval.values())
    assert f"Skipped {result['skipped_eval']} bad evaluation samples: {expected_eval}" in caplog.text
    assert f"Skipped {result['skipped_train']} bad training samples" in caplog.text


def test_strict_data_is_an_error_naming_the_shard_and_sample(bad_shards, tmp_path, capsys):
    err = exits_with(train.main, train_args(bad_shards, tmp_path, "--steps", "2", "--strict-data"), capsys)
    assert re.search(r"train.py: error: bad sample: .*\(shard \S+train-\d+.tar, sample key 'bad-\d+'\)", err)
    assert "strict=False" in err


def test_bad_data_with_worker_processes_never_hangs(bad_shards, tmp_path):
    """validate.py in subprocesses with 2 loader workers: skips and finishes, or (strict) exits 2; both bounded."""
    cmd = [sys.executable, str(REPO / "validate.py"), "--model", "clipood-test-tiny", "--model-config", TINY_CONFIG,
           "--data-dir", str(bad_shards), "--workers", "2", "-b", "4"]
    procs = [subprocess.Popen(cmd + extra, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for extra in ([], ["--strict-data"])]
    try:
        (out, err), (_, strict_err) = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 0, err[-2000:]
    assert f"skipped {sum(VAL_SKIPS.values())} bad samples" in err
    assert procs[1].returncode == 2, strict_err[-2000:]
    assert "validate.py: error:" in strict_err and re.search(r"val-(bad|000001|000002)\.tar", strict_err)


# a few valid images of every format PIL writes here, to mutate
_IMAGES = []
for _fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"):
    _buf = io.BytesIO()
    Image.new("RGB", (9, 7), (10, 200, 30)).save(_buf, format=_fmt)
    _IMAGES.append(_buf.getvalue())


@st.composite
def image_like_bytes(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=256))
    data = bytearray(draw(st.sampled_from(_IMAGES)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[i] = draw(st.integers(0, 255))
        else:
            data = data[:i]
            break
    return bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_like_bytes(), st.booleans())
def test_fuzz_image_decoding_is_skipped_or_dataset_error(data, strict):
    policy = _SkipPolicy(SkipCounter(log_limit=0), strict)
    sample = {"image": data, "__url__": "shard.tar", "__key__": "k", "target": 1, "domain": 0}
    try:
        image, target, domain = _decode(sample, None)
    except BadSample as e:  # what the pipeline's handler sees
        if strict:
            with pytest.raises(DatasetError, match=r"shard shard.tar, sample key 'k'"):
                policy(e)
        else:
            assert policy(e) is True and policy.counter.as_dict()["bad_image"] == 1
    else:
        assert image.mode == "RGB" and (target, domain) == (1, 0)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


@pytest.fixture(scope="module")
def valid_info(tmp_path_factory):
    root = tmp_path_factory.mktemp("info")
    write_synthetic_dataset(root, per_class=1)
    return root, json.loads((root / "_info.json").read_text())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_info_json_is_dataset_info_or_dataset_error(valid_info, data):
    root, valid = valid_info
    raw = json.loads(json.dumps(valid))
    path = data.draw(st.sampled_from(list(_paths(valid))))
    value = data.draw(_JSON)
    if not path:
        raw = value
    else:
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    try:
        info = parse_dataset_info(raw, root, check_files=True)
    except DatasetError as e:
        assert str(root / "_info.json") in str(e)
    else:
        assert info.classes and info.domains


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.binary(max_size=64) | st.just(b"[" * 100_000) | st.just(b'{"name": NaN}'))
def test_fuzz_info_json_bytes(tmp_path_factory, text):
    root = tmp_path_factory.mktemp("bytes")
    (root / "_info.json").write_bytes(text)
    with pytest.raises(DatasetError, match=re.escape(str(root / "_info.json"))):
        read_dataset_info(root)


# ------------------------------------------------------------------------------------------ interruptions

@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    """The uninterrupted run every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("straight")
    train.main(train_args(shards, out, "--steps", str(STEPS)))
    return out / "run"


def assert_same_run(a, b):
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (a, b))
    assert ca["step"] == cb["step"] == STEPS
    for part in ("model", "average"):
        assert ca[part].keys() == cb[part].keys()
        for key, value in ca[part].items():
            assert torch.equal(value, cb[part][key]), (part, key)
    ea, eb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea) and ea.keys() == eb.keys()


def _spawn(args, log):
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=f, env=TRAIN_ENV)


def _kill_after_step(proc, log, step, delay, timeout=180):
    """SIGKILL ``proc`` ``delay`` s after it logs optimizer step ``step``; False if it ended first."""
    pattern = re.compile(rf"Train: \d+ \[{step}/")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if pattern.search(log.read_text()):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return proc.returncode == -signal.SIGKILL
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"train.py did not reach step {step} in {timeout} s:\n{log.read_text()[-2000:]}")


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights(shards, straight, tmp_path):
    rng = random.Random(int(os.environ.get("CLIPOOD_FAULT_SEED", "0")) or None)  # random unless pinned
    args = train_args(shards, tmp_path, "--steps", str(STEPS), "--checkpoint-interval", "1")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    kills = [rng.randint(1, 3), rng.randint(4, STEPS - 1)]  # one in each epoch; delays land in steps, saves, evals, exports
    history = []
    for i, step in enumerate([*kills, None]):
        resume = ["--resume", str(checkpoint)] if checkpoint.exists() else []
        log = tmp_path / f"log{i}.txt"
        proc = _spawn(args + resume, log)
        if step is None:
            assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
            break
        killed = _kill_after_step(proc, log, step, delay=rng.uniform(0, 0.5))
        if checkpoint.exists():  # the last checkpoint always loads
            state = load_checkpoint(checkpoint)
            history.append((step, killed, state["step"]))
            assert state["step"] <= STEPS and set(state) >= {"model", "average", "optimizer", "scheduler", "epoch"}
    assert_same_run(straight, tmp_path / "run")
    assert history, "no kill left a checkpoint behind"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_saves_a_checkpoint_and_resume_gives_the_uninterrupted_weights(shards, straight, tmp_path,
                                                                                          sig):
    """A scheduler's SIGTERM or a Ctrl-C: the step in progress ends, a checkpoint is written, exit 75 with one line."""
    args = train_args(shards, tmp_path, "--steps", str(STEPS))  # no --checkpoint-interval: the signal's save counts
    log = tmp_path / "log.txt"
    proc = _spawn(args, log)
    pattern, deadline = re.compile(r"Train: \d+ \[2/"), time.monotonic() + 180
    while not pattern.search(log.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    assert proc.wait(timeout=180) == train.EXIT_INTERRUPTED, log.read_text()[-3000:]
    run = tmp_path / "run"
    stopped = re.search(rf"train.py: stopped by {sig.name} after optimizer step (\d) of {STEPS}; checkpoint saved in "
                        rf"{re.escape(str(run))}. Continue with --resume {re.escape(str(run))}\n$", log.read_text())
    assert stopped, log.read_text()[-3000:]
    assert load_checkpoint(run)["step"] == int(stopped.group(1)) >= 2
    assert "Traceback" not in log.read_text() and not (run / train.RESULT_NAME).exists()
    resumed = _spawn(args + ["--resume", str(run)], tmp_path / "log2.txt")
    assert resumed.wait(timeout=180) == 0, (tmp_path / "log2.txt").read_text()[-3000:]
    assert_same_run(straight, run)
    assert (run / "summary.csv").read_text().count("\n") == (straight / "summary.csv").read_text().count("\n") == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_with_loader_workers_saves_and_resumes(shards, tmp_path, sig):
    """A terminal's Ctrl-C, or a scheduler's SIGTERM to every process of the job, reaches the loader workers too:
    they keep serving (torch's workers would die of SIGTERM mid-save), a checkpoint, exit 75, no traceback."""
    args = train_args(shards, tmp_path, "--steps", str(STEPS), "--workers", "1")
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=f, env=TRAIN_ENV, start_new_session=True)
    pattern, deadline = re.compile(r"Train: \d+ \[2/"), time.monotonic() + 180
    while not pattern.search(log.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=180) == train.EXIT_INTERRUPTED, log.read_text()[-3000:]
    run = tmp_path / "run"
    stopped = re.search(rf"train.py: stopped by {sig.name} after optimizer step (\d) of", log.read_text())
    assert stopped and "Traceback" not in log.read_text(), log.read_text()[-3000:]
    assert load_checkpoint(run)["step"] == int(stopped.group(1))
    train.main(args + ["--resume", str(run)])
    assert load_checkpoint(run)["step"] == STEPS and (run / train.RESULT_NAME).exists()


def test_export_that_cannot_be_written_leaves_the_epochs_checkpoint(shards, straight, tmp_path, capsys, monkeypatch):
    """Disk full at the export: the checkpoint was written first, so a resume redoes the evaluation and export."""
    real = clipood_zoo.save_pretrained

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(clipood_zoo, "save_pretrained", disk_full)
    args = train_args(shards, tmp_path, "--steps", str(STEPS))
    err = exits_with(train.main, args, capsys)
    run = tmp_path / "run"
    assert (f"train.py: error: could not write the exported model in {run} (No space left on device); the checkpoint "
            f"{run / 'checkpoint.pt'} is intact: free space or fix the folder, then continue with --resume {run}.") in err
    state = load_checkpoint(run)
    assert (state["step"], state["epoch"]) == (4, 0)  # epoch 0 trained, its evaluation and export still to do
    monkeypatch.setattr(clipood_zoo, "save_pretrained", real)
    train.main(args + ["--resume", str(run)])
    assert_same_run(straight, run)


def test_save_interrupted_mid_write_keeps_the_previous_checkpoint(shards, straight, tmp_path, capsys, monkeypatch):
    calls = []
    real_write = clipood_zoo.checkpoint.write_bytes_atomic

    def disk_full_on_third_save(path, data):
        calls.append(path)
        if len(calls) < 3:
            return real_write(path, data)
        with atomic_write(path) as f:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(clipood_zoo.checkpoint, "write_bytes_atomic", disk_full_on_third_save)
    args = train_args(shards, tmp_path, "--steps", str(STEPS), "--checkpoint-interval", "1")
    err = exits_with(train.main, args, capsys)
    run = tmp_path / "run"
    assert f"could not write the checkpoint {run / 'checkpoint.pt'} at step 3 (No space left on device)" in err
    assert "previous checkpoint there, if any, is intact" in err and "--resume" in err
    assert load_checkpoint(run)["step"] == 2
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []  # no temporary files
    monkeypatch.setattr(clipood_zoo.checkpoint, "write_bytes_atomic", real_write)
    train.main(args[:-2] + ["--resume", str(run)])  # the checkpoint interval does not change the weights
    assert_same_run(straight, run)


# ------------------------------------------------------------------------------------------------ numerics

class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _poison(monkeypatch, bad_calls, kind):
    """Make the loss (or only its gradient) NaN on the given 1-based forward calls."""
    real, calls = TrainStep.forward, [0]

    def forward(self, images, target):
        calls[0] += 1
        loss = real(self, images, target)
        if bad_calls == "all" or calls[0] in bad_calls:
            return _NanGrad.apply(loss) if kind == "grad" else loss * float("nan")
        return loss

    monkeypatch.setattr(TrainStep, "forward", forward)


@pytest.mark.parametrize("kind,extra", [("loss", []), ("grad", []), ("loss", ["--amp", "--amp-dtype", "float16"]),
                                        ("loss", ["--grad-accum-steps", "2", "-b", "2", "--clip-grad", "1"])])
def test_nan_steps_are_skipped_counted_and_never_averaged(shards, tmp_path, caplog, monkeypatch, kind, extra):
    caplog.set_level(logging.WARNING)
    _poison(monkeypatch, {3, 4}, kind)
    result = train.main(train_args(shards, tmp_path, "--steps", "4", *extra))
    accum = "--grad-accum-steps" in extra
    skipped, first = (1, 2) if accum else (2, 3)  # with accumulation forward calls 3 and 4 are optimizer step 2
    assert result["nonfinite_steps"] == skipped and result["step"] == 4
    assert f"non-finite loss or gradient at step {first}: step skipped (1 so far)" in caplog.text
    assert f"Skipped {skipped} of 4 optimizer steps for a NaN/inf loss or gradient" in caplog.text
    state = load_checkpoint(tmp_path / "run")
    assert state["nonfinite_steps"] == skipped
    for part in ("model", "average"):
        assert all(torch.isfinite(v).all() for v in state[part].values() if v.is_floating_point()), part
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "run" / "model.safetensors").values())


def test_a_run_whose_loss_stays_nan_stops_with_a_clear_message(shards, tmp_path, capsys, monkeypatch):
    _poison(monkeypatch, "all", "loss")
    err = exits_with(train.main, train_args(shards, tmp_path, "--steps", "12", "--checkpoint-interval", "3"), capsys)
    assert "NaN/inf for 10 consecutive steps (up to step 10): the run diverged" in err and "--lr" in err
    state = load_checkpoint(tmp_path / "run")  # the last checkpoint: step 9, weights untouched and finite
    assert state["step"] == 9 and state["nonfinite_steps"] == 9
    for key, value in state["model"].items():
        assert torch.equal(value, state["average"][key]), key  # nothing was learnt, nothing NaN was averaged


# --------------------------------------------------------------------------------------------- concurrency

def test_two_validate_processes_share_shards_and_hub_cache(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, classes=tiny_family.CLASS_NAMES, per_class=2, shard_size=6)
    model = create_model("testzoo_tiny_toy_a")
    repo = tmp_path / "hub" / ("models--" + tiny_family.HUB_ID.replace("/", "--"))
    commit = "b" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(model.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    code = ("import sys, open_clip; sys.path.insert(0, '.'); open_clip.add_model_config('tests/model_configs'); "
            "import tests.tiny_family, validate; validate.main(sys.argv[1:])")
    procs = [subprocess.Popen([sys.executable, "-c", code, "--model", "testzoo_tiny_toy_hub", "--pretrained",
                               "--model-config", TINY_CONFIG, "--data-dir", str(data), "--workers", "0", "-b", "5",
                               "--results-file", str(tmp_path / f"r{i}.json")],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "HF_HUB_CACHE": str(tmp_path / "hub")}) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    rows = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    assert rows[0] == rows[1] and rows[0][0]["num_samples"] == 3 * 4 * 2
