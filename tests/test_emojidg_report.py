"""tools/emojidg/report.py --study: every table of the v2 study checked against numpy on a fixture study folder
built from known per-image predictions (several methods, domains, seeds, weights rows, grid steps)."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipood_zoo.data import emojidg
from clipood_zoo.errors import ConfigError
from clipood_zoo.stats import PairedInterval, paired_class_bootstrap

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from emojidg import report, study_report  # noqa: E402
from emojidg.study_results import LONG_EMA_VARIANT, load_study  # noqa: E402

DOMAINS = emojidg.DOMAINS
TARGET = np.repeat(np.arange(16), 3)  # 16 classes, 3 images each: the same images in every file of a domain
LRS, STEPS = (1e-4, 1e-5), (300, 1000, 3000)
# the selected (lr, steps) per variant and domain; ERM picks another config on "line"
SELECTED = {"erm": {d: (1e-5, 300) if d == "line" else (1e-4, 1000) for d in DOMAINS},
            "clipood": {d: (1e-4, 1000) for d in DOMAINS},
            "lp_ft": {d: (1e-4, 300) for d in DOMAINS[:3]}}  # lp_ft has no results on the last style
# probability of a correct image per variant (and weights); the ablations run at CLIPood's config
ACCURACY = {"zeroshot": 0.2, "erm": 0.45, "clipood": 0.8, "clipood@ema": 0.75, "clipood@last": 0.6, "lp_ft": 0.5,
            "ce_bma": 0.78, "fixed_margin": 0.97, "clipood@bma_beta1.5": 0.7, "clipood@bma_beta0.2": 0.65,
            "clipood@bma_beta1": 0.72, "clipood@bma_beta0.5": 0.82,
            "clipood_lambda0.1": 0.79, "clipood_tau0.05": 0.5, "ce_bma_tau0.05": 0.6, "flyp": 0.9,
            "erm@wise_ft": 0.45, "clipood@wise_ft": 0.8, "erm@wise_ft_fixed": 0.55, "clipood@wise_ft_fixed": 0.7,
            f"{LONG_EMA_VARIANT}": 0.8, f"{LONG_EMA_VARIANT}@ema": 0.85, f"{LONG_EMA_VARIANT}@last": 0.6,
            f"{LONG_EMA_VARIANT}@bma_beta0.5": 0.75}


class Fixture:
    """Writes the study folder and keeps, per (variant@weights, domain, lr, steps, seed, phase), what it wrote."""

    def __init__(self, out: Path):
        self.results = out / "results"
        self.results.mkdir(parents=True)
        self.rng = np.random.default_rng(0)
        self.written = []  # dicts: name, domain, lr, steps, seed, phase, correct, row, open_set

    def rows(self, domain: str, correct_p: float):
        """A held-out row and its predictions (validate.py's fields), and open-set numbers."""
        correct = self.rng.random(len(TARGET)) < correct_p
        prediction = np.where(correct, TARGET, (TARGET + 1) % 16)
        base, new = self.rng.uniform(20, 80, size=2).round(3)
        row = {"model": "clip_vitt_emoji", "top1": round(100 * correct.mean(), 3), "base_top1": base,
               "new_top1": new, "hm": round(2 * base * new / (base + new), 3), "num_samples": len(TARGET),
               "split": "test", "classes": "all"}
        row[f"top1_{domain}"] = row["top1"]
        ood = dict(zip(study_report.OPEN_SET, self.rng.uniform(40, 95, size=4).round(3)))
        return row, ood, {"target": TARGET.tolist(), "domain": [0] * len(TARGET), "prediction": prediction.tolist()}

    def run(self, variant: str, domain: str, lr, steps, seed: int, phase: str, weights=("selected",), ood=True,
            wise_ft_alpha=None):
        """A run as the runner writes it: one validate.py call scoring the named weights on the source val split
        and the held-out test split, open-set numbers in the held-out row, predictions keyed
        model|weights=<w>|split=<s>. Zero-shot is written as an older single-split call: no weights names,
        predictions keyed by the model, the open-set numbers in a second row scored over the base classes."""
        zeroshot = variant == "zeroshot"
        held_out_val = round(float(self.rng.uniform(30, 90)), 3)  # the run's selected export on the held-out val split
        run_id = f"{variant}-{domain}" if zeroshot else f"{variant}-{domain}-lr{lr:g}-st{steps}-s{seed}"
        rows, models = [], {}
        for w in weights:
            name = variant if w == "selected" else f"{variant}@{w}"
            p = ACCURACY[name] - (0.1 if steps == 3000 else 0.0) - (0.05 if lr == 1e-5 else 0.0)
            row, ood_row, pred = self.rows(domain, p)
            if zeroshot:
                rows += [row, {"model": "clip_vitt_emoji", "top1": 50.0, f"top1_{domain}": 50.0, "classes": "base",
                               "split": "test", "num_samples": 24, **ood_row}]
                models["clip_vitt_emoji"] = pred
            else:
                # the source styles' val split, scored in the same call: never a held-out row
                source = {"model": "clip_vitt_emoji", "top1": 0.0, "split": "val", "classes": "all", "weights": w,
                          "num_samples": 2, **{f"top1_{d}": 0.0 for d in DOMAINS if d != domain}}
                rows += [source, {**row, "weights": w, **(ood_row if ood else {})}]
                models[f"clip_vitt_emoji|weights={w}|split=val"] = {"target": [0, 1], "domain": [0, 1],
                                                                     "prediction": [1, 0], "split": "val", "weights": w}
                models[f"clip_vitt_emoji|weights={w}|split=test"] = {**pred, "split": "test", "weights": w}
            self.written.append(dict(name=name, domain=domain, lr=lr, steps=steps, seed=seed, phase=phase,
                                     correct=np.equal(pred["prediction"], TARGET), row=row,
                                     open_set=ood_row if ood else None, wise_ft_alpha=wise_ft_alpha,
                                     held_out_val=held_out_val))
        (self.results / f"{run_id}.json").write_text(json.dumps(rows))
        (self.results / f"{run_id}.predictions.json").write_text(json.dumps(
            {"split": "test" if zeroshot else ["val", "test"], "models": models}))
        if not zeroshot:
            (self.results / f"{run_id}.run.json").write_text(json.dumps(
                {"run_id": run_id, "variant": variant, "domain": domain, "lr": lr, "steps": steps, "seed": seed,
                 "source_val_top1": 50.0, "phase": phase, "train_args": [], "weights": {},
                 "held_out_val_top1": held_out_val, **({} if wise_ft_alpha is None else {"wise_ft_alpha": wise_ft_alpha})}))

    def cell(self, name: str, domain: str, **match):
        return [w for w in self.written if w["name"] == name and w["domain"] == domain
                and all(w[k] == v for k, v in match.items())]


def chosen(alphas, seed):
    """The fixture's WiSE-FT alpha of a seed: ``alphas[seed]``, else 1; ``alphas`` {} = not recorded."""
    return None if alphas == {} else (alphas or {}).get(seed, 1.0)


def candidates(variant, domain):
    """selection.json's candidates of a cell, best first: the selected (lr, steps) at source val 60, then (ERM and
    CLIPood) the rest of the grid at 50, in the runner's tie order; over the grid's seeds (LP-FT: one, at its
    selected configuration only)."""
    lr, steps = SELECTED[variant][domain]
    if variant == "lp_ft":
        return [{"lr": lr, "steps": steps, "source_val_top1": 60.0, "seeds": [0]}]
    rest = sorted(((st, r) for r in LRS for st in STEPS if (r, st) != (lr, steps)))
    return [{"lr": lr, "steps": steps, "source_val_top1": 60.0, "seeds": [0, 1]},
            *({"lr": r, "steps": st, "source_val_top1": 50.0, "seeds": [0, 1]} for st, r in rest)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    fx = Fixture(out)
    for d in DOMAINS:
        fx.run("zeroshot", d, None, None, 0, "zeroshot")
        for variant in ("erm", "clipood"):
            # CLIPood's runs export the beta sweep's averages at the end of training; on "line" without beta 1 and
            # the paper's 0.5, as a run made before train.py --export-bma-betas
            weights = ("selected", "ema", "last", "bma_beta1.5", "bma_beta0.2",
                       *(("bma_beta1", "bma_beta0.5") if d != "line" else ()),
                       "wise_ft", "wise_ft_fixed") if variant == "clipood" else ("selected", "wise_ft", "wise_ft_fixed")
            # the alpha source val chose: ERM's third seed 0.75; CLIPood's runs on "line" recorded none (older runs)
            alpha = {2: 0.75} if variant == "erm" else {} if d == "line" else None
            for lr in LRS:
                for steps in STEPS:
                    for seed in (0, 1):
                        fx.run(variant, d, lr, steps, seed, "grid", weights, wise_ft_alpha=chosen(alpha, seed))
            # a third seed at the selected config
            fx.run(variant, d, *SELECTED[variant][d], 2, "seeds", weights, wise_ft_alpha=chosen(alpha, 2))
        if d in SELECTED["lp_ft"]:
            fx.run("lp_ft", d, *SELECTED["lp_ft"][d], 0, "grid", ood=False)
        lr, steps = SELECTED["clipood"][d]
        for variant in ("ce_bma", "fixed_margin", "clipood_lambda0.1",
                        "clipood_tau0.05", "ce_bma_tau0.05"):
            for seed in (0, 1):
                fx.run(variant, d, lr, steps, seed, "ablation")
        for seed in (0, 1):  # CLIPood again, exporting a longer EMA beside its own BMA at the end
            fx.run(LONG_EMA_VARIANT, d, lr, steps, seed, "ablation", ("selected", "ema", "last", "bma_beta0.5"))
        fx.run("ce_bma", d, 1e-5, 3000, 0, "ablation")  # not at CLIPood's configuration: never read
        fx.run("flyp", d, lr, steps, 0, "grid")  # a grid method not selected yet: missing, not read at CLIPood's
    selection = {v: {d: {**candidates(v, d)[0], "candidates": candidates(v, d)} for d in cfg} for v, cfg in SELECTED.items()}
    (out / "selection.json").write_text(json.dumps(selection))
    report_dir = out / "report"
    assert report.main(["--study", str(out), "--out", str(report_dir)]) == 0
    return fx, out, json.loads((report_dir / "results.json").read_text()), (report_dir / "results.md").read_text()


def selected_cell(fx, name, domain):
    """The fixture's own record of what the report must read for ``name`` on ``domain``: CLIPood's final BMA is its
    bma_beta0.5 export, or where its runs never exported one (line) their selected export."""
    variant = name.split("@")[0]
    if variant == "zeroshot":
        return fx.cell(name, domain)
    if name == "clipood@bma_beta0.5" and not fx.cell(name, domain):
        return selected_cell(fx, "clipood", domain)
    lr, steps = SELECTED.get(variant, SELECTED["clipood"]).get(domain, (None, None))
    return fx.cell(name, domain, lr=lr, steps=steps)


def expected_top1(fx, name):
    cells = {d: [w["row"]["top1"] for w in selected_cell(fx, name, d)] for d in DOMAINS}
    out = {d: {"mean": round(np.mean(v), 2), "std": round(np.std(v, ddof=1), 2) if len(v) > 1 else 0.0, "n": len(v)}
           for d, v in cells.items() if v}
    if len(out) == len(DOMAINS):
        out["avg"] = {"mean": pytest.approx(np.mean([np.mean(cells[d]) for d in DOMAINS]), abs=0.0051)}
    return out


def expected_interval(fx, a, b, domain):
    ca = np.mean([w["correct"] for w in selected_cell(fx, a, domain)], axis=0)
    cb = np.mean([w["correct"] for w in selected_cell(fx, b, domain)], axis=0)
    return ca, cb


def assert_interval(got, fx, a, b, classes=None):
    """``got`` (results.json's intervals of A - B) against numpy on the fixture's own per-image records."""
    keep = np.isin(TARGET, classes) if classes is not None else np.ones(len(TARGET), bool)
    pooled = [tuple(x[keep] for x in expected_interval(fx, a, b, d)) for d in DOMAINS]
    for d, (ca, cb) in zip(DOMAINS, pooled):
        assert got[d]["diff"] == pytest.approx(100 * (ca.mean() - cb.mean()), abs=0.0051)  # results.json rounds to 0.01
        ref = paired_class_bootstrap(ca, cb, TARGET[keep])
        assert (got[d]["low"], got[d]["high"], got[d]["resolved"]) == (round(ref.low, 2), round(ref.high, 2),
                                                                       ref.low > 0 or ref.high < 0)
    assert got["avg"]["diff"] == pytest.approx(round(np.mean([100 * (ca.mean() - cb.mean()) for ca, cb in pooled]), 2),
                                               abs=0.011)
    assert got["avg"]["num_images"] == 4 * keep.sum() and got["avg"]["num_classes"] == len(set(TARGET[keep]))


def test_held_out_table_reads_each_methods_selected_config_and_averages_seeds(study):
    fx, _, results, md = study
    for name in ("zeroshot", "erm", "clipood", "lp_ft"):
        assert results["held_out_top1"][name] == expected_top1(fx, name), name
    assert results["held_out_top1"]["erm"]["3d"]["n"] == 3  # two grid seeds and the seeds phase's third
    assert "avg" not in results["held_out_top1"]["lp_ft"]  # no results on the last style: no average
    assert results["held_out_top1"]["flyp"] == {}
    flyp = next(li for li in md.splitlines() if li.startswith("| FLYP |"))
    assert flyp == "| FLYP | missing | missing | missing | missing | missing | 0 / 0 / 0 / 0 |"
    lp_ft = next(li for li in md.splitlines() if li.startswith("| LP-FT |"))
    assert lp_ft.endswith("| missing | 1 / 1 / 1 / 0 |")
    erm = next(li for li in md.splitlines() if li.startswith("| ERM |"))
    assert erm.endswith("| 3 / 3 / 3 / 3 |") and f"{results['held_out_top1']['erm']['avg']['mean']:.1f} |" in erm


def test_differences_pair_seed_averaged_correctness_against_zero_shot_and_erm(study):
    fx, _, results, md = study
    diffs = results["held_out_differences"]
    assert set(diffs) == {f"{m} - zeroshot" for m in study_report.HEADLINE[1:]} | {
        f"{m} - erm" for m in study_report.HEADLINE[2:]}
    assert_interval(diffs["clipood - erm"], fx, "clipood", "erm")
    assert_interval(diffs["erm - zeroshot"], fx, "erm", "zeroshot")
    assert set(diffs["lp_ft - zeroshot"]) == set(DOMAINS[:3]) and diffs["flyp - erm"] == {}
    new_classes = results["new_class_images_differences"]
    assert set(new_classes) == set(diffs)
    assert_interval(new_classes["clipood - erm"], fx, "clipood", "erm", emojidg.NEW_CLASSES)
    assert new_classes["clipood - erm"]["avg"]["num_classes"] == 8  # the fixture's 16 classes: 8 base, 8 new
    line = next(li for li in md.splitlines() if li.startswith("| CLIPood (MMS + BMA) - ERM |"))
    assert line.count(" *") == sum(c["resolved"] for c in diffs["clipood - erm"].values()) == 5


def test_base_new_and_open_set_are_seed_then_domain_means(study):
    """Base and new: mean over seeds, then over styles. H: CoOp's harmonic mean of those means (per style, and of the
    styles' averages), which here, where base and new vary from run to run, is not the mean of the runs' own H."""
    fx, _, results, md = study
    for name in ("erm", "clipood"):
        base, new, runs_h = ([np.mean([w["row"][m] for w in selected_cell(fx, name, d)]) for d in DOMAINS]
                             for m in ("base_top1", "new_top1", "hm"))
        cells = results["base_new"][name]
        assert cells["base_top1"]["avg"]["mean"] == pytest.approx(np.mean(base), abs=0.0051)
        assert cells["new_top1"]["avg"]["mean"] == pytest.approx(np.mean(new), abs=0.0051)
        for d, b, n in zip(DOMAINS, base, new):
            assert cells["hm"][d] == {"mean": pytest.approx(2 * b * n / (b + n), abs=0.0051), "n": 3}
        b, n = np.mean(base), np.mean(new)
        assert cells["hm"]["avg"]["mean"] == pytest.approx(2 * b * n / (b + n), abs=0.0051)
        assert abs(cells["hm"]["avg"]["mean"] - np.mean(runs_h)) > 1
    for metric in study_report.OPEN_SET:
        per_domain = [np.mean([w["open_set"][metric] for w in selected_cell(fx, "clipood", d)]) for d in DOMAINS]
        assert results["open_set"]["clipood"][metric]["3d"]["n"] == 3
        assert results["open_set"]["clipood"][metric]["avg"]["mean"] == pytest.approx(np.mean(per_domain), abs=0.0051)
    assert results["open_set"]["lp_ft"]["ood_auroc_mcm"] == {}  # no open-set rows
    assert "AUROC: higher is better" in md and "lower is better" in md
    assert next(li for li in md.splitlines() if li.startswith("| LP-FT | missing | missing | missing | missing |"))


def test_ablations_read_clipoods_config_and_its_ema_and_last_rows(study):
    fx, _, results, md = study
    ab = results["ablations"]
    assert list(ab["loss"]["top1"]) == ["clipood", "ce_bma", "fixed_margin"]
    assert ab["loss"]["top1"]["ce_bma"] == expected_top1(fx, "ce_bma")  # the off-config ce_bma run is not read
    assert ab["loss"]["top1"]["ce_bma"]["3d"]["n"] == 2
    assert ab["averaging"]["top1"]["clipood@ema"] == expected_top1(fx, "clipood@ema")
    assert ab["averaging"]["top1"]["clipood@last"] == expected_top1(fx, "clipood@last")
    uniform = expected_top1(fx, "clipood@bma_beta1")
    assert ab["averaging"]["top1"]["clipood@bma_beta1"] == uniform and "line" not in uniform and "avg" not in uniform
    # every average against CLIPood's BMA at the end of the same runs (line: its selected export, evaluated once)
    final = expected_top1(fx, "clipood@bma_beta0.5")
    assert list(ab["averaging"]["top1"])[0] == "clipood@bma_beta0.5" and ab["averaging"]["top1"]["clipood@bma_beta0.5"] == final
    assert final["line"] == expected_top1(fx, "clipood")["line"] and final["3d"] != expected_top1(fx, "clipood")["3d"]
    assert_interval(ab["averaging"]["differences"]["clipood@last - clipood@bma_beta0.5"], fx, "clipood@last",
                    "clipood@bma_beta0.5")
    assert list(ab["beta_sweep"]["top1"]) == ["clipood@bma_beta0.5", "clipood@bma_beta0.2", "clipood@bma_beta1",
                                              "clipood@bma_beta1.5"]  # the reference, then sorted by value
    assert ab["beta_sweep"]["top1"]["clipood@bma_beta0.2"] == expected_top1(fx, "clipood@bma_beta0.2")
    assert_interval(ab["beta_sweep"]["differences"]["clipood@bma_beta1.5 - clipood@bma_beta0.5"], fx,
                    "clipood@bma_beta1.5", "clipood@bma_beta0.5")
    assert "| CLIPood, beta = 0.2 |" in md
    for title in ("Ablation: weight averaging", "Ablation: beta sweep"):  # which step each arm's weights are from
        section = md.split(f"## {title}")[1].split("##")[0]
        assert study_report.AT_THE_END in section
    assert_interval(ab["tau_sweep"]["differences"]["clipood_tau0.05 - clipood"], fx, "clipood_tau0.05", "clipood")
    assert ab["lambda_sweep"]["top1"]["clipood_lambda0.1"] == expected_top1(fx, "clipood_lambda0.1")
    averaging = md.split("## Ablation: weight averaging")[1].split("##")[0]
    (line,) = [x for x in averaging.splitlines() if x.startswith("| MMS + uniform average (beta 1) |")]
    assert line.endswith("| missing | missing | 3 / 3 / 3 / 0 |")


def test_the_longer_ema_is_set_beside_the_bma_and_last_weights_of_its_own_runs(study):
    """The clipood_ema0.999 runs, read at CLIPood's config: their EMA and last weights against their own BMA at the
    end of training (not the CLIPood runs', which have other seeds), in a table of their own and in the claim."""
    fx, _, results, md = study
    table = results["ablations"]["long_ema"]
    long_ema, own_bma = f"{LONG_EMA_VARIANT}@ema", f"{LONG_EMA_VARIANT}@bma_beta0.5"
    assert list(table["top1"]) == [own_bma, long_ema, f"{LONG_EMA_VARIANT}@last"]
    for name in table["top1"]:
        assert table["top1"][name] == expected_top1(fx, name) and table["top1"][name]["3d"]["n"] == 2, name
    assert_interval(table["differences"][f"{long_ema} - {own_bma}"], fx, long_ema, own_bma)
    averaging_arms = results["ablations"]["averaging"]["top1"]
    assert "clipood@ema" in averaging_arms and long_ema not in averaging_arms
    section = md.split("## Ablation: BMA vs a longer EMA (decay 0.999), on the same runs\n\n")[1].split("##")[0]
    assert section.startswith("CLIPood trained again (clipood_ema0.999 runs) to export an EMA of decay 0.999, which "
                              "puts half its weight on the last 693 steps")  # 0.999 ** 693 = 0.5000
    assert "| MMS + EMA (decay 0.999) |" in section and "Paired differences vs the same runs' BMA" in section
    averaging = md.split("## Ablation: weight averaging")[1].split("##")[0]
    assert "| MMS + EMA (decay 0.99) |" in averaging and "half its weight on the last 69 steps" in averaging
    claim = next(c for c in results["claims"] if c["claim"] == "BMA beats an exponential moving average (decay 0.999)")
    ca, cb = (np.concatenate(x) for x in zip(*[expected_interval(fx, own_bma, long_ema, d) for d in DOMAINS]))
    assert str(paired_class_bootstrap(ca, cb, np.tile(TARGET, len(DOMAINS)))) in claim["sentence"]


def test_wise_ft_tables_set_the_fixed_alpha_beside_each_fine_tune_on_the_same_runs(study):
    """The fine-tune runs' own wise_ft and wise_ft_fixed rows, at the fine-tune's selected config (ERM's differs on
    line), against the fine-tune: held-out top-1 and the paired intervals, on every image and on the new classes'."""
    fx, _, results, md = study
    for group, tuned in (("wise_ft_alpha_erm", "erm"), ("wise_ft_alpha_clipood", "clipood")):
        table = results["ablations"][group]
        assert list(table["top1"]) == [tuned, f"{tuned}@wise_ft", f"{tuned}@wise_ft_fixed"]
        assert table["top1"][f"{tuned}@wise_ft_fixed"] == expected_top1(fx, f"{tuned}@wise_ft_fixed")
        assert table["top1"][f"{tuned}@wise_ft"] == expected_top1(fx, f"{tuned}@wise_ft")
        assert_interval(table["differences"][f"{tuned}@wise_ft_fixed - {tuned}"], fx, f"{tuned}@wise_ft_fixed", tuned)
        assert_interval(table["new_class_images_differences"][f"{tuned}@wise_ft_fixed - {tuned}"], fx,
                        f"{tuned}@wise_ft_fixed", tuned, emojidg.NEW_CLASSES)
    assert "new_class_images_differences" not in results["ablations"]["loss"]
    assert "## WiSE-FT on ERM: alpha chosen on source val vs fixed\n\nHeld-out top-1 (%)" in md
    assert "| WiSE-FT (on ERM), alpha 0.5 fixed - ERM |" in md


def test_the_alpha_source_val_chose_is_reported_for_each_wise_ft_row(study):
    """Each WiSE-FT arm at source val's alpha says which alpha each seed got (from the runs' records, None where a
    run predates the record) and counts them, so a WiSE-FT row equal to its fine-tune (alpha 1) is explained."""
    fx, _, results, md = study
    for tuned in ("erm", "clipood"):
        expected = {d: [w["wise_ft_alpha"] for w in sorted(selected_cell(fx, f"{tuned}@wise_ft", d),
                                                            key=lambda w: w["seed"])] for d in DOMAINS}
        assert results["wise_ft_chosen_alpha"][f"{tuned}@wise_ft"] == expected
    assert expected["line"] == [None, None, None]
    assert results["wise_ft_chosen_alpha"]["erm@wise_ft"]["3d"] == [1, 1, 0.75]
    assert "wise_ft" not in results["wise_ft_chosen_alpha"]  # no WiSE-FT variant runs in this study
    assert "- WiSE-FT (on ERM), alpha chosen on source val: alpha 1 in 8, 0.75 in 4 of 12 runs\n" in md
    assert "- CLIPood + WiSE-FT, alpha chosen on source val: alpha 1 in 9, not recorded in 3 of 12 runs\n" in md
    assert md.count("The alpha WiSE-FT's source-val selection chose") == 2  # the two WiSE-FT tables, not the headline


def test_margin_against_tau_pairs_mms_and_ce_at_each_tau(study):
    """The recipe's tau pairs CLIPood with CE + BMA; each tau with a CE run pairs the two sweeps' runs there."""
    fx, _, results, md = study
    rows = results["margin_vs_tau"]
    assert list(rows) == ["recipe", "0.05"]
    for tau, (mms, ce) in {"recipe": ("clipood", "ce_bma"), "0.05": ("clipood_tau0.05", "ce_bma_tau0.05")}.items():
        assert rows[tau]["mms"] == expected_top1(fx, mms) and rows[tau]["ce"] == expected_top1(fx, ce)
        assert_interval(rows[tau]["diff"], fx, mms, ce)
    line = next(li for li in md.splitlines() if li.startswith("| 0.05 |"))
    assert line.startswith(f"| 0.05 | {rows['0.05']['mms']['avg']['mean']:.1f} | {rows['0.05']['ce']['avg']['mean']:.1f} | ")


def test_steps_curve_uses_grid_runs_at_each_domains_selected_lr(study):
    fx, out, results, md = study
    for variant in ("erm", "clipood"):
        for steps in STEPS:
            got = results["steps_curve"][variant][str(steps)]
            for metric in ("top1", "new_top1"):
                per_domain = [np.mean([w["row"][metric] for w in fx.cell(
                    variant, d, lr=SELECTED[variant][d][0], steps=steps, phase="grid")]) for d in DOMAINS]
                assert got[metric] == pytest.approx(np.mean(per_domain), abs=0.0051), (variant, steps, metric)
            assert got["seeds"] == {d: 2 for d in DOMAINS}  # the seeds phase's run is not a grid run
    png = (out / "report" / study_report.PLOT_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def expected_oracle(fx, variant, domain):
    """The fixture's held-out val oracle, found here: the first, in selection.json's order, of the candidates with
    the highest mean held-out val top-1 over the candidate's seeds (of its selected weights)."""
    best = None
    for c in candidates(variant, domain):
        vals = [w["held_out_val"] for w in fx.cell(variant, domain, lr=c["lr"], steps=c["steps"]) if w["seed"] in c["seeds"]]
        if vals and (best is None or np.mean(vals) > best[0]):
            best = (np.mean(vals), c)
    return best[1]


def grid_correctness(fx, variant, domain, config):
    return np.mean([w["correct"] for w in fx.cell(variant, domain, lr=config["lr"], steps=config["steps"])
                    if w["seed"] in config["seeds"]], axis=0)


def test_model_selection_sets_each_selection_beside_the_held_out_val_oracle(study):
    """DomainBed's oracle beside training-domain validation: per method and style the candidate with the best
    held-out val top-1 (found here from the fixture's own records), held-out val and test top-1 of both over the
    grid's seeds, and the paired interval of selected - oracle on the test images, against numpy and the bootstrap
    on the fixture's per-image records."""
    fx, _, results, md = study
    got = results["model_selection"]
    assert set(got) == {"erm", "clipood", "lp_ft"}  # the grid methods with a selection
    oracle_moved = 0
    for variant, domains in SELECTED.items():
        for d in domains:
            selected, oracle = candidates(variant, d)[0], expected_oracle(fx, variant, d)
            config = got[variant]["configs"][d]
            assert config["selected"] == {k: selected[k] for k in ("lr", "steps", "source_val_top1")}
            assert config["oracle"] == {k: oracle[k] for k in ("lr", "steps", "source_val_top1")}
            assert config["next_source_val_top1"] == (50.0 if variant != "lp_ft" else None)
            assert config["candidates_scored"] == [len(candidates(variant, d))] * 2
            for side, c in (("selected", selected), ("oracle", oracle)):
                rows = [w for w in fx.cell(variant, d, lr=c["lr"], steps=c["steps"]) if w["seed"] in c["seeds"]]
                assert got[variant]["held_out_val_top1"][side][d] == pytest.approx(  # rounded to 0.01 there
                    np.mean([w["held_out_val"] for w in rows]), abs=0.0051)
                assert got[variant]["held_out_top1"][side][d]["mean"] == pytest.approx(
                    100 * grid_correctness(fx, variant, d, c).mean(), abs=0.0051)
            ref = paired_class_bootstrap(grid_correctness(fx, variant, d, selected),
                                         grid_correctness(fx, variant, d, oracle), TARGET)
            assert got[variant]["differences"][d] == {
                "diff": round(ref.diff, 2), "low": round(ref.low, 2), "high": round(ref.high, 2),
                "resolved": ref.resolved, "num_classes": 16, "num_images": len(TARGET)}
            oracle_moved += oracle is not selected
    assert oracle_moved >= 4  # the fixture's random held-out val makes other configurations the oracle's
    pooled = [np.concatenate(x) for x in zip(*[(grid_correctness(fx, "erm", d, candidates("erm", d)[0]),
                                                grid_correctness(fx, "erm", d, expected_oracle(fx, "erm", d)), TARGET)
                                               for d in DOMAINS])]
    ref = paired_class_bootstrap(*pooled)
    avg = got["erm"]["differences"]["avg"]
    assert (avg["diff"], avg["low"], avg["high"]) == (round(ref.diff, 2), round(ref.low, 2), round(ref.high, 2))
    assert "avg" not in got["lp_ft"]["differences"]  # LP-FT has three styles
    # each method at its oracle against ERM at its own
    assert set(results["oracle_differences"]) == {"clipood - erm", "lp_ft - erm"}
    for variant in ("clipood", "lp_ft"):
        for d in SELECTED[variant]:
            ref = paired_class_bootstrap(grid_correctness(fx, variant, d, expected_oracle(fx, variant, d)),
                                         grid_correctness(fx, "erm", d, expected_oracle(fx, "erm", d)), TARGET)
            got_d = results["oracle_differences"][f"{variant} - erm"][d]
            assert (got_d["diff"], got_d["low"], got_d["high"]) == (round(ref.diff, 2), round(ref.low, 2),
                                                                    round(ref.high, 2))
    assert "avg" in results["oracle_differences"]["clipood - erm"]
    assert "avg" not in results["oracle_differences"]["lp_ft - erm"]
    oracle = got["erm"]["configs"]["3d"]["oracle"]
    assert (f"| ERM | 3d | 1e-4, 1000 | 60.0 (50.0) | {oracle['lr']:.0e}, {oracle['steps']} | 6 of 6 | "
            ).replace("e-0", "e-") in md
    assert "| LP-FT | mono | 1e-4, 300 | 60.0 | 1e-4, 300 | 1 of 1 | " in md
    table = md[md.index("## Model selection"):md.index("Each method at its oracle")]
    assert "] *" not in table  # the oracle chose on images that share noise with the test images: no test


def test_the_oracle_counts_only_fully_recorded_candidates_and_breaks_ties_towards_the_selection():
    from emojidg.study_results import Run, Scored, Study, held_out_val_oracle

    def scored(lr, steps, seed, val):
        run = Run(f"erm-3d-lr{lr:g}-st{steps}-s{seed}", "erm", "3d", lr, steps, seed, "grid", held_out_val_top1=val)
        return Scored(run, "selected", {"top1": 50.0}, None, None, None)

    cands = [{"lr": lr, "steps": st, "source_val_top1": v, "seeds": [0, 1]}
             for lr, st, v in ((1e-4, 300, 60.0), (1e-4, 1000, 55.0), (1e-5, 300, 50.0), (1e-5, 1000, 45.0))]
    runs = [scored(1e-4, 300, 0, 70.0), scored(1e-4, 300, 1, 72.0),      # selected: mean 71
            scored(1e-4, 1000, 0, 71.0), scored(1e-4, 1000, 1, 71.0),    # ties with the selection: the selection wins
            scored(1e-5, 300, 0, 90.0), scored(1e-5, 1000, 0, 95.0),     # better, but one seed of two: not counted
            scored(1e-5, 1000, 1, None)]                                 # both seeds, one without a held-out val
    study = Study(runs, {"erm": {"3d": {**cands[0], "candidates": cands}}})
    assert held_out_val_oracle(study, "erm", "3d") is cands[0]
    study.scored.append(scored(1e-5, 300, 1, 88.0))  # now complete, mean 89: the oracle
    assert held_out_val_oracle(study, "erm", "3d") is cands[2]
    study.scored[-2] = scored(1e-5, 1000, 1, 83.0)  # recorded now: mean 89, a tie: the earlier in the order
    assert held_out_val_oracle(study, "erm", "3d") is cands[2]
    assert held_out_val_oracle(study, "erm", "flat") is None
    assert held_out_val_oracle(Study(runs[:1], study.selection), "erm", "3d") is None


def test_model_selection_says_missing_where_the_selected_runs_have_no_results(study, tmp_path):
    """A selected grid run without results (deleted, or still running) leaves its style's comparison missing, with
    how many candidates are scored, instead of failing; the other styles still compare."""
    fx, out, *_ = study
    shutil.copytree(out / "results", tmp_path / "results")
    shutil.copy(out / "selection.json", tmp_path)
    (tmp_path / "results" / "erm-3d-lr0.0001-st1000-s1.json").unlink()  # ERM's selected config on 3d, seed 1
    text, _ = report.write_study(tmp_path, tmp_path / "r")
    got = json.loads((tmp_path / "r" / "results.json").read_text())["model_selection"]["erm"]
    assert got["configs"]["3d"]["candidates_scored"] == [5, 6] and "3d" not in got["differences"]
    assert "avg" not in got["differences"] and set(got["differences"]) == {"flat", "mono", "line"}
    assert "| ERM | 3d | 1e-4, 1000 | 60.0 (50.0) | " in text and " | 5 of 6 | missing | missing | missing |" in text


def test_heading_states_split_and_images_from_the_rows(study):
    _, _, results, md = study
    assert results["heading"] == {"classes": 444, "split": "test split", "images": "48 images per style"}
    assert md.splitlines()[2].startswith("Held-out style top-1 (%), 444-way, test split, 48 images per style;")
    rows = [("3d", {"split": "test", "num_samples": 4440}), ("flat", {"split": "test", "num_samples": 4438}),
            ("3d", {"split": "val", "num_samples": 444})]
    assert study_report.split_phrase(rows) == "test + val splits"
    assert study_report.images_phrase(rows) == "images per style: 3d 444 or 4,440, flat 4,438"


def test_claims_are_generated_from_the_intervals(study):
    fx, _, results, md = study
    claims = {c["claim"]: c for c in results["claims"]}
    verdicts = {claim: claims[claim]["verdict"] for *_, claim in study_report.CLAIMS}
    assert len(claims) == len(study_report.CLAIMS) == 9
    for a, b, images, claim in study_report.CLAIMS:
        if claims[claim]["verdict"] == "not measured":
            continue
        ca, cb = (np.concatenate(x) for x in zip(*[expected_interval(fx, a, b, d) for d in DOMAINS]))
        target = np.tile(TARGET, len(DOMAINS))
        keep = np.isin(target, emojidg.NEW_CLASSES) if images == "new" else np.ones(len(target), bool)
        ref = paired_class_bootstrap(ca[keep], cb[keep], target[keep])
        expected = ("holds" if ref.diff > 0 else "reversed") if ref.resolved else "not resolved"
        assert verdicts[claim] == expected, claim
        assert str(ref) in claims[claim]["sentence"] and claims[claim]["sentence"] in md
    assert verdicts["CLIPood beats ERM fine-tuning on unseen styles"] == "holds"
    assert verdicts["the class-adaptive margin beats a fixed margin"] == "reversed"
    assert verdicts["BMA beats a uniform average of the weights"] == "not measured"


def test_a_claim_from_unequal_seeds_per_style_is_incomplete():
    """A study still seeding: A - B averaged over styles where one style has one seed and the others three is no
    verdict yet (its interval is printed, marked incomplete); with even seeds the interval's side decides."""
    interval = PairedInterval(diff=1.5, low=0.4, high=2.6, level=0.95, num_classes=8, num_images=64)
    cells = {**{d: interval for d in DOMAINS}, "avg": interval}
    even = {d: ["seed"] * 3 for d in DOMAINS}
    assert study_report.claim_sentence("A beats B", cells, [("clipood", even), ("zeroshot", even)]) == (
        "holds", "**Holds**: A beats B: +1.5 [+0.4, +2.6] points averaged over the held-out styles; resolved in its "
                 "favour on 4 and against it on 0 of 4 styles.")
    uneven = {**even, "line": ["seed"]}
    assert study_report.claim_sentence("A beats B", cells, [("clipood", uneven), ("zeroshot", even)]) == (
        "incomplete", "**Incomplete**: A beats B: +1.5 [+0.4, +2.6] points averaged over the held-out styles, from "
                      "unequal seeds per style (CLIPood (MMS + BMA) 3 / 3 / 3 / 1, 3d / flat / mono / line): no "
                      "verdict until every style has them all.")


def test_cli_refuses_a_folder_without_results(tmp_path):
    (tmp_path / "results").mkdir()
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "emojidg" / "report.py"), "--study", str(tmp_path),
                           "--out", str(tmp_path / "report")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr == (f"report.py: error: no result files in {tmp_path / 'results'} (zeroshot-<domain>.json, "
                           "<run_id>.run.json with its <run_id>.json); run tools/emojidg/run_benchmark.py first\n")
    assert not (tmp_path / "report").exists()


def test_runs_without_selection_and_predictions_of_other_weights_are_refused(study, tmp_path, capsys):
    fx, out, *_ = study
    (tmp_path / "results").mkdir()
    for path in (out / "results").glob("lp_ft-3d-lr0.0001-st300-s0.*"):  # a run with one weights
        (tmp_path / "results" / path.name).write_bytes(path.read_bytes())
    with pytest.raises(SystemExit) as exit_:
        report.main(["--study", str(tmp_path), "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"report.py: error: {tmp_path / 'selection.json'} is missing: the runner writes "
                                       "it from the grid runs' source-domain val top-1 (re-run "
                                       "tools/emojidg/run_benchmark.py)\n")
    assert not (tmp_path / "r").exists()
    (tmp_path / "selection.json").write_text("{}")
    assert [s.weights for s in load_study(tmp_path).scored] == ["selected"]
    rows_file = tmp_path / "results" / "lp_ft-3d-lr0.0001-st300-s0.json"
    predictions_file = rows_file.with_name("lp_ft-3d-lr0.0001-st300-s0.predictions.json")
    rows, predictions = json.loads(rows_file.read_text()), json.loads(predictions_file.read_text())
    rows_file.write_text(json.dumps(rows + [{**rows[1], "weights": "last"}]))  # no predictions of the last weights
    with pytest.raises(ConfigError, match=r"has 0 predictions for the 'last' row \(model 'clip_vitt_emoji', split "
                                          r"'test', weights 'last'\)"):
        load_study(tmp_path)
    # an entry without a weights field (a single-weights call) cannot serve two weights' rows
    for entry in predictions["models"].values():
        del entry["weights"]
    predictions_file.write_text(json.dumps(predictions))
    with pytest.raises(ConfigError, match=re.escape("the 'selected' and 'last' rows both match predictions "
                                                    "'clip_vitt_emoji|weights=selected|split=test'")):
        load_study(tmp_path)
    rows_file.write_text(json.dumps([rows[0], {**rows[1], "top1": rows[1]["top1"] + 1}]))
    with pytest.raises(ConfigError, match="are not those of the 'selected' row"):
        load_study(tmp_path)


def test_a_study_with_gzipped_predictions_reports_the_same(study, tmp_path):
    """A committed study keeps its predictions gzipped (gzip -9n): the report reads them as it reads the files."""
    import gzip
    import shutil

    _, out, *_ = study
    shutil.copytree(out, tmp_path / "packed")
    for path in (tmp_path / "packed" / "results").glob("*.predictions.json"):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert report.main(["--study", str(out), "--out", str(tmp_path / "plain")]) == 0
    assert report.main(["--study", str(tmp_path / "packed"), "--out", str(tmp_path / "gz")]) == 0
    assert (tmp_path / "gz" / "results.json").read_text() == (tmp_path / "plain" / "results.json").read_text()


def test_v1_report_still_reproduces_the_committed_v1_tables(tmp_path):
    """docs/emojidg/results.{md,json} stay v1: the v1 path rebuilds them from the committed v1 rows (which have no
    predictions, so no paired intervals), its heading read from the rows."""
    v1 = REPO / "docs" / "emojidg"
    text = report.write_v1(v1 / "validate_results", tmp_path)
    assert text == (v1 / "results.md").read_text()
    assert text.splitlines()[0] == "Held-out domain top-1 (%), 444-way, val split (444 images per domain):"
    assert text.endswith("No paired intervals: the results have no per-image predictions (*.predictions.json, "
                         "validate.py --predictions-file).\n")
    rebuilt = json.loads((tmp_path / "results.json").read_text())
    assert rebuilt == json.loads((v1 / "results.json").read_text()) and rebuilt["paired_differences"] == {}
    for variant in ("zeroshot", "erm", "clipood"):  # H: of the base and new averages (CoOp's), per domain too
        for cells in rebuilt[variant].values():
            b, n = cells["base_top1"]["mean"], cells["new_top1"]["mean"]
            assert cells["hm"]["mean"] == pytest.approx(2 * b * n / (b + n), abs=0.011)


def test_the_committed_v2_report_is_rebuilt_from_its_committed_study(tmp_path):
    """docs/emojidg/v2 (whose numbers the README quotes) is report.py --study of docs/emojidg/v2/study, as committed:
    a change to the report or to the result files that is not rebuilt into it fails here."""
    v2 = REPO / "docs" / "emojidg" / "v2"
    assert report.main(["--study", str(v2 / "study"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (v2 / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads((v2 / "results.json").read_text())
    summary = (tmp_path / report.SUMMARY_NAME).read_text()
    assert summary == (v2 / report.SUMMARY_NAME).read_text()
    # the README's tables are that summary, between report.py --readme's two lines
    readme = REPO / "README.md"
    assert readme.read_text() == report.readme_with_summary(report.readme_around_summary(readme), summary)


def without_unmeasured_rows(text: str) -> str:
    """``text`` without the table rows of the methods whose held-out top-1 row (the first table's) is all "missing":
    their own rows, and the differences with them on either side."""
    def cells(line: str):
        return [c.strip() for c in line.strip().strip("|").split("|")]
    first_table = text[:text.index("\n\n", text.index("| method |"))]
    unmeasured = {c[0] for c in map(cells, first_table.splitlines()[2:]) if set(c[1:-1]) == {"missing"}}
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("| ")
                   or not {cells(line)[0], *cells(line)[0].split(" - ")} & unmeasured)


def test_the_summary_is_the_reports_headline_without_unmeasured_methods_and_its_claims(study):
    """summary.md (what the README quotes): the report's headline section less the rows of methods without results
    (FLYP, CAR-FT, CRoFT and the WiSE-FT variants here; LP-FT, measured on three styles, stays), then the claims."""
    _, out, _, md = study
    summary = (out / "report" / report.SUMMARY_NAME).read_text()
    headline = md[md.index("Held-out style top-1"):md.index("\n## ")]
    claims = md[md.index("- **", md.index("## Which claims")):]
    assert summary == (without_unmeasured_rows(headline) + f"\nWhich claims of the paper hold "
                       f"({study_report.CLAIMS_RULE}):\n\n" + claims)
    assert "| FLYP |" in md and "| FLYP - zero-shot |" in md and "FLYP" not in summary
    assert "| LP-FT | " in summary and "| LP-FT - ERM | " in summary


def readme_with_lines(begin=report.README_BEGIN, end=report.README_END) -> str:
    return f"# title\n\nbefore\n{begin}\nold tables\n{end}\n\nafter\n"


def test_readme_gets_the_summary_between_its_two_lines_and_keeps_the_rest(study, tmp_path):
    _, out, *_ = study
    readme = tmp_path / "README.md"
    readme.write_text(readme_with_lines())
    for _ in range(2):  # a second run writes the same README
        assert report.main(["--study", str(out), "--out", str(tmp_path / "r"), "--readme", str(readme)]) == 0
        summary = (tmp_path / "r" / report.SUMMARY_NAME).read_text()
        assert readme.read_text() == (f"# title\n\nbefore\n{report.README_BEGIN}\n\n{summary}\n"
                                      f"{report.README_END}\n\nafter\n")


@pytest.mark.parametrize("text, found", [(readme_with_lines(end="<!-- end -->"), (1, 0)),
                                         (readme_with_lines(begin=report.README_END, end=report.README_BEGIN), (1, 1)),
                                         (readme_with_lines() + report.README_BEGIN + "\n", (2, 1))],
                         ids=["no end line", "end before begin", "two begin lines"])
def test_a_readme_without_its_two_lines_in_order_is_refused_before_anything_is_written(study, tmp_path, capsys, text,
                                                                                       found):
    _, out, *_ = study
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        report.main(["--study", str(out), "--out", str(tmp_path / "r"), "--readme", str(readme)])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        f"report.py: error: --readme {readme} needs the line {report.README_BEGIN!r} and, after it, the line "
        f"{report.README_END!r}, once each (found {found[0]} and {found[1]}); put them around the place the "
        "study's tables go\n")
    assert readme.read_text() == text and not (tmp_path / "r").exists()


def test_readme_needs_a_study_and_an_existing_file(study, tmp_path, capsys):
    _, out, *_ = study
    with pytest.raises(SystemExit) as exit_:
        report.main(["--results", str(out), "--readme", str(tmp_path / "README.md")])
    assert exit_.value.code == 2 and "error: --readme needs --study (v1's report has no summary)" in capsys.readouterr().err
    readme = tmp_path / "README.md"
    for content, why in ((None, f"[Errno 2] No such file or directory: '{readme}'"),
                         (b"\xff" + readme_with_lines().encode(),
                          "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte")):
        if content is not None:
            readme.write_bytes(content)
        with pytest.raises(SystemExit) as exit_:
            report.main(["--study", str(out), "--out", str(tmp_path / "r"), "--readme", str(readme)])
        assert exit_.value.code == 2 and capsys.readouterr().err == (
            f"report.py: error: --readme {readme} cannot be read as UTF-8 text ({why}); name the README to write "
            "into\n")
        assert not (tmp_path / "r").exists()


def test_a_readme_with_crlf_lines_is_found_and_written_back_with_lf(study, tmp_path):
    _, out, *_ = study
    readme = tmp_path / "README.md"
    readme.write_bytes(readme_with_lines().replace("\n", "\r\n").encode())
    assert report.main(["--study", str(out), "--out", str(tmp_path / "r"), "--readme", str(readme)]) == 0
    summary = (tmp_path / "r" / report.SUMMARY_NAME).read_text()
    assert readme.read_bytes().decode() == (f"# title\n\nbefore\n{report.README_BEGIN}\n\n{summary}\n"
                                            f"{report.README_END}\n\nafter\n")


def test_seeds_scored_on_other_images_are_refused(study, tmp_path, capsys):
    _, out, *_ = study
    shutil.copytree(out / "results", tmp_path / "results")
    shutil.copy(out / "selection.json", tmp_path)
    path = tmp_path / "results" / "clipood-flat-lr0.0001-st1000-s1.predictions.json"
    doc = json.loads(path.read_text())
    entry = doc["models"]["clip_vitt_emoji|weights=selected|split=test"]
    entry["target"], entry["prediction"] = entry["target"][::-1], entry["prediction"][::-1]  # same top-1, other order
    path.write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as exit_:
        report.main(["--study", str(tmp_path), "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        "report.py: error: clipood-flat-lr0.0001-st1000-s1 (selected) scored other images (or another order) than "
        "clipood-flat-lr0.0001-st1000-s0 (selected); re-run validate.py on the same data with the same --workers\n")
    assert not (tmp_path / "r").exists()


def test_a_study_with_only_zero_shot_on_one_style_reports_the_rest_missing(study, tmp_path):
    _, out, *_ = study
    (tmp_path / "results").mkdir()
    for path in (out / "results").glob("zeroshot-mono.*"):
        shutil.copy(path, tmp_path / "results")
    text, summary = report.write_study(tmp_path, tmp_path / "r")
    assert "| zero-shot | missing | missing | " in text and "| 0 / 0 / 1 / 0 |" in text
    assert "test split, 48 images per style" in text
    assert "missing: no grid runs at a selected lr yet" in text
    assert text.count("**Not measured**") == len(study_report.CLAIMS)
    assert "| zero-shot | missing | missing | " in summary and "| ERM |" not in summary and "| ERM |" in text
    assert summary.count("**Not measured**") == len(study_report.CLAIMS)
    assert (tmp_path / "r" / study_report.PLOT_FILE).is_file()


def test_a_packed_study_reports_the_same_and_keeps_predictions_only_where_they_are_paired(study, tmp_path, capsys):
    """pack_study.py: the report of the packed copy equals the runner folder's; a grid run off its variant's selected
    configuration keeps its rows but not its predictions (and says so), and pairing it is refused; a second pack
    is byte-identical and needs --overwrite."""
    from emojidg import pack_study
    from emojidg.study_results import seed_averaged_correctness

    fx, out, results, md = study
    packed = tmp_path / "packed"
    assert pack_study.main(["--study", str(out), "--out", str(packed)]) == 0
    assert report.main(["--study", str(packed), "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "results.json").read_text()) == results
    assert (tmp_path / "report" / "results.md").read_text() == md
    for record_file in (packed / "results").glob("*-s[01].run.json"):  # the grid's: at the selected or oracle config
        record = json.loads(record_file.read_text())
        if record["phase"] == "grid" and record["variant"] in ("erm", "clipood"):
            wanted = [(c["lr"], c["steps"]) for c in (candidates(record["variant"], record["domain"])[0],
                                                      expected_oracle(fx, record["variant"], record["domain"]))]
            assert record["predictions_kept"] is ((record["lr"], record["steps"]) in wanted), record["run_id"]
    kept = json.loads((packed / "results" / "erm-3d-lr0.0001-st1000-s0.run.json").read_text())  # ERM's selected
    dropped = json.loads((packed / "results" / "erm-3d-lr1e-05-st3000-s0.run.json").read_text())
    assert kept["predictions_kept"] is True and dropped["predictions_kept"] is False
    assert (packed / "results" / "erm-3d-lr0.0001-st1000-s0.predictions.json.gz").is_file()
    assert not list((packed / "results").glob("erm-3d-lr1e-05-st3000-s0.predictions*"))
    assert (packed / "results" / "erm-3d-lr1e-05-st3000-s0.json").read_bytes() == (
        out / "results" / "erm-3d-lr1e-05-st3000-s0.json").read_bytes()
    off = load_study(packed).find("erm", "3d", lr=1e-5, steps=3000, seeds=[0])
    with pytest.raises(ConfigError, match=r"erm-3d-lr1e-05-st3000-s0 was packed without its per-image predictions"):
        seed_averaged_correctness([(s.run.run_id, s.target, s.correct) for s in off])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        pack_study.main(["--study", str(out), "--out", str(packed)])
    assert exc.value.code == 2 and f"{packed} already holds files; pass --overwrite" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in (packed / "results").iterdir()}
    assert pack_study.main(["--study", str(out), "--out", str(packed), "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in (packed / "results").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
