"""The EmojiDG v2 study's tables, plot and claims, from a study folder (:mod:`emojidg.study_results`).

Each method is read at its selected (lr, steps) per held-out domain from ``selection.json`` (the runner
chose it on the source domains' val split; nothing here selects). The ablations are read at CLIPood's
selected (lr, steps): ``ce_bma``, ``fixed_margin``, the sweeps ``clipood_lambda<l>``, ``clipood_tau<t>`` and CE
at those taus ``ce_bma_tau<t>`` (the margin against tau) are runs of their own; EMA, last weights and the beta
sweep (``bma_beta<b>``, the uniform average at b = 1) are the ``"ema"``/``"last"``/``"bma_beta<b>"`` rows of
the CLIPood runs themselves (an average never feeds back into training); the longer EMA is the ``"ema"`` row of
runs of its own, ``clipood_ema0.999``, set beside their own ``"bma_beta0.5"`` and ``"last"`` rows. A cell averages
the seeds found there (all phases), and every table shows how many; a cell without results is "missing", and an
average over the held-out styles exists only when every style has results.

Beside each selection, the model-selection table sets the grid configuration with the best held-out val top-1
(:func:`emojidg.study_results.held_out_val_oracle`, as DomainBed's oracle chooses): what choosing on source val costs,
described rather than tested, since the val render shares its source image with the test renders.

Every comparison is a paired, class-clustered bootstrap interval (:func:`clipood_zoo.stats.
paired_class_bootstrap`) on the same images, each image's correctness averaged over the method's seeds;
the average over styles pools the four styles' images (each class resampled in all styles at once),
so with equally many images per style its difference is the difference of the tables' averages.
New-class comparisons pair the same predictions on the new classes' images only (top-1 over every class:
validate.py's ``new_top1`` scores over the new classes alone and has no per-image predictions).
"""
from __future__ import annotations

import io
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from clipood_zoo.bma import PAPER_BETA
from clipood_zoo.data import emojidg
from clipood_zoo.errors import ConfigError
from clipood_zoo.fileio import write_bytes_atomic
from clipood_zoo.metrics import harmonic_mean
from clipood_zoo.stats import PairedInterval, paired_class_bootstrap

from emojidg.study_results import (
    EMA_DECAY, LONG_EMA_DECAY, LONG_EMA_VARIANT, WISE_FT_FIXED_ALPHA, ZEROSHOT, Scored, Study, grid_seeds,
    held_out_val_oracle, oracle_can_choose, seed_averaged_correctness,
)


def half_life(decay: float) -> int:
    """The steps an EMA of ``decay`` puts half its weight on: the n with decay ** n = 1/2."""
    return round(math.log(0.5) / math.log(decay))


# CLIPood's BMA at the end of training (train.py --export-bma-betas): the reference of every comparison of averages,
# which are all taken there, while a run's selected export is its BMA at the step source val chose
FINAL_BMA = f"clipood@bma_beta{PAPER_BETA:g}"
LONG_EMA_BMA = f"{LONG_EMA_VARIANT}@bma_beta{PAPER_BETA:g}"  # the same at the end of the longer EMA's runs
HEADLINE = ("zeroshot", "erm", "clipood", "wise_ft", "clipood_wise_ft", "lp_ft", "flyp", "car_ft", "croft")
LABELS = {"zeroshot": "zero-shot", "erm": "ERM", "clipood": "CLIPood (MMS + BMA)", "wise_ft": "WiSE-FT (on ERM)",
          "clipood_wise_ft": "CLIPood + WiSE-FT", "lp_ft": "LP-FT", "flyp": "FLYP", "car_ft": "CAR-FT",
          "croft": "CRoFT", "ce_bma": "CE + BMA (lambda 0)", "fixed_margin": "fixed margin + BMA",
          FINAL_BMA: "CLIPood (MMS + BMA), at the end of training",
          "clipood@ema": f"MMS + EMA (decay {EMA_DECAY:g})", "clipood@bma_beta1": "MMS + uniform average (beta 1)",
          "clipood@last": "MMS, last weights",
          LONG_EMA_BMA: "CLIPood (MMS + BMA), at the end of training",
          f"{LONG_EMA_VARIANT}@ema": f"MMS + EMA (decay {LONG_EMA_DECAY:g})",
          f"{LONG_EMA_VARIANT}@last": "MMS, last weights",
          "erm@wise_ft": "WiSE-FT (on ERM), alpha chosen on source val",
          "clipood@wise_ft": "CLIPood + WiSE-FT, alpha chosen on source val",
          "erm@wise_ft_fixed": f"WiSE-FT (on ERM), alpha {WISE_FT_FIXED_ALPHA:g} fixed",
          "clipood@wise_ft_fixed": f"CLIPood + WiSE-FT, alpha {WISE_FT_FIXED_ALPHA:g} fixed"}
SWEEPS = {"beta": "beta sweep (the BMA's Beta(beta, beta) weights over steps)",
          "lambda": "lambda sweep (the margin's scale)",
          "tau": "tau sweep (the margin against the temperature it is relative to)"}
# the ablation tables: arms compared with the first (at its selected (lr, steps)), and each table's title
ABLATIONS = {"loss": ("clipood", "ce_bma", "fixed_margin"),
             "averaging": (FINAL_BMA, "clipood@ema", "clipood@bma_beta1", "clipood@last"),
             "long_ema": (LONG_EMA_BMA, f"{LONG_EMA_VARIANT}@ema", f"{LONG_EMA_VARIANT}@last"),
             # WiSE-FT's alpha chosen on source val against the paper's fixed alpha, on the same fine-tuning runs
             # (the fine-tune runs' own wise_ft rows, not the WiSE-FT variants, whose selected config may differ)
             "wise_ft_alpha_erm": ("erm", "erm@wise_ft", "erm@wise_ft_fixed"),
             "wise_ft_alpha_clipood": ("clipood", "clipood@wise_ft", "clipood@wise_ft_fixed")}
TITLES = {"loss": "Ablation: loss (MMS vs CE vs fixed margin)",
          "averaging": "Ablation: weight averaging (BMA vs EMA vs uniform vs last)",
          "long_ema": f"Ablation: BMA vs a longer EMA (decay {LONG_EMA_DECAY:g}), on the same runs",
          "wise_ft_alpha_erm": "WiSE-FT on ERM: alpha chosen on source val vs fixed",
          "wise_ft_alpha_clipood": "CLIPood + WiSE-FT: alpha chosen on source val vs fixed",
          **{f"{p}_sweep": f"Ablation: {what}" for p, what in SWEEPS.items()}}
# what a reader must know to read a table's arms: which weights are taken at which step
AT_THE_END = ("Every arm here is the same CLIPood runs' weights at the end of training, so only the averaging "
              "differs (a run's selected export, in the tables above, is its BMA at the step source val chose).")
SHORT_EMA = (f"The EMA (decay {EMA_DECAY:g}) puts half its weight on the last {half_life(EMA_DECAY)} steps: in a "
             "3000-step run the cosine schedule has all but stopped there, so it is close to the last weights (the "
             "next table has a longer EMA).")
LONG_EMA = (f"CLIPood trained again ({LONG_EMA_VARIANT} runs) to export an EMA of decay {LONG_EMA_DECAY:g}, which "
            f"puts half its weight on the last {half_life(LONG_EMA_DECAY)} steps, beside its BMA and last weights at "
            "the end of the same training: only the averaging differs.")
NOTES = {"averaging": f"{AT_THE_END} {SHORT_EMA}", "long_ema": LONG_EMA, "beta_sweep": AT_THE_END}
# the arm a table compares with, in its sentences
SHORT = {"clipood": "CLIPood", "erm": "ERM", FINAL_BMA: "CLIPood's BMA at the end of training",
         LONG_EMA_VARIANT: "CLIPood", LONG_EMA_BMA: "the same runs' BMA at the end of training"}
WISE_FT_GROUPS = ("wise_ft_alpha_erm", "wise_ft_alpha_clipood")  # also compared on the new classes' images
# the arms whose weights are WiSE-FT at the alpha source val chose: the report says which alpha that was, since
# source val is in the fine-tune's own distribution and can choose alpha 1 (the fine-tune itself) every time
CHOSEN_ALPHA_ARMS = ("wise_ft", "clipood_wise_ft", "erm@wise_ft", "clipood@wise_ft")
SWEEP_NAME = re.compile(r"clipood_(?P<param>lambda|tau)(?P<value>.+)")  # a sweep's runs of their own
BMA_SWEEP = re.compile(r"clipood@bma_beta(?P<value>.+)")  # the beta sweep: averages of the CLIPood runs' steps
CE_AT_TAU = re.compile(r"ce_bma_tau(?P<value>.+)")  # CE + BMA at a sweep's tau: the margin's effect at that tau
# (A, B, images, the paper's claim that A beats B); the verdict comes from the interval of A - B averaged over
# styles, on every image ("all") or on the new classes' images ("new": classes no fine-tune trained on).
CLAIMS = (("clipood", "zeroshot", "all", "CLIPood improves on zero-shot CLIP on unseen styles"),
          ("clipood", "erm", "all", "CLIPood beats ERM fine-tuning on unseen styles"),
          ("clipood", "erm", "new", "CLIPood beats ERM on the new classes of unseen styles (all-class top-1 on "
                                    "their images)"),
          ("clipood", "ce_bma", "all", "the margin metric softmax (MMS) beats cross-entropy (both with BMA)"),
          ("clipood", "fixed_margin", "all", "the class-adaptive margin beats a fixed margin"),
          (FINAL_BMA, "clipood@ema", "all", f"BMA beats an exponential moving average (decay {EMA_DECAY:g})"),
          (LONG_EMA_BMA, f"{LONG_EMA_VARIANT}@ema", "all",
           f"BMA beats an exponential moving average (decay {LONG_EMA_DECAY:g})"),
          (FINAL_BMA, "clipood@bma_beta1", "all", "BMA beats a uniform average of the weights"),
          (FINAL_BMA, "clipood@last", "all", "BMA beats the last weights"))
CLAIMS_RULE = ("the paired intervals of A - B averaged over the held-out styles: a claim holds when the interval "
               "excludes 0 on A's side, is reversed when it excludes 0 on B's side, and is not resolved when it "
               "includes 0; it is incomplete while A or B has more seeds in some styles than in others")
OPEN_SET = ("ood_auroc_mcm", "ood_fpr95_mcm", "ood_auroc_energy", "ood_fpr95_energy")
PLOT_FILE = "accuracy_vs_steps.png"
Cells = Dict[str, List[Scored]]  # domain -> the seeds of one arm


def label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    if match := BMA_SWEEP.fullmatch(name):
        return f"CLIPood, beta = {match['value']}"
    if match := SWEEP_NAME.fullmatch(name):
        return f"CLIPood, {match['param']} = {match['value']}"
    if match := CE_AT_TAU.fullmatch(name):
        return f"CE + BMA, tau = {match['value']}"
    return name


def arm(study: Study, name: str) -> Cells:
    """domain -> scored seeds of ``name`` ("variant" or "variant@weights") at its configuration."""
    variant, _, weights = name.partition("@")
    out: Cells = {}
    for domain in emojidg.DOMAINS:
        if variant == ZEROSHOT:
            found = study.find(ZEROSHOT, domain)
        elif name == FINAL_BMA and not study.find(variant, domain, weights):
            # a CLIPood run made before train.py --export-bma-betas (the v1-recipe study's) has only its selected
            # export; those runs evaluated once, at their last step, so it is this BMA at the end of training
            found = arm(study, "clipood").get(domain, [])
        else:
            # a method of the grid is read at its own selected configuration only (none yet: missing); an
            # ablation, which has no grid, at CLIPood's
            config = study.selection.get(variant if variant in HEADLINE else "clipood", {}).get(domain)
            found = study.find(variant, domain, weights or "selected", config["lr"], config["steps"]) if config else []
        if found:
            out[domain] = found
    return out


def stat(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": round(statistics.mean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0, "n": len(values)}


def metric_values(cells: Cells, metric: str) -> Dict[str, List[float]]:
    """domain -> ``metric`` of each seed (rows lacking it are not counted; a domain with none is left out)."""
    out = {}
    for domain, seeds in cells.items():
        values = [s.row[metric] if metric in s.row else (s.open_set or {}).get(metric) for s in seeds]
        if values := [v for v in values if v is not None]:
            out[domain] = values
    return out


def metric_cells(cells: Cells, metric: str) -> Dict[str, Dict[str, float]]:
    """domain -> mean/std/n over seeds of ``metric`` (rows lacking it are not counted), plus "avg" = mean of
    the domains' means when every held-out domain has it."""
    out, means = {}, {}
    for domain, values in metric_values(cells, metric).items():
        out[domain], means[domain] = stat(values), statistics.mean(values)
    if all(d in out for d in emojidg.DOMAINS):
        out["avg"] = {"mean": round(statistics.mean(means[d] for d in emojidg.DOMAINS), 2)}
    return out


def coop_h(base: Dict[str, List[float]], new: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
    """domain -> H, from each domain's base and new top-1 over seeds, plus "avg" when every held-out domain has both.
    H is CoOp's: the harmonic mean of the mean base and the mean new top-1 (per style over its seeds, and "avg" of the
    styles' means), not a mean of the runs' own H, which falls below it whenever base and new vary across the runs."""
    means = {d: (statistics.mean(base[d]), statistics.mean(new[d])) for d in base if d in new}
    out = {d: {"mean": round(harmonic_mean(*means[d]), 2), "n": len(base[d])} for d in means}
    if all(d in means for d in emojidg.DOMAINS):
        out["avg"] = {"mean": round(harmonic_mean(*(statistics.mean(means[d][i] for d in emojidg.DOMAINS)
                                                    for i in (0, 1))), 2)}
    return out


def base_new_cells(cells: Cells) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{"base_top1": ..., "new_top1": ..., "hm": ...}``, base and new as :func:`metric_cells` gives them, H as
    :func:`coop_h` derives it."""
    metrics = ("base_top1", "new_top1")
    return {**{m: metric_cells(cells, m) for m in metrics},
            "hm": coop_h(*(metric_values(cells, m) for m in metrics))}


def paired(a: Cells, b: Cells, classes: Optional[Sequence[int]] = None) -> Dict[str, PairedInterval]:
    """domain (and "avg") -> interval of top-1(A) - top-1(B) on the same images (only those of ``classes``
    when given: the predictions are over every class, so this is all-class top-1 on those images); a domain
    is left out when either side has no results there."""
    out, pooled = {}, []
    for domain in emojidg.DOMAINS:
        sides = [cells.get(domain, []) for cells in (a, b)]
        if not all(sides):
            continue
        (target, ca), (target_b, cb) = (seed_averaged_correctness(
            [(f"{s.run.run_id} ({s.weights})", s.target, s.correct) for s in side]) for side in sides)
        if not np.array_equal(target, target_b):
            raise ConfigError(f"{sides[0][0].run.run_id} and {sides[1][0].run.run_id} were scored on different "
                              f"images of {domain}; a paired comparison needs the same images")
        if classes is not None:
            keep = np.isin(target, classes)
            target, ca, cb = target[keep], ca[keep], cb[keep]
        out[domain] = paired_class_bootstrap(ca, cb, target)
        pooled.append((ca, cb, target))
    if len(pooled) == len(emojidg.DOMAINS) and len({len(t) for *_, t in pooled}) == 1:
        out["avg"] = paired_class_bootstrap(*(np.concatenate(parts) for parts in zip(*pooled)))
    return out


def held_out_rows(arms: Dict[str, Cells]) -> List[Tuple[str, dict]]:
    """(domain, held-out row) of every seed the tables of ``arms`` read."""
    return [(d, s.row) for cells in arms.values() for d, seeds in cells.items() for s in seeds]


def split_phrase(rows: Sequence[Tuple[str, dict]]) -> str:
    """"test split" (every split named when the rows hold more than one)."""
    splits = sorted({r["split"] for _, r in rows})
    return f"{' + '.join(splits)} split{'s' if len(splits) > 1 else ''}"


def images_phrase(rows: Sequence[Tuple[str, dict]], per: str = "style") -> str:
    """"4,440 images per style" from the rows' num_samples, or each domain's count(s) when they differ."""
    counts = {d: sorted({r["num_samples"] for dd, r in rows if dd == d}) for d in emojidg.DOMAINS}
    counts = {d: c for d, c in counts.items() if c}
    distinct = {n for c in counts.values() for n in c}
    if len(distinct) == 1:
        return f"{distinct.pop():,} images per {per}"
    return f"images per {per}: " + ", ".join(f"{d} {' or '.join(f'{n:,}' for n in c)}" for d, c in counts.items())


def heading(arms: Dict[str, Cells]) -> str:
    rows = held_out_rows(arms)
    return f"{split_phrase(rows)}, {images_phrase(rows)}" if rows else "no results"


def fmt(cell: Optional[Dict[str, float]]) -> str:
    if cell is None:
        return "missing"
    return f"{cell['mean']:.1f}" + (f" ± {cell['std']:.1f}" if cell.get("n", 1) > 1 else "")


def chosen_alphas(cells: Cells) -> Dict[str, List[Optional[float]]]:
    """domain -> the alpha source val chose for each seed's WiSE-FT (None: a run recorded before the runner kept it)."""
    return {d: [s.run.wise_ft_alpha for s in seeds] for d, seeds in cells.items()}


def chosen_alpha_markdown(arms: Dict[str, Cells]) -> str:
    """One line per arm of :data:`CHOSEN_ALPHA_ARMS` with results: how often source val chose each alpha."""
    lines = []
    for name, cells in arms.items():
        alphas = [a for seeds in chosen_alphas(cells).values() for a in seeds]
        if name not in CHOSEN_ALPHA_ARMS or not alphas:
            continue
        counts = Counter(alphas)
        told = [f"{a:g} in {counts[a]}" for a in sorted((a for a in counts if a is not None), reverse=True)]
        told += [f"not recorded in {counts[None]}"] if None in counts else []
        lines.append(f"- {label(name)}: alpha {', '.join(told)} of {len(alphas)} runs")
    return ("The alpha WiSE-FT's source-val selection chose (alpha 1 is the fine-tune itself):\n\n" + "\n".join(lines)
            + "\n") if lines else ""


def seeds_column(cells: Cells) -> str:
    return " / ".join(str(len(cells.get(d, []))) for d in emojidg.DOMAINS)


def accuracy_markdown(arms: Dict[str, Cells], metric: str = "top1") -> str:
    cols = [*emojidg.DOMAINS, "avg"]
    lines = [f"| method | {' | '.join(cols)} | seeds ({' / '.join(emojidg.DOMAINS)}) |",
             "|---" * (len(cols) + 2) + "|"]
    for name, cells in arms.items():
        values = metric_cells(cells, metric)
        lines.append(f"| {label(name)} | " + " | ".join(fmt(values.get(c)) for c in cols)
                     + f" | {seeds_column(cells)} |")
    return "\n".join(lines) + "\n"


def differences_markdown(diffs: Dict[Tuple[str, str], Dict[str, PairedInterval]]) -> str:
    cols = [*emojidg.DOMAINS, "avg"]
    lines = [f"| A - B | {' | '.join(cols)} |", "|---" * (len(cols) + 1) + "|"]
    for (a, b), cells in diffs.items():
        lines.append(f"| {label(a)} - {label(b)} | " + " | ".join(
            f"{cells[c]}{' *' if cells[c].resolved else ''}" if c in cells else "missing" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def interval_json(cells: Dict[str, PairedInterval]) -> Dict:
    return {d: {"diff": round(c.diff, 2), "low": round(c.low, 2), "high": round(c.high, 2), "resolved": c.resolved,
                "num_classes": c.num_classes, "num_images": c.num_images} for d, c in cells.items()}


def sweep_group(study: Study, param: str) -> Tuple[str, ...]:
    """A sweep's table: its reference, then its arms in increasing order of the value. The beta sweep is the CLIPood
    runs' own averages at the end of training (``clipood@bma_beta<b>``), against the paper's beta there
    (:data:`FINAL_BMA`); the lambda and tau sweeps are runs of their own (``clipood_<param><value>``), against
    CLIPood."""
    if param == "beta":
        names = {f"clipood@{s.weights}" for s in study.scored if s.run.variant == "clipood"} - {FINAL_BMA}
        reference, pattern = FINAL_BMA, BMA_SWEEP
    else:
        names = {s.run.variant for s in study.scored if (m := SWEEP_NAME.fullmatch(s.run.variant)) and m["param"] == param}
        reference, pattern = "clipood", SWEEP_NAME
    arms = sorted((n for n in names if pattern.fullmatch(n)), key=lambda n: float(pattern.fullmatch(n)["value"]))
    return (reference, *arms)


def margin_vs_tau_pairs(study: Study) -> Dict[str, Tuple[str, str]]:
    """tau -> (MMS arm, CE arm) at that tau: the recipe's (the model's 1 / logit scale: CLIPood vs CE + BMA) and
    each tau with a CE run (``clipood_tau<t>`` vs ``ce_bma_tau<t>``), in increasing order of tau."""
    taus = sorted({m["value"] for s in study.scored if (m := CE_AT_TAU.fullmatch(s.run.variant))}, key=float)
    return {"recipe": ("clipood", "ce_bma"), **{t: (f"clipood_tau{t}", f"ce_bma_tau{t}") for t in taus}}


def margin_vs_tau_markdown(rows: Dict[str, Dict]) -> str:
    lines = ["| tau | MMS + BMA avg | CE + BMA avg | MMS - CE, avg [95%] | styles resolved for / against |",
             "|---|---|---|---|---|"]
    for tau, row in rows.items():
        avg = row["diff"].get("avg")
        styles = [row["diff"][d] for d in emojidg.DOMAINS if d in row["diff"]]
        lines.append("| " + " | ".join([
            "recipe (1 / logit scale)" if tau == "recipe" else tau,
            *(f"{row[k]['avg']['mean']:.1f}" if "avg" in row[k] else "missing" for k in ("mms", "ce")),
            f"{avg}{'*' if avg.resolved else ''}" if avg else "missing",
            f"{sum(c.resolved and c.diff > 0 for c in styles)} / {sum(c.resolved and c.diff < 0 for c in styles)}"])
            + " |")
    return "\n".join(lines) + "\n"


def steps_curve(study: Study, variant: str) -> Dict[int, Dict]:
    """steps -> held-out and new-class top-1 of ``variant``'s grid runs at its selected lr of each domain:
    per domain the mean over seeds, then the mean over domains (only when every domain has that step)."""
    by_steps: Dict[int, Dict[str, List[Scored]]] = {}
    for domain in emojidg.DOMAINS:
        config = study.selection.get(variant, {}).get(domain)
        if config is None:
            continue
        for s in study.find(variant, domain, lr=config["lr"], phase="grid"):
            by_steps.setdefault(s.run.steps, {}).setdefault(domain, []).append(s)
    out = {}
    for steps in sorted(by_steps):
        cells = by_steps[steps]
        entry = {"domains": sorted(cells, key=emojidg.DOMAINS.index),
                 "seeds": {d: len(cells[d]) for d in cells}}
        for metric in ("top1", "new_top1"):
            entry[metric] = metric_cells(cells, metric).get("avg", {}).get("mean")
        out[steps] = entry
    return out


def plot_steps(curves: Dict[str, Dict[int, Dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharex=True)
    for ax, metric, title in zip(axes, ("top1", "new_top1"),
                                 ("held-out style, all classes", "held-out style, new classes")):
        for variant, curve in curves.items():
            points = [(steps, e[metric]) for steps, e in curve.items() if e[metric] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label(variant))
        ax.set_xscale("log")
        ax.minorticks_off()
        steps = sorted({s for curve in curves.values() for s in curve})
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("training steps")
        ax.set_ylabel("top-1 (%), mean over styles")
        ax.set_title(title, fontsize=9)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())


def claim_sentence(claim: str, cells: Optional[Dict[str, PairedInterval]], sides: Sequence[Tuple[str, Cells]]
                   ) -> Tuple[str, str]:
    """(verdict, sentence) for "A beats B" from the interval of A - B: holds / reversed when the average's
    interval excludes 0, not resolved when it includes 0, not measured when there is none; incomplete while a side
    (``sides``: A's and B's label and seeds) has more seeds in some styles than in others, as a study in progress
    has: the average would weigh a style's one seed like another's five, and the study has not said its word yet."""
    avg = (cells or {}).get("avg")
    if avg is None:
        return "not measured", f"**Not measured**: {claim} (no interval over all four held-out styles)."
    uneven = [f"{label(name)} {seeds_column(side)}" for name, side in sides
              if len({len(side.get(d, [])) for d in emojidg.DOMAINS}) > 1]
    if uneven:
        return "incomplete", (f"**Incomplete**: {claim}: {avg} points averaged over the held-out styles, from "
                              f"unequal seeds per style ({'; '.join(uneven)}, {' / '.join(emojidg.DOMAINS)}): no "
                              "verdict until every style has them all.")
    verdict = ("holds" if avg.low > 0 else "reversed" if avg.high < 0 else "not resolved")
    styles = [cells[d] for d in emojidg.DOMAINS]
    return verdict, (f"**{verdict[0].upper() + verdict[1:]}**: {claim}: {avg} points averaged over the held-out "
                     f"styles; resolved in its favour on {sum(c.low > 0 for c in styles)} and "
                     f"against it on {sum(c.high < 0 for c in styles)} of {len(styles)} styles.")


def build(study: Study, out: Path) -> Tuple[str, str, Dict]:
    """The report's markdown, its summary (the headline tables of the methods with results, and the claims: what the
    README quotes) and results.json content; writes the plot into ``out``."""
    groups = {**ABLATIONS, **{f"{p}_sweep": sweep_group(study, p) for p in SWEEPS}}
    arms = {n: arm(study, n) for n in dict.fromkeys([*HEADLINE, *(n for names in groups.values() for n in names)])}
    headline = {n: arms[n] for n in HEADLINE}
    pairs = [(m, "zeroshot") for m in HEADLINE[1:]] + [(m, "erm") for m in HEADLINE[2:]]
    diffs = {(a, b): paired(arms[a], arms[b]) for a, b in pairs}
    group_diffs = {g: {(n, names[0]): paired(arms[n], arms[names[0]]) for n in names[1:]}
                   for g, names in groups.items()}
    group_new_diffs = {g: {(n, names[0]): paired(arms[n], arms[names[0]], emojidg.NEW_CLASSES) for n in names[1:]}
                       for g in WISE_FT_GROUPS for names in [groups[g]]}
    new_diffs = {(a, b): paired(arms[a], arms[b], emojidg.NEW_CLASSES) for a, b in pairs}
    claims = [(claim, *claim_sentence(claim, paired(arms[a], arms[b], emojidg.NEW_CLASSES if images == "new" else None),
                                      [(a, arms[a]), (b, arms[b])]))
              for a, b, images, claim in CLAIMS]
    tau_rows = {tau: {"mms": metric_cells(arm(study, a), "top1"), "ce": metric_cells(arm(study, b), "top1"),
                      "diff": paired(arm(study, a), arm(study, b))}
                for tau, (a, b) in margin_vs_tau_pairs(study).items()}
    curves = {v: steps_curve(study, v) for v in ("erm", "clipood")}
    out.mkdir(parents=True, exist_ok=True)  # only now: a study the tables refuse leaves no folder behind
    plot_steps(curves, out / PLOT_FILE)

    selection = model_selection(study)
    oracle_diffs = {(v, "erm"): paired(sel["oracle"], selection["erm"]["oracle"])
                    for v, sel in selection.items() if v != "erm" and "erm" in selection}
    md = ["# EmojiDG study: CLIPood and robust fine-tuning peers\n", *headline_markdown(headline, diffs, new_diffs),
          "## Model selection: source val against an oracle on the held-out style\n\nPer method and held-out style: "
          "the (lr, steps) selected on the source styles' val split, with its source val top-1 and the next best "
          "configuration's, against the oracle: the grid's (lr, steps) with the best top-1 on the held-out style's "
          "val split, as DomainBed's test-domain validation chooses (recorded by every run, never used to select; "
          "within a run the exported step and WiSE-FT's alpha are still chosen on source val), among the "
          "candidates whose grid seeds all have it. Held-out val and test top-1 of both over the grid's seeds, and "
          "the paired interval of selected - oracle on the test images (as above). The held-out val image of a "
          "class is a render of the same source image as its test images (v2's test split holds the val render "
          "too; a v1 study scores the val split itself), so the oracle's choice shares their noise and favours "
          "itself: the interval describes the gap and is not a test (no *):\n",
          selection_markdown(selection),
          "Each method at its oracle configuration against ERM at its own (held-out test top-1 over the grid's seeds; "
          "paired intervals as above): whether a gap between methods is only the selection's. Both sides are "
          "chosen on the held-out val split, so each favours itself by about as much:\n",
          differences_markdown(oracle_diffs)]
    for group, names in groups.items():
        md += [f"## {TITLES[group]}\n\n" + (f"{NOTES[group]} " if group in NOTES else "") +
               f"Held-out top-1 (%), {heading({n: arms[n] for n in names})}, at "
               f"{SHORT[names[0].partition('@')[0]]}'s selected (lr, steps):\n",
               accuracy_markdown({n: arms[n] for n in names}), chosen_alpha_markdown({n: arms[n] for n in names}),
               f"Paired differences vs {SHORT[names[0]]} (as above):\n", differences_markdown(group_diffs[group])]
        if group in group_new_diffs:
            md += ["On the new classes' images (as above):\n", differences_markdown(group_new_diffs[group])]
    md += ["## Ablation: the margin against tau\n\nThe margin lambda (1 - S(T_y, T_c)) is added before the logits are "
           "divided by tau, so its effect depends on tau: MMS + BMA against CE + BMA (lambda 0) at the same tau, "
           "held-out top-1 (%) averaged over styles at CLIPood's selected (lr, steps), with the paired interval "
           "(as above):\n", margin_vs_tau_markdown(tau_rows)]
    md += [f"## Accuracy against training steps\n\n![accuracy vs steps]({PLOT_FILE})\n\nGrid runs at each "
           "method's selected lr per style; per step, the mean over seeds, then over the four styles:\n",
           steps_markdown(curves),
           f"## Which claims of the paper hold\n\nGenerated from {CLAIMS_RULE}:\n",
           claims_markdown(claims)]
    results = {
        "heading": {"classes": len(emojidg.CLASS_NAMES), "split": split_phrase(held_out_rows(headline)),
                    "images": images_phrase(held_out_rows(headline))},
        "held_out_top1": {n: metric_cells(c, "top1") for n, c in headline.items()},
        "held_out_differences": {f"{a} - {b}": interval_json(c) for (a, b), c in diffs.items()},
        "wise_ft_chosen_alpha": {n: chosen_alphas(arms[n]) for n in CHOSEN_ALPHA_ARMS if arms[n]},
        "base_new": {n: base_new_cells(c) for n, c in headline.items()},
        "new_class_images_differences": {f"{a} - {b}": interval_json(c) for (a, b), c in new_diffs.items()},
        "open_set": {n: {m: metric_cells(c, m) for m in OPEN_SET} for n, c in headline.items()},
        "ablations": {g: {"top1": {n: metric_cells(arms[n], "top1") for n in names},
                          "differences": {f"{a} - {b}": interval_json(c) for (a, b), c in group_diffs[g].items()},
                          **({"new_class_images_differences": {f"{a} - {b}": interval_json(c)
                                                               for (a, b), c in group_new_diffs[g].items()}}
                             if g in group_new_diffs else {})}
                      for g, names in groups.items()},
        "margin_vs_tau": {tau: {**{k: row[k] for k in ("mms", "ce")}, "diff": interval_json(row["diff"])}
                          for tau, row in tau_rows.items()},
        "model_selection": {v: {"configs": {d: {"selected": config_json(cell), "next_source_val_top1": next_source_val(cell),
                                                "oracle": config_json(sel["oracle_configs"][d]),
                                                "candidates_scored": list(sel["scored"][d])}
                                            for d, cell in sel["cells"].items()},
                                "held_out_val_top1": {side: held_out_val_means(sel[side]) for side in SIDES},
                                "held_out_top1": {side: metric_cells(sel[side], "top1") for side in SIDES},
                                "differences": interval_json(sel["diff"])}
                            for v, sel in selection.items()},
        "oracle_differences": {f"{a} - {b}": interval_json(c) for (a, b), c in oracle_diffs.items()},
        "steps_curve": {v: {str(k): e for k, e in c.items()} for v, c in curves.items()},
        "claims": [{"claim": c, "verdict": v, "sentence": s} for c, v, s in claims],
    }
    measured = {n: c for n, c in headline.items() if c}
    summary = headline_markdown(measured, *({(a, b): c for (a, b), c in d.items() if a in measured and b in measured}
                                            for d in (diffs, new_diffs)))
    summary += [f"Which claims of the paper hold ({CLAIMS_RULE}):\n", claims_markdown(claims)]
    return "\n".join(part for part in md if part), "\n".join(part for part in summary if part), results


SIDES = ("selected", "oracle")  # the model-selection table's two configurations of each cell


def model_selection(study: Study) -> Dict[str, Dict]:
    """variant -> {"cells": {domain: selection.json's cell}, "oracle": {domain: the held-out val oracle or None},
    "scored": {domain: (candidates the oracle could choose among, candidates)}, "selected"/"oracle": the grid seeds
    of each side (Cells) on the domains where the selected candidate is one the oracle could choose, "diff": their
    paired intervals} for every grid method with a selection."""
    out = {}
    for variant in HEADLINE[1:]:
        cells = {d: cell for d in emojidg.DOMAINS if (cell := study.selection.get(variant, {}).get(d))}
        if not cells:
            continue
        choosable = {d: [c for c in cell["candidates"] if oracle_can_choose(study, variant, d, c)]
                     for d, cell in cells.items()}
        oracle = {d: held_out_val_oracle(study, variant, d) for d in cells}
        compared = [d for d, cell in cells.items() if cell["candidates"][0] in choosable[d]]
        sides = {side: {d: grid_seeds(study, variant, d, config[d]) for d in compared}
                 for side, config in zip(SIDES, (cells, oracle))}
        out[variant] = {"cells": cells, "oracle_configs": oracle,
                        "scored": {d: (len(choosable[d]), len(cells[d]["candidates"])) for d in cells},
                        **sides, "diff": paired(sides["selected"], sides["oracle"])}
    return out


def held_out_val_means(cells: Cells) -> Dict[str, float]:
    """domain -> the mean held-out val top-1 of the seeds (all recorded where the oracle could choose)."""
    return {d: round(statistics.mean(s.run.held_out_val_top1 for s in seeds), 2) for d, seeds in cells.items()}


def lr_steps(config: Dict) -> str:
    return f"{np.format_float_scientific(config['lr'], trim='-', exp_digits=1)}, {config['steps']}"


def next_source_val(cell: Dict) -> Optional[float]:
    """The source val top-1 of the configuration source val ranked second (None: the cell had one candidate)."""
    return cell["candidates"][1]["source_val_top1"] if len(cell["candidates"]) > 1 else None


def config_json(config: Optional[Dict]) -> Optional[Dict]:
    return {k: config[k] for k in ("lr", "steps", "source_val_top1")} if config else None


def selection_markdown(selection: Dict[str, Dict]) -> str:
    if not selection:
        return "missing: no selection.json cell yet\n"
    lines = ["| method | style | selected (lr, steps) | source val: selected (next) | oracle (lr, steps) | candidates "
             "the oracle can choose | held-out val: selected / oracle | held-out test top-1: selected / oracle | "
             "selected - oracle |",
             "|---" * 9 + "|"]
    for variant, sel in selection.items():
        val = {side: held_out_val_means(sel[side]) for side in SIDES}
        test = {side: metric_cells(sel[side], "top1") for side in SIDES}
        for d in [*sel["cells"], *(["avg"] if "avg" in sel["diff"] else [])]:
            cell, oracle = sel["cells"].get(d), sel["oracle_configs"].get(d)
            nxt = next_source_val(cell) if cell else None
            configs = ["", "", "", ""] if not cell else [
                lr_steps(cell), f"{cell['source_val_top1']:.1f}" + (f" ({nxt:.1f})" if nxt is not None else ""),
                lr_steps(oracle) if oracle else "missing", "{} of {}".format(*sel["scored"][d])]
            if d not in test["selected"]:  # the selected candidate is not one the oracle could choose yet
                lines.append("| " + " | ".join([label(variant), d, *configs, "missing", "missing", "missing"]) + " |")
                continue
            cells = [label(variant), d, *configs, " / ".join(f"{val[side][d]:.1f}" for side in SIDES) if cell else "",
                     " / ".join(f"{test[side][d]['mean']:.1f}" for side in SIDES), str(sel["diff"][d])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline_markdown(arms: Dict[str, Cells], diffs: Dict[Tuple[str, str], Dict[str, PairedInterval]],
                      new_diffs: Dict[Tuple[str, str], Dict[str, PairedInterval]]) -> List[str]:
    """The headline tables (held-out top-1, paired differences on every image and on the new classes' images,
    base / new / H, open-set detection) of ``arms``: the report's first section, and the summary the README
    quotes (there only the arms and pairs with results)."""
    return [f"Held-out style top-1 (%), {len(emojidg.CLASS_NAMES)}-way, {heading(arms)}; each method at its (lr, "
            "steps) selected on the source styles' val split (`selection.json`); mean ± std over seeds, \"missing\" "
            "= no results:\n",
            accuracy_markdown(arms), chosen_alpha_markdown(arms),
            "Paired differences in held-out top-1 (points, A - B, same images; per image, correctness averaged over "
            "each method's seeds), 95% interval from a bootstrap that resamples classes (10,000 resamples); "
            "* = the interval excludes 0 (resolved):\n", differences_markdown(diffs),
            f"Base / new / harmonic mean H on the held-out style (each subset scored over its own "
            f"{len(emojidg.BASE_CLASSES)} classes), mean over seeds, then over the held-out styles; H is the harmonic "
            "mean of the base and new means (as CoOp averages), not a mean of each run's H:\n",
            base_new_markdown(arms),
            f"Paired differences on the new classes' images of the held-out style (classes no fine-tune trained on; "
            f"top-1 over all {len(emojidg.CLASS_NAMES)} classes, so not the table's new-class column, which scores "
            "over the new classes only and has no per-image predictions), as above:\n", differences_markdown(new_diffs),
            "Open-set detection on the held-out style (the new classes are the open set of the classifier over the "
            "base classes), mean over seeds, then over styles. AUROC: higher is better; FPR95 (false-positive rate "
            "at 95% true-positive rate): lower is better. No intervals (the rows hold no per-image scores):\n",
            open_set_markdown(arms)]


def claims_markdown(claims: Sequence[Tuple[str, str, str]]) -> str:
    return "\n".join(f"- {sentence}" for *_, sentence in claims) + "\n"


def base_new_markdown(arms: Dict[str, Cells]) -> str:
    lines = [f"| method | base | new | H | seeds ({' / '.join(emojidg.DOMAINS)}) |", "|---|---|---|---|---|"]
    for name, cells in arms.items():
        lines.append(f"| {label(name)} | " + " | ".join(fmt(c.get("avg")) for c in base_new_cells(cells).values())
                     + f" | {seeds_column(cells)} |")
    return "\n".join(lines) + "\n"


def open_set_markdown(arms: Dict[str, Cells]) -> str:
    lines = [f"| method | AUROC MCM (↑) | FPR95 MCM (↓) | AUROC energy (↑) | FPR95 energy (↓) | seeds "
             f"({' / '.join(emojidg.DOMAINS)}) |", "|---|---|---|---|---|---|"]
    for name, cells in arms.items():
        seeds = " / ".join(str(sum(s.open_set is not None for s in cells.get(d, []))) for d in emojidg.DOMAINS)
        lines.append(f"| {label(name)} | " + " | ".join(fmt(metric_cells(cells, m).get("avg")) for m in OPEN_SET)
                     + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def steps_markdown(curves: Dict[str, Dict[int, Dict]]) -> str:
    steps = sorted({s for c in curves.values() for s in c})
    if not steps:
        return "missing: no grid runs at a selected lr yet\n"
    lines = ["| method | metric | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|---" + "|---" * len(steps) + "|"]
    for variant, curve in curves.items():
        for metric, name in (("top1", "held-out top-1"), ("new_top1", "new-class top-1")):
            lines.append(f"| {label(variant)} | {name} | " + " | ".join(
                "missing" if s not in curve or curve[s][metric] is None else
                f"{curve[s][metric]:.1f}" for s in steps) + " |")
    return "\n".join(lines) + "\n"
