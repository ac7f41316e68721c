#!/usr/bin/env python
"""EmojiDG tables and plots from validate.py result files (the README's numbers come from here).

    python tools/emojidg/report.py --results output/emojidg/results --out docs/emojidg

Reads ``zeroshot-<domain>.json`` and ``<variant>-<domain>-s<seed>.json`` (written by
run_benchmark.py through validate.py), averages seeds, and writes ``results.json``, ``results.md``,
``accuracy_per_domain.png`` and ``bma_weights.png`` (the Beta weights of the recipe's run).

Every comparison the tables make (CLIPood vs ERM, each vs zero-shot, each ablation vs CLIPood) also
gets a paired, class-clustered bootstrap interval (:mod:`clipood_zoo.stats`) from the per-image
predictions beside each result (``<name>.predictions.json``, validate.py ``--predictions-file``);
per image, correctness is averaged over a variant's seeds.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from clipood_zoo import ClipoodError, ConfigError, bma_weights  # noqa: E402
from clipood_zoo.data import emojidg  # noqa: E402
from clipood_zoo.models.emoji import RECIPE  # noqa: E402
from clipood_zoo.stats import PairedInterval, paired_class_bootstrap  # noqa: E402

METRICS = ("top1", "base_top1", "new_top1", "hm")
LABELS = {"zeroshot": "zero-shot", "erm": "ERM (CE, last weights)", "clipood": "CLIPood (MMS + BMA)",
          "ce_bma": "CE + BMA", "fixed_margin": "fixed margin + BMA", "clipood_ema": "MMS + EMA",
          "clipood_last": "MMS, last weights"}


# "A - B": the comparisons the tables make, each printed with its paired interval.
COMPARISONS = (("clipood", "erm"), ("clipood", "zeroshot"), ("erm", "zeroshot"), ("ce_bma", "clipood"),
               ("fixed_margin", "clipood"), ("clipood_ema", "clipood"), ("clipood_last", "clipood"))
RESULT_NAME = re.compile(r"(?P<variant>[a-z_]+)-(?P<domain>[a-z0-9]+)(-s\d+)?")
PREDICTIONS_SUFFIX = ".predictions.json"


def load(results: Path) -> Dict[str, Dict[str, Dict[str, List[float]]]]:
    """variant -> domain -> metric -> values over seeds."""
    table: Dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for path in sorted(results.glob("*.json")):
        match = RESULT_NAME.fullmatch(path.stem)
        if not match:
            continue
        (row,) = json.loads(path.read_text())
        for metric in METRICS:
            table[match["variant"]][match["domain"]][metric].append(row[metric])
    return table


def load_correctness(results: Path) -> Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """variant -> domain -> (target per image, correctness per image averaged over the variant's seeds)."""
    runs: Dict = defaultdict(lambda: defaultdict(list))
    for path in sorted(results.glob(f"*{PREDICTIONS_SUFFIX}")):
        match = RESULT_NAME.fullmatch(path.name.removesuffix(PREDICTIONS_SUFFIX))
        if match:
            (model,) = json.loads(path.read_text())["models"].values()
            runs[match["variant"]][match["domain"]].append((path, model))
    out: Dict = defaultdict(dict)
    for variant, domains in runs.items():
        for domain, seeds in domains.items():
            target = np.asarray(seeds[0][1]["target"])
            for path, model in seeds:
                if not np.array_equal(model["target"], target):
                    raise ConfigError(f"{path} scored other images (or another order) than {seeds[0][0]}; "
                                      "re-run validate.py on the same data with the same --workers")
            correct = np.mean([np.equal(m["prediction"], target) for _, m in seeds], axis=0)
            out[variant][domain] = (target, correct)
    return out


def paired_differences(correctness: Dict) -> Dict[str, Dict[str, PairedInterval]]:
    """"A - B" -> domain -> interval, plus ``avg`` over the four held-out domains when all are there.

    ``avg`` pools the four domains' images, resampling each class in all domains at once (a class is
    the same emoji in every style); with equally many images per domain its difference is the
    difference of the tables' domain averages.
    """
    out: Dict[str, Dict[str, PairedInterval]] = {}
    for a, b in COMPARISONS:
        if a not in correctness or b not in correctness:
            continue
        cells, pooled = {}, []
        for domain in emojidg.DOMAINS:
            if domain in correctness[a] and domain in correctness[b]:
                (target, ca), (target_b, cb) = correctness[a][domain], correctness[b][domain]
                if not np.array_equal(target, target_b):
                    raise ConfigError(f"{a} and {b} were scored on different images of {domain}; a paired "
                                      "comparison needs the same images (same data, split and --workers)")
                cells[domain] = paired_class_bootstrap(ca, cb, target)
                pooled.append((ca, cb, target))
        if len(pooled) == len(emojidg.DOMAINS) and len({len(t) for *_, t in pooled}) == 1:
            cells["avg"] = paired_class_bootstrap(*(np.concatenate(parts) for parts in zip(*pooled)))
        out[f"{a} - {b}"] = cells
    return out


def paired_markdown(paired: Dict[str, Dict[str, PairedInterval]]) -> str:
    domains = [*emojidg.DOMAINS, "avg"]
    lines = ["Paired differences in held-out top-1 (points, A - B, same images), 95% interval from a bootstrap "
             "that resamples classes (10,000 resamples); * = the interval excludes 0 (resolved):", "",
             "| A - B | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for name, cells in paired.items():
        a, b = name.split(" - ")
        lines.append(f"| {LABELS[a]} - {LABELS[b]} | " + " | ".join(
            f"{cells[d]}{' *' if cells[d].resolved else ''}" if d in cells else "-" for d in domains) + " |")
    return "\n".join(lines) + "\n"


def summarise(table: Dict) -> Dict:
    out: Dict = {}
    for variant, domains in table.items():
        out[variant] = {d: {m: {"mean": round(statistics.mean(v), 2),
                                "std": round(statistics.stdev(v), 2) if len(v) > 1 else 0.0, "n": len(v)}
                            for m, v in metrics.items()} for d, metrics in domains.items()}
        complete = [d for d in emojidg.DOMAINS if d in domains]
        if len(complete) == len(emojidg.DOMAINS):
            out[variant]["avg"] = {m: {"mean": round(statistics.mean(out[variant][d][m]["mean"] for d in complete), 2)}
                                   for m in METRICS}
    return out


def cell(summary: Dict, variant: str, domain: str, metric: str) -> str:
    value = summary.get(variant, {}).get(domain, {}).get(metric)
    if value is None:
        return "-"
    return f"{value['mean']:.1f}" + (f" ± {value['std']:.1f}" if value.get("n", 1) > 1 else "")


def markdown(summary: Dict) -> str:
    domains = [*emojidg.DOMAINS, "avg"]
    lines = ["Held-out domain top-1 (%), 444-way, val split (444 images per domain):", "",
             "| method | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for variant in ("zeroshot", "erm", "clipood"):
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cell(summary, variant, d, "top1") for d in domains) + " |")
    lines += ["", "Base / new / harmonic mean on the held-out domain (each subset scored over its own 222 classes), "
              "average over the four held-out domains:", "", "| method | base | new | H |", "|---|---|---|---|"]
    for variant in LABELS:
        if variant in summary:
            lines.append(f"| {LABELS[variant]} | " + " | ".join(cell(summary, variant, "avg", m)
                                                               for m in ("base_top1", "new_top1", "hm")) + " |")
    lines += ["", "Ablations, held-out top-1 (%):", "", "| variant | " + " | ".join(domains) + " |",
              "|---|" + "---|" * len(domains)]
    for variant in ("ce_bma", "fixed_margin", "clipood_ema", "clipood_last", "clipood"):
        if variant in summary:
            lines.append(f"| {LABELS[variant]} | " + " | ".join(cell(summary, variant, d, "top1") for d in domains)
                         + " |")
    return "\n".join(lines) + "\n"


def plots(summary: Dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    variants = [v for v in ("zeroshot", "erm", "clipood") if v in summary]
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        means = [summary[variant].get(d, {}).get("top1", {}).get("mean", 0.0) for d in emojidg.DOMAINS]
        stds = [summary[variant].get(d, {}).get("top1", {}).get("std", 0.0) for d in emojidg.DOMAINS]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(emojidg.DOMAINS))]
        ax.bar(xs, means, width, yerr=stds, label=LABELS[variant], capsize=2)
    ax.set_xticks(range(len(emojidg.DOMAINS)), [f"held out: {d}" for d in emojidg.DOMAINS])
    ax.set_ylabel("top-1 (%), 444 classes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_per_domain.png", dpi=120)

    weights = bma_weights(RECIPE["steps"], 0.5)
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.plot(range(len(weights)), (weights / weights.sum()).numpy())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share of the BMA")
    ax.set_title(f"Beta(0.5, 0.5) weights over {RECIPE['steps']} steps")
    fig.tight_layout()
    fig.savefig(out / "bma_weights.png", dpi=120)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=REPO / "output" / "emojidg" / "results")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "emojidg")
    args = p.parse_args(argv)
    summary = summarise(load(args.results))
    if not summary:
        p.exit(2, f"no result files in {args.results}; run tools/emojidg/run_benchmark.py first\n")
    try:
        paired = paired_differences(load_correctness(args.results))
    except ClipoodError as e:
        p.exit(2, f"report.py: error: {e}\n")
    intervals = {name: {d: {"diff": round(c.diff, 2), "low": round(c.low, 2), "high": round(c.high, 2),
                            "resolved": c.resolved} for d, c in cells.items()} for name, cells in paired.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({**summary, "paired_differences": intervals}, indent=2) + "\n")
    text = markdown(summary) + "\n" + (paired_markdown(paired) if paired else
                                       "No paired intervals: the results have no per-image predictions "
                                       f"(*{PREDICTIONS_SUFFIX}, validate.py --predictions-file).\n")
    (args.out / "results.md").write_text(text)
    plots(summary, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
