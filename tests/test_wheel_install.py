"""A wheel install, as from a package index: not editable, outside the checkout, weights from outside the wheel.

The wheel is built from a copy of the sources (``pip wheel --no-deps --no-build-isolation``: offline, with
this venv's setuptools) and installed into a fresh venv that sees this venv's packages through a ``.pth``
line (so nothing is downloaded; this venv's own ``.pth`` files, among them the editable install of the
checkout, are not run). Every check runs in that venv's interpreter, from a folder outside the checkout.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from clipood_zoo import get_pretrained_cfg
from tests.shipped_cards import recorded_mini_top1

REPO = Path(__file__).resolve().parent.parent
MINI = REPO / "datasets" / "emojidg-mini"
SCORED = "clipood_vitt_emojidg_3d"  # one shipped fine-tune: a 444-image held-out domain, seconds on CPU

SCRIPT = """
import json, os, sys
import torch
from timm.data import create_transform, resolve_data_config
import clipood_zoo
from clipood_zoo.data import create_loader, read_dataset_info
from clipood_zoo.evaluate import align_classes, evaluate

name, data_dir, weights_dir = sys.argv[1:]
try:  # no CLIPOOD_WEIGHTS_DIR yet: a wheel install has no weights
    clipood_zoo.create_model(name, pretrained=True)
    no_weights = None
except clipood_zoo.WeightsNotFoundError as e:
    no_weights = str(e)
os.environ["CLIPOOD_WEIGHTS_DIR"] = weights_dir
model = clipood_zoo.create_model(name, pretrained=True)
info = read_dataset_info(data_dir)
align_classes(model, info)
domain = clipood_zoo.get_pretrained_cfg(name).heldout_domain
loader = create_loader(data_dir, "val", transform=create_transform(**resolve_data_config({}, model=model)),
                       batch_size=256, is_training=False, domains=[domain], num_workers=0)
metrics = evaluate(model, loader, torch.device("cpu"), info.domains)
print(json.dumps({"file": clipood_zoo.__file__, "pretrained": clipood_zoo.list_pretrained(), "no_weights": no_weights,
                  "top1": metrics["top1"], "num_samples": metrics["num_samples"]}))
"""


def tracked_data_files():
    """Every non-Python file git tracks under clipood_zoo/ (dotfiles such as .keep aside): what the package reads."""
    out = subprocess.run(["git", "ls-files", "clipood_zoo"], cwd=REPO, capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.split() if not p.endswith(".py") and not Path(p).name.startswith("."))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding the wheel, the wheel's path)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so that the build leaves no build/ or .egg-info in the checkout
    shutil.copytree(REPO / "clipood_zoo", src / "clipood_zoo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, env=clean_env())
    (wheel,) = (tmp / "dist").glob("clipood_zoo-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "ci_venv_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, env=clean_env())
    return python, wheel


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLIPOOD_WEIGHTS_DIR")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def run_in(python, script, tmp_path, *args, **env):
    out = subprocess.run([str(python), "-c", script, *map(str, args)], cwd=tmp_path, capture_output=True, text=True,
                         env=clean_env(**env))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_wheel_holds_every_data_file_the_package_reads(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [f for f in tracked_data_files() if f not in names] == []
    assert not [n for n in names if n.startswith("weights/") or n.endswith(".safetensors")]  # weights are not in it


def test_installed_wheel_finds_weights_outside_it_and_scores_a_shipped_model_like_its_card(installed, tmp_path):
    python, _ = installed
    result = json.loads(run_in(python, SCRIPT, tmp_path, SCORED, MINI, REPO / "weights").splitlines()[-1])
    assert not Path(result["file"]).is_relative_to(REPO)  # the installed copy, not the checkout

    message = result["no_weights"]  # before CLIPOOD_WEIGHTS_DIR was set: one line saying where weights come from
    assert "\n" not in message and get_pretrained_cfg(SCORED).file in message
    assert "CLIPOOD_WEIGHTS_DIR" in message and "checkpoint_path=" in message and "hf-hub:" in message

    assert SCORED in result["pretrained"] and "clip_vitt_emoji" in result["pretrained"]
    assert result["num_samples"] == 444
    assert result["top1"] == pytest.approx(recorded_mini_top1(SCORED), abs=1e-3)  # the card's own fp16 file
