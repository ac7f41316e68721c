"""Past one machine: a two-node torchrun run (two launchers on loopback, c10d rendezvous, gloo) equals a one-node
run with the same four processes, and its logs come from rank 0 only.

The slowest test of the suite (three launchers and eight training processes on CPU): kept to two steps of a tiny
model on tiny images, one thread per process.
"""
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipood_zoo.data.synthetic import write_synthetic_dataset
from tests.conftest import train_args

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nnodes: int, nproc: int, node_rank: int, port: int, out: Path, shards: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
           "--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
           "--rdzv-id", out.name, str(REPO / "train.py"),
           *train_args(shards, out, "--steps", "2", "-b", "2", "--train-classes", "all", "--bma-beta", "0.5")]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.mark.slow
def test_two_nodes_equal_one_node_with_the_same_processes_and_log_once(tmp_path):
    shards = tmp_path / "shards"
    write_synthetic_dataset(shards, per_class=2, shard_size=2)
    one_node = finish(torchrun(1, 4, 0, free_port(), tmp_path / "one", shards))
    port = free_port()
    nodes = [torchrun(2, 2, rank, port, tmp_path / "two", shards) for rank in (0, 1)]
    node0, node1 = (finish(p) for p in nodes)

    a = load_file(tmp_path / "one" / "run" / "model.safetensors")
    b = load_file(tmp_path / "two" / "run" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].allclose(b[key], rtol=1e-5, atol=1e-6), key
    assert "4 processes" in node0
    # rank 0 (on node 0) logs the run once; node 1 holds ranks 2 and 3, which log only warnings
    for log in (one_node, node0):
        assert [int(s) for s in re.findall(r"Train: \d+ \[(\d+)/2", log)] == [1, 2]
        assert len(re.findall(r"Eval \d+ \(step 2\)", log)) == 1
    assert not re.findall(r" INFO train", node1)


def two_processes(shards: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(REPO / "train.py"), *train_args(shards, out, "--steps", "4", "--train-classes", "all", *extra)]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_fsdp_with_bma_stopped_and_resumed_exports_the_ddp_weights(tmp_path):
    """FSDP2 on CPU/gloo: each rank averages its own shard, a SIGTERM leaves a sharded checkpoint that --resume
    continues, and the export gathers one whole model.safetensors equal to the DDP run's."""
    shards = tmp_path / "shards"
    write_synthetic_dataset(shards, per_class=2, shard_size=2)
    finish(two_processes(shards, tmp_path / "ddp"))

    stopped = two_processes(shards, tmp_path / "fsdp", "--fsdp", "--checkpoint-interval", "1")
    for line in stopped.stderr:  # stop it once it trains: it ends after the current step with a checkpoint
        if "Train: " in line:
            stopped.send_signal(signal.SIGTERM)
            break
    stopped.communicate(timeout=300)
    run = tmp_path / "fsdp" / "run"
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] < 4 and checkpoint["model"] is None
    assert [p.name for p in run.glob("checkpoint.pt.shards-*")] == [checkpoint["shards"]]
    log = finish(two_processes(shards, tmp_path / "fsdp", "--fsdp", "--resume", str(run)))
    assert f"Resumed from {run} at step {checkpoint['step']}" in log

    ddp = load_file(tmp_path / "ddp" / "run" / "model.safetensors")
    fsdp = load_file(run / "model.safetensors")
    assert ddp.keys() == fsdp.keys()
    for key in ddp:
        assert ddp[key].shape == fsdp[key].shape, key
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-5, atol=1e-6, msg=key)
    (digests,) = re.findall(r"final weights digest per rank: (.*)", log)
    assert len(set(digests.split())) == 1
