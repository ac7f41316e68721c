"""tools/emojidg/run_benchmark.py, the EmojiDG study runner: its plan, its selection, and a tiny run end to end."""
import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

import train
import validate
from clipood_zoo.data.synthetic import write_synthetic_dataset
from clipood_zoo.fileio import write_bytes_atomic
from tests.conftest import TINY_ARCH, TINY_CONFIG, in_process_runner

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from emojidg import run_benchmark as rb  # noqa: E402
from emojidg.selection import best_of, select  # noqa: E402

DOMAINS = ("3d", "flat", "mono", "line")


# --- the plan ------------------------------------------------------------------------------------------
def test_grid_plan_counts_and_run_ids():
    runs = rb.grid_runs(list(rb.GRID_VARIANTS), DOMAINS, [0])
    assert len(runs) == 8 * 4 * 3 * 3 and len({r.run_id for r in runs}) == len(runs)
    assert sum(r.steps for r in runs) == 8 * 4 * 3 * (300 + 1000 + 3000)
    trained = rb.trained_runs(runs)  # WiSE-FT and CLIPood + WiSE-FT are exports of the ERM and CLIPood runs
    assert len(trained) == 6 * 4 * 3 * 3 and {r.variant for r in trained} == set(rb.TRAINED_VARIANTS)
    wise = rb.StudyRun("wise_ft", "3d", 1e-4, 1000, 2, "seeds")
    assert wise.trained == rb.StudyRun("erm", "3d", 1e-4, 1000, 2, "seeds") and "wise_ft" in wise.trained.weights
    assert rb.StudyRun("clipood", "3d", 1e-4, 1000, 0, "grid").run_id == "clipood-3d-lr0.0001-st1000-s0"
    assert {(r.lr, r.steps) for r in runs} == {(lr, s) for lr in rb.GRID["lr"] for s in rb.GRID["steps"]}
    assert len(rb.grid_runs(["erm"], ["3d"], [0, 1], {"lr": (1e-3,), "steps": (2, 3)})) == 4
    # variant-major: every style of ERM is trained before CLIPood starts, and CLIPood before the peers
    trained_order = [r.variant for r in trained]
    assert trained_order == sorted(trained_order, key=list(rb.TRAINED_VARIANTS).index)
    assert [r.domain for r in trained[:36]] == [d for d in DOMAINS for _ in range(9)]


def _cell(lr, steps, score):
    return {"lr": lr, "steps": steps, "source_val_top1": score, "seeds": [0], "candidates": []}


def _selection(peer_scores):
    cells = {v: {d: _cell(1e-4, 1000, 50.0) for d in DOMAINS} for v in rb.GRID_VARIANTS}
    cells["clipood"] = {d: _cell(3e-4 if d == "mono" else 1e-4, 300 if d == "mono" else 3000, 50.0) for d in DOMAINS}
    for peer, score in peer_scores.items():
        cells[peer] = {d: _cell(1e-4, 1000, score) for d in DOMAINS}
    return cells


def test_seeds_phase_gives_headline_methods_and_the_best_peer_five_seeds():
    selection = _selection({"lp_ft": 40.0, "flyp": 41.0, "car_ft": 45.0, "croft": 44.0})
    runs, cells, waiting = rb.seeds_runs(selection, list(rb.GRID_VARIANTS), DOMAINS, [0], range(5), range(3))
    assert (cells, waiting) == (0, 0)
    per_variant = {v: sorted({r.seed for r in runs if r.variant == v}) for v in rb.GRID_VARIANTS}
    assert per_variant == {**{v: [1, 2] for v in rb.GRID_VARIANTS}, **{v: [1, 2, 3, 4] for v in
                                                                         ("erm", "clipood", "wise_ft", "car_ft")}}
    assert len(runs) == 4 * 4 * 4 + 4 * 4 * 2 and {r.phase for r in runs} == {"seeds"}
    assert all((r.lr, r.steps) == (selection[r.variant][r.domain]["lr"], selection[r.variant][r.domain]["steps"])
               for r in runs)
    # before every peer is selected the peers wait (one of them will get the headline seeds)
    del selection["croft"]["line"]
    runs, cells, waiting = rb.seeds_runs(selection, list(rb.GRID_VARIANTS), DOMAINS, [0], range(5), range(3))
    assert not [r for r in runs if r.variant in rb.PEERS] and cells == 4 * 4
    assert waiting == 4 * 4 * 2 + 4 * 2


def test_ablations_run_at_clipoods_selected_config_of_each_domain():
    selection = _selection({})
    runs = rb.ablation_runs(selection, DOMAINS, [0, 1, 2])
    assert len(runs) == 4 * len(rb.ABLATIONS) * 3
    for r in runs:
        assert (r.lr, r.steps) == (selection["clipood"][r.domain]["lr"], selection["clipood"][r.domain]["steps"])
    mono = {r.run_id for r in runs if r.domain == "mono" and r.seed == 0}
    assert "ce_bma-mono-lr0.0003-st300-s0" in mono and not any("beta" in r or "uniform" in r for r in mono)
    flags = {v: rb.StudyRun(v, "3d", 1e-4, 300, 0, "ablation").flags for v in rb.ABLATIONS}
    assert flags["ce_bma"][-2:] == ["--margin-lambda", "0"]
    assert flags["clipood_tau0.02"][-2:] == ["--temperature", "0.02"] and "--fixed-margin" in flags["fixed_margin"]
    # the longer EMA: CLIPood with its BMA at the end of the same run to compare with; the runner scores all three
    long_ema = rb.StudyRun("clipood_ema0.999", "3d", 1e-4, 300, 0, "ablation")
    assert long_ema.flags == ["--method", "clipood", "--export-ema", "0.999", "--export-bma-betas", "0.5"]
    assert long_ema.weights == {"selected": "", "last": "last", "ema": "ema", "bma_beta0.5": "bma_beta0.5"}


def test_phase_all_seeds_the_papers_comparison_before_it_tunes_the_peers(data, tmp_path, capsys):
    """On a CPU the study spans many sessions: ``all`` gives ERM, CLIPood and WiSE-FT their seeds before the peers'
    grid starts (a variant-major grid alone would seed nothing until every peer is tuned)."""
    assert rb.stages(["erm", "lp_ft", "clipood", "wise_ft", "croft"]) == [
        ["erm", "clipood", "wise_ft"], ["erm", "lp_ft", "clipood", "wise_ft", "croft"]]
    assert rb.stages(["erm", "clipood"]) == [["erm", "clipood"]] and rb.stages(["flyp"]) == [["flyp"]]
    args = [a for a in argv(data, tmp_path, "--dry-run", "--phase", "all") if a != "wise_ft"]
    args[args.index("clipood") + 1:args.index("clipood") + 1] = ["lp_ft"]
    assert rb.main(args, runner=lambda cmd: pytest.fail(f"ran {cmd}")) == 0
    headers = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("# phase")]
    assert headers == ["# phase grid of erm, clipood", "# phase seeds of erm, clipood", "# phase grid",
                       "# phase seeds", "# phase ablation"]


# --- selection -----------------------------------------------------------------------------------------
def _records():
    out = []
    for variant, domain, lr, steps, seed, score, held_out in [
        ("erm", "3d", 1e-4, 300, 0, 50.0, 10.0), ("erm", "3d", 1e-4, 300, 1, 54.0, 90.0),
        ("erm", "3d", 3e-4, 300, 0, 53.0, 99.0), ("erm", "3d", 3e-4, 300, 1, 52.0, 99.0),
        ("erm", "3d", 1e-4, 1000, 0, 51.0, 0.0), ("erm", "3d", 1e-4, 1000, 1, 51.9, 0.0),
        ("erm", "flat", 1e-4, 300, 0, 60.0, 1.0), ("erm", "flat", 3e-4, 1000, 0, 61.0, 2.0),
    ]:
        out.append({"variant": variant, "domain": domain, "lr": lr, "steps": steps, "seed": seed,
                    "source_val_top1": score, "top1": held_out, "new_top1": held_out})
    return out


def test_selection_is_the_best_mean_source_val_and_ignores_held_out_numbers():
    records = _records()
    by_config = {}
    for r in records:  # independent: group by hand, best mean, first seen wins no tie here
        by_config.setdefault((r["variant"], r["domain"]), {}).setdefault((r["lr"], r["steps"]), []).append(
            r["source_val_top1"])
    expected = {}
    for (v, d), configs in by_config.items():
        means = {c: sum(s) / len(s) for c, s in configs.items()}
        (lr, steps), best = max(means.items(), key=lambda kv: kv[1])
        expected.setdefault(v, {})[d] = (lr, steps, best)
    selection = select(records)
    got = {v: {d: (c["lr"], c["steps"], c["source_val_top1"]) for d, c in cells.items()} for v, cells in selection.items()}
    assert got == expected == {"erm": {"3d": (3e-4, 300, 52.5), "flat": (3e-4, 1000, 61.0)}}
    assert selection["erm"]["3d"]["seeds"] == [0, 1] and len(selection["erm"]["3d"]["candidates"]) == 3
    assert [c["source_val_top1"] for c in selection["erm"]["3d"]["candidates"]] == sorted(
        (c["source_val_top1"] for c in selection["erm"]["3d"]["candidates"]), reverse=True)
    changed = [{**r, "top1": 100.0 - r["top1"], "new_top1": -r["new_top1"]} for r in records]
    assert select(changed) == selection


def test_ties_go_to_fewer_steps_then_the_smaller_lr():
    def rec(lr, steps, score):
        return {"variant": "clipood", "domain": "line", "lr": lr, "steps": steps, "seed": 0, "source_val_top1": score}

    tied = [rec(3e-4, 1000, 40.0), rec(1e-4, 3000, 40.0), rec(3e-4, 300, 40.0), rec(1e-4, 300, 40.0), rec(3e-5, 300, 39.0)]
    cell = select(tied)["clipood"]["line"]
    assert (cell["lr"], cell["steps"]) == (1e-4, 300)
    assert [(c["lr"], c["steps"]) for c in cell["candidates"]] == [(1e-4, 300), (3e-4, 300), (3e-4, 1000),
                                                                    (1e-4, 3000), (3e-5, 300)]
    # the best peer: highest mean over the domains, ties to the first listed
    selection = {"a": {"x": _cell(1, 1, 50.0), "y": _cell(1, 1, 30.0)}, "b": {"x": _cell(1, 1, 40.0), "y": _cell(1, 1, 40.0)}}
    assert best_of(selection, ["a", "b"], ["x", "y"]) == "a" and best_of(selection, ["b", "a"], ["x", "y"]) == "b"
    assert best_of(selection, ["a", "b"], ["x", "z"]) is None


# --- a tiny study end to end ---------------------------------------------------------------------------
in_process = in_process_runner({"train.py": train, "validate.py": validate})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """EmojiDG-like v2 shards: styles, base/new classes, a `test` split (what the held-out style is scored on)."""
    root = tmp_path_factory.mktemp("emojidg")
    write_synthetic_dataset(root, domains=("3d", "flat", "mono"), per_class=2, splits=("train", "val", "test"),
                            shard_size=16)
    info = json.loads((root / "_info.json").read_text())
    (root / "_info.json").write_text(json.dumps({**info, "benchmark_version": "v2"}))
    return root


def argv(data, out, *extra):
    return ["--data-dir", str(data), "--out", str(out), "--domains", "3d", "--variants", "erm", "clipood", "wise_ft",
            "--lrs", "0.001", "--steps", "2", "3", "--grid-seeds", "0", "--headline-seeds", "0", "1",
            "--other-seeds", "0", "--ablation-seeds", "0", "--model", TINY_ARCH, "--model-config", TINY_CONFIG,
            "--random-init", "-b", "4", "--workers", "0", *extra]


@pytest.fixture(scope="module")
def study(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)
    try:
        assert rb.main(argv(data, out, "--phase", "grid"), runner=in_process) == 0
    finally:
        mp.undo()
    return out


def chosen_alpha_of_export(wise_ft_dir):
    """Independently of the runner: the alpha train.py chose for a wise_ft/ export, from its own recipe."""
    return json.loads((wise_ft_dir / "config.json").read_text())["pretrained_cfg"]["recipe"]["wise_ft"]["alpha"]


def held_out_val_of_export(export_dir, data):
    """Independently of the runner and of train.py's records: validate.py's top-1 of the export on the held-out style's
    val split (what train.py scores as its target)."""
    (row,) = validate.main(["--model", TINY_ARCH, "--checkpoint", str(export_dir), "--data-dir", str(data),
                            "--domains", "3d", "--split", "val", "--workers", "0"])
    assert row["num_samples"] == 8  # the tiny benchmark's held-out val split
    return row["top1"]


def file_sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_val_of_export(run_dir):
    """Independently of the runner: the source val top-1 of the exported weights, from train.py's own records (the
    chosen alpha's score for WiSE-FT, else the best evaluation's)."""
    wise = json.loads((run_dir / "config.json").read_text())["pretrained_cfg"]["recipe"].get("wise_ft")
    if wise:
        return wise["scores"][str(float(wise["alpha"]))]
    return json.loads((run_dir / "result.json").read_text())["best_source_top1"]


def test_grid_phase_writes_the_layout_of_the_contract(study, data):
    results = study / "results"
    (zeroshot,) = json.loads((results / "zeroshot-3d.json").read_text())
    assert zeroshot["weights"] == "selected" and zeroshot["split"] == "test" and "ood_auroc_mcm" in zeroshot
    records = []
    for variant in ("erm", "clipood"):
        for steps in (2, 3):
            run_id = f"{variant}-3d-lr0.001-st{steps}-s0"
            record = json.loads((results / f"{run_id}.run.json").read_text())
            # CLIPood's runs also give the beta sweep: averages of their own steps (train.py --export-bma-betas)
            weights = ["selected", *(["last", "ema", "bma_beta0.1", "bma_beta0.25", "bma_beta0.5", "bma_beta1",
                                      "bma_beta2"]
                                     if variant == "clipood" else []), "wise_ft", "wise_ft_fixed"]
            assert record == {
                "run_id": run_id, "variant": variant, "domain": "3d", "lr": 0.001, "steps": steps, "seed": 0,
                "source_val_top1": source_val_of_export(study / "runs" / run_id),
                "phase": "grid", "train_args": record["train_args"],
                "weights": {w: f"runs/{run_id}" + ("" if w == "selected" else f"/{w}") for w in weights},
                "wise_ft_alpha": chosen_alpha_of_export(study / "runs" / run_id / "wise_ft"),
                "held_out_val_top1": held_out_val_of_export(study / "runs" / run_id, data),
                "selected_sha256": file_sha256(study / "runs" / run_id / "model.safetensors"),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # the in-process runner's: this process's
            assert record["train_args"][0] == "train.py" and record["train_args"][record["train_args"].index("--steps") + 1] == str(steps)
            for path in record["weights"].values():
                assert (study / path / "model.safetensors").is_file()
            rows = json.loads((results / f"{run_id}.json").read_text())
            assert [r["weights"] for r in rows] == weights
            for row in rows:
                assert row["split"] == "test" and {"top1", "base_top1", "new_top1", "hm", "top1_3d", "num_samples",
                                                   "ood_auroc_mcm", "ood_fpr95_mcm", "ood_auroc_energy",
                                                   "ood_fpr95_energy"} <= set(row)
            preds = json.loads((results / f"{run_id}.predictions.json").read_text())
            assert list(preds["models"]) == [f"{TINY_ARCH}|weights={w}" for w in weights]
            assert all(len(p["target"]) == rows[0]["num_samples"] for p in preds["models"].values())
            records.append(record)
    for steps in (2, 3):  # WiSE-FT: the ERM run's wise_ft export, its rows and predictions relabelled "selected"
        erm, run_id = f"erm-3d-lr0.001-st{steps}-s0", f"wise_ft-3d-lr0.001-st{steps}-s0"
        record = json.loads((results / f"{run_id}.run.json").read_text())
        erm_record = json.loads((results / f"{erm}.run.json").read_text())
        assert record == {
            "run_id": run_id, "variant": "wise_ft", "domain": "3d", "lr": 0.001, "steps": steps, "seed": 0,
            "source_val_top1": source_val_of_export(study / "runs" / erm / "wise_ft"), "phase": "grid",
            "train_args": erm_record["train_args"], "weights": {"selected": f"runs/{erm}/wise_ft"},
            "wise_ft_alpha": erm_record["wise_ft_alpha"], "derived_from": erm,
            "held_out_val_top1": held_out_val_of_export(study / "runs" / erm / "wise_ft", data),
            "selected_sha256": file_sha256(study / "runs" / erm / "wise_ft" / "model.safetensors"),
            "omp_num_threads": erm_record["omp_num_threads"]}
        (wise_row,) = [r for r in json.loads((results / f"{erm}.json").read_text()) if r["weights"] == "wise_ft"]
        assert json.loads((results / f"{run_id}.json").read_text()) == [{**wise_row, "weights": "selected"}]
        erm_preds = json.loads((results / f"{erm}.predictions.json").read_text())
        preds = json.loads((results / f"{run_id}.predictions.json").read_text())
        assert preds == {**erm_preds, "models": {f"{TINY_ARCH}|weights=selected": {
            **erm_preds["models"][f"{TINY_ARCH}|weights=wise_ft"], "weights": "selected"}}}
        assert not (study / "runs" / run_id).exists()  # nothing trained for it
        records.append(record)
    selection = json.loads((study / "selection.json").read_text())
    assert selection == json.loads(json.dumps(select(records)))
    assert set(selection) == {"erm", "clipood", "wise_ft"} and selection["clipood"]["3d"]["seeds"] == [0]


def test_a_rerun_skips_finished_runs_and_dry_run_lists_exactly_what_is_left(study, data, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert rb.main(argv(data, study, "--phase", "grid"), runner=lambda cmd: pytest.fail(f"ran {cmd}")) == 0
    assert ("# phase grid: 6 runs (2 of them WiSE-FT exports of others), 10 optimizer steps; left: 0 runs, 0 optimizer "
            "steps") in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in (study / "results").iterdir()}
    assert rb.main(argv(data, study, "--dry-run"), runner=lambda cmd: pytest.fail(f"ran {cmd}")) == 0
    lines = capsys.readouterr().out.splitlines()
    selection = json.loads((study / "selection.json").read_text())
    clipood = selection["clipood"]["3d"]
    # wise_ft's seed 1 is the wise_ft/ export of ERM's seed-1 run at wise_ft's selected config (once, if ERM's own)
    seeds = list(dict.fromkeys(f"{trained}-3d-lr{selection[v]['3d']['lr']:g}-st{selection[v]['3d']['steps']}-s1"
                               for v, trained in (("erm", "erm"), ("clipood", "clipood"), ("wise_ft", "erm"))))
    ablations = [f"{v}-3d-lr{clipood['lr']:g}-st{clipood['steps']}-s0" for v in rb.ABLATIONS]
    trained = [shlex.split(line) for line in lines if not line.startswith("#") and "train.py" in line]
    assert [c[c.index("--experiment") + 1] for c in trained] == seeds + ablations
    validated = [shlex.split(line) for line in lines if not line.startswith("#") and "validate.py" in line]
    assert [Path(c[c.index("--results-file") + 1]).stem for c in validated] == seeds + ablations
    assert len(lines) == 3 + 2 * len(seeds + ablations)
    steps = sum(int(run_id.split("-st")[1].split("-")[0]) for run_id in seeds)
    assert (f"# phase seeds: 3 runs (1 of them WiSE-FT exports of others), {steps} optimizer steps; left: 3 runs, "
            f"{steps} optimizer steps") in lines
    n = len(rb.ABLATIONS)
    assert (f"# phase ablation: {n} runs, {n * clipood['steps']} optimizer steps; left: {n} runs, "
            f"{n * clipood['steps']} optimizer steps") in lines
    assert {p: p.stat().st_mtime_ns for p in (study / "results").iterdir()} == before  # a dry run writes nothing
    # a run validated but not yet recorded (killed in between) gets its record on the next pass, nothing re-run
    record = study / "results" / "erm-3d-lr0.001-st2-s0.run.json"
    text = record.read_text()
    record.unlink()
    assert rb.main(argv(data, study, "--phase", "grid"), runner=lambda cmd: pytest.fail(f"ran {cmd}")) == 0
    assert record.read_text() == text


def test_a_study_packed_mid_grid_resumes_on_a_new_machine_from_its_pack(study, data, tmp_path, monkeypatch, capsys):
    """The session ends mid-grid and the next one starts on a machine without ``output/``: the committed pack, restored,
    is all the runner needs. Only the run that had not finished trains again; the unfinished cell's grid runs kept
    their predictions in the pack (either may become its selected configuration), a selected cell's other runs not."""
    from emojidg import pack_study
    monkeypatch.chdir(REPO)
    old = tmp_path / "old_machine"
    shutil.copytree(study / "results", old / "results")
    unfinished = "clipood-3d-lr0.001-st3-s0"
    for path in (old / "results").glob(f"{unfinished}.*"):
        path.unlink()
    selection = json.loads((study / "selection.json").read_text())
    del selection["clipood"]
    (old / "selection.json").write_text(json.dumps(selection))
    packed = tmp_path / "committed"
    assert pack_study.main(["--study", str(old), "--out", str(packed)]) == 0
    assert capsys.readouterr().out == f"packed 5 runs into {packed} (3 with their per-image predictions)\n"
    erm_off = next(f"erm-3d-lr0.001-st{st}-s0" for st in (2, 3) if st != selection["erm"]["3d"]["steps"])
    kept = {p.name.removesuffix(".predictions.json.gz") for p in (packed / "results").glob("*.predictions.json.gz")}
    assert "clipood-3d-lr0.001-st2-s0" in kept and erm_off not in kept
    assert json.loads((packed / "results" / f"{erm_off}.run.json").read_text())["predictions_kept"] is False

    new = tmp_path / "new_machine"
    order = []
    with monkeypatch.context() as m:  # the order a cut-off restore relies on: predictions, rows, WiSE-FT records, the rest
        m.setattr(pack_study, "write_bytes_atomic", lambda path, data: order.append(path.name) or write_bytes_atomic(path, data))
        assert pack_study.main(["--study", str(new), "--restore", str(packed)]) == 0
    kinds = ["predictions" if n.endswith(".predictions.json") else "rows" if not n.endswith(".run.json")
             else "wise_ft record" if n.startswith("wise_ft-") else "record" for n in order]
    assert kinds == sorted(kinds, key=["predictions", "rows", "wise_ft record", "record"].index) and len(set(kinds)) == 4
    assert capsys.readouterr().out == f"restored 5 runs from {packed} into {new} (16 files written, the rest already there)\n"
    assert not (new / "runs").exists()
    assert pack_study.main(["--study", str(new), "--restore", str(packed)]) == 0  # again: nothing left to write
    assert capsys.readouterr().out.endswith("(0 files written, the rest already there)\n")
    trained = []

    def runner(cmd):
        if cmd[1] == "train.py":
            trained.append(cmd[cmd.index("--experiment") + 1])
        return in_process(cmd)
    assert rb.main(argv(data, new, "--phase", "grid"), runner=runner) == 0
    assert trained == [unfinished]
    assert json.loads((new / "selection.json").read_text()) == json.loads((study / "selection.json").read_text())
    for name in kept:  # restored: the same predictions, un-gzipped
        path = f"results/{name}.predictions.json"
        assert json.loads((new / path).read_text()) == json.loads((old / path).read_text()), name
    assert not (new / "results" / f"{erm_off}.predictions.json").exists()
    assert (new / "results" / f"{erm_off}.json").read_bytes() == (study / "results" / f"{erm_off}.json").read_bytes()

    # restoring again (the runner has selected more since) and into the folder the pack came from (its predictions
    # un-gzipped in other whitespace, its records without predictions_kept) writes nothing
    for folder in (new, old):
        assert pack_study.main(["--study", str(folder), "--restore", str(packed)]) == 0
        assert capsys.readouterr().out.endswith("(0 files written, the rest already there)\n")
    assert json.loads((new / "selection.json").read_text()) == json.loads((study / "selection.json").read_text())

    # shipping needs weights, which a pack does not hold: a clear error naming the command that re-creates them
    full = json.loads((new / "selection.json").read_text())
    first = rb.shipped_variants(full, ["3d"], ["erm", "clipood", "wise_ft"])[0]
    cell = full[first]["3d"]
    first_run = f"{first}-3d-lr{cell['lr']:g}-st{cell['steps']}-s0"  # its first shipped run, restored: no run folder
    assert first_run != unfinished and not (new / "runs" / first_run).exists()
    record_file = new / "results" / f"{first_run}.run.json"
    record = json.loads(record_file.read_text())
    command = record["train_args"]
    assert command[:1] == ["train.py"] and command[command.index("--experiment") + 1] == first_run
    record_file.write_text(json.dumps({**record, "omp_num_threads": "1"}))  # as the runner's --jobs 2 on 2 cores records
    manifest = (REPO / "clipood_zoo" / "models" / "shipped_weights.json").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, new, "--phase", "seeds", "--headline-seeds", "0", "--ship"), runner=lambda cmd: pytest.fail("ran"))
    assert exc.value.code == 2 and capsys.readouterr().err.endswith(
        f"run_benchmark.py: error: --ship: {new / 'runs' / first_run} is gone (a study restored by pack_study.py --restore "
        "holds result files, not weights); re-create it from the repository root with its recorded command: "
        f"OMP_NUM_THREADS=1 python {shlex.join(command)}\n")
    # re-created with other weights than the study scored: refused; with the same weights, shipping goes on
    shutil.copytree(new / "runs" / unfinished, new / "runs" / first_run)
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, new, "--phase", "seeds", "--headline-seeds", "0", "--ship"), runner=lambda cmd: pytest.fail("ran"))
    scored = json.loads((new / "results" / f"{first_run}.run.json").read_text())["selected_sha256"]
    assert exc.value.code == 2 and capsys.readouterr().err.endswith(
        f"run_benchmark.py: error: --ship: {new / 'runs' / first_run} holds other weights (sha256 "
        f"{file_sha256(new / 'runs' / unfinished / 'model.safetensors')}) than the study scored ({scored}): re-created "
        f"with other threads, torch or data than the run's; re-create it with OMP_NUM_THREADS=1 python "
        f"{shlex.join(command)}, or move {new / 'results'}/{first_run}.* "
        f"{new / 'results'}/{first.replace('clipood', 'clipood_wise_ft').replace('erm', 'wise_ft')}"
        f"{first_run.removeprefix(first)}.* aside and run the study to score it again (a grid run scored again may "
        "change its cell's selection)\n")
    shutil.rmtree(new / "runs" / first_run)
    shutil.copytree(study / "runs" / first_run, new / "runs" / first_run)
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, new, "--phase", "seeds", "--headline-seeds", "0", "--ship"), runner=lambda cmd: pytest.fail("ran"))
    assert exc.value.code == 2 and "holds other weights" not in capsys.readouterr().err  # the sha256 check passed
    shutil.rmtree(new / "runs" / first_run)  # a record from before selected_sha256: nothing to check against
    shutil.copytree(new / "runs" / unfinished, new / "runs" / first_run)
    record_file.write_text(json.dumps({k: v for k, v in record.items() if k != "selected_sha256"}))
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, new, "--phase", "seeds", "--headline-seeds", "0", "--ship"), runner=lambda cmd: pytest.fail("ran"))
    assert exc.value.code == 2 and "holds other weights" not in capsys.readouterr().err
    assert (REPO / "clipood_zoo" / "models" / "shipped_weights.json").read_bytes() == manifest

    # a restored run whose WiSE-FT files are missing (an older pack) cannot derive them without its export: a clear error
    (new / "results" / f"wise_ft-{erm_off.removeprefix('erm-')}.run.json").unlink()
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, new, "--phase", "grid"), runner=lambda cmd: pytest.fail(f"ran {cmd}"))
    assert exc.value.code == 2 and capsys.readouterr().err.endswith(
        f"run_benchmark.py: error: wise_ft-{erm_off.removeprefix('erm-')} is the WiSE-FT export of {erm_off}, whose "
        f"export {new / 'runs' / erm_off / 'wise_ft'} or per-image predictions are gone (a study restored by "
        f"pack_study.py --restore holds result files, not weights); move {new / 'results'}/{erm_off}.* aside to train "
        "it again\n")

    # into a folder holding another result, or another selection of a cell, it refuses before writing anything
    other = tmp_path / "other"
    (other / "results").mkdir(parents=True)
    (other / "results" / f"{erm_off}.json").write_text("[]")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        pack_study.main(["--study", str(other), "--restore", str(packed)])
    assert exc.value.code == 2 and capsys.readouterr().err == (
        f"pack_study.py: error: {other / 'results' / (erm_off + '.json')} already holds another result than {packed} "
        "(1 such files); restore into an empty --study folder, or pack this one first\n")
    assert [p.name for p in (other / "results").iterdir()] == [f"{erm_off}.json"] and not (other / "selection.json").exists()
    (other / "results" / f"{erm_off}.json").unlink()
    moved = {"erm": {"3d": {**selection["erm"]["3d"], "steps": 5}}}
    (other / "selection.json").write_text(json.dumps(moved))
    with pytest.raises(SystemExit) as exc:
        pack_study.main(["--study", str(other), "--restore", str(packed)])
    assert exc.value.code == 2 and capsys.readouterr().err == (
        f"pack_study.py: error: {other / 'selection.json'} selects another configuration for erm held out on 3d than "
        "the pack; restore into an empty --study folder, or pack this one first\n")
    assert list((other / "results").iterdir()) == [] and json.loads((other / "selection.json").read_text()) == moved
    # a selection of other cells is kept and extended by the pack's
    flyp = {"flyp": {"3d": selection["erm"]["3d"]}}
    (other / "selection.json").write_text(json.dumps(flyp))
    assert pack_study.main(["--study", str(other), "--restore", str(packed)]) == 0
    assert json.loads((other / "selection.json").read_text()) == {**selection, **flyp}

    # a restore cut off before a run's record: the runner says so instead of failing on the missing run folder
    (other / "results" / f"{erm_off}.run.json").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, other, "--phase", "grid"), runner=lambda cmd: pytest.fail(f"ran {cmd}"))
    assert exc.value.code == 2 and capsys.readouterr().err.endswith(
        f"run_benchmark.py: error: {other / 'results' / (erm_off + '.json')} has no .run.json beside it and "
        f"{other / 'runs' / erm_off} no result.json: a restore (pack_study.py --restore) was interrupted; run it again, "
        "or move the run's files aside to train it again\n")


def test_a_run_is_recorded_only_after_its_wise_ft_run(data, tmp_path, monkeypatch, capsys):
    """The record of a trained run comes last, so a run the pack holds (it packs recorded runs) always has its WiSE-FT
    files beside it: a runner stopped in between leaves the run unrecorded, and the next pass finishes it without
    training anything."""
    monkeypatch.chdir(REPO)
    args = argv(data, tmp_path, "--phase", "grid", "--variants", "erm", "wise_ft", "--steps", "2")

    def stopped(run, record, opts):
        raise rb.ConfigError("stopped")
    with monkeypatch.context() as m:
        m.setattr(rb, "write_derived", stopped)
        with pytest.raises(SystemExit):
            rb.main(args, runner=in_process)
    results = tmp_path / "results"
    assert (results / "erm-3d-lr0.001-st2-s0.json").is_file() and not (results / "erm-3d-lr0.001-st2-s0.run.json").exists()
    assert rb.main(args, runner=lambda cmd: pytest.fail(f"ran {cmd}")) == 0
    assert json.loads((results / "wise_ft-3d-lr0.001-st2-s0.run.json").read_text())["derived_from"] == "erm-3d-lr0.001-st2-s0"
    assert (results / "erm-3d-lr0.001-st2-s0.run.json").is_file()


def test_minutes_start_only_the_runs_expected_to_end_in_time(data, tmp_path, monkeypatch, capsys):
    """--minutes: a run whose estimate (steps * --seconds-per-step, plus validate.py's start and a share per weights it
    scores) exceeds what is left is not started, and a shorter one later in the plan still is; a run whose training is
    done counts its validation only; the next call runs what was left."""
    monkeypatch.chdir(REPO)
    calls = []

    def runner(cmd):
        calls.append((cmd[1], Path(cmd[cmd.index("--results-file") + 1]).stem if cmd[1] == "validate.py"
                      else cmd[cmd.index("--experiment") + 1]))
        return in_process(cmd)
    # an ERM run scores 3 weights (selected, wise_ft, wise_ft_fixed): 60 + 3 * 25 = 135 s of validation. At 600 s a
    # step, 2 steps need 1335 s, within 27.5 min (1650 s); 3 steps need 1935 s, not. The 3-step run comes first.
    assert (rb.VALIDATE_START_SECONDS, rb.VALIDATE_SECONDS_PER_WEIGHTS) == (60, 25)
    args = argv(data, tmp_path, "--phase", "grid", "--variants", "erm", "--steps", "3", "2")
    assert rb.main([*args, "--minutes", "27.5", "--seconds-per-step", "600"], runner=runner) == 0
    assert [c for c in calls if c[0] == "train.py"] == [("train.py", "erm-3d-lr0.001-st2-s0")]
    out = capsys.readouterr().out
    assert out.count("# left for a later call: erm-3d-lr0.001-st3-s0 needs about 32 min, 27 min are left of --minutes") == 1

    # trained, but its validation failed: within 5 minutes only the validation (135 s) fits
    def validation_fails(cmd):
        return 1 if cmd[1] == "validate.py" else runner(cmd)
    with pytest.raises(SystemExit):
        rb.main([*args, "--minutes", "60", "--seconds-per-step", "1"], runner=validation_fails)
    calls.clear()
    assert rb.main([*args, "--minutes", "5", "--seconds-per-step", "1000"], runner=runner) == 0
    assert calls == [("validate.py", "erm-3d-lr0.001-st3-s0")]
    assert (tmp_path / "results" / "erm-3d-lr0.001-st3-s0.run.json").is_file()
    for bad in (["--minutes", "-1"], ["--minutes", "nan"], ["--seconds-per-step", "0"], ["--seconds-per-step", "inf"]):
        with pytest.raises(SystemExit) as exc:
            rb.main([*args, *bad], runner=lambda cmd: pytest.fail("ran"))
        assert exc.value.code == 2 and "--minutes must be >= 0 and --seconds-per-step > 0" in capsys.readouterr().err


def test_minutes_learn_the_seconds_per_step_from_the_runs_of_the_call(data, tmp_path, monkeypatch, capsys):
    """--seconds-per-step is the guess until a run of the call has trained from its first step: then the slowest rate
    of the last RECENT_RUNS runs, times MEASURED_MARGIN, decides, faster or slower than the guess. A resumed run
    (its earlier steps are not in its seconds) and a validation-only run measure nothing. A clock the runner advances
    stands for the machine: train.py takes ``per_step`` seconds a step, validate.py 100 s."""
    monkeypatch.chdir(REPO)
    clock, per_step = [0.0], [0.0]
    monkeypatch.setattr(rb.time, "monotonic", lambda: clock[0])  # sweep.run_commands and Budget read the same clock
    trained = []

    def runner(cmd):
        if cmd[1] == "train.py":
            trained.append(cmd[cmd.index("--experiment") + 1])
            clock[0] += int(cmd[cmd.index("--steps") + 1]) * per_step[0]
        else:
            clock[0] += 100
        return in_process(cmd)
    assert (rb.MEASURED_MARGIN, rb.RECENT_RUNS) == (1.5, 2)
    # the zero-shot evaluation (100 s), then the 1-step run. Guess 1000 s a step: it needs 1000 + 135 s of the 1700
    # left; measured at 10 s a step, the 3-step run needs 3 * 15 + 135 = 180 s of the 1590 left, where the guess said
    # 3135
    args = argv(data, tmp_path / "fast", "--phase", "grid", "--variants", "erm", "--steps", "1", "3")
    per_step[0] = 10
    assert rb.main([*args, "--minutes", "30", "--seconds-per-step", "1000"], runner=runner) == 0
    assert trained == ["erm-3d-lr0.001-st1-s0", "erm-3d-lr0.001-st3-s0"]
    assert "left for a later call" not in capsys.readouterr().out

    # guess 1 s a step: the 1-step run needs 136 s; measured at 600 s a step (800 s with its validation and the
    # zero-shot one), the 3-step run needs 3 * 900 + 135 = 2835 s of the 1000 left, where the guess said 138
    trained.clear()
    args = argv(data, tmp_path / "slow", "--phase", "grid", "--variants", "erm", "--steps", "1", "3")
    per_step[0], clock[0] = 600, 0.0
    assert rb.main([*args, "--minutes", "30", "--seconds-per-step", "1"], runner=runner) == 0
    assert trained == ["erm-3d-lr0.001-st1-s0"]
    assert "# left for a later call: erm-3d-lr0.001-st3-s0 needs about 47 min, 17 min are left of --minutes" \
        in capsys.readouterr().out

    # the 3-step run trains, but its validation fails: a next call has only its validation left
    with pytest.raises(SystemExit):
        rb.main([*args, "--minutes", "600", "--seconds-per-step", "1"],
                runner=lambda cmd: 1 if cmd[1] == "validate.py" else runner(cmd))
    # and the 1-step run's rows are gone, its folder holding a checkpoint: the next call resumes it (train.py --resume;
    # the empty checkpoint stands for one, and the runner trains the run afresh). Neither measures a rate.
    out = tmp_path / "slow"
    for f in (out / "results" / "erm-3d-lr0.001-st1-s0.json", out / "results" / "erm-3d-lr0.001-st1-s0.run.json"):
        f.unlink()
    shutil.rmtree(out / "runs" / "erm-3d-lr0.001-st1-s0")
    (out / "runs" / "erm-3d-lr0.001-st1-s0").mkdir()
    (out / "runs" / "erm-3d-lr0.001-st1-s0" / "checkpoint.pt").write_bytes(b"")
    measured, trained[:] = [], []
    monkeypatch.setattr(rb.Budget, "measured", lambda self, steps, seconds: measured.append(steps))

    def resumes(cmd):
        if "--resume" in cmd:
            i = cmd.index("--resume")
            (Path(cmd[i + 1]) / "checkpoint.pt").unlink()
            cmd = cmd[:i] + cmd[i + 2:]
        return runner(cmd)
    assert rb.main([*args, "--minutes", "600", "--seconds-per-step", "1"], runner=resumes) == 0
    assert trained == ["erm-3d-lr0.001-st1-s0"] and measured == []
    assert (out / "results" / "erm-3d-lr0.001-st3-s0.run.json").is_file()

    # the last RECENT_RUNS runs' slowest own rate: a slow run drops out once two others are measured
    budget = rb.Budget(deadline=3600, seconds_per_step=2.0)
    assert budget.rate() == 2.0
    budget.trained += [(100, 80.0), (300, 60.0)]
    assert budget.rate() == pytest.approx(1.5 * 0.8)
    budget.trained.append((1000, 300.0))
    assert budget.rate() == pytest.approx(1.5 * 0.3)


def test_the_runner_writes_an_empty_selection_before_the_first_grid_run(data, tmp_path, monkeypatch):
    """A study packed before any cell is selected still has its selection.json (pack_study.py and report.py read it)."""
    monkeypatch.chdir(REPO)
    seen = []

    def runner(cmd):
        seen.append(json.loads((tmp_path / "selection.json").read_text()))
        return 1
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, tmp_path, "--phase", "grid"), runner=runner)
    assert exc.value.code == 2 and seen == [{}]


def test_a_call_with_fewer_variants_keeps_the_other_variants_selection(study, data, monkeypatch):
    """A re-ship of ERM and CLIPood alone (``--variants erm clipood``) recomputes only their cells: WiSE-FT's
    selection, which report.py needs, stays in selection.json."""
    monkeypatch.chdir(REPO)
    before = json.loads((study / "selection.json").read_text())
    assert set(before) == {"erm", "clipood", "wise_ft"}
    assert rb.main(argv(data, study, "--phase", "grid", "--variants", "erm"), runner=lambda cmd: pytest.fail(f"ran {cmd}")) == 0
    assert json.loads((study / "selection.json").read_text()) == before


def test_seeds_phase_runs_the_selected_configs_and_never_moves_the_selection(study, data, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    selection = (study / "selection.json").read_text()
    assert rb.main(argv(data, study, "--phase", "seeds"), runner=in_process) == 0
    assert (study / "selection.json").read_text() == selection
    selected = json.loads(selection)
    for variant in ("erm", "clipood", "wise_ft"):
        cell = selected[variant]["3d"]
        record = json.loads((study / "results" / f"{variant}-3d-lr{cell['lr']:g}-st{cell['steps']}-s1.run.json").read_text())
        assert record["phase"] == "seeds" and record["seed"] == 1
    capsys.readouterr()
    assert rb.main(argv(data, study, "--dry-run", "--phase", "seeds"), runner=lambda cmd: pytest.fail(f"ran {cmd}")) == 0
    trained = {(selected[v]["3d"]["lr"], selected[v]["3d"]["steps"], t)
               for v, t in (("erm", "erm"), ("clipood", "clipood"), ("wise_ft", "erm"))}
    assert capsys.readouterr().out == ("# phase seeds: 3 runs (1 of them WiSE-FT exports of others), {0} optimizer steps; "
                                       "left: 0 runs, 0 optimizer steps\n").format(sum(steps for _, steps, _ in trained))


def test_a_wise_ft_run_is_never_derived_from_a_run_without_its_export(tmp_path):
    """An ERM run trained before --export-wise-ft has no wise_ft/ export: deriving WiSE-FT from it is refused with
    what to do, and nothing is written."""
    results = tmp_path / "results"
    results.mkdir()
    erm = rb.StudyRun("erm", "3d", 1e-3, 2, 0, "grid")
    record = {"weights": {"selected": f"runs/{erm.run_id}"}}
    (results / f"{erm.run_id}.run.json").write_text(json.dumps(record))
    with pytest.raises(rb.ConfigError, match=f"wise_ft-3d-lr0.001-st2-s0 is the WiSE-FT export of {erm.run_id}, which "
                                             "was trained without --export-wise-ft"):
        rb.write_derived(rb.StudyRun("wise_ft", "3d", 1e-3, 2, 0, "grid"), record,
                         rb.StudyOptions(tmp_path, tmp_path, "test"))
    assert [p.name for p in results.iterdir()] == [f"{erm.run_id}.run.json"]


def test_ship_before_the_seed_runs_exist_and_missing_data_exit_2(study, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, tmp_path / "empty", "--phase", "seeds", "--ship"), runner=lambda cmd: pytest.fail("ran"))
    assert exc.value.code == 2
    err = capsys.readouterr().err  # without peers nothing waits for a best peer: the empty study is what is missing
    assert err.startswith(f"run_benchmark.py: error: no result files in {tmp_path / 'empty' / 'results'} ") and (
        err.endswith("; run tools/emojidg/run_benchmark.py first\n"))
    with pytest.raises(SystemExit) as exc:  # a study with a peer ships the best one, unknown before the grid ends
        rb.main(argv(data, tmp_path / "empty", "--phase", "seeds", "--ship", "--variants", "erm", "lp_ft"),
                runner=lambda cmd: pytest.fail("ran"))
    assert exc.value.code == 2
    assert "run_benchmark.py: error: --ship: the best peer is not known until every peer has a selected config" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(tmp_path / "nowhere", tmp_path / "out", "--dry-run"))
    assert exc.value.code == 2 and "cannot read" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_report_reads_what_the_runner_wrote(study, data, tmp_path, monkeypatch):
    """The runner and report.py --study meet at the files alone: after the seeds phase the report's ERM and
    CLIPood cells are the means of the selected runs' validate rows (seeds 0 and 1), and CLIPood's EMA and
    last weights come from the same runs' rows."""
    import statistics

    from emojidg import report

    monkeypatch.chdir(REPO)
    rb.main(argv(data, study, "--phase", "seeds"), runner=in_process)  # a no-op when the seeds test ran first
    assert report.main(["--study", str(study), "--out", str(tmp_path / "report")]) == 0
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    selection = json.loads((study / "selection.json").read_text())

    def rows(variant, weights="selected"):
        cell = selection[variant]["3d"]
        return [next(r for r in json.loads((study / "results" / f"{variant}-3d-lr{cell['lr']:g}-st{cell['steps']}-s{s}.json")
                                            .read_text()) if r["weights"] == weights) for s in (0, 1)]

    for variant in ("erm", "clipood"):
        cell = results["held_out_top1"][variant]["3d"]
        assert cell["n"] == 2 and cell["mean"] == pytest.approx(statistics.mean(r["top1"] for r in rows(variant)), abs=0.01)
        chosen = [chosen_alpha_of_export(study / "runs" / f"{variant}-3d-lr{selection[variant]['3d']['lr']:g}-st"
                                         f"{selection[variant]['3d']['steps']}-s{s}" / "wise_ft") for s in (0, 1)]
        assert results["wise_ft_chosen_alpha"][f"{variant}@wise_ft"] == {"3d": chosen}
    # the WiSE-FT variant (derived: the ERM runs' exports, at its own selected config) from its own records
    assert results["wise_ft_chosen_alpha"]["wise_ft"]["3d"] == [chosen_alpha_of_export(
        study / "runs" / f"erm-3d-lr{selection['wise_ft']['3d']['lr']:g}-st{selection['wise_ft']['3d']['steps']}-s{s}"
        / "wise_ft") for s in (0, 1)]
    averaging = results["ablations"]["averaging"]["top1"]
    for weights in ("ema", "last"):
        assert averaging[f"clipood@{weights}"]["3d"]["mean"] == pytest.approx(
            statistics.mean(r["top1"] for r in rows("clipood", weights)), abs=0.01)
    md = (tmp_path / "report" / "results.md").read_text().splitlines()
    erm = next(li for li in md if li.startswith("| ERM |"))
    assert erm.startswith(f"| ERM | {results['held_out_top1']['erm']['3d']['mean']:.1f} ± ") and erm.endswith("| 2 / 0 / 0 / 0 |")


def test_shipped_cards_give_paired_intervals_against_zero_shot_and_erm(study, data, monkeypatch):
    """interval_lines: the shipped run against zero-shot and against ERM of the same seed, each the paired
    class-bootstrap of the per-image predictions validate.py wrote (recomputed here from the files)."""
    import numpy as np

    from clipood_zoo.stats import paired_class_bootstrap
    from emojidg.study_results import load_study

    monkeypatch.chdir(REPO)
    rb.main(argv(data, study, "--phase", "seeds"), runner=in_process)  # a no-op when the seeds test ran first
    selection = json.loads((study / "selection.json").read_text())

    def correct(stem, key_part):
        models = json.loads((study / "results" / f"{stem}.predictions.json").read_text())["models"]
        (entry,) = [v for k, v in models.items() if key_part in k]
        return np.equal(entry["prediction"], entry["target"]), np.asarray(entry["target"])

    cell, erm = selection["clipood"]["3d"], selection["erm"]["3d"]
    mine, target = correct(f"clipood-3d-lr{cell['lr']:g}-st{cell['steps']}-s1", "weights=selected")
    zero, _ = correct("zeroshot-3d", TINY_ARCH)
    theirs, _ = correct(f"erm-3d-lr{erm['lr']:g}-st{erm['steps']}-s1", "weights=selected")
    lines = rb.interval_lines(load_study(study), "clipood", "3d", 1)
    for line, other in zip(lines, (zero, theirs)):
        ref = paired_class_bootstrap(mine, other, target)
        assert f"{ref} points (95%, bootstrap over classes; {'resolved' if ref.resolved else 'not resolved'})" in line
    assert lines[0].startswith("- top-1 minus zero-shot") and "ERM (seed 1" in lines[1] and len(lines) == 2


def test_shipped_variants_are_the_headline_methods_the_study_ran_and_its_best_peer():
    """--ship replaces only weights the study measured: ERM and CLIPood alone ship those two (WiSE-FT's stay);
    with peers, the one with the best mean source val over the domains joins them, and none ships before every
    peer is selected everywhere."""
    cell = lambda val: {"lr": 1e-4, "steps": 300, "source_val_top1": val, "seeds": [0], "candidates": []}  # noqa: E731
    selection = {v: {"3d": cell(50.0), "line": cell(50.0)} for v in ("erm", "clipood", "wise_ft")}
    assert rb.shipped_variants(selection, ["3d", "line"], ["erm", "clipood"]) == ["clipood", "erm"]
    with pytest.raises(rb.ConfigError, match="the best peer is not known"):
        rb.shipped_variants(selection, ["3d", "line"], ["erm", "lp_ft"])
    selection.update(lp_ft={"3d": cell(60.0), "line": cell(40.0)}, car_ft={"3d": cell(10.0), "line": cell(10.0)},
                     croft={"3d": cell(50.0), "line": cell(50.0)}, flyp={"3d": cell(52.0)})  # lp_ft's mean: 50
    with pytest.raises(rb.ConfigError, match="the best peer is not known"):  # flyp alone lacks line
        rb.shipped_variants(selection, ["3d", "line"], list(rb.GRID_VARIANTS))
    selection["flyp"]["line"] = cell(49.0)
    assert rb.shipped_variants(selection, ["3d", "line"], list(rb.GRID_VARIANTS)) == ["clipood", "erm", "wise_ft", "flyp"]


def test_a_shipped_runs_recipe_is_what_its_own_train_command_set(study):
    """recipe_of reads lr, steps, warm-up, batch and weight decay from the run's recorded train.py argv (v1's fixed
    RECIPE would misstate a run selected at other steps); lp_steps only where the method has them."""
    record = json.loads((study / "results" / "clipood-3d-lr0.001-st3-s0.run.json").read_text())
    args = record["train_args"]
    value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    assert rb.recipe_of(args) == {"lr": 0.001, "steps": 3, "warmup_steps": int(value("--warmup-steps")),
                                  "batch_size": int(value("-b")), "weight_decay": float(value("--weight-decay"))}
    assert rb.recipe_of(["train.py", "--model", "m", "--data-dir", "d", "--method", "lp_ft", "--steps", "1000",
                         "--lp-steps", "200"])["lp_steps"] == 200



def test_ship_refuses_a_mini_subset_of_another_benchmark_version_before_writing(study, data, tmp_path, monkeypatch,
                                                                                 capsys):
    """--ship records each card's score on the committed subset, so a subset of another version than the study's
    data is refused before anything is written."""
    monkeypatch.chdir(REPO)
    v1_mini = tmp_path / "v1-mini"  # the study's shards' info, recorded as v1 (no version key)
    v1_mini.mkdir()
    info = json.loads((data / "_info.json").read_text())
    (v1_mini / "_info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "benchmark_version"}))
    monkeypatch.setattr(rb, "MINI", v1_mini)
    monkeypatch.setattr(rb, "WEIGHTS", tmp_path / "weights")
    monkeypatch.setattr(rb, "record_shipped", lambda *a: pytest.fail("recorded"))
    with pytest.raises(SystemExit) as exc:
        rb.main(argv(data, study, "--phase", "grid", "--ship", "--variants", "erm", "clipood"),
                runner=lambda cmd: pytest.fail(f"ran {cmd}"))
    assert exc.value.code == 2 and not (tmp_path / "weights").exists()
    assert "--ship: datasets/emojidg-mini is EmojiDG v1 but the study's data is v2; rebuild the subset" in (
        capsys.readouterr().err)


def test_the_mini_check_scores_the_fp16_file_it_ships(study, data, tmp_path, monkeypatch):
    """mini_check's card lines are validate.py's top-1 of the model rounded to fp16 (what --ship writes), on the
    subset's held-out style: recomputed here by scoring an fp16 copy saved independently."""
    import torch

    import clipood_zoo

    monkeypatch.setattr(rb, "MINI", data)
    run_dir = study / "runs" / "clipood-3d-lr0.001-st2-s0"
    model = clipood_zoo.create_model(f"local-dir:{run_dir}")
    saved, save = [], clipood_zoo.save_pretrained
    monkeypatch.setattr(clipood_zoo, "save_pretrained", lambda *a, **kw: saved.append(kw["dtype"]) or save(*a, **kw))
    section = rb.mini_check(model, "clipood_vitt_emojidg_3d", TINY_ARCH, "3d")
    assert saved == [torch.float16]  # a tie of 8 tiny predictions may not show fp16 rounding: the file must be fp16
    monkeypatch.undo()
    half = clipood_zoo.create_model(f"local-dir:{run_dir}")
    with torch.no_grad():
        for p in half.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())
    clipood_zoo.save_pretrained(half, tmp_path / "half", model_name="clipood_vitt_emojidg_3d")
    (row,) = validate.main(["--model", TINY_ARCH, "--checkpoint", str(tmp_path / "half"), "--data-dir", str(data),
                            "--domains", "3d", "--workers", "0"])
    assert section.startswith(f"- mini_top1: {row['top1']}\n- mini_num_samples: {row['num_samples']}\n")
    assert row["num_samples"] == 8
