"""Read an EmojiDG v2 study folder (the layout tools/emojidg/run_benchmark.py writes) for report.py.

    OUT/results/zeroshot-<domain>.json (+ .predictions.json)   the base model, no run
    OUT/results/<run_id>.run.json                              {"run_id", "variant", "domain", "lr", "steps",
                                                                "seed", "phase", "wise_ft_alpha"?, ...}
    OUT/results/<run_id>.json (+ .predictions.json)            validate.py rows, each with "weights"
    OUT/selection.json                                         the selected (lr, steps) per variant and domain

Only what was measured is read; nothing is filled in. Which row is which, without guessing:

- the *held-out row* of a run's weights ``w`` is its row with ``"weights": w`` (a row without the field
  is ``"selected"``) and ``"classes": "all"`` whose per-domain fields (``top1_<domain>``) name only the
  run's held-out domain (a source-domain row names the others). Its open-set numbers
  (``ood_auroc_mcm``...) are in it (validate.py ``--ood-classes new`` scores them in the same pass) or,
  from an older validate.py, in the one other row of those weights and domain that holds them (scored
  over the base classes). Two candidates for one role are an error.
- a row's per-image predictions are the entry of the ``.predictions.json`` beside it whose key starts
  with the row's ``model`` (the whole key, or the part before ``|``: validate.py's key is
  ``model[|weights=<name>][|split=<split>]``) and whose ``split`` and ``weights`` fields equal the row's
  (an entry without them, from a single-split call, matches the file's ``split`` and any weights). Exactly
  one entry must match, no entry may serve two rows, and the entry must agree with the row (same number
  of images, same top-1), so predictions of other weights are an error, never a silent mismatch.
"""
from __future__ import annotations

import gzip
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from clipood_zoo.errors import ConfigError
from clipood_zoo.data import emojidg

PREDICTIONS_SUFFIX = ".predictions.json"
# a run.json key tools/emojidg/pack_study.py sets to false for a run whose per-image predictions it left out (a grid
# run at a configuration no comparison reads): its rows are read, and pairing it is an error
KEPT_KEY = "predictions_kept"
RUN_SUFFIX = ".run.json"
ZEROSHOT = "zeroshot"
WISE_FT_FIXED_ALPHA = 0.5  # the ERM and CLIPood runs' "wise_ft_fixed" weights: WiSE-FT at the paper's fixed alpha
# The EMAs of the averaging ablation (train.py --export-ema), both taken at the end of training, with their decays.
# Every clipood run exports EMA_DECAY's (half its weight on the last 69 steps), chosen to fit a 300-step run. In the
# 3000-step runs CLIPood's selection chose on every style, the cosine schedule is below 0.3% of its peak lr over the
# last 100 steps, so that EMA is all but the last weights (over the 20 seed runs: both right, or both wrong, on 99.9%
# of the held-out images). The LONG_EMA_VARIANT ablation runs are CLIPood again at its selected config, exporting
# LONG_EMA_DECAY's EMA (half its weight on the last 693 steps; 5% stays on the zero-shot weights after 3000 steps,
# where timm's default 0.9999 would leave 74%) and their own BMA at the end of training, the arm it is compared with.
EMA_DECAY, LONG_EMA_DECAY = 0.99, 0.999
LONG_EMA_VARIANT = f"clipood_ema{LONG_EMA_DECAY:g}"


@dataclass(frozen=True)
class Run:
    """One training run as run.json records it (zero-shot: a pseudo-run per domain, lr/steps None)."""

    run_id: str
    variant: str
    domain: str
    lr: Optional[float]
    steps: Optional[int]
    seed: int
    phase: str
    wise_ft_alpha: Optional[float] = None  # the alpha source val chose for its wise_ft export (None: not recorded)
    held_out_val_top1: Optional[float] = None  # its selected export's held-out val top-1 (None: not recorded)


@dataclass(frozen=True)
class Scored:
    """One weights of one run scored on the run's held-out domain."""

    run: Run
    weights: str
    row: dict
    open_set: Optional[dict]
    target: Optional[np.ndarray]   # per image; None for a run packed without its predictions (KEPT_KEY)
    correct: Optional[np.ndarray]  # per image, bool


@dataclass
class Study:
    scored: List[Scored]
    selection: Dict = field(default_factory=dict)

    def find(self, variant: str, domain: str, weights: str = "selected", lr: Optional[float] = None,
             steps: Optional[int] = None, seeds: Optional[Sequence[int]] = None,
             phase: Optional[str] = None) -> List[Scored]:
        """The scored weights matching every criterion given, one per seed, in seed order."""
        return sorted((s for s in self.scored if s.run.variant == variant and s.run.domain == domain
                       and s.weights == weights and (lr is None or math.isclose(s.run.lr, lr, rel_tol=1e-9))
                       and (steps is None or s.run.steps == steps) and (seeds is None or s.run.seed in seeds)
                       and (phase is None or s.run.phase == phase)), key=lambda s: s.run.seed)


def held_out_val_oracle(study: Study, variant: str, domain: str) -> Optional[Dict[str, Any]]:
    """The candidate of ``selection.json``'s cell with the best held-out val top-1 (``held_out_val_top1`` of its
    runs, averaged over the seeds source val averaged for it: the grid's), among the candidates whose every one of
    those seeds is scored on the test split and has it recorded: DomainBed's oracle (test-domain validation). The
    report sets it beside the selection to measure what choosing without the held-out style costs; nothing selects
    with it. Ties go to the selected candidate, then in the selection's order. None without a cell or such a
    candidate."""
    cell = study.selection.get(variant, {}).get(domain)
    scored = [(-statistics.mean(s.run.held_out_val_top1 for s in grid_seeds(study, variant, domain, candidate)),
               rank, candidate) for rank, candidate in enumerate(cell["candidates"] if cell else [])
              if oracle_can_choose(study, variant, domain, candidate)]
    return min(scored, key=lambda t: t[:2])[2] if scored else None


def oracle_can_choose(study: Study, variant: str, domain: str, candidate: Dict[str, Any]) -> bool:
    """Whether every grid seed of ``candidate`` is scored on the test split with its held-out val top-1 recorded."""
    seeds = grid_seeds(study, variant, domain, candidate)
    return len(seeds) == len(candidate["seeds"]) and all(s.run.held_out_val_top1 is not None for s in seeds)


def grid_seeds(study: Study, variant: str, domain: str, candidate: Dict[str, Any]) -> List[Scored]:
    """The scored selected weights of a ``selection.json`` candidate, on the seeds its source val averaged."""
    return study.find(variant, domain, "selected", candidate["lr"], candidate["steps"], seeds=candidate["seeds"])


def seed_averaged_correctness(seeds: Sequence[Tuple[str, np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    """(target, per-image correctness averaged over seeds) from (source, target, correct) per seed.

    Every seed must have scored the same images in the same order (else the average pairs nothing).
    """
    unpaired = [source for source, target, _ in seeds if target is None]
    if unpaired:
        raise ConfigError(f"{unpaired[0]} was packed without its per-image predictions ({KEPT_KEY}: false), so it "
                          "cannot be compared; pack the study again from the runner's folder keeping them")
    first_source, target, _ = seeds[0]
    for source, other, _ in seeds[1:]:
        if not np.array_equal(other, target):
            raise ConfigError(f"{source} scored other images (or another order) than {first_source}; "
                              "re-run validate.py on the same data with the same --workers")
    return target, np.mean([np.asarray(c, dtype=np.float64) for *_, c in seeds], axis=0)


def domains_named(row: dict) -> set:
    """The domains a row scored, from its ``top1_<domain>`` fields."""
    return {k.removeprefix("top1_") for k in row if k.startswith("top1_") and k != "top1_err"}


def _one(rows: List[dict], what: str, source: Path) -> Optional[dict]:
    if len(rows) > 1:
        raise ConfigError(f"{source} holds {len(rows)} rows that could be the {what}; give each call's rows "
                          "distinct 'weights' (and 'classes') fields")
    return rows[0] if rows else None


def _predictions(row: dict, path: Path, weights: str) -> Tuple[str, np.ndarray, np.ndarray]:
    """(key, target, correct) of ``row``'s entry in the predictions file ``path``; ConfigError when there is none
    (every row the runner writes has its predictions: without them a comparison would silently drop the row)."""
    doc = read_predictions(path)
    if doc is None:
        raise ConfigError(f"{path} is missing: the {weights!r} row of {path.name.removesuffix(PREDICTIONS_SUFFIX)}.json "
                          "has no per-image predictions; delete that results file and re-run the runner to score it again")
    matches = [key for key, entry in doc["models"].items() if key.split("|", 1)[0] == row["model"]
               and entry.get("split", doc.get("split")) == row["split"]
               and entry.get("weights", row.get("weights")) == row.get("weights")]
    if len(matches) != 1:
        raise ConfigError(f"{path} has {len(matches)} predictions for the {weights!r} row (model {row['model']!r}, "
                          f"split {row['split']!r}, weights {row.get('weights')!r}): "
                          f"{matches or sorted(doc['models'])}; "
                          "one entry per row is needed (validate.py --predictions-file of the same call)")
    entry = doc["models"][matches[0]]
    target, correct = np.asarray(entry["target"]), np.equal(entry["prediction"], entry["target"])
    if len(target) != row["num_samples"] or abs(100.0 * correct.mean() - row["top1"]) > 1e-3 + 1e-9:
        raise ConfigError(f"{path}'s {matches[0]!r} predictions ({len(target)} images, top-1 "
                          f"{100 * correct.mean():.3f}) are not those of the {weights!r} row ({row['num_samples']} "
                          f"images, top-1 {row['top1']}); re-run validate.py with --predictions-file")
    return matches[0], target, correct


def read_predictions(path: Path) -> Optional[dict]:
    """A ``.predictions.json``, else its gzip beside it (``.predictions.json.gz``: a study's results are committed
    so, ~5x smaller, since the device tool carries the whole tree); None when neither exists."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    packed = path.with_name(path.name + ".gz")
    return json.loads(gzip.decompress(packed.read_bytes())) if packed.is_file() else None


def predictions_path(rows_path: Path) -> Path:
    """``<run_id>.predictions.json`` beside a run's rows ``<run_id>.json``."""
    return rows_path.with_name(rows_path.name.removesuffix(".json") + PREDICTIONS_SUFFIX)


def record_path(rows_path: Path) -> Path:
    """``<run_id>.run.json`` beside a run's rows ``<run_id>.json``."""
    return rows_path.with_name(rows_path.name.removesuffix(".json") + RUN_SUFFIX)


def _scored_rows(run: Run, rows_path: Path, predictions_kept: bool = True) -> List[Scored]:
    rows = json.loads(rows_path.read_text())
    held_out = [r for r in (rows if isinstance(rows, list) else [rows]) if domains_named(r) == {run.domain}]
    predictions = predictions_path(rows_path)
    out, used = [], {}
    for weights in dict.fromkeys(r.get("weights", "selected") for r in held_out):
        mine = [r for r in held_out if r.get("weights", "selected") == weights]
        row = _one([r for r in mine if r.get("classes", "all") == "all"],
                   f"held-out row of the {weights!r} weights", rows_path)
        if row is None:
            continue
        open_set = row if "ood_auroc_mcm" in row else _one(
            [r for r in mine if "ood_auroc_mcm" in r], f"open-set row of the {weights!r} weights", rows_path)
        if not predictions_kept:
            out.append(Scored(run, weights, row, open_set, None, None))
            continue
        key, target, correct = _predictions(row, predictions, weights)
        if key in used:
            raise ConfigError(f"{predictions}: the {used[key]!r} and {weights!r} rows both match predictions {key!r}; "
                              "name each weights (validate.py --weights-names) so that each row has its own")
        used[key] = weights
        out.append(Scored(run, weights, row, open_set, target, correct))
    return out


def load_study(out: Path, predictions: bool = True) -> Study:
    """Every finished run (rows written) and zero-shot domain under ``out``; a run.json without rows is a run
    still in progress and is left out. ``predictions=False`` reads the rows alone (no per-image predictions:
    nothing can be paired), which is all a choice by top-1 needs."""
    results = out / "results"
    scored: List[Scored] = []
    for domain in emojidg.DOMAINS:
        path = results / f"{ZEROSHOT}-{domain}.json"
        if path.is_file():
            scored += _scored_rows(Run(f"{ZEROSHOT}-{domain}", ZEROSHOT, domain, None, None, 0, ZEROSHOT), path,
                                   predictions)
    run_files = sorted(results.glob(f"*{RUN_SUFFIX}"))
    for path in run_files:
        meta = json.loads(path.read_text())
        rows = path.with_name(f"{meta['run_id']}.json")
        if rows.is_file():
            run = Run(meta["run_id"], meta["variant"], meta["domain"], float(meta["lr"]), int(meta["steps"]),
                      int(meta["seed"]), meta["phase"], meta.get("wise_ft_alpha"), meta.get("held_out_val_top1"))
            scored += _scored_rows(run, rows, predictions and meta.get(KEPT_KEY, True))
    if not scored:
        raise ConfigError(f"no result files in {results} (zeroshot-<domain>.json, <run_id>.run.json with its "
                          "<run_id>.json); run tools/emojidg/run_benchmark.py first")
    selection_path = out / "selection.json"
    if run_files and not selection_path.is_file():
        raise ConfigError(f"{selection_path} is missing: the runner writes it from the grid runs' source-domain "
                          "val top-1 (re-run tools/emojidg/run_benchmark.py)")
    selection = json.loads(selection_path.read_text()) if selection_path.is_file() else {}
    return Study(scored, selection)
