"""`python -m clipood_zoo.data.protocols run`: one command from converted shards to the Table 1 row."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

import train
import validate
from clipood_zoo import sweep
from clipood_zoo.data.catalog import PACS
from clipood_zoo.data.protocols import domainbed
from clipood_zoo.data.protocols.__main__ import main as protocols_main
from clipood_zoo.errors import ConfigError
from tests.conftest import TINY_ARCH, TINY_CONFIG, in_process_runner
from tests.test_protocols_domainbed import _tree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import paper_tables  # noqa: E402

in_process = in_process_runner({"train.py": train, "validate.py": validate, "paper_tables.py": paper_tables})


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs")
    _tree(root / "PACS", PACS, per_class=3)
    domainbed.convert("pacs", root / "PACS", root / "shards", seed=0)
    return root / "shards"


def _argv(pacs, out, *extra):
    return ["run", "domainbed", "pacs", "--data", str(pacs), "--output", str(out), "--seeds", "0", "1",
            "--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--clip-pretrained", "none", "--steps", "2",
            "-b", "6", "--workers", "0", "--train-args", "--log-interval 1 --keep-checkpoint", *extra]


@pytest.fixture(scope="module")
def swept(pacs, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setattr(sweep, "run_subprocess", in_process)
    try:
        assert protocols_main(_argv(pacs, out)) == 0
    finally:
        mp.undo()
    return out


def test_sweep_gives_the_table1_row_from_every_domain_and_seed(swept):
    results = sorted((swept / "results").glob("*.json"))
    assert len(results) == 8  # 4 held-out domains x 2 seeds, each its own run folder
    assert len({p.name for p in (swept / "runs").iterdir()}) == 8
    per_domain = {}
    for path in results:
        (row,) = json.loads(path.read_text())
        slug, seed = re.match(r".*-pacs_(\w+)-clipood-s(\d)\.json", path.name).groups()
        folder = PACS.domain(slug).folder
        assert set(k for k in row if k.startswith("top1_") and k != "top1_err") == {f"top1_{folder}"}
        per_domain.setdefault(slug, []).append(row["top1"])
    assert {k: len(v) for k, v in per_domain.items()} == {d.slug: 2 for d in PACS.domains}
    expected = sum(sum(v) / 2 for v in per_domain.values()) / 4  # mean over seeds, then over held-out domains
    table = (swept / "table1_pacs.md").read_text()
    (row,) = [line for line in table.splitlines() if line.startswith("| clipood |")]
    assert row.split("|")[2].strip() == f"{expected:.1f}"
    rows = paper_tables.read_rows(swept / "table1_pacs.csv")
    assert sorted((r["heldout"], r["seed"]) for r in rows) == sorted((d.slug, float(s)) for d in PACS.domains for s in (0, 1))


def test_a_finished_sweep_is_skipped_and_dry_run_prints_what_is_left(swept, pacs, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "run_subprocess", lambda cmd: pytest.fail(f"ran {cmd}"))
    protocols_main(_argv(pacs, swept, "--dry-run"))
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("# done: ") for line in out) == 8
    assert not any("train.py" in line for line in out)
    assert "paper_tables.py" in out[-1] and out[-1].endswith(str(swept / "table1_pacs.md"))


def test_an_interrupted_run_resumes_in_a_real_subprocess(swept, pacs, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(swept, out)
    missing = next((out / "results").glob("*-pacs_cartoon-clipood-s1.json"))
    missing.unlink()
    before = (out / "table1_pacs.md").read_text()
    assert protocols_main(_argv(pacs, out)) == 0  # real subprocesses: train.py --resume, validate.py, paper_tables.py
    printed = capsys.readouterr().out
    assert sum(line.startswith("# done: ") for line in printed.splitlines()) == 7
    assert f"--resume {out / 'runs' / missing.stem}" in printed
    assert missing.is_file() and (out / "table1_pacs.md").read_text() == before


def test_unknown_eval_split_and_dataset():
    opts = sweep.SweepOptions(data=Path("d"), output=Path("o"), seeds=[0], eval_split="test")
    with pytest.raises(ConfigError, match="--eval-split must be one of val, train"):
        sweep.domainbed_jobs("pacs", opts)
    with pytest.raises(ConfigError, match="unknown DomainBed dataset 'pcas'"):
        sweep.domainbed_jobs("pcas", opts)


def test_b2n_sweep_gives_the_table3_cells(tmp_path, monkeypatch):
    from clipood_zoo.data.protocols import base2new
    from tests.test_protocols_base2new import _eurosat

    _eurosat(tmp_path / "data" / "eurosat")
    base2new.convert("eurosat", tmp_path / "data", tmp_path / "shards" / "seed1", shots=2, seed=1)
    monkeypatch.setattr(sweep, "run_subprocess", in_process)
    argv = ["run", "b2n", "eurosat", "--data", str(tmp_path / "shards"), "--output", str(tmp_path / "out"),
            "--seeds", "1", "--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--clip-pretrained", "none",
            "--steps", "2", "-b", "4", "--workers", "0"]
    assert protocols_main(argv) == 0
    (row,) = json.loads(next((tmp_path / "out" / "results").glob("*-b2n_eurosat-clipood-s1.json")).read_text())
    table = (tmp_path / "out" / "table3_eurosat.md").read_text()
    (line,) = [x for x in table.splitlines() if x.startswith("| EuroSAT |")]
    base, new, hm = (c.strip() for c in line.split("|")[2:5])
    assert (base, new) == (f"{row['base_top1']:.1f}", f"{row['new_top1']:.1f}")
    assert hm == f"{paper_tables.harmonic_mean(row['base_top1'], row['new_top1']):.1f}"


def test_imagenet_dry_run_trains_each_seed_folder_and_scores_every_shift(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "run_subprocess", lambda cmd: pytest.fail(f"ran {cmd}"))
    protocols_main(["run", "imagenet", "--data", str(tmp_path / "in"), "--shifts", str(tmp_path / "v2"),
                    str(tmp_path / "r"), "--output", str(tmp_path / "out"), "--seeds", "1", "2", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    trains = [line for line in lines if "train.py" in line]
    scores = [line for line in lines if "validate-imagenet" in line]
    assert len(trains) == len(scores) == 2
    for seed, train_line, score in zip((1, 2), trains, scores):
        assert f"--data-dir {tmp_path / 'in' / f'seed{seed}'} " in train_line
        assert f"--experiment clipood_vitb16_imagenet-clipood-s{seed} " in train_line
        assert "--bma-beta 0.1 " in train_line and "--clip-pretrained openai" in train_line  # the entry's recipe
        assert f"--data-dir {tmp_path / 'in' / f'seed{seed}'} {tmp_path / 'v2'} {tmp_path / 'r'} " in score
    assert lines[-1].endswith(f"--table 2 --output {tmp_path / 'out' / 'table2_imagenet.md'}")
