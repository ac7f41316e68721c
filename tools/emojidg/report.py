#!/usr/bin/env python
"""EmojiDG tables and plots from validate.py result files (the README's numbers come from here).

    python tools/emojidg/report.py --study output/emojidg_v2 --out docs/emojidg/v2   # the v2 study
    python tools/emojidg/report.py --study docs/emojidg/v2/study --readme README.md   # and the README's tables
    python tools/emojidg/report.py --results output/emojidg/results --out docs/emojidg   # v1

``--study OUT`` reads the v2 study folder tools/emojidg/run_benchmark.py writes (runs named
``<variant>-<domain>-lr<lr>-st<steps>-s<seed>``, ``selection.json``; :mod:`emojidg.study_results` says
how) and writes ``results.md``, ``results.json`` and ``accuracy_vs_steps.png``: held-out top-1 of every
method at its selected configuration, base / new / H, open-set AUROC / FPR95, the selection against the best
held-out val configuration of the grid (DomainBed's oracle), the paper's ablations,
accuracy against training steps and the claims the intervals resolve (:mod:`emojidg.study_report`); and
``summary.md``, the headline tables of the methods with results and the claims, which ``--readme FILE`` also
writes into FILE between its :data:`README_BEGIN` and :data:`README_END` lines (the README's tables are that
file's, and a test checks them against the committed results; the prose around them is written by hand).

``--results DIR`` (v1) reads ``zeroshot-<domain>.json`` and ``<variant>-<domain>-s<seed>.json`` (written by
the v1 run_benchmark.py through validate.py), averages seeds, and writes ``results.json``, ``results.md``,
``accuracy_per_domain.png`` and ``bma_weights.png`` (the Beta weights of the recipe's run).

Every comparison the tables make also gets a paired, class-clustered bootstrap interval
(:mod:`clipood_zoo.stats`) from the per-image predictions beside each result (``<name>.predictions.json``,
validate.py ``--predictions-file``); per image, correctness is averaged over a variant's seeds. The
headings state the split and the number of images per style as the rows record them.
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
sys.path.insert(0, str(REPO / "tools"))

from clipood_zoo import ClipoodError, ConfigError, bma_weights  # noqa: E402
from clipood_zoo.data import emojidg  # noqa: E402
from clipood_zoo.models.emoji import RECIPE  # noqa: E402
from clipood_zoo.fileio import write_text_atomic  # noqa: E402
from clipood_zoo.stats import PairedInterval, paired_class_bootstrap  # noqa: E402
from emojidg import study_report  # noqa: E402
from emojidg.study_results import PREDICTIONS_SUFFIX, load_study, seed_averaged_correctness  # noqa: E402

METRICS = ("top1", "base_top1", "new_top1")  # read from the rows; H is derived from base and new (summarise)
LABELS = {"zeroshot": "zero-shot", "erm": "ERM (CE, last weights)", "clipood": "CLIPood (MMS + BMA)",
          "ce_bma": "CE + BMA", "fixed_margin": "fixed margin + BMA", "clipood_ema": "MMS + EMA",
          "clipood_last": "MMS, last weights"}


# "A - B": the comparisons the tables make, each printed with its paired interval.
COMPARISONS = (("clipood", "erm"), ("clipood", "zeroshot"), ("erm", "zeroshot"), ("ce_bma", "clipood"),
               ("fixed_margin", "clipood"), ("clipood_ema", "clipood"), ("clipood_last", "clipood"))
RESULT_NAME = re.compile(r"(?P<variant>[a-z_]+)-(?P<domain>[a-z0-9]+)(-s\d+)?")
SUMMARY_NAME = "summary.md"
README_BEGIN = "<!-- report.py --readme writes what follows, the study's summary.md: edit report.py, not this -->"
README_END = "<!-- report.py --readme: end -->"


def load(results: Path) -> Tuple[Dict[str, Dict[str, Dict[str, List[float]]]], List[Tuple[str, dict]]]:
    """(variant -> domain -> metric -> values over seeds, every (domain, row) read)."""
    table: Dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    rows = []
    for path in sorted(results.glob("*.json")):
        match = RESULT_NAME.fullmatch(path.stem)
        if not match:
            continue
        (row,) = json.loads(path.read_text())
        rows.append((match["domain"], row))
        for metric in METRICS:
            table[match["variant"]][match["domain"]][metric].append(row[metric])
    return table, rows


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
            out[variant][domain] = seed_averaged_correctness(
                [(path, np.asarray(m["target"]), np.equal(m["prediction"], m["target"])) for path, m in seeds])
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
    """variant -> domain (and "avg" when all four have results) -> metric -> mean/std/n over seeds. H ("hm") is
    CoOp's, as :func:`emojidg.study_report.coop_h` derives it: the harmonic mean of the base and new means."""
    out: Dict = {}
    for variant, domains in table.items():
        hm = study_report.coop_h(*({d: metrics[m] for d, metrics in domains.items()} for m in ("base_top1", "new_top1")))
        out[variant] = {d: {**{m: study_report.stat(v) for m, v in metrics.items()}, "hm": hm[d]}
                        for d, metrics in domains.items()}
        complete = [d for d in emojidg.DOMAINS if d in domains]
        if len(complete) == len(emojidg.DOMAINS):
            avg = {m: {"mean": round(statistics.mean(out[variant][d][m]["mean"] for d in complete), 2)} for m in METRICS}
            out[variant]["avg"] = {**avg, "hm": hm["avg"]}
    return out


def cell(summary: Dict, variant: str, domain: str, metric: str) -> str:
    value = summary.get(variant, {}).get(domain, {}).get(metric)
    if value is None:
        return "-"
    return f"{value['mean']:.1f}" + (f" ± {value['std']:.1f}" if value.get("n", 1) > 1 else "")


def markdown(summary: Dict, rows: List[Tuple[str, dict]]) -> str:
    """The v1 tables; the heading's split and images per domain are those of ``rows`` (domain, row)."""
    domains = [*emojidg.DOMAINS, "avg"]
    lines = [f"Held-out domain top-1 (%), {len(emojidg.CLASS_NAMES)}-way, {study_report.split_phrase(rows)} "
             f"({study_report.images_phrase(rows, per='domain')}):", "",
             "| method | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for variant in ("zeroshot", "erm", "clipood"):
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cell(summary, variant, d, "top1") for d in domains) + " |")
    lines += ["", "Base / new / harmonic mean on the held-out domain (each subset scored over its own "
              f"{len(emojidg.BASE_CLASSES)} classes), "
              "average over the four held-out domains; H is the harmonic mean of the base and new averages (as CoOp "
              "averages), not an average of each run's H:", "", "| method | base | new | H |", "|---|---|---|---|"]
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


def write_v1(results: Path, out: Path) -> str:
    """The v1 report of the result files in ``results`` into ``out``; returns its markdown."""
    table, rows = load(results)
    summary = summarise(table)
    if not summary:
        raise ConfigError(f"no result files in {results}; run tools/emojidg/run_benchmark.py first")
    paired = paired_differences(load_correctness(results))
    intervals = {name: {d: {"diff": round(c.diff, 2), "low": round(c.low, 2), "high": round(c.high, 2),
                            "resolved": c.resolved} for d, c in cells.items()} for name, cells in paired.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps({**summary, "paired_differences": intervals}, indent=2) + "\n")
    text = markdown(summary, rows) + "\n" + (paired_markdown(paired) if paired else
                                             "No paired intervals: the results have no per-image predictions "
                                             f"(*{PREDICTIONS_SUFFIX}, validate.py --predictions-file).\n")
    write_text_atomic(out / "results.md", text)
    plots(summary, out)
    return text


def write_study(study: Path, out: Path) -> Tuple[str, str]:
    """The v2 study's report of the folder ``study`` into ``out``; returns its markdown and its summary."""
    text, summary, results = study_report.build(load_study(study), out)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "results.md", text)
    write_text_atomic(out / SUMMARY_NAME, summary)
    return text, summary


def readme_around_summary(readme: Path) -> Tuple[str, str]:
    """(the text up to and including the :data:`README_BEGIN` line, the text from the :data:`README_END` line on):
    what ``--readme`` keeps of ``readme``. Checked before anything is written, so a README without its two lines
    stops the report with nothing written."""
    try:
        lines = readme.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--readme {readme} cannot be read as UTF-8 text ({e}); name the README to write into")
    where = {mark: [i for i, line in enumerate(lines) if line.rstrip("\n") == mark]
             for mark in (README_BEGIN, README_END)}
    if any(len(found) != 1 for found in where.values()) or where[README_BEGIN][0] > where[README_END][0]:
        raise ConfigError(f"--readme {readme} needs the line {README_BEGIN!r} and, after it, the line {README_END!r}, "
                          f"once each (found {len(where[README_BEGIN])} and {len(where[README_END])}); put them "
                          "around the place the study's tables go")
    begin, end = where[README_BEGIN][0], where[README_END][0]
    return "".join(lines[:begin + 1]), "".join(lines[end:])


def readme_with_summary(around: Tuple[str, str], summary: str) -> str:
    """The README whose :func:`readme_around_summary` is ``around``, with ``summary`` between its two lines."""
    return f"{around[0]}\n{summary}\n{around[1]}"


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--study", type=Path, help="a v2 study folder (run_benchmark.py --out)")
    source.add_argument("--results", type=Path, help="a v1 results folder (default: output/emojidg/results)")
    p.add_argument("--out", type=Path, help="default: docs/emojidg/v2 with --study, docs/emojidg otherwise")
    p.add_argument("--readme", type=Path, help="with --study: also write the summary into this file, between its "
                                               f"lines {README_BEGIN!r} and {README_END!r}")
    args = p.parse_args(argv)
    if args.readme and not args.study:
        p.error("--readme needs --study (v1's report has no summary)")
    try:
        if args.study:
            around = readme_around_summary(args.readme) if args.readme else None
            text, summary = write_study(args.study, args.out or REPO / "docs" / "emojidg" / "v2")
            if around:
                write_text_atomic(args.readme, readme_with_summary(around, summary))
        else:
            text = write_v1(args.results or REPO / "output" / "emojidg" / "results",
                            args.out or REPO / "docs" / "emojidg")
    except ClipoodError as e:
        p.exit(2, f"report.py: error: {e}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
