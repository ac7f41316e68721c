"""Datasets read from URLs: loopback HTTP (with faults), file:// and fsspec, the same samples as from disk."""
import json
import shutil

import fsspec
import pytest
import torch
from torchvision.transforms import functional as TF

import validate
from clipood_zoo.data import create_loader, read_dataset_info
from clipood_zoo.data.remote import RetryPolicy
from clipood_zoo.data.synthetic import write_synthetic_dataset
from clipood_zoo.errors import ConfigError, DatasetError
from tests.loopback_http import serve
from tests.test_class_alignment import MINI, MODEL

FAST = RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=10)
MARKER = "PWNED"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(root, per_class=4, shard_size=5)
    return root


def _samples(data, split="val", retry=FAST, **kw):
    loader = create_loader(data, split, transform=TF.to_tensor, batch_size=4, is_training=False, retry=retry, **kw)
    return [(x.clone(), y.clone(), d.clone()) for x, y, d in loader]


def _assert_same(a, b):
    assert len(a) == len(b) > 0
    for (xa, ya, da), (xb, yb, db) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(da, db)


def test_validate_over_loopback_http_gives_the_numbers_from_disk():
    args = ["--model", MODEL, "--pretrained", "--workers", "0", "--domains", "3d"]
    (local,) = validate.main([*args, "--data-dir", str(MINI)])
    with serve(MINI) as (url, requests):
        (remote,) = validate.main([*args, "--data-dir", url + "/"])
    assert remote == local and local["num_samples"] > 0
    assert requests["/_info.json"] == 1  # read once for the whole run


def test_file_url_and_fsspec_url_read_the_same_samples(shards):
    local = _samples(shards)
    _assert_same(_samples(shards.as_uri()), local)
    fs = fsspec.filesystem("memory")
    for f in shards.iterdir():
        fs.pipe(f"/syn/{f.name}", f.read_bytes())
    info = read_dataset_info("memory://syn")
    assert info.root == "memory://syn" and info.split("val").filenames == read_dataset_info(shards).split("val").filenames
    _assert_same(_samples("memory://syn"), local)


def test_server_errors_and_a_dropped_stream_are_retried(shards):
    local = _samples(shards)
    faults = {"/_info.json": ["500"], "/val-000000.tar": ["500", "drop"], "/val-000001.tar": ["drop"]}
    with serve(shards, faults) as (url, requests):
        remote = _samples(url)
    _assert_same(remote, local)
    assert requests["/_info.json"] == 2 and requests["/val-000000.tar"] == 3 and requests["/val-000001.tar"] == 2


def test_retries_are_bounded_then_name_the_shard(shards):
    with serve(shards, {"/val-000000.tar": ["500"] * 10}) as (url, requests):
        with pytest.raises(DatasetError, match=rf"could not read {url}/val-000000.tar: 3 attempts failed, the last "
                                               r"with HTTP 500"):
            _samples(url)
    assert requests["/val-000000.tar"] == 3
    with serve(shards, {"/val-000000.tar": ["drop"] * 10}) as (url, requests):
        with pytest.raises(DatasetError, match=rf"could not read {url}/val-000000.tar: 3 attempts failed, the last "
                                               r"with IncompleteRead"):
            _samples(url, strict=True)


def test_a_missing_shard_is_a_404_error_at_once(tmp_path, shards):
    shutil.copytree(shards, tmp_path / "d")
    (tmp_path / "d" / "val-000001.tar").unlink()
    with serve(tmp_path / "d") as (url, requests):
        with pytest.raises(DatasetError, match=rf"{url}/val-000001.tar: HTTP 404 .*not on the server"):
            _samples(url)
        assert requests["/val-000001.tar"] == 1
        with pytest.raises(DatasetError, match=rf"no readable _info.json at {url}/nothing: .*HTTP 404"):
            read_dataset_info(url + "/nothing", FAST)


def test_a_closed_port_is_an_error_after_the_retries():
    with serve(MINI) as (url, _):
        pass  # the server is stopped: its port now refuses connections
    with pytest.raises(DatasetError, match=rf"could not read {url}/_info.json: 3 attempts failed, the last with URLError"):
        read_dataset_info(url, FAST)


@pytest.mark.parametrize("name", [f"pipe:cat val-000000.tar; touch {MARKER}", "http://127.0.0.1:9/x.tar",
                                  "../val-000000.tar", f"val-000000.tar; touch {MARKER}"])
def test_malicious_names_in_a_remote_info_json_run_nothing(tmp_path, monkeypatch, shards, name):
    shutil.copytree(shards, tmp_path / "d")
    raw = json.loads((tmp_path / "d" / "_info.json").read_text())
    raw["splits"]["val"]["filenames"][0] = name
    (tmp_path / "d" / "_info.json").write_text(json.dumps(raw))
    monkeypatch.chdir(tmp_path)
    with serve(tmp_path / "d") as (url, requests):
        with pytest.raises(DatasetError, match=rf"shard name {name!r} is refused"):
            read_dataset_info(url, FAST)
    assert set(requests) == {"/_info.json"} and not (tmp_path / MARKER).exists()


def test_brace_notation_expands_then_each_name_is_checked(tmp_path, shards):
    shutil.copytree(shards, tmp_path / "d")
    raw = json.loads((tmp_path / "d" / "_info.json").read_text())
    names = raw["splits"]["val"]["filenames"]
    assert names == [f"val-{i:06d}.tar" for i in range(len(names))]
    raw["splits"]["val"]["filenames"] = [f"val-{{000000..{len(names) - 1:06d}}}.tar"]
    (tmp_path / "d" / "_info.json").write_text(json.dumps(raw))
    assert read_dataset_info(tmp_path / "d").split("val").filenames == tuple(names)
    with serve(tmp_path / "d") as (url, _):
        _assert_same(_samples(url), _samples(shards))
    raw["splits"]["val"]["filenames"] = ["{val-000000.tar,../x.tar}"]
    raw["splits"]["val"]["shard_lengths"] = [1, 1]
    (tmp_path / "d" / "_info.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"shard name '../x.tar' is refused"):
        read_dataset_info(tmp_path / "d")


def test_resampled_domain_balanced_training_stream_over_http_is_the_local_one(shards):
    kw = dict(transform=TF.to_tensor, batch_size=6, is_training=True, resampled=True, domain_balanced=True,
              seed=3, retry=FAST)
    local = create_loader(shards, "train", **kw)
    with serve(shards) as (url, _):
        remote = create_loader(url, "train", **kw)
        batches = [b for b, _ in zip(remote, range(4))]
    _assert_same(batches, [b for b, _ in zip(local, range(4))])
    for _, _, domain in batches:  # 6 samples over the 3 domains: 2 each
        assert torch.bincount(domain, minlength=3).tolist() == [2, 2, 2]


@pytest.mark.parametrize("data_dir, problem", [(f"pipe:touch {MARKER}", "'pipe:' sources are not supported"),
                                               ("s3://bucket/data", "no fsspec filesystem for 's3' is installed")])
def test_unusable_data_dir_urls_exit_2_and_run_nothing(tmp_path, monkeypatch, capsys, data_dir, problem):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        validate.main(["--model", MODEL, "--data-dir", data_dir])
    assert e.value.code == 2 and problem in capsys.readouterr().err
    assert not (tmp_path / MARKER).exists()
    with pytest.raises(ConfigError, match=problem):
        read_dataset_info(data_dir)
