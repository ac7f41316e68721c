#!/usr/bin/env python
"""The EmojiDG study: CLIPood and its peers tuned, seeded and ablated on the same data, budget and protocol.

    python tools/emojidg/run_benchmark.py --data-dir data/emojidg_v2 --out output/emojidg_v2 --dry-run
    python tools/emojidg/run_benchmark.py --data-dir data/emojidg_v2 --out output/emojidg_v2 [--phase grid] [--ship]

Every run fine-tunes ``clip_vitt_emoji`` with train.py on three styles' *base* classes, one style held out,
then ONE validate.py call scores its weights (``selected``: the run's export; ``last`` and ``ema`` where the run
exported them) on the held-out style's split of the data's benchmark version (``test``, every render, from v2),
with accuracy over every class, base / new / H, and open-set detection of the new classes
(``--ood-classes new``), plus per-image predictions for report.py's paired intervals.

Phases (``--phase``, default ``all``: grid and seeds of ERM, CLIPood and their WiSE-FT, then grid and seeds of the
peers, then the ablation (:func:`stages`); each runs what is left of it):

- ``grid``: zero-shot (validate only), then every variant of :data:`GRID_VARIANTS` at every (lr, steps) of
  :data:`GRID` on ``--grid-seeds``. WiSE-FT and CLIPood + WiSE-FT train nothing of their own
  (:data:`DERIVED_VARIANTS`): they are the ``wise_ft/`` export (``--export-wise-ft``) of the ERM and CLIPood
  run of the same config and seed, which is trained (once) when either is asked for;
- selection (:mod:`emojidg.selection`): per (variant, domain), the (lr, steps) with the best mean source-val
  top-1 over the grid seeds (``source_val_top1``: train.py's ``best_source_top1``; for WiSE-FT variants the
  source val of the chosen alpha); never a held-out number. Made on the grid seeds only, so later seeds never
  change it; a cell is selected once all its grid runs are done; written to ``OUT/selection.json``;
- ``seeds``: the selected config on ``--headline-seeds`` for ERM, CLIPood, WiSE-FT and the best peer (the peer
  of :data:`PEERS` with the best mean selected source val over the domains), ``--other-seeds`` for the rest;
- ``ablation``: at CLIPood's selected (lr, steps) per domain, :data:`ABLATIONS` on ``--ablation-seeds``
  (last weights and the beta sweep are not runs: they are the clipood runs' own ``last``/``bma_beta<b>`` rows;
  ``clipood_ema0.999`` runs CLIPood again to export a longer EMA beside its BMA).

Layout under ``--out`` (read by tools/emojidg/report.py; only ever extended)::

    runs/<run_id>/                     train.py's run folder (exported model; last/, ema/, bma_beta<b>/, wise_ft/,
                                        wise_ft_fixed/ beside it)
    results/zeroshot-<domain>.json     validate.py rows of the base model (weights "selected")
    results/<run_id>.json              validate.py rows of the run, one per weights ("weights" field)
    results/<run_id>.predictions.json  validate.py --predictions-file of the same call: {"split": "test", "models":
                                        {"<model>|weights=<selected|last|ema|bma_beta<b>|wise_ft|...>": {target,
                                        domain, prediction, split, weights}}} (one split per call; validate.py's
                                        docstring has the format)
    results/<run_id>.run.json          {run_id, variant, domain, lr, steps, seed, source_val_top1, phase,
                                        train_args, weights: {selected, last?, ema?, bma_beta<b>?, wise_ft?,
                                        wise_ft_fixed?: paths relative to --out}, wise_ft_alpha?: the alpha
                                        source val chose for wise_ft/, held_out_val_top1: the selected
                                        export's top-1 on the held-out style's val split (the report's oracle;
                                        never selection's), selected_sha256: that export's model.safetensors'
                                        sha256 (--ship checks it), omp_num_threads: the OMP_NUM_THREADS it
                                        trained with (null: unset)}; a derived run's: its fine-tune's train_args,
                                        weights {selected: runs/<fine-tune run_id>/wise_ft}, its wise_ft_alpha,
                                        derived_from: <fine-tune run_id>, and
                                        results/<run_id>.json (+ .predictions.json) are the fine-tune's wise_ft
                                        rows (and predictions) relabelled "selected"
    selection.json                     {variant: {domain: {lr, steps, source_val_top1, seeds, candidates}}}

with ``run_id = f"{variant}-{domain}-lr{lr:g}-st{steps}-s{seed}"``. Resumable: a run whose results file
exists is skipped, an interrupted one resumed (clipood_zoo.sweep's rules). ``--dry-run`` prints the commands
left and, per phase, the runs and optimizer steps in all and left (to size it for a CPU or a GPU).
``--jobs N`` runs N runs (train then validate) side by side, each logged to ``OUT/logs/<run_id>.log`` with
``OMP_NUM_THREADS`` = cores / N: one small run leaves a GPU, or spare cores, idle. ``--minutes M`` starts no run
expected to end later than M minutes from the call's start (:class:`Budget`): a session ends its study call with
nothing in flight, having run the shorter runs that still fit.
``--ship`` re-saves the first seed of the selected ERM, CLIPood and WiSE-FT runs (those of them in ``--variants``)
and of the best peer (when the study ran peers) as fp16 into ``weights/`` and records their sha256 in
``clipood_zoo/models/shipped_weights.json``. A WiSE-FT run whose fine-tune is the ERM run shipped beside it stores
no file: its manifest entry names the base, that ERM entry and alpha, which the registry mixes when it loads (its
``weights/<name>/`` holds the card alone). Each card also records ``mini_top1``, the shipped model's score on the
committed subset datasets/emojidg-mini (which must be of the study's benchmark version): the check CI re-runs.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import clipood_zoo  # noqa: E402
from clipood_zoo import ClipoodError, ConfigError  # noqa: E402
from clipood_zoo.errors import TrainingError  # noqa: E402
from clipood_zoo import sweep  # noqa: E402
from clipood_zoo.bma import PAPER_BETA  # noqa: E402
from clipood_zoo.data import emojidg  # noqa: E402
from clipood_zoo.fileio import write_text_atomic  # noqa: E402
from clipood_zoo.hub import model_card, sha256_file  # noqa: E402
from clipood_zoo.methods import METHODS  # noqa: E402
from clipood_zoo.models.emoji import RECIPE  # noqa: E402
from clipood_zoo.stats import paired_class_bootstrap  # noqa: E402
from clipood_zoo.weight_space import interpolate_state_dicts  # noqa: E402
from train import EMA_DIR, LAST_DIR, WISE_FT_DIR, WISE_FT_FIXED_DIR, beta_key, bma_dir  # noqa: E402
from train import build_parser as build_train_parser  # noqa: E402
import validate  # noqa: E402
from emojidg.paths import repo_relative  # noqa: E402
from emojidg.selection import Selection, best_of, extended, select  # noqa: E402
from emojidg.shipped import WEIGHTS, record_shipped, source_pins  # noqa: E402
from emojidg.study_results import (  # noqa: E402
    EMA_DECAY, LONG_EMA_DECAY, LONG_EMA_VARIANT, RUN_SUFFIX, WISE_FT_FIXED_ALPHA, ZEROSHOT, Study, load_study,
    predictions_path, read_predictions, record_path,
)
from emojidg.versions import card_section, held_out_split, version_of  # noqa: E402

# The one grid every variant is tuned on: learning rates around the recipe's 1e-4, and the steps.
GRID = {"lr": (3e-5, 1e-4, 3e-4), "steps": (300, 1000, 3000)}
WARMUP_SHARE = RECIPE["warmup_steps"] / RECIPE["steps"]  # the recipe's 30 of 300 steps, kept at every length
LP_SHARE = 0.2  # lp_ft: the share of the steps that trains only the head
WISE_FT_ALPHAS = ("0", "0.25", "0.5", "0.75", "1")
PHASES = ("grid", "seeds", "ablation")
# --minutes' estimate of a run, measured here (2 runs side by side on 2 cores, 2026-11-29): 0.58-0.73 s per optimizer
# step with train.py's own evaluations while tests ran beside them, 0.44 s with nothing else running (0.33-0.39 s on
# 2026-12-06); validate.py about 20 s per weights it scores on 4,440 images (ERM's 3: 64 s) after a start of under a
# minute. Rounded up: a run cut short by the session's end is lost, a run left for the next call is not. Once a run of
# the call has trained, the measured rate replaces SECONDS_PER_STEP (Budget.rate), with a margin for a machine that
# gets busier while the next run goes (tests beside the runs: up to 0.73 / 0.44 = 1.66 times slower).
SECONDS_PER_STEP, VALIDATE_START_SECONDS, VALIDATE_SECONDS_PER_WEIGHTS = 0.8, 60.0, 25.0
MEASURED_MARGIN, RECENT_RUNS = 1.5, 2

# beside the alpha source val chooses, WiSE-FT at the paper's fixed alpha (source val chose 1 in every v1-recipe run)
EXPORT_WISE_FT = ["--wise-ft-alphas", *WISE_FT_ALPHAS, "--export-wise-ft",
                  "--export-wise-ft-fixed", f"{WISE_FT_FIXED_ALPHA:g}"]
# the beta sweep (1 is the uniform average): every clipood run exports these averages of its own steps
# (--export-bma-betas), since an average never feeds back into training. The sweep then costs no run of its own, has
# every seed of CLIPood, and compares the betas on one trajectory. The recipe's 0.5 is among them: the run's selected
# export is its BMA at the step source val chose, and these are all taken at the end of training, so bma_beta0.5 is
# the reference for comparing averages at the same step.
BETAS = (0.1, 0.25, 0.5, 1.0, 2.0)
# trained variant -> train.py flags (lr, steps, seed and data come from the run)
TRAINED_VARIANTS: Dict[str, List[str]] = {
    "erm": ["--method", "erm", *EXPORT_WISE_FT],
    "clipood": ["--method", "clipood", "--export-ema", str(EMA_DECAY),
                "--export-bma-betas", *map(beta_key, BETAS), *EXPORT_WISE_FT],
    "lp_ft": ["--method", "lp_ft"],  # --lp-steps: LP_SHARE of the run's steps
    "flyp": ["--method", "flyp"],
    # train.py's default lambda 1: the paper publishes no code and no single value
    "car_ft": ["--method", "car_ft"],
    # lambda 1: the authors sweep lambda2 over {0, 1, 10, 100, 1000} on an adapter blended in at 0.2, which scales
    # their penalty by about 0.2^2, so 1 here is about their 25 (their default 5 is about 0.2 here). At the zero-shot
    # weights its gradient on the features is 1/238 of cross-entropy's (one batch of 64 base-class images of the
    # 3d-held-out sources, over the base rows, 2026-11-29): CRoFT is expected to stay close to ERM; telling more
    # needs a lambda sweep this grid does not afford.
    "croft": ["--method", "croft"],
}
# WiSE-FT is a fine-tune plus a choice of alpha: every ERM and CLIPood run exports its WiSE-FT (--export-wise-ft),
# and these variants are those exports, not runs of their own. That saves the training they would repeat, and
# WiSE-FT is compared with its fine-tune on the very same training run.
DERIVED_VARIANTS: Dict[str, str] = {"wise_ft": "erm", "clipood_wise_ft": "clipood"}
GRID_VARIANTS = ("erm", "clipood", "wise_ft", "clipood_wise_ft", "lp_ft", "flyp", "car_ft", "croft")
HEADLINE = ("erm", "clipood", "wise_ft")  # >= 5 seeds, with zero-shot and the best peer
PAPER_COMPARISON = ("erm", "clipood", "wise_ft", "clipood_wise_ft")  # tuned and seeded before the peers (stages)
PEERS = ("lp_ft", "flyp", "car_ft", "croft")
# the recipe: lambda 0.3, tau = 1 / the base's logit scale (clip_vitt_emoji v2: 100, so tau 0.01)
LAMBDAS, TAUS = (0.1, 0.6, 1.0), (0.02, 0.1)
ABLATIONS: Dict[str, List[str]] = {
    "ce_bma": ["--method", "clipood", "--margin-lambda", "0"],
    "fixed_margin": ["--method", "clipood", "--fixed-margin"],
    **{f"clipood_lambda{m:g}": ["--method", "clipood", "--margin-lambda", f"{m:g}"] for m in LAMBDAS},
    **{f"clipood_tau{t:g}": ["--method", "clipood", "--temperature", f"{t:g}"] for t in TAUS},
    # the margin is relative to tau (MMS divides (f - lambda t_y) @ T by it): CE at the same taus isolates its effect
    **{f"ce_bma_tau{t:g}": ["--method", "clipood", "--margin-lambda", "0", "--temperature", f"{t:g}"] for t in TAUS},
    # CLIPood again with a longer EMA (study_results.LONG_EMA_DECAY says why), and the BMA at the end of the same
    # training to compare it with: the clipood runs' own EMA_DECAY EMA is all but their last weights
    LONG_EMA_VARIANT: ["--method", "clipood", "--export-ema", f"{LONG_EMA_DECAY:g}",
                       "--export-bma-betas", beta_key(PAPER_BETA)],
}
SHIPPED_VARIANTS = ("clipood", "erm", "wise_ft")  # and the best peer; every method is registered in models/emoji.py


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One fine-tune of the study."""

    variant: str
    domain: str
    lr: float
    steps: int
    seed: int
    phase: str

    @property
    def run_id(self) -> str:
        return f"{self.variant}-{self.domain}-lr{self.lr:g}-st{self.steps}-s{self.seed}"

    @property
    def trained(self) -> StudyRun:
        """The run that trains this one's weights: itself, or for a :data:`DERIVED_VARIANTS` variant the run of its
        fine-tune with the same domain, lr, steps and seed (whose ``wise_ft/`` export it is)."""
        base = DERIVED_VARIANTS.get(self.variant)
        return self if base is None else dataclasses.replace(self, variant=base)

    @property
    def flags(self) -> List[str]:
        """train.py's flags of a trained run."""
        flags = TRAINED_VARIANTS.get(self.variant) or ABLATIONS[self.variant]
        return flags + (["--lp-steps", str(int(self.steps * LP_SHARE))] if self.variant == "lp_ft" else [])

    @property
    def weights(self) -> Dict[str, str]:
        """The weights a trained run exports, each name with its sub-folder of the run folder: its selection (the
        folder itself), the last weights of a run with a weight average (``last/``), the --export-ema EMA
        (``ema/``), the --export-bma-betas averages (``bma_beta<b>/``), the --export-wise-ft WiSE-FT (``wise_ft/``,
        ``wise_ft_fixed/``), as train.py writes them."""
        flags = self.flags
        averaged = METHODS[flags[flags.index("--method") + 1]].default_bma  # no variant turns BMA off
        betas = itertools.takewhile(lambda f: not f.startswith("--"), flags[flags.index("--export-bma-betas") + 1:]
                                    if "--export-bma-betas" in flags else [])
        folders = ["", *([LAST_DIR] if averaged else []), *([EMA_DIR] if "--export-ema" in flags else []),
                   *(bma_dir(float(b)) for b in betas), *([WISE_FT_DIR] if "--export-wise-ft" in flags else []),
                   *([WISE_FT_FIXED_DIR] if "--export-wise-ft-fixed" in flags else [])]
        return {folder or "selected": folder for folder in folders}  # a sub-folder export is named after its folder


def trained_runs(runs: Sequence[StudyRun]) -> List[StudyRun]:
    """The runs that train ``runs``' weights, each once, in order (a derived run and its fine-tune share one)."""
    return list(dict.fromkeys(run.trained for run in runs))


# --- the plan ------------------------------------------------------------------------------------------
def grid_runs(variants: Sequence[str], domains: Sequence[str], seeds: Sequence[int],
              grid: Dict[str, Sequence] = GRID) -> List[StudyRun]:
    """Variant by variant, every style of one before the next: the grid takes many sessions on a CPU, and in this
    order each stop leaves whole methods (ERM, then CLIPood, first) selected and comparable, not whole styles."""
    return [StudyRun(v, d, lr, steps, s, "grid") for v in variants for d in domains
            for lr in grid["lr"] for steps in grid["steps"] for s in seeds]


def seeds_runs(selection: Selection, variants: Sequence[str], domains: Sequence[str], grid_seeds: Sequence[int],
               headline_seeds: Sequence[int], other_seeds: Sequence[int]) -> Tuple[List[StudyRun], int, int]:
    """The seeds phase: the selected config of each (variant, domain) on its seeds the grid has not run.

    ERM, CLIPood, WiSE-FT and the best peer get ``headline_seeds``, the others ``other_seeds``. Returns the runs
    that can be planned now, and the (variant, domain) cells and runs that wait for the selection (a peer waits
    until every peer is selected in every domain: only then is the best peer known).
    """
    peers = [v for v in PEERS if v in variants]
    best = best_of(selection, peers, domains) if peers else None
    undecided = bool(peers) and best is None

    def extra(seeds: Sequence[int]) -> List[int]:
        return [s for s in seeds if s not in grid_seeds]

    runs: List[StudyRun] = []
    waiting_cells = waiting_runs = 0
    for d in domains:
        for v in variants:
            seeds = extra(headline_seeds if v in HEADLINE or v == best else other_seeds)
            cell = selection.get(v, {}).get(d)
            if cell is None or (undecided and v in peers):
                waiting_cells, waiting_runs = waiting_cells + 1, waiting_runs + len(seeds)
            else:
                runs += [StudyRun(v, d, cell["lr"], cell["steps"], s, "seeds") for s in seeds]
    if undecided:  # one of the waiting peers will be the best: its domains run the headline seeds
        waiting_runs += (len(extra(headline_seeds)) - len(extra(other_seeds))) * len(domains)
    return runs, waiting_cells, waiting_runs


def ablation_runs(selection: Selection, domains: Sequence[str], seeds: Sequence[int]) -> List[StudyRun]:
    """Every ablation at CLIPood's selected (lr, steps) of each domain where CLIPood is selected."""
    return [StudyRun(v, d, cell["lr"], cell["steps"], s, "ablation") for d in domains
            if (cell := selection.get("clipood", {}).get(d)) for v in ABLATIONS for s in seeds]


# --- commands ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Budget:
    """``--minutes``: the runner starts no run it expects to overrun them, and goes on with the runs that fit (shorter
    ones, later in the plan). A session's machine ends with it, and a run it cuts short is lost with its checkpoint
    (run folders are not committed: tools/emojidg/pack_study.py); a run left for the next session loses nothing. The
    estimate (:meth:`needs`) counts a run's steps in full even when it resumes from a checkpoint (its step is inside
    the checkpoint), and only the validation of a run whose training is done.

    The time a step takes is learnt (:meth:`measured`): ``--seconds-per-step`` is only the guess before the first
    run of this call has trained. A guess safe on the slowest machine wastes the end of a session on a fast one (on a
    GPU, the whole session), and the machine's speed while the runs go is what decides whether the next one fits."""

    deadline: float  # time.monotonic() at which the budget ends
    seconds_per_step: float  # --seconds-per-step: until this call measures a run
    reported: Set[str] = dataclasses.field(default_factory=set)  # runs already said to wait (each stage re-checks them)
    trained: List[Tuple[int, float]] = dataclasses.field(default_factory=list)  # (steps, seconds) of this call's runs

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def measured(self, steps: int, seconds: float) -> None:
        """A run of this call trained ``steps`` from its first step in ``seconds`` (train.py's start and its own
        evaluations included, side by side with the other --jobs: as the next runs will)."""
        self.trained.append((steps, seconds))

    def rate(self) -> float:
        """Seconds per step: the slowest of the last :data:`RECENT_RUNS` runs measured, times :data:`MEASURED_MARGIN`
        (a machine that got busier shows in the next run, and no average over the call hides it); before the first,
        ``--seconds-per-step``. A short run's start weighs on its rate: that errs on the safe side."""
        recent = self.trained[-RECENT_RUNS:]  # one read: the other --jobs thread may append meanwhile
        if not recent:
            return self.seconds_per_step
        return MEASURED_MARGIN * max(seconds / steps for steps, seconds in recent)

    def needs(self, run: StudyRun, trains: bool) -> float:
        validate = VALIDATE_START_SECONDS + VALIDATE_SECONDS_PER_WEIGHTS * len(run.weights)
        return (run.steps * self.rate() if trains else 0.0) + validate

    def defers(self, run: StudyRun, trains: bool) -> bool:
        """Whether ``run`` (with training left, or validation only) waits for a later call; said once per run."""
        need, left = self.needs(run, trains), self.left()
        if need <= left:
            return False
        if run.run_id not in self.reported:
            self.reported.add(run.run_id)
            sweep.say(f"# left for a later call: {run.run_id} needs about {need / 60:.0f} min, "
                      f"{max(0.0, left) / 60:.0f} min are left of --minutes")
        return True


@dataclasses.dataclass
class StudyOptions:
    data_dir: Path
    out: Path
    split: str  # the held-out domain's scored split (the data's version decides)
    model: str = "clip_vitt_emoji"
    model_config: Optional[str] = None
    pretrained: bool = True  # False: random init (smoke runs with a tiny architecture)
    batch_size: int = RECIPE["batch_size"]
    workers: int = 2
    device: Optional[str] = None
    jobs: int = 1  # runs side by side (--jobs)
    python: str = sys.executable
    budget: Optional[Budget] = None  # --minutes

    def common(self) -> List[str]:
        """Flags train.py and validate.py both take."""
        return (["--workers", str(self.workers)]
                + (["--model-config", repo_relative(self.model_config)] if self.model_config else [])
                + (["--device", self.device] if self.device else []))


def train_command(run: StudyRun, opts: StudyOptions) -> List[str]:
    """train.py's argv; paths inside the repository are relative, because train.py writes its command into the
    model card, and a card's command must run from a clone."""
    export = f"{run.variant}_vitt_emojidg_{run.domain}"
    return ["train.py", "--model", opts.model, *(["--pretrained"] if opts.pretrained else []),
            "--data-dir", repo_relative(opts.data_dir), "--holdout", run.domain,
            "--train-classes", RECIPE["train_classes"], "--steps", str(run.steps), "-b", str(opts.batch_size),
            "--lr", f"{run.lr:g}", "--warmup-steps", str(round(run.steps * WARMUP_SHARE)),
            "--weight-decay", str(RECIPE["weight_decay"]), "--eval-interval", "4", "--log-interval", "100",
            "--seed", str(run.seed), "--output", repo_relative(opts.out / "runs"), "--experiment", run.run_id,
            "--export-name", export if clipood_zoo.is_model(export) else opts.model, *run.flags, *opts.common()]


def validate_command(domain: str, weights: Dict[str, Optional[Path]], result: Path, opts: StudyOptions) -> List[str]:
    """validate.py's argv scoring every named weights (None: the model's registered weights) on the held-out
    ``domain``: the rows in ``result``, the per-image predictions beside it."""
    paths = [p for p in weights.values() if p is not None]
    return ["validate.py", "--model", opts.model, "--data-dir", repo_relative(opts.data_dir), "--split", opts.split,
            "--domains", domain, "--ood-classes", "new", "--results-file", repo_relative(result),
            "--predictions-file", repo_relative(predictions_path(result)), *opts.common(),
            *(["--checkpoint", *map(repo_relative, paths)] if paths else
              ["--pretrained"] if opts.pretrained else []),
            "--weights-names", *weights]


def rows_path(opts: StudyOptions, run_id: str) -> Path:
    """``OUT/results/<run_id>.json``: validate.py's rows of a run (or of ``zeroshot-<domain>``), with its
    ``.predictions.json`` and ``.run.json`` beside it."""
    return opts.out / "results" / f"{run_id}.json"


def job(run: StudyRun, opts: StudyOptions) -> sweep.Job:
    run_dir = opts.out / "runs" / run.run_id
    result = rows_path(opts, run.run_id)
    weights = {w: run_dir / folder for w, folder in run.weights.items()}
    return sweep.Job(run.run_id, run_dir, result, [opts.python, *train_command(run, opts)],
                     [opts.python, *validate_command(run.domain, weights, result, opts)], {})


def zeroshot_job(domain: str, opts: StudyOptions) -> sweep.Job:
    result = rows_path(opts, f"zeroshot-{domain}")
    return sweep.Job(f"zeroshot-{domain}", opts.out / "runs", result, [],
                     [opts.python, *validate_command(domain, {"selected": None}, result, opts)], {})


# --- records and selection -----------------------------------------------------------------------------
def source_val_top1(train_result: Dict) -> float:
    """What selection reads of a finished run: the source val top-1 of the exported weights (for WiSE-FT the
    chosen alpha's, which train.py evaluates last; otherwise the best evaluation's)."""
    return train_result["source_top1"] if "wise_ft_alpha" in train_result else train_result["best_source_top1"]


def held_out_val_top1(config: Dict) -> Optional[float]:
    """The held-out style's val top-1 of an export (train.py scores the held-out style's val split beside source val
    and records it in the export's ``train_results``). Selection never reads it; the report's oracle chooses on it
    (DomainBed's test-domain validation), beside the selection."""
    return config.get("train_results", {}).get("target_top1")


def run_record(run: StudyRun, source_val: float, train_args: Sequence[str], weights: Dict[str, str],
               wise_ft_alpha: Optional[float], selected: Dict, threads: Optional[str]) -> Dict:
    """The record of a run; ``selected`` is the ``config.json`` of its selected export, whose held-out val top-1 and
    file sha256 it keeps, and ``threads`` the ``OMP_NUM_THREADS`` it trained with (None: unset, torch's default). The
    two let --ship re-create a run folder that is gone (:func:`recreate_command`) and check that it holds the weights
    the study scored."""
    held_out_val = held_out_val_top1(selected)
    return {"run_id": run.run_id, "variant": run.variant, "domain": run.domain, "lr": run.lr, "steps": run.steps,
            "seed": run.seed, "source_val_top1": source_val, "phase": run.phase, "train_args": list(train_args),
            "weights": weights, **({} if wise_ft_alpha is None else {"wise_ft_alpha": wise_ft_alpha}),
            **({} if held_out_val is None else {"held_out_val_top1": held_out_val}),
            "selected_sha256": selected["sha256"], "omp_num_threads": threads}


def recreate_command(record: Dict) -> str:
    """The shell command, run from the repository root, that trains a recorded run's folder again as the runner did:
    on this CPU it gives bit-identical weights with the same threads, torch and data."""
    threads = record.get("omp_num_threads")
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + shlex.join(["python", *record["train_args"]])


def result_files(opts: StudyOptions, trained: StudyRun) -> List[str]:
    """The result files (as globs) of a trained run and of the WiSE-FT runs derived from it: what to move aside to
    score it again."""
    runs = [trained, *(dataclasses.replace(trained, variant=v) for v, base in DERIVED_VARIANTS.items()
                       if base == trained.variant)]
    return [f"{opts.out / 'results'}/{r.run_id}.*" for r in runs]


def export_config(folder: Path) -> Dict:
    """train.py's ``config.json`` of an exported model folder."""
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def chosen_alpha(config: Dict) -> float:
    """The WiSE-FT alpha train.py chose on source val for a ``wise_ft/`` export (its recipe records it). Kept in the
    run's record: source val rises with alpha when it is in the fine-tune's own distribution, and the report says
    which alpha each WiSE-FT row is."""
    return float(config["pretrained_cfg"]["recipe"]["wise_ft"]["alpha"])


def trained_record(run: StudyRun, j: sweep.Job, threads: Optional[str]) -> Dict:
    """The ``results/<run_id>.run.json`` of a validated run, from its run folder."""
    if not (j.run_dir / "result.json").is_file():
        raise ConfigError(f"{j.result} has no {RUN_SUFFIX} beside it and {j.run_dir} no result.json: a restore "
                          "(pack_study.py --restore) was interrupted; run it again, or move the run's files aside to "
                          "train it again")
    train_result = json.loads((j.run_dir / "result.json").read_text(encoding="utf-8"))
    weights = {w: (Path("runs") / run.run_id / folder).as_posix().rstrip("/") for w, folder in run.weights.items()}
    alpha = chosen_alpha(export_config(j.run_dir / WISE_FT_DIR)) if "wise_ft" in run.weights else None
    return run_record(run, source_val_top1(train_result), j.train[1:], weights, alpha, export_config(j.run_dir),
                      threads)


def write_derived(run: StudyRun, record: Dict, opts: StudyOptions) -> None:
    """The result files of a derived run (:data:`DERIVED_VARIANTS`) from its trained run's ``record`` and files:
    validate.py's rows and per-image predictions of the ``wise_ft`` weights, relabelled ``selected``, and a record
    whose source val is the chosen alpha's (train.py records it in ``wise_ft/config.json``). Written once, the record
    last."""
    trained = rows_path(opts, run.trained.run_id)
    if "wise_ft" not in record["weights"]:
        raise ConfigError(f"{run.run_id} is the WiSE-FT export of {run.trained.run_id}, which was trained without "
                          f"--export-wise-ft (an older run_benchmark.py); move {opts.out / 'runs' / run.trained.run_id} "
                          f"and {trained} (with its .predictions.json and {RUN_SUFFIX}) aside to retrain it")
    export = opts.out / record["weights"]["wise_ft"]
    predictions = read_predictions(predictions_path(trained))
    if predictions is None or not (export / "config.json").is_file():
        raise ConfigError(f"{run.run_id} is the WiSE-FT export of {run.trained.run_id}, whose export {export} or "
                          f"per-image predictions are gone (a study restored by pack_study.py --restore holds result "
                          f"files, not weights); move {opts.out / 'results'}/{run.trained.run_id}.* aside to train it "
                          "again")
    config = export_config(export)
    rows = [{**r, "weights": "selected"} for r in json.loads(trained.read_text(encoding="utf-8"))
            if r["weights"] == "wise_ft"]
    predictions["models"] = {key.replace("|weights=wise_ft", "|weights=selected"): {**entry, "weights": "selected"}
                             for key, entry in predictions["models"].items() if key.endswith("|weights=wise_ft")}
    mine = rows_path(opts, run.run_id)
    write_text_atomic(predictions_path(mine), json.dumps(predictions) + "\n")
    write_text_atomic(mine, json.dumps(rows, indent=2) + "\n")
    write_text_atomic(record_path(mine), json.dumps(run_record(
        run, source_val_top1(config["train_results"]), record["train_args"], {"selected": record["weights"]["wise_ft"]},
        chosen_alpha(config), config, record.get("omp_num_threads")) | {"derived_from": run.trained.run_id},
        indent=2) + "\n")


def finished_records(runs: Sequence[StudyRun], opts: StudyOptions) -> List[Dict]:
    out = []
    for run in runs:
        path = record_path(rows_path(opts, run.run_id))
        if path.is_file():
            out.append(json.loads(path.read_text(encoding="utf-8")))
    return out


def current_selection(grid: Sequence[StudyRun], opts: StudyOptions) -> Selection:
    """The selection of every (variant, domain) whose grid runs are all finished."""
    records = finished_records(grid, opts)
    planned = Counter((run.variant, run.domain) for run in grid)
    done = Counter((r["variant"], r["domain"]) for r in records)
    return select(r for r in records if done[r["variant"], r["domain"]] == planned[r["variant"], r["domain"]])


def kept_selection(opts: StudyOptions, selection: Selection) -> Selection:
    """``OUT/selection.json`` with the cells of ``selection`` put in: a call with fewer ``--variants`` or
    ``--domains`` (a re-ship of two methods) recomputes only its own cells and keeps the others' (only ever
    extended, like every file of the study)."""
    path = opts.out / "selection.json"
    return extended(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}, selection)


def write_selection(grid: Sequence[StudyRun], opts: StudyOptions, dry_run: bool) -> Selection:
    """:func:`kept_selection` of the finished grid cells, written to ``OUT/selection.json`` (an empty one too, before
    any cell is finished: a study in progress is packed with it, tools/emojidg/pack_study.py) unless ``dry_run``."""
    selection = kept_selection(opts, current_selection(grid, opts))
    if not dry_run:
        write_text_atomic(opts.out / "selection.json", json.dumps(selection, indent=2) + "\n")
    return selection


# --- running -------------------------------------------------------------------------------------------
def run_phase(phase: str, runs: Sequence[StudyRun], opts: StudyOptions, dry_run: bool,
              runner: Optional[Callable[[Sequence[str]], int]] = None, zeroshot: Sequence[sweep.Job] = ()) -> None:
    """Run (or with ``dry_run`` print) what is left of a phase: its zero-shot evaluations, then each trained run's
    train and validate commands (clipood_zoo.sweep's resume rules), recording each run once it is validated and
    writing the derived runs (WiSE-FT) of it. The step counts are of the trained runs: a derived run trains nothing."""
    trained = trained_runs(runs)
    jobs = [(run, job(run, opts)) for run in trained]
    derived = {run: [d for d in runs if d.trained == run and d != run] for run in trained}
    left = [run for run in runs if not record_path(rows_path(opts, run.run_id)).is_file()]
    left_steps = sum(run.steps for run, j in jobs if not j.result.is_file())
    zeroshot_left = [j for j in zeroshot if not j.result.is_file()]
    n_derived = sum(run.trained != run for run in runs)
    print(f"# phase {phase}: {len(runs)} runs{f' ({n_derived} of them WiSE-FT exports of others)' if n_derived else ''}, "
          f"{sum(r.steps for r in trained)} optimizer steps; left: {len(left)} runs, {left_steps} optimizer steps"
          + (f"; zero-shot evaluations left: {len(zeroshot_left)}" if zeroshot else ""), flush=True)
    side_by_side = opts.jobs > 1 and not dry_run
    own_threads = side_by_side and runner is None  # run_logged's: each run on its share of the cores
    threads = (sweep.threads_env(opts.jobs) if own_threads else os.environ).get("OMP_NUM_THREADS")

    def run_logged(commands: List[List[str]], j: sweep.Job) -> List[float]:
        """Run ``j``'s ``commands``; with --jobs > 1 (and the default runner) into their own log, which a failure
        names, and on the cores' share of one run. The seconds each command took (sweep.run_commands)."""
        if not commands or runner is not None or not side_by_side:
            return sweep.run_commands(commands, j, dry_run, runner or sweep.run_subprocess)
        log = opts.out / "logs" / f"{j.name}.log"
        sweep.say(f"# {j.name}: output in {log}")
        try:
            return sweep.run_commands(commands, j, dry_run,
                                      functools.partial(sweep.run_subprocess, log=log, env=sweep.threads_env(opts.jobs)))
        except TrainingError as e:
            raise TrainingError(f"{e}\nIts output: {log}") from e

    def zeroshot_task(j: sweep.Job) -> Callable[[], None]:
        return lambda: run_logged([j.validate], j)

    def run_task(run: StudyRun, j: sweep.Job) -> Callable[[], None]:
        def task() -> None:
            commands = sweep.pending_commands(j)
            if commands and opts.budget and not dry_run and opts.budget.defers(run, commands != [j.validate]):
                return
            seconds = run_logged(commands, j)
            if dry_run:
                return
            if opts.budget and commands[:1] == [j.train]:  # trained from its first step (a resumed run adds --resume)
                opts.budget.measured(run.steps, seconds[0])
            record_file = record_path(j.result)
            recorded = record_file.is_file()
            record = (json.loads(record_file.read_text(encoding="utf-8")) if recorded
                      else trained_record(run, j, threads))
            for d in derived[run]:
                if not record_path(rows_path(opts, d.run_id)).is_file():
                    write_derived(d, record, opts)
            if not recorded:  # last: a recorded run has the files of the derived runs planned with it, in a pack too
                write_text_atomic(record_file, json.dumps(record, indent=2) + "\n")
        return task

    sweep.run_side_by_side([*map(zeroshot_task, zeroshot_left), *(run_task(run, j) for run, j in jobs)],
                           opts.jobs if side_by_side else 1)


def print_pending(phase: str, cells: int, runs: int, steps: Sequence[int]) -> None:
    """A phase that waits for the selection: how big it will be (steps depend on the configs selected)."""
    print(f"# phase {phase}: waits for the selection of {cells} (variant, domain) cells: {runs} runs, between "
          f"{runs * min(steps)} and {runs * max(steps)} optimizer steps", flush=True)


def stages(variants: Sequence[str]) -> List[List[str]]:
    """The variants ``--phase all`` tunes and seeds together, in order: ERM, CLIPood and their WiSE-FT first, then
    the rest. On a CPU the study takes many sessions; in this order the paper's comparison has its seeds (and
    intervals) long before the peers are tuned, instead of waiting for every peer's grid."""
    first = [v for v in variants if v in PAPER_COMPARISON]
    return [first, list(variants)] if first and len(first) < len(variants) else [list(variants)]


def run_study(args: argparse.Namespace, opts: StudyOptions,
              runner: Optional[Callable[[Sequence[str]], int]] = None) -> Selection:
    """Run (or print) the asked phases in order; the selection in between. ``all`` runs grid and seeds of each of
    :func:`stages` in turn, then the ablation. Returns the selection."""
    phases = PHASES if args.phase == "all" else (args.phase,)
    steps = tuple(args.steps)
    groups = stages(args.variants) if args.phase == "all" else [list(args.variants)]
    for variants in groups:
        label = "" if variants == list(args.variants) else f" of {', '.join(variants)}"
        grid = grid_runs(variants, args.domains, args.grid_seeds, {"lr": tuple(args.lrs), "steps": steps})
        if "grid" in phases:
            write_selection(grid, opts, args.dry_run)
            run_phase(f"grid{label}", grid, opts, args.dry_run, runner, [zeroshot_job(d, opts) for d in args.domains])
        selection = write_selection(grid, opts, args.dry_run)
        if "seeds" in phases:
            runs, cells, waiting = seeds_runs(selection, variants, args.domains, args.grid_seeds,
                                              args.headline_seeds, args.other_seeds)
            if runs or not cells:
                run_phase(f"seeds{label}", runs, opts, args.dry_run, runner)
            if cells:
                print_pending(f"seeds{label}", cells, waiting, steps)
    if "ablation" in phases:
        runs = ablation_runs(selection, args.domains, args.ablation_seeds)
        waiting = [d for d in args.domains if d not in selection.get("clipood", {})]
        if runs or not waiting:
            run_phase("ablation", runs, opts, args.dry_run, runner)
        if waiting:
            print_pending("ablation", len(waiting), len(waiting) * len(ABLATIONS) * len(args.ablation_seeds), steps)
    return selection


# --- shipping ------------------------------------------------------------------------------------------
def shipped_variants(selection: Selection, domains: Sequence[str], variants: Sequence[str]) -> List[str]:
    """The SHIPPED_VARIANTS the study ran (``variants``), and the best of its peers when it ran any (ConfigError
    while those peers are not all selected). A study of ERM and CLIPood alone re-ships just those two: weights of
    a method the study did not run stay as they were rather than be replaced by something it did not measure."""
    peers = [v for v in PEERS if v in variants]
    best = best_of(selection, peers, domains) if peers else None
    if peers and best is None:
        raise ConfigError("--ship: the best peer is not known until every peer has a selected config on every held-out "
                          "domain; run the grid phase to the end first")
    return [v for v in SHIPPED_VARIANTS if v in variants] + ([best] if best else [])


def interval_lines(study: Study, variant: str, domain: str, seed: int) -> List[str]:
    """The card's paired intervals: the shipped run (``variant``, ``seed``, at its selected config) against
    zero-shot and against ERM's run of the same seed, on the same held-out images (class-clustered bootstrap)."""
    cell = study.selection[variant][domain]
    (mine,) = study.find(variant, domain, "selected", cell["lr"], cell["steps"], seeds=[seed])
    others = {"zero-shot clip_vitt_emoji": study.find(ZEROSHOT, domain)}
    if variant != "erm" and "erm" in study.selection and domain in study.selection["erm"]:
        erm = study.selection["erm"][domain]
        others[f"ERM (seed {seed}, its selected lr {erm['lr']:g}, {erm['steps']} steps)"] = study.find(
            "erm", domain, "selected", erm["lr"], erm["steps"], seeds=[seed])
    lines = []
    for label, found in others.items():
        if len(found) != 1:
            raise ConfigError(f"--ship: no single {label} result for held-out {domain}; run the grid and seeds first")
        interval = paired_class_bootstrap(mine.correct, found[0].correct, mine.target)
        lines.append(f"- top-1 minus {label}: {interval} points (95%, bootstrap over classes; "
                     f"{'resolved' if interval.resolved else 'not resolved'})")
    return lines


# what a shipped fine-tune's cfg recipe takes from its run's own train.py arguments (the rest stays RECIPE's)
RECIPE_ARGS = ("lr", "steps", "warmup_steps", "batch_size", "weight_decay", "lp_steps")


def recipe_of(train_args: Sequence[str]) -> Dict[str, float]:
    """The :data:`RECIPE_ARGS` values of a run's train.py argv (``["train.py", ...]``), parsed by train.py's own
    parser, for the registered cfg of the run's weights."""
    args = vars(build_train_parser().parse_args(list(train_args[1:])))
    return {k: args[k] for k in RECIPE_ARGS if k != "lp_steps" or args[k]}


# the committed subset CI has: every shipped fine-tune's card records its score there, which tests re-score
MINI = REPO / "datasets" / "emojidg-mini"
MINI_CHECK = "Check on the committed mini subset"


def mini_check(model: torch.nn.Module, name: str, base: str, domain: str,
               dtype: Optional[torch.dtype] = torch.float16) -> str:
    """The card section with validate.py's top-1 of ``model`` *as shipped* (saved as ``name`` in ``dtype``: fp16 for
    a file; None for a WiSE-FT entry's weights, which the registry mixes in fp32 from fp16 files) on :data:`MINI`'s
    held-out ``domain``, scored on the study's ``base`` architecture as every study run is. The card's results are
    on the full held-out split, which CI does not have; this number is the one tests/test_shipped_weights.py
    re-scores from the committed files, so a drift in the weights, data, transforms or evaluation loop shows there."""
    with tempfile.TemporaryDirectory() as tmp:
        clipood_zoo.save_pretrained(model, Path(tmp), model_name=name, dtype=dtype)
        (row,) = validate.main(["--model", base, "--checkpoint", tmp, "--data-dir", str(MINI), "--domains", domain,
                                "--workers", "0"])
    shipped = "fp16 weights as shipped" if dtype == torch.float16 else "the weights the registry mixes, as shipped"
    return (f"- mini_top1: {row['top1']}\n- mini_num_samples: {row['num_samples']}\n\n"
            f"validate.py on datasets/emojidg-mini (the held-out style's val renders), {shipped}.")


def check_mini_version(info: dict) -> None:
    """--ship records scores on :data:`MINI`, so the subset must be of the benchmark version the study ran on."""
    mini = version_of(json.loads((MINI / "_info.json").read_text()))
    if mini != version_of(info):
        raise ConfigError(f"--ship: datasets/emojidg-mini is EmojiDG {mini} but the study's data is "
                          f"{version_of(info)}; rebuild the subset from the same raw tree (tools/emojidg/make_shards.py "
                          "--mini datasets/emojidg-mini --overwrite) first")


def as_fp16(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every floating weight rounded through fp16: what loading its shipped fp16 file gives."""
    rounded = copy.deepcopy(model)
    rounded.load_state_dict({k: v.half().to(v.dtype) if v.is_floating_point() else v
                             for k, v in model.state_dict().items()})
    return rounded


@dataclasses.dataclass
class Staged:
    """One shipped name, read and checked, before anything is written: its model and card sections, what the
    manifest says of how it was trained, and for a WiSE-FT entry without a file its mixing spec."""

    name: str
    run_id: str
    model: torch.nn.Module
    sections: Dict[str, str]
    trained: Dict[str, str]
    wise_ft: Optional[Dict] = None


def ship(selection: Selection, opts: StudyOptions, seed: int, domains: Sequence[str], variants: Sequence[str],
         info: dict) -> None:
    """fp16 copies of the selected runs of :func:`shipped_variants` (seed ``seed``) in weights/, with
    model cards (the benchmark version of the data ``info`` describes, the selected lr and steps, and paired
    intervals against zero-shot and ERM), recorded in the manifest. A WiSE-FT variant whose selected run is the
    WiSE-FT of the very fine-tune shipped beside it stores no file: its manifest entry names the base, that fine-tune
    and alpha, and the registry mixes them (train.py's WiSE-FT is that mix of the run's export). Everything is read
    and checked before the first file is written, so a refused --ship leaves weights/ and the manifest as they were."""
    check_mini_version(info)
    variants = shipped_variants(selection, domains, variants)
    study, staged = load_study(opts.out), {}
    for variant in variants:  # SHIPPED_VARIANTS lists every fine-tune before its WiSE-FT
        for domain in domains:
            if domain not in selection.get(variant, {}):
                raise ConfigError(f"--ship: {variant} has no selected config for held-out {domain} yet; run the "
                                  "grid phase to the end first")
            cell = selection[variant][domain]
            run = StudyRun(variant, domain, cell["lr"], cell["steps"], seed, "seeds")
            result = rows_path(opts, run.run_id)
            if not (result.is_file() and record_path(result).is_file()):
                raise ConfigError(f"--ship: {result} or its {RUN_SUFFIX} is missing; run the seeds phase (seed {seed}) first")
            name = f"{variant}_vitt_emojidg_{domain}"
            record = json.loads(record_path(result).read_text())
            run_dir = opts.out / record["weights"]["selected"]  # a derived run's: its fine-tune's wise_ft/
            if not (run_dir / "config.json").is_file():
                raise ConfigError(f"--ship: {run_dir} is gone (a study restored by pack_study.py --restore holds result "
                                  "files, not weights); re-create it from the repository root with its recorded "
                                  f"command: {recreate_command(record)}")
            found = sha256_file(run_dir / "model.safetensors")
            if found != record.get("selected_sha256", found):  # records before 2026-11-29 have none
                raise ConfigError(f"--ship: {run_dir} holds other weights (sha256 {found}) than the study scored "
                                  f"({record['selected_sha256']}): re-created with other threads, torch or data than "
                                  f"the run's; re-create it with {recreate_command(record)}, or move "
                                  f"{' '.join(result_files(opts, run.trained))} aside and run the study to score it "
                                  "again (a grid run scored again may change its cell's selection)")
            model = clipood_zoo.create_model(name, checkpoint_path=run_dir)
            loaded = model.pretrained_cfg.pop("loaded_weights")  # a path of this machine: the run says it portably
            model.pretrained_cfg["shipped_from"] = {"study_run": run.run_id, "sha256": loaded["sha256"]}
            wise_ft = mixable_wise_ft(record, staged, variant, domain, run_dir, opts.model)
            if wise_ft is not None:  # exactly the model the registry will mix from the two shipped files
                base = clipood_zoo.create_model(opts.model, pretrained=True)
                model.load_state_dict(interpolate_state_dicts(
                    base.state_dict(), as_fp16(staged[wise_ft["finetuned"]].model).state_dict(), wise_ft["alpha"]))
            (row,) = [r for r in json.loads(result.read_text()) if r["weights"] == "selected" and r["split"] == opts.split]
            card = (run_dir / "README.md").read_text().split("## Training", 1)[-1]
            sections = {
                **card_section(version_of(info)),
                "Training": card.split("## Results", 1)[0].strip() + (
                    f"\n\nSelected on the source styles' val split (mean top-1 {cell['source_val_top1']:.2f} over "
                    f"seeds {cell['seeds']}) from lr x steps {sorted({c['lr'] for c in cell['candidates']})} x "
                    f"{sorted({c['steps'] for c in cell['candidates']})}."),
                f"Results (validate.py, held-out domain, {opts.split} split)": "\n".join(
                    [f"- {k}: {row[k]}" for k in ("top1", "base_top1", "new_top1", "hm", "ood_auroc_mcm", "num_samples")
                     if k in row] + interval_lines(study, variant, domain, seed)),
                MINI_CHECK: mini_check(model, name, opts.model, domain, None if wise_ft else torch.float16),
                "Data and licences": "EmojiDG images are rendered from openly licensed emoji sets; see "
                                     "datasets/emojidg-mini/licenses/ATTRIBUTION.md.",
            }
            train_args = record["train_args"]
            staged[name] = Staged(name, run.run_id, model, sections, {"recipe": recipe_of(train_args),
                                                          "train_command": shlex.join(["python", *train_args])}, wise_ft)
    for s in staged.values():
        if s.wise_ft is None:
            clipood_zoo.save_pretrained(s.model, WEIGHTS / s.name, model_name=s.name, dtype=torch.float16,
                                        card_sections=s.sections)
        else:
            write_mixed_card(s)
    record_shipped(list(staged), {s.name: s.trained for s in staged.values()},
                   {s.name: s.wise_ft for s in staged.values() if s.wise_ft is not None})


def mixable_wise_ft(record: Dict, staged: Dict[str, Staged], variant: str, domain: str, run_dir: Path,
                    base: str) -> Optional[Dict]:
    """The ``{zeroshot, finetuned, alpha}`` spec of a WiSE-FT run whose fine-tune is the one staged for shipping
    (same variant, config and seed: ``derived_from``), else None (it then ships as a file of its own)."""
    finetune = DERIVED_VARIANTS.get(variant)
    finetune_name = f"{finetune}_vitt_emojidg_{domain}"
    if finetune is None or finetune_name not in staged:
        return None
    if record.get("derived_from") != staged[finetune_name].run_id:
        return None
    return {"zeroshot": base, "finetuned": finetune_name, "alpha": chosen_alpha(export_config(run_dir))}


def write_mixed_card(s: Staged) -> None:
    """A WiSE-FT entry without a file: its folder holds the card alone (a weights file left there by an earlier
    --ship that stored one is removed: the manifest no longer names it)."""
    folder = WEIGHTS / s.name
    for stale in ("model.safetensors", "config.json"):
        (folder / stale).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    spec = s.wise_ft
    sources = {role: f"{spec[role]} (sha256 {pin})" for role, pin in source_pins(spec).items()}
    what = (f"not stored: (1 - {spec['alpha']:g}) x {sources['zeroshot']} + {spec['alpha']:g} x "
            f"{sources['finetuned']}, mixed at load time from those two shipped files, each checked against that sha256")
    cfg = {**s.model.pretrained_cfg, "architecture": s.name}
    write_text_atomic(folder / "README.md", model_card(s.name, cfg, what, s.sections,
                                                        load=f"clipood_zoo.create_model('{s.name}', pretrained=True)"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "emojidg")
    p.add_argument("--out", type=Path, default=REPO / "output" / "emojidg")
    p.add_argument("--phase", choices=(*PHASES, "all"), default="all")
    p.add_argument("--domains", nargs="+", default=list(emojidg.DOMAINS))
    p.add_argument("--variants", nargs="+", default=list(GRID_VARIANTS), choices=list(GRID_VARIANTS),
                   help="grid variants (the ablations run at CLIPood's selected config)")
    p.add_argument("--grid-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--headline-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="seeds of the selected ERM, CLIPood, WiSE-FT and best-peer configs")
    p.add_argument("--other-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the other variants")
    p.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=list(GRID["lr"]), help="the grid's learning rates")
    p.add_argument("--steps", type=int, nargs="+", default=list(GRID["steps"]), help="the grid's step counts")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side (a small model leaves a GPU or spare CPU cores idle); each run's output "
                        "goes to OUT/logs/<run_id>.log and gets OMP_NUM_THREADS = cores / jobs unless that is set")
    p.add_argument("--dry-run", action="store_true", help="print the commands left and each phase's runs and steps")
    p.add_argument("--minutes", type=float, default=None,
                   help="start no run expected to end later than this many minutes from now (a session's machine "
                        "time); the runs that fit go on, the rest wait for the next call")
    p.add_argument("--seconds-per-step", type=float, default=SECONDS_PER_STEP,
                   help=f"--minutes' estimate of a run: optimizer steps times this, plus validate.py's "
                        f"{VALIDATE_START_SECONDS:g} s and {VALIDATE_SECONDS_PER_WEIGHTS:g} s per weights it scores; "
                        "a guess, used until a run of this call has trained: then the slowest rate of the last "
                        f"{RECENT_RUNS} runs measured, times {MEASURED_MARGIN:g} (default %(default)s: measured on 2 "
                        "CPU cores with --jobs 2, rounded up)")
    p.add_argument("--ship", action="store_true",
                   help="copy the selected ERM/CLIPood/WiSE-FT runs (those in --variants) and the best peer's, first headline "
                        "seed, into weights/")
    g = p.add_argument_group("smoke runs (another architecture, random init)")
    g.add_argument("--model", default="clip_vitt_emoji")
    g.add_argument("--model-config", default=None)
    g.add_argument("--random-init", action="store_true", help="no --pretrained: start from random weights")
    g.add_argument("-b", "--batch-size", type=int, default=RECIPE["batch_size"])
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--device", default=None)
    return p


def absolute(path: Path) -> Path:
    """``path`` made absolute without resolving symlinks: a data or output folder linked into the clone stays a
    path inside it, so the recorded commands stay relative (:func:`emojidg.paths.repo_relative`)."""
    return Path(os.path.abspath(path))


def main(argv: Optional[List[str]] = None, runner: Optional[Callable[[Sequence[str]], int]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if not (args.minutes is None or 0 <= args.minutes < math.inf) or not 0 < args.seconds_per_step < math.inf:
        parser.error(f"--minutes must be >= 0 and --seconds-per-step > 0, got {args.minutes} and "
                     f"{args.seconds_per_step}")
    out = absolute(args.out)  # the runs start in REPO, not here
    try:
        info = json.loads((args.data_dir / "_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        parser.exit(2, f"run_benchmark.py: error: cannot read {args.data_dir / '_info.json'} ({e}); pass --data-dir "
                       "with the EmojiDG shards (tools/emojidg/make_shards.py)\n")
    opts = StudyOptions(absolute(args.data_dir), out, held_out_split(info), model=args.model,
                        model_config=args.model_config, pretrained=not args.random_init, batch_size=args.batch_size,
                        workers=args.workers, device=args.device, jobs=args.jobs,
                        budget=None if args.minutes is None else Budget(time.monotonic() + 60 * args.minutes,
                                                                        args.seconds_per_step))
    try:
        if not args.dry_run:
            (out / "results").mkdir(parents=True, exist_ok=True)
        selection = run_study(args, opts, runner)
        if args.ship and not args.dry_run:
            ship(selection, opts, args.headline_seeds[0], args.domains, args.variants, info)
    except ClipoodError as e:
        parser.exit(2, f"run_benchmark.py: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
