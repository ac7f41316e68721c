"""Shared test setup: offline hub, a tiny open_clip architecture and a tiny zoo family built on it.

Everything runs on CPU with random-init models the tests make; no network, no downloaded weights.
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: tests must never reach a hub
# text embeddings are cached on disk (clipood_zoo.models.text_cache): in a folder of this session, never the user's
os.environ["CLIPOOD_ZOO_CACHE"] = tempfile.mkdtemp(prefix="clipood-zoo-cache-")
atexit.register(shutil.rmtree, os.environ["CLIPOOD_ZOO_CACHE"], ignore_errors=True)

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

open_clip.add_model_config(Path(__file__).parent / "model_configs")

import clipood_zoo  # noqa: E402
from tests import tiny_family  # noqa: E402,F401  registers the testzoo_* names

TINY_ARCH = "clipood-test-tiny"
TINY_CONFIG = str(Path(__file__).parent / "model_configs" / "clipood-test-tiny.json")
TINY_CLASSES = tiny_family.CLASS_NAMES


def in_process_runner(scripts):
    """A runner for the command lines a sweep or study runner makes (``python <script> argv...``): calls the
    script module's ``main`` with the same argv in this process (no interpreter start) and returns its exit code.
    ``scripts`` maps a script's file name to its module."""
    import sys

    def run(cmd):
        assert cmd[0] == sys.executable
        try:
            scripts[Path(cmd[1]).name].main(cmd[2:])
        except SystemExit as e:
            return e.code
        return 0

    return run


def train_args(shards, out, *extra):
    """train.py argv for the tiny arch on synthetic shards (held-out 'sketch', base classes, CPU); the resume
    checkpoint is kept so that tests can compare it."""
    return ["--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--data-dir", str(shards),
            "--holdout", "sketch", "--train-classes", "base", "-b", "4", "--lr", "1e-3", "--workers", "0",
            "--output", str(out), "--experiment", "run", "--log-interval", "1", "--seed", "3", "--keep-checkpoint",
            *extra]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_model():
    """A registered zoo model (4 classes) with its text tower, random init."""
    return clipood_zoo.create_model("testzoo_tiny_toy_a", with_text_tower=True)
