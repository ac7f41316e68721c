#!/usr/bin/env python3
"""Fine-tune a CLIP image encoder out of distribution (CLIPood, ERM) on WebDataset shards.

Leave-one-domain-out, as DomainBed and the CLIPood paper run it:

    python train.py --model clip_vitt_emoji --pretrained --data-dir data/emojidg --holdout 3d \
        --train-classes base --method clipood --steps 500 --lr 1e-4 --output output/

trains on the other domains' ``train`` split (base classes only with ``--train-classes base``, scored
against the base classes' head rows only: CoOp's base-to-new, where the new classes' names take no part in
training), picks the evaluation with the best accuracy on the source domains' ``val`` split (over the same
rows), and exports that model
(the BMA weights for CLIPood) with ``save_pretrained`` into the run's output folder, so that
``create_model(name, checkpoint_path=<run folder>)`` and ``validate.py --checkpoint`` load it.
Multi-process: ``torchrun --nproc_per_node N train.py ...`` (NCCL on GPU, gloo on CPU).
The flags follow timm's train.py where they mean the same thing.

Faults, and what the run does about them:

- Bad samples (image that does not decode, missing/out-of-range label, unknown domain, truncated shard,
  a tar member over ``--max-member-bytes`` or an image over ``--max-image-pixels``, neither read) are
  skipped with a warning and counted; the final log and the printed result give the counts for
  training and evaluation (``skipped_train``/``skipped_eval``). ``--strict-data`` stops at the first one.
  Data that yields nothing usable (every label out of range, every shard empty) ends the run with an
  error after a bounded number of skipped samples, instead of spinning.
- A NaN/inf loss or gradient: that optimizer step is skipped (no weight change, gradients dropped, so the
  weights and the BMA average never take NaN/inf), with a warning, and counted (``nonfinite_steps`` in
  the result and the checkpoint); the step counter, schedule and BMA weights go on as if it had run, so
  the run stays comparable and resumable. After 10 consecutive skipped steps the run stops with a
  :class:`TrainingError` (exit code 2): it has diverged, and its last checkpoint is the one to look at.
  float16 AMP whose logits can overflow (``(1 + margin) / tau > 65504``) is refused before training.
  Cost: the check reads the loss and the gradient norm once per optimizer step (one device-to-host
  sync; on a GPU it stops the CPU from queuing the next step's kernels until the backward pass is done,
  plus one extra read of the gradients, about a fifth of an AdamW step's memory traffic; in DDP one
  one-element all_reduce so every rank skips the same steps). With ``--amp-dtype float16`` the grad
  scaler, which already syncs once per step, does the gradient check.
- Killed at any point: checkpoints are atomic; ``--resume`` continues to exactly the weights of an
  uninterrupted run, including an evaluation/export that the kill interrupted. The checkpoint is written
  before each evaluation and export. Any file that cannot be written (disk full) stops the run with a
  :class:`CheckpointError` (exit code 2) saying which checkpoint is intact.
- SIGTERM (SLURM, Kubernetes) or SIGINT (Ctrl-C): the current optimizer step (or the evaluation and export
  in progress) ends, a checkpoint is written and the run exits with code 75 (EX_TEMPFAIL: "try again",
  with ``--resume``) and one line saying where to resume from; a second signal stops at once, without a
  checkpoint. In DDP the ranks agree on the stop through the per-step all_reduce above, so all stop at
  the same step. A finished run keeps its export and drops ``checkpoint.pt`` unless ``--keep-checkpoint``;
  ``--checkpoint-hist N`` keeps the N best evaluated checkpoints (``checkpoint-<epoch>.pt``).
- The schedule, BMA and data order are planned over ``--steps``: the checkpoint stores the run's defining
  arguments and a ``--resume`` that changes one is refused, naming it. Arguments that cannot make the
  planned optimizer steps (``--grad-accum-steps`` beyond an epoch's batches) are refused before training,
  and an epoch that ends short of its planned steps stops the run before anything is exported.
- The run folder (``<model>-<method>-<holdout>-<train classes>-seed<N>`` unless ``--experiment``) stays
  inside ``--output``, is locked while a run writes to it (a second process is refused, naming the
  holder's PID), and a run already in it is replaced only with ``--overwrite``. ``result.json`` is written
  last and marks a finished run. Files are written by atomic rename, which replaces a planted symlink
  instead of following it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import open_clip
import torch
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3, NativeScaler
from timm.utils.distributed import init_distributed_device_so
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

import clipood_zoo
from clipood_zoo import ClipoodError, ConfigError, ModelBma
from clipood_zoo.bma import PAPER_BETA
from clipood_zoo.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_shards, save_checkpoint, save_shards
from clipood_zoo.data import DatasetInfo, create_loader, read_dataset_info
from clipood_zoo.cli_utils import (
    AMP_DTYPES, add_data_limit_args, data_limits, default_device, format_results, model_for_dataset,
)
from clipood_zoo.errors import CheckpointError, RunInterrupted, TrainingError, WeightsError
from clipood_zoo.fileio import FolderLock, check_writable_dir, inside, link_or_copy, write_text_atomic
from clipood_zoo.hub import weights_digest
from clipood_zoo.evaluate import autocast, evaluate
from clipood_zoo.methods import METHODS, TrainStep, create_method
from clipood_zoo.schedules import create_phased_scheduler
from clipood_zoo.sharding import full_state_dict, shard_image_tower
from clipood_zoo.weight_space import wise_ft

_logger = logging.getLogger("train")
LAST_DIR = "last"  # sub-folder of a run with a weight average that holds the run's last weights
EMA_DIR = "ema"  # sub-folder holding the --export-ema weights
BMA_DIR_PREFIX = "bma_beta"  # sub-folders bma_beta<beta> holding the --export-bma-betas averages
WISE_FT_DIR = "wise_ft"  # sub-folder holding the --export-wise-ft weights
WISE_FT_FIXED_DIR = "wise_ft_fixed"  # sub-folder holding the --export-wise-ft-fixed weights
EXTRA_DIRS = (LAST_DIR, EMA_DIR, WISE_FT_DIR, WISE_FT_FIXED_DIR)  # the sub-folder exports of fixed names (and below)
MAX_NONFINITE_RUN = 10  # consecutive skipped steps after which a run is taken to have diverged
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped by a signal after a checkpoint, "try again" with --resume
SHARDS_GLOB = f"{CHECKPOINT_NAME}.shards-*"  # --fsdp: the folders of sharded model/average/optimizer states
BMA_DIRS_GLOB = f"{BMA_DIR_PREFIX}*"  # the --export-bma-betas sub-folder exports
RESULT_NAME = "result.json"  # written last: a run folder holding it holds a finished run
SUMMARY_NAME = "summary.csv"
RUN_FILES = ("args.json", SUMMARY_NAME, RESULT_NAME, CHECKPOINT_NAME, "model.safetensors", "config.json", "README.md")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="a clipood_zoo name (list_models()) or an open_clip architecture")
    g.add_argument("--pretrained", action="store_true", help="start from the registered weights of --model")
    g.add_argument("--checkpoint", "--initial-checkpoint", dest="checkpoint", default=None,
                   help="start from these weights (a safetensors file or a save_pretrained folder)")
    g.add_argument("--clip-pretrained", default=None, help="start from open_clip's CLIP weights: a tag (e.g. openai) or an open_clip checkpoint file")
    g.add_argument("--model-config", default=None,
                   help="an open_clip model config JSON (or a folder of them) to register before --model is built")
    g.add_argument("--export-name", default=None, help="registry name written into the exported config (default: --model)")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", required=True, help="where _info.json and the shards are: a folder, or a file://, http(s):// or fsspec URL")
    g.add_argument("--holdout", default=None, help="held-out (target) domain; the other domains are trained on")
    g.add_argument("--domains", nargs="+", default=None, help="source domains (default: all but --holdout)")
    g.add_argument("--train-classes", choices=("all", "base"), default="all", help="'base': CoOp-style base classes only")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val", help="split of the source domains used for model selection")
    g.add_argument("--eval-split", default="val", help="split of the held-out domain that is reported")
    g.add_argument("--domain-balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="draw every batch evenly from the source domains, as CLIPood and DomainBed do (default: on "
                        "with several source domains; the remainder of batch size / domains rotates over domains)")
    g.add_argument("--train-num-samples", type=int, default=None,
                   help="samples per epoch over all processes (open_clip's flag; default: the train split's count). "
                        "Training always reads a resampled stream (open_clip's --dataset-resampled), so an epoch is a "
                        "length of that stream, and the schedule, checkpoints and evaluations follow it")
    g.add_argument("--workers", "-j", type=int, default=2)
    g.add_argument("--strict-data", action="store_true", help="stop at the first bad sample instead of skipping it")
    add_data_limit_args(g)
    g = p.add_argument_group("method")
    g.add_argument("--method", default="clipood", help=f"one of {sorted(METHODS)}")
    g.add_argument("--temperature", type=float, default=None, help="tau (default: 1 / the model's logit scale)")
    g.add_argument("--margin-lambda", type=float, default=0.3)
    g.add_argument("--fixed-margin", action="store_true", help="ablation: the same margin for every wrong class")
    g.add_argument("--bma-beta", type=float, default=PAPER_BETA, help="Beta(beta, beta) weights; 0 disables BMA")
    g.add_argument("--no-bma", action="store_true", help="evaluate and export the last weights")
    g.add_argument("--model-ema", action="store_true", help="timm's ModelEmaV3 instead of BMA (the paper's ablation)")
    g.add_argument("--model-ema-decay", type=float, default=0.999)
    g.add_argument("--export-ema", type=float, default=None, metavar="DECAY",
                   help="also keep timm's EMA with this decay beside the run's own average and export it to <run>/ema/ "
                        "(one run then gives last, EMA and BMA weights)")
    g.add_argument("--export-bma-betas", type=float, nargs="+", default=None, metavar="BETA",
                   help="also keep a Beta moving average with each of these betas beside the run's own average, over "
                        "the same steps, and export each to <run>/bma_beta<BETA>/ (1: the uniform average). An average "
                        "never feeds back into training, so one run gives the whole beta sweep on one trajectory")
    g.add_argument("--wise-ft-alphas", type=float, nargs="+", default=None,
                   help="WiSE-FT: after training, interpolate with the zero-shot weights at each alpha, keep the best "
                        "on the source domains' val split (default for --method wise_ft: 0 0.25 0.5 0.75 1)")
    g.add_argument("--export-wise-ft", action="store_true",
                   help="export the WiSE-FT weights to <run>/wise_ft/ beside the run's own export, not in its place "
                        "(one run then gives the fine-tune and its WiSE-FT, as a study comparing both needs)")
    g.add_argument("--export-wise-ft-fixed", type=float, default=None, metavar="ALPHA",
                   help="with --export-wise-ft, also export WiSE-FT at this fixed alpha, chosen without validation (the "
                        "WiSE-FT paper's 0.5), to <run>/wise_ft_fixed/")
    g.add_argument("--lp-steps", type=int, default=0, help="lp_ft: optimizer steps that train only the head")
    g.add_argument("--carft-lambda", type=float, default=1.0, help="car_ft: weight of the context KL")
    g.add_argument("--croft-lambda", type=float, default=1.0, help="croft: weight of the energy gradient penalty")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="passes over the training split (default 1 unless --steps)")
    g.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")
    g.add_argument("-b", "--batch-size", type=int, default=32)
    g.add_argument("--grad-accum-steps", type=int, default=1)
    g.add_argument("--opt", default="adamw")
    g.add_argument("--lr", type=float, default=1e-5)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, default=None)
    g.add_argument("--sched", default="cosine")
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--warmup-lr", type=float, default=1e-7)
    g.add_argument("--min-lr", type=float, default=0.0)
    g = p.add_argument_group("augmentation (timm's create_transform)")
    g.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.0))
    g.add_argument("--hflip", type=float, default=0.0)
    g.add_argument("--color-jitter", type=float, default=0.2)
    g = p.add_argument_group("runtime")
    g.add_argument("--amp", action="store_true", help="mixed precision (autocast) with --amp-dtype")
    g.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), default="bfloat16")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--torchcompile", nargs="?", const="inductor", default=None, help="torch.compile backend")
    g.add_argument("--fsdp", action="store_true",
                   help="shard the image tower over the processes with FSDP2 (torch's fully_shard) instead of DDP, "
                        "for towers too big to hold whole on each device; BMA averages each rank's shard")
    g.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--output", default="output/train", help="parent folder of the run folder")
    g.add_argument("--experiment", default=None,
                   help="run folder name inside --output (default: model-method-holdout-trainclasses-seedN)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in the run folder")
    g.add_argument("--resume", default=None, help="checkpoint.pt (or its run folder) of a run to continue")
    g.add_argument("--log-interval", type=int, default=50, help="optimizer steps between log lines")
    g.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING"), default="INFO",
                   help="rank 0's log level; the other ranks log only their warnings, or everything with DEBUG "
                        "(which also logs each rank's own training loss)")
    g.add_argument("--eval-interval", type=int, default=1, help="epochs between evaluations (the last always runs)")
    g.add_argument("--checkpoint-interval", type=int, default=None, help="steps between checkpoints (default: each epoch)")
    g.add_argument("--checkpoint-hist", type=int, default=0,
                   help="keep this many evaluated checkpoints (checkpoint-<epoch>.pt), the best by source-domain "
                        "validation top-1 (timm's meaning; without a validation split the latest)")
    g.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the resume checkpoint of a finished run (by default only its export stays)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad arguments before any model or data is touched."""
    positive = {"--batch-size": args.batch_size, "--grad-accum-steps": args.grad_accum_steps, "--lr": args.lr,
                "--log-interval": args.log_interval, "--eval-interval": args.eval_interval}
    positive.update({k: v for k, v in (("--steps", args.steps), ("--epochs", args.epochs),
                                       ("--checkpoint-interval", args.checkpoint_interval),
                                       ("--train-num-samples", args.train_num_samples)) if v is not None})
    data_limits(args)  # the sample caps, refused unless > 0
    for flag, value in positive.items():
        if not value > 0:  # also refuses nan
            raise ConfigError(f"{flag} must be > 0, got {value}")
    if args.temperature is not None and not args.temperature > 0:
        raise ConfigError(f"--temperature must be > 0 (tau; 0.01 is CLIP's), got {args.temperature}")
    if not args.margin_lambda >= 0:
        raise ConfigError(f"--margin-lambda must be >= 0, got {args.margin_lambda}")
    if not args.bma_beta >= 0:
        raise ConfigError(f"--bma-beta must be > 0 (or 0 to disable BMA), got {args.bma_beta}")
    if args.method not in METHODS:
        raise ConfigError(f"unknown --method {args.method!r}; available: {', '.join(sorted(METHODS))}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if args.checkpoint_hist < 0:
        raise ConfigError(f"--checkpoint-hist must be >= 0, got {args.checkpoint_hist}")
    if args.experiment is not None and (args.experiment in ("", ".", "..") or Path(args.experiment).name != args.experiment):
        raise ConfigError(f"--experiment must be a folder name (the run folder inside --output), got {args.experiment!r}")

    if args.export_ema is not None and not 0.0 <= args.export_ema < 1.0:
        raise ConfigError(f"--export-ema is an EMA decay in [0, 1), got {args.export_ema}")
    if args.export_ema is not None and args.model_ema:
        raise ConfigError("--export-ema keeps an EMA beside the run's average, but --model-ema already makes the EMA "
                          "the run's average; drop one of them")
    for beta in args.export_bma_betas or ():
        if not 0 < beta < math.inf:  # also refuses nan
            raise ConfigError(f"--export-bma-betas are Beta(beta, beta) parameters > 0 (1: the uniform average), "
                              f"got {beta}")
    if args.export_bma_betas is not None and len(set(map(beta_key, args.export_bma_betas))) < len(args.export_bma_betas):
        raise ConfigError(f"--export-bma-betas names a beta twice: {' '.join(map(beta_key, args.export_bma_betas))}")
    if args.fsdp and (args.model_ema or args.export_ema is not None or args.export_bma_betas or args.wise_ft_alphas):
        raise ConfigError("--fsdp works with BMA or the last weights: timm's EMA (--model-ema, --export-ema), the extra "
                          "averages (--export-bma-betas) and WiSE-FT (--wise-ft-alphas) need the whole model on each "
                          "rank; drop one of them")
    if args.fsdp and args.checkpoint_hist:
        raise ConfigError("--checkpoint-hist keeps copies of checkpoint.pt, whose --fsdp shards live in folders "
                          "beside it; drop one of them")
    for alpha in args.wise_ft_alphas or ():
        if not 0.0 <= alpha <= 1.0:  # also refuses nan
            raise ConfigError(f"--wise-ft-alphas must lie in [0, 1] (0: zero-shot, 1: fine-tuned), got {alpha}")
    if args.export_wise_ft_fixed is not None:
        if not args.export_wise_ft:
            raise ConfigError("--export-wise-ft-fixed exports a fixed-alpha WiSE-FT beside the chosen one: add "
                              "--export-wise-ft (and --wise-ft-alphas unless the method has them)")
        if not 0.0 <= args.export_wise_ft_fixed <= 1.0:
            raise ConfigError(f"--export-wise-ft-fixed must lie in [0, 1] (0: zero-shot, 1: fine-tuned), got "
                              f"{args.export_wise_ft_fixed}")


def run_folder_name(args: argparse.Namespace) -> str:
    """--experiment, or a name made of everything that tells runs apart, so that seeds never share a folder."""
    if args.experiment:
        return args.experiment
    parts = (args.model, args.method, args.holdout or "all", args.train_classes, f"seed{args.seed}")
    return re.sub(r"[^\w.+-]+", "_", "-".join(parts))


@contextlib.contextmanager
def claim_run_folder(args: argparse.Namespace) -> Iterator[Path]:
    """The run folder, checked and locked for this process before any model or data is loaded.

    It must lie inside --output (not through a symlink); a second process there is refused while this one
    lives; a run already in it is replaced only with --overwrite (or continued with --resume). Rank 0 owns
    the folder; other ranks only get its path.
    """
    output = Path(args.output)
    out_dir = output / run_folder_name(args)
    if int(os.environ.get("RANK", "0")) != 0:
        yield out_dir
        return
    check_writable_dir(output, "--output")
    if out_dir.is_symlink() or not inside(out_dir, output):
        raise ConfigError(f"the run folder {out_dir} is a symlink or leads outside --output {output}; remove the "
                          "link or choose another --experiment")
    try:
        out_dir.mkdir(exist_ok=True)
        lock = FolderLock(out_dir).acquire()
    except OSError as e:
        raise ConfigError(f"cannot use the run folder {out_dir} ({e.strerror or e}); remove what is there or choose "
                          "another --experiment") from e
    try:
        clear_previous_run(out_dir, args)
        yield out_dir
    finally:
        lock.release()


def clear_previous_run(out_dir: Path, args: argparse.Namespace) -> None:
    """Refuse to start over a run in ``out_dir`` unless --overwrite (then remove its files) or --resume."""
    if args.resume:
        return
    finished, started = (_written_here(out_dir / name) for name in (RESULT_NAME, CHECKPOINT_NAME))
    if not (finished or started):
        return
    if not args.overwrite:
        held = "a finished run" if finished else f"an unfinished run (continue it with --resume {out_dir})"
        raise ConfigError(f"the run folder {out_dir} already holds {held}; pass --overwrite to replace it, or "
                          "choose another --seed or --experiment")
    for path in [*(out_dir / name for name in RUN_FILES), *out_dir.glob("checkpoint-*.pt")]:
        path.unlink(missing_ok=True)  # unlink removes a symlink, never what it points to
    for path in [*(out_dir / name for name in EXTRA_DIRS), *out_dir.glob(BMA_DIRS_GLOB)]:
        remove_subfolder(path)
    for shards in out_dir.glob(SHARDS_GLOB):
        remove_subfolder(shards)


def beta_key(beta: float) -> str:
    """How an --export-bma-betas beta is named in checkpoints and folders (``0.1``, ``1``: 1 and 1.0 are one beta)."""
    return f"{beta:g}"


def bma_dir(beta: float) -> str:
    """The sub-folder of the --export-bma-betas average with ``beta`` (``bma_beta0.1``, ``bma_beta1``)."""
    return f"{BMA_DIR_PREFIX}{beta_key(beta)}"


def remove_subfolder(path: Path) -> None:
    """Remove a run's sub-folder export; a symlink in its place is unlinked, never followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _written_here(path: Path) -> bool:
    """A regular file, not a symlink: train.py never writes links, so a planted one marks no run."""
    return path.is_file() and not path.is_symlink()


class StopSignals:
    """The first SIGTERM/SIGINT asks the run to stop after the current step with a checkpoint.

    SLURM and Kubernetes stop jobs with SIGTERM, people with Ctrl-C (SIGINT). The handlers are restored on
    the first signal, so a second one acts at once (SIGTERM kills, SIGINT raises KeyboardInterrupt).
    Forked loader workers inherit the handlers, so the first signal does not kill them either; they keep
    serving batches until the run stops them.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: Optional[str] = None
        self._previous: Dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        self._restore()
        if os.getpid() != self._pid:  # a forked loader worker: the main process reports it
            return
        _logger.warning("%s received: stopping after the current step with a checkpoint (send it again to stop at "
                        "once, without one)", self.received)

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


def reseed(seed: int, epoch: int, rank: int) -> None:
    """Every RNG from (seed, epoch, rank) alone, so an epoch's augmentations do not depend on what ran before."""
    value = (seed + 1_000_003 * epoch + 7919 * rank) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def source_domains(args: argparse.Namespace, info: DatasetInfo) -> List[str]:
    if args.holdout is not None:
        info.domain_index(args.holdout)  # unknown domain -> error listing the domains
    domains = args.domains or [d for d in info.domains if d != args.holdout]
    for d in domains:
        info.domain_index(d)
    if args.holdout in domains:
        raise ConfigError(f"the held-out domain {args.holdout!r} cannot also be a source domain")
    if not domains:
        raise ConfigError(f"no source domains left to train on in {info.path}")
    return domains


def cpu_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s state dict (the zero-shot and the selected weights WiSE-FT mixes)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class Run:
    """Everything one training run holds, so the loop reads as timm's does."""

    def __init__(self, args: argparse.Namespace, info: DatasetInfo, out_dir: Path, stop: StopSignals):
        self.args, self.info, self.out_dir, self.stop = args, info, out_dir, stop
        device_name = args.device or default_device()
        dist = init_distributed_device_so(device=device_name)
        self.device = torch.device(dist["device"])
        self.rank, self.world_size, self.distributed = dist["global_rank"], dist["world_size"], dist["distributed"]
        self.is_main = self.rank == 0
        if args.fsdp and not self.distributed:
            raise ConfigError("--fsdp shards the model over processes: start the run with torchrun "
                              "(torchrun --nproc-per-node N train.py ... --fsdp)")
        reseed(args.seed, 0, rank=0)  # the same initial weights (and BMA theta_0) on every rank

        self.sources = source_domains(args, self.info)
        self.train_classes = self.info.class_subset(args.train_classes)
        self.model = model_for_dataset(args.model, self.info, args.pretrained, args.checkpoint, args.clip_pretrained,
                                       with_text_tower=METHODS[args.method].needs_text_tower).to(self.device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = create_method(args.method, temperature=args.temperature, margin_lambda=args.margin_lambda,
                                    adaptive_margin=not args.fixed_margin, lp_steps=args.lp_steps,
                                    carft_lambda=args.carft_lambda, croft_lambda=args.croft_lambda)
        self.method.restrict_to(self.train_classes, self.model.num_classes)
        self.method.prepare(self.model)
        self.wise_ft_alphas = args.wise_ft_alphas or self.method.default_wise_ft_alphas
        if self.wise_ft_alphas and args.val_split not in self.info.splits:
            raise ConfigError(f"WiSE-FT chooses alpha on the source domains' {args.val_split!r} split, which "
                              f"{self.info.path} does not have; pass --val-split or drop --wise-ft-alphas")
        if args.export_wise_ft and not self.wise_ft_alphas:
            raise ConfigError(f"--export-wise-ft exports WiSE-FT beside the run, but --method {args.method} has no "
                              "WiSE-FT step; give the alphas with --wise-ft-alphas (e.g. 0 0.25 0.5 0.75 1)")
        self.zeroshot_state = cpu_state(self.model) if self.wise_ft_alphas else None
        self.selected_state: Optional[Dict[str, torch.Tensor]] = None  # the exported weights, which WiSE-FT mixes in
        tau = self.method.resolve_temperature(self.model)
        max_logit = (1.0 + getattr(self.method, "margin_lambda", 0.0)) / tau
        if args.amp and args.amp_dtype == "float16" and max_logit > torch.finfo(torch.float16).max:
            raise ConfigError(
                f"with --amp-dtype float16 the logits reach (1 + margin) / tau = {max_logit:.3g}, beyond float16's "
                f"{torch.finfo(torch.float16).max:.0f}: every loss would be inf. Use --amp-dtype bfloat16, or a larger "
                "--temperature (a smaller logit scale).")

        data_config = resolve_data_config({}, model=self.model)
        self.eval_transform = create_transform(**data_config)
        train_transform = create_transform(
            data_config["input_size"], is_training=True, scale=tuple(args.scale), hflip=args.hflip, vflip=0.0,
            color_jitter=args.color_jitter, interpolation=data_config["interpolation"], mean=data_config["mean"],
            std=data_config["std"])
        self.domain_balanced = len(self.sources) > 1 if args.domain_balanced is None else args.domain_balanced
        self.train_loader = create_loader(
            self.info, args.train_split, transform=train_transform, batch_size=args.batch_size, is_training=True,
            domains=self.sources, classes=self.train_classes, num_workers=args.workers, seed=args.seed,
            resampled=True, strict=args.strict_data, pin_memory=self.device.type == "cuda",
            **data_limits(args),
            domain_balanced=self.domain_balanced, epoch_samples=args.train_num_samples)
        self.batches_per_epoch = len(self.train_loader)
        if self.batches_per_epoch < args.grad_accum_steps:
            raise ConfigError(
                f"--grad-accum-steps {args.grad_accum_steps} takes {args.grad_accum_steps} batches per optimizer step, "
                f"but an epoch of the {args.train_split!r} split has {self.batches_per_epoch} batch(es) of "
                f"{args.batch_size} ({self.train_loader.num_samples} samples over {self.world_size} process(es)): no "
                "optimizer step could be made. Lower --grad-accum-steps or --batch-size.")
        self.updates_per_epoch = self.batches_per_epoch // args.grad_accum_steps
        self.total_steps = args.steps or (args.epochs or 1) * self.updates_per_epoch
        self.epochs = math.ceil(self.total_steps / self.updates_per_epoch)

        self.average = self.weight_average()  # copied from the whole model: FSDP modules cannot be copied
        if args.fsdp:
            if self.wise_ft_alphas:
                raise ConfigError(f"--method {args.method} ends with WiSE-FT, which needs the whole model on each "
                                  "rank; train it without --fsdp")
            mesh = init_device_mesh(self.device.type, (self.world_size,))
            for module in (self.model, self.average.module if self.average is not None else None):
                if module is not None:
                    shard_image_tower(module, mesh)
        self.optimizer = create_optimizer_v2(self.model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay)
        self.scheduler = create_phased_scheduler(
            self.optimizer, self.method.phase_starts(self.total_steps), self.total_steps, args.warmup_steps,
            sched=args.sched, warmup_lr=args.warmup_lr, min_lr=args.min_lr)
        self.extra_ema = ModelEmaV3(self.model, decay=args.export_ema) if args.export_ema is not None else None
        self.extra_bmas = {beta: ModelBma(self.model, total_steps=self.total_steps, beta=beta, exclude_buffers=True)
                           for beta in args.export_bma_betas or ()}
        self.amp_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
        self.scaler = NativeScaler(device=self.device.type) if self.amp_dtype == torch.float16 else None

        step_module: torch.nn.Module = TrainStep(self.model, self.method)
        if self.distributed and not args.fsdp:
            step_module = torch.nn.parallel.DistributedDataParallel(
                step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.method.has_unused_parameters)
        self.train_step = torch.compile(step_module, backend=args.torchcompile) if args.torchcompile else step_module

        self.step, self.start_epoch, self.best = 0, 0, None
        self.nonfinite_steps, self._nonfinite_run, self.next_epoch = 0, 0, 0
        self._stop_now, self._saved_state = False, None
        self.history: List[List[Any]] = []  # [source top-1 or None, epoch] of the kept checkpoint-<epoch>.pt
        self.images_trained, self.train_started = 0, None
        self.eval_skipped: Dict[str, int] = {}
        if args.resume:
            self.resume(args.resume)

    def weight_average(self) -> Optional[torch.nn.Module]:
        """BMA for methods that use it (unless disabled), timm's EMA when asked, else None (last weights)."""
        args = self.args
        if args.model_ema:
            return ModelEmaV3(self.model, decay=args.model_ema_decay)
        if self.method.default_bma and not args.no_bma and args.bma_beta > 0:
            return ModelBma(self.model, total_steps=self.total_steps, beta=args.bma_beta, exclude_buffers=True)
        return None

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.average.module if self.average is not None else self.model

    def defining_args(self) -> Dict[str, Any]:
        """What fixes the schedule, the weight average, the data order and the loss: stored in every checkpoint,
        and a resume must not change it (the LR schedule and BMA are planned over ``--steps``)."""
        a = self.args
        return {"--model": a.model, "--method": a.method, "--holdout": a.holdout, "--domains": list(self.sources),
                "--train-classes": a.train_classes, "--train-split": a.train_split, "--steps": self.total_steps,
                "--domain-balanced": self.domain_balanced, "--train-num-samples": a.train_num_samples,
                "--batch-size": a.batch_size, "processes": self.world_size, "--grad-accum-steps": a.grad_accum_steps,
                "--opt": a.opt, "--lr": a.lr, "--weight-decay": a.weight_decay, "--clip-grad": a.clip_grad,
                "--sched": a.sched, "--warmup-steps": a.warmup_steps, "--warmup-lr": a.warmup_lr,
                "--min-lr": a.min_lr, "--bma-beta": a.bma_beta, "--no-bma": a.no_bma, "--model-ema": a.model_ema,
                "--model-ema-decay": a.model_ema_decay, "--temperature": a.temperature,
                "--margin-lambda": a.margin_lambda, "--fixed-margin": a.fixed_margin, "--seed": a.seed,
                "--scale": list(a.scale), "--hflip": a.hflip, "--color-jitter": a.color_jitter,
                "--lp-steps": a.lp_steps, "--carft-lambda": a.carft_lambda, "--croft-lambda": a.croft_lambda,
                "--export-ema": a.export_ema, "--fsdp": a.fsdp,
                "--export-bma-betas": sorted(map(beta_key, a.export_bma_betas or ())) or None}  # a set: any order

    def check_resumable(self, path: str, stored: Optional[Dict[str, Any]]) -> None:
        if stored is None:
            _logger.warning("%s does not record its run's arguments (an older train.py): cannot check that this "
                            "resume uses the same ones", path)
            return
        changed = [f"{k} {stored[k]} -> {v}" for k, v in self.defining_args().items() if k in stored and stored[k] != v]
        if changed:
            raise ConfigError(
                f"cannot resume {path} with other arguments than its run's: {'; '.join(changed)}. The learning-rate "
                "schedule and the weight average are planned over the run's steps, and these define its batches and "
                "loss; resume with the run's values, or start a new run (another --experiment, or --overwrite).")

    def resume(self, path: str) -> None:
        state = load_checkpoint(Path(path))
        self.check_resumable(path, state.get("run_args"))
        if (state.get("shards") is not None) != self.args.fsdp:
            raise ConfigError(f"{path} was written {'with' if state.get('shards') else 'without'} --fsdp; resume "
                              "with the run's own flags")
        if self.args.fsdp:
            run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
            load_shards(run_dir / state["shards"], model=self.model, average=self.average, optimizer=self.optimizer)
        else:
            self.load_whole(path, state)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.best = state["step"], state.get("best")
        if self.wise_ft_alphas and self.best is not None:  # WiSE-FT will mix the export this best score selected
            self.refuse_an_export_that_is_wise_ft()
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.history = [list(h) for h in state.get("checkpoint_hist", [])]
        # "epoch" is the epoch to run next: the current one until its evaluation and export are done.
        self.start_epoch = int(state.get("epoch", self.step // self.updates_per_epoch))
        _logger.info("Resumed from %s at step %d (epoch %d)", path, self.step, self.start_epoch)

    def load_whole(self, path: str, state: Dict[str, Any]) -> None:
        """The model, average, EMA and optimizer of a checkpoint that holds them (not sharded)."""
        self.model.load_state_dict(state["model"])
        if (self.average is None) != (state["average"] is None):
            raise ConfigError(f"{path} was written {'with' if state['average'] is not None else 'without'} a weight "
                              "average; resume with the same --no-bma/--model-ema flags as the run")
        if self.average is not None:
            self.average.module.load_state_dict(state["average"])
        if self.extra_ema is not None:
            if state.get("ema") is None:
                raise ConfigError(f"{path} was written without --export-ema; resume with the run's own flags")
            self.extra_ema.module.load_state_dict(state["ema"])
        stored = state.get("bmas") or {}
        if set(stored) != set(map(beta_key, self.extra_bmas)):
            written = f"--export-bma-betas {' '.join(stored)}" if stored else "no --export-bma-betas"
            raise ConfigError(f"{path} was written with {written}; resume with the run's own flags")
        for beta, bma in self.extra_bmas.items():
            bma.module.load_state_dict(stored[beta_key(beta)])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self) -> None:
        """Checkpoint; a resume starts at ``self.next_epoch`` (the current epoch until it is evaluated).

        A state already saved (same step, epoch and best) is not written again."""
        state = (self.step, self.next_epoch, self.best)
        if state == self._saved_state:
            return
        shards = self.save_shards() if self.args.fsdp else None
        if self.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT_NAME, model=self.model, average=self.average, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.scaler, step=self.step, epoch=self.next_epoch,
                            extra={"best": self.best, "nonfinite_steps": self.nonfinite_steps,
                                   "run_args": self.defining_args(), "checkpoint_hist": self.history,
                                   "ema": self.extra_ema.module.state_dict() if self.extra_ema is not None else None,
                                   "bmas": {beta_key(b): bma.module.state_dict()
                                            for b, bma in self.extra_bmas.items()}},
                            shards=shards)
            for old in self.out_dir.glob(SHARDS_GLOB):  # only once the new checkpoint names its own shards
                if old.name != shards:
                    remove_subfolder(old)
        self._saved_state = state

    def save_shards(self) -> str:
        """--fsdp: every rank writes its shards into a folder named by the step (kept if already whole: the weights
        of a step are the same), which ``checkpoint.pt`` then names; returns the folder's name."""
        name = SHARDS_GLOB.replace("*", f"{self.step}-{self.next_epoch}")
        folder = self.out_dir / name
        if not (folder / ".metadata").is_file():
            if self.is_main:
                remove_subfolder(folder)  # half-written by a killed run
            torch.distributed.barrier()
            save_shards(folder, model=self.model, average=self.average, optimizer=self.optimizer)
        return name

    def write(self, what: str, write: Callable[[], None]) -> None:
        """Run ``write`` (rank 0); an OSError (disk full, permissions) becomes a clear error saying what is intact."""
        if not self.is_main:
            return
        try:
            write()
        except OSError as e:
            checkpoint = self.out_dir / CHECKPOINT_NAME
            intact = (f"the checkpoint {checkpoint} is intact: free space or fix the folder, then continue with "
                      f"--resume {self.out_dir}") if checkpoint.exists() else "free space or fix the folder and run again"
            raise CheckpointError(f"could not write {what} in {self.out_dir} ({e.strerror or e}); {intact}.") from e

    def interrupt(self) -> None:
        """Save the state after the last whole optimizer step and end the run with :class:`RunInterrupted`."""
        self.save()
        raise RunInterrupted(
            f"stopped by {self.stop.received or 'a signal'} after optimizer step {self.step} of {self.total_steps}; "
            f"checkpoint saved in {self.out_dir}. Continue with --resume {self.out_dir}")

    def stop_requested(self) -> bool:
        """Whether any rank got a stop signal (one all_reduce in DDP, so that every rank stops at the same step)."""
        stop = self.stop.received is not None
        if self.distributed:
            flag = torch.tensor(int(stop), device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag)
        return stop

    def batches(self) -> Iterator[Any]:
        """The training loader's batches. Loader workers get a terminal's Ctrl-C (and SLURM's SIGTERM) too and
        die; when a stop was asked for, that ends the run at the last whole step instead of in a traceback."""
        batches = iter(self.train_loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception:
                if self.stop.received is not None:
                    self.interrupt()
                raise
            yield batch

    def _finite_step(self, finite: torch.Tensor) -> bool:
        """Whether the step's loss (and gradients) were finite, the same answer on every rank (one host sync).

        The same all_reduce tells every rank whether any got a stop signal (``self._stop_now``)."""
        if self.distributed:
            flags = torch.stack([finite.to(torch.int32),
                                 torch.tensor(int(self.stop.received is None), dtype=torch.int32, device=finite.device)])
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
            finite, self._stop_now = flags[0].bool(), not bool(flags[1])
        else:
            self._stop_now = self.stop.received is not None
        if bool(finite):
            self._nonfinite_run = 0
            return True
        self.nonfinite_steps += 1
        self._nonfinite_run += 1
        if self.nonfinite_steps <= 5:
            _logger.warning("non-finite loss or gradient at step %d: step skipped (%d so far)", self.step + 1,
                            self.nonfinite_steps)
        if self._nonfinite_run >= MAX_NONFINITE_RUN:
            raise TrainingError(
                f"the loss or gradients were NaN/inf for {MAX_NONFINITE_RUN} consecutive steps (up to step "
                f"{self.step + 1}): the run diverged. Lower --lr, use --clip-grad, use --amp-dtype bfloat16 instead "
                f"of float16, or a larger --temperature; the last finite checkpoint is in {self.out_dir}.")
        return False

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        args = self.args
        reseed(args.seed, epoch, self.rank)
        self.next_epoch = epoch  # until its evaluation and export are done
        self.train_loader.set_epoch(epoch)
        self.train_step.train()
        replay = (self.step - epoch * self.updates_per_epoch) * args.grad_accum_steps  # batches done before a resume
        loss_sum = torch.zeros((), device=self.device)
        loss_count = 0
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        if replay >= self.updates_per_epoch * args.grad_accum_steps or self.step >= self.total_steps:
            return {"loss": float("nan")}  # resumed after this epoch's last step: only its evaluation is left
        if self.train_started is None:
            self.train_started = time.monotonic()
        for batch_idx, (images, target, _) in enumerate(self.batches()):
            if batch_idx < replay:
                continue
            if batch_idx >= self.updates_per_epoch * args.grad_accum_steps or self.step >= self.total_steps:
                break
            images = images.to(self.device, non_blocking=True)
            target = target.to(self.device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.method.step = self.step
            with autocast(self.device, self.amp_dtype):
                loss = self.train_step(images, target) / args.grad_accum_steps
            need_update = (batch_idx + 1) % args.grad_accum_steps == 0
            loss_finite = torch.isfinite(loss.detach())
            finite &= loss_finite
            if self.scaler is not None:  # GradScaler skips the optimizer step itself when a gradient is inf/nan
                self.scaler(loss, self.optimizer, clip_grad=args.clip_grad, parameters=self.model.parameters(),
                            need_update=need_update)
                if need_update:
                    self._finite_step(finite)
            else:
                loss.backward()
                if need_update:
                    grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                    if args.clip_grad:
                        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip_grad)
                    else:
                        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
                    if isinstance(norm, DTensor):  # FSDP: the norm of the whole gradient, summed over the shards
                        norm = norm.full_tensor()
                    if self._finite_step(finite & torch.isfinite(norm)):
                        self.optimizer.step()
            loss_sum += torch.where(loss_finite, loss.detach(), 0.0) * args.grad_accum_steps
            loss_count += 1
            self.images_trained += images.shape[0]
            if not need_update:
                continue
            finite = torch.ones((), dtype=torch.bool, device=self.device)
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.scheduler.step_update(num_updates=self.step)
            if self.average is not None:
                self.average.update(self.model, step=self.step)
            if self.extra_ema is not None:
                self.extra_ema.update(self.model, step=self.step)
            for bma in self.extra_bmas.values():
                bma.update(self.model, step=self.step)
            if self.step % args.log_interval == 0 or self.step == self.total_steps:
                # img/s over the whole run in this process (evaluations and saves included), not since the last line
                elapsed = time.monotonic() - self.train_started
                mean_loss = self.mean_over_ranks(loss_sum / loss_count)
                if self.is_main:
                    _logger.info("Train: %d [%d/%d (%.0f%%)]  Loss: %.4f  LR: %.3e  %.1f img/s", epoch, self.step,
                                 self.total_steps, 100.0 * self.step / self.total_steps, mean_loss,
                                 self.optimizer.param_groups[0]["lr"],
                                 self.images_trained * self.world_size / max(elapsed, 1e-9))
            if args.checkpoint_interval and self.step % args.checkpoint_interval == 0:
                self.save()
            if self._stop_now:
                self.interrupt()
        return {"loss": self.mean_over_ranks(loss_sum / max(loss_count, 1))}

    def mean_over_ranks(self, rank_loss: torch.Tensor) -> float:
        """The mean of every rank's mean loss (ranks train on equal batches, so this is the loss over all of them).

        A collective: every rank calls it at the same steps. With ``--log-level DEBUG`` each rank also logs its own."""
        _logger.debug("rank %d loss at step %d: %.6f", self.rank, self.step, rank_loss.item())
        if not self.distributed:
            return rank_loss.item()
        total = rank_loss.detach().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total.item() / self.world_size

    def loader(self, split: str, domains: Sequence[str], classes: Optional[Sequence[int]], relabel: bool = False):
        return _CountingLoader(self, create_loader(self.info, split, transform=self.eval_transform, batch_size=self.args.batch_size,
                             is_training=False, domains=domains, classes=classes, relabel_classes=relabel,
                             num_workers=self.args.workers, strict=self.args.strict_data, **data_limits(self.args)))

    def evaluate(self, model: Optional[torch.nn.Module] = None) -> Dict[str, float]:
        """Source-domain validation (model selection) and the held-out domain (reported, never selected on)."""
        model = self.eval_model if model is None else model
        common = dict(device=self.device, domain_names=self.info.domains, amp_dtype=self.amp_dtype,
                      channels_last=self.args.channels_last)
        metrics: Dict[str, float] = {}
        if self.args.val_split in self.info.splits:
            metrics["source_top1"] = self.evaluate_source(model)
        if self.args.holdout is not None:
            scored = self.info.eval_classes  # a dataset scored over a class subset (ImageNet-A/-R) is, here too
            target = evaluate(model, self.loader(self.args.eval_split, [self.args.holdout], scored, scored is not None),
                              base_classes=self.info.base_classes if scored is None else None,
                              new_classes=self.info.new_classes if scored is None else None,
                              logit_columns=scored, **common)
            per_domain = {f"top1_{d}" for d in self.info.domains}
            metrics.update({f"target_{k}": v for k, v in target.items() if k not in per_domain})
        return metrics

    def export(self, metrics: Dict[str, float], model: Optional[torch.nn.Module] = None,
               out_dir: Optional[Path] = None, weights: Optional[str] = None,
               wise_ft: Optional[Dict[str, Any]] = None, bma_beta: Optional[float] = None) -> None:
        """``save_pretrained`` of ``model`` (default: the evaluated one) into ``out_dir`` (default: the run folder; a
        symlink planted where a sub-folder export goes is removed, never written through).

        ``weights`` names what is exported when it is not the run's evaluated model (``last``, ``ModelEmaV3 (decay
        d)``, or ``ModelBma`` with ``bma_beta`` its beta); ``wise_ft`` records the chosen alpha and the validation
        score of each alpha. Every rank calls it (with --fsdp the weights are gathered, which takes them all); rank 0
        writes.
        """
        args = self.args
        method = self.method.describe()
        recipe = {**method, "lr": args.lr, "steps": self.total_steps, "batch_size": args.batch_size * self.world_size,
                  "opt": args.opt, "weight_decay": args.weight_decay, "sched": args.sched,
                  "warmup_steps": args.warmup_steps, "weight_average": type(self.average).__name__ if self.average is not None else "last",
                  "bma_beta": args.bma_beta if isinstance(self.average, ModelBma) else None,
                  "seed": args.seed}
        if weights is not None:
            recipe.update(weight_average=weights, bma_beta=bma_beta)
        if wise_ft is not None:
            recipe["wise_ft"] = wise_ft
        model = self.eval_model if model is None else model
        if out_dir is not None and self.is_main and out_dir.is_symlink():  # a planted link is replaced, never written through
            remove_subfolder(out_dir)
        model.pretrained_cfg = {**self.model.pretrained_cfg, "recipe": recipe, "heldout_domain": args.holdout,
                                "dataset": self.info.name}
        sections = {
            "Training": f"```\n{args.command_line}\n```\nData: `{args.data_dir}` ({self.info.name}); source domains "
                        f"{', '.join(self.sources)}; held-out {args.holdout}; classes {args.train_classes}.\n"
                        + (f"Selected at step {self.step} by source-domain validation accuracy." if "source_top1" in metrics
                           else f"The weights at step {self.step} (no validation split to select on).")
                        + (f" WiSE-FT alpha {wise_ft['alpha']} (of {wise_ft['scores']}, source val top-1)."
                           if wise_ft and "scores" in wise_ft else
                           f" WiSE-FT at the fixed alpha {wise_ft['alpha']} (not chosen on validation)." if wise_ft
                           else "") + (f" Exported weights: {weights}." if weights else ""),
            "Results": "\n".join(f"- {k}: {v}" for k, v in metrics.items()),
        }
        whole = full_state_dict(model)  # FSDP: gathered on rank 0 (every rank takes part); else None
        self.write("the exported model", lambda: clipood_zoo.save_pretrained(
            model, out_dir or self.out_dir, model_name=args.export_name or args.model, card_sections=sections,
            extra_config={"train_results": metrics, "step": self.step}, state_dict=whole))

    def write_summary(self, epoch: int, train_metrics: Dict[str, float], metrics: Dict[str, float]) -> None:
        """summary.csv with one row per evaluated epoch: a resumed run replaces the rows from ``epoch`` on."""
        path = self.out_dir / SUMMARY_NAME
        rows: List[Dict[str, Any]] = []
        if path.is_file() and not path.is_symlink():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if str(r.get("epoch", "")).isdigit() and int(r["epoch"]) < epoch]
        rows.append({"epoch": epoch, **{f"train_{k}": v for k, v in train_metrics.items()},
                     **{f"eval_{k}": v for k, v in metrics.items()}, "lr": self.optimizer.param_groups[0]["lr"]})
        self.write(SUMMARY_NAME, lambda: write_text_atomic(path, format_results(rows, "csv")))

    def keep_history(self, epoch: int, score: Optional[float]) -> None:
        """timm's --checkpoint-hist: the checkpoint evaluated at ``epoch`` kept as checkpoint-<epoch>.pt (a hard
        link where the file system allows, not a copy), and only the best N of them (source top-1, then latest)."""
        name = f"checkpoint-{epoch}.pt"
        self.write(name, lambda: link_or_copy(self.out_dir / CHECKPOINT_NAME, self.out_dir / name))
        self.history = [h for h in self.history if h[1] != epoch] + [[score, epoch]]
        self.history.sort(key=lambda h: (-math.inf if h[0] is None else h[0], h[1]), reverse=True)
        for _, dropped in self.history[self.args.checkpoint_hist:]:
            (self.out_dir / f"checkpoint-{dropped}.pt").unlink(missing_ok=True)
        del self.history[self.args.checkpoint_hist:]

    def check_planned_steps(self, epoch: int) -> None:
        """An epoch that ended before its planned optimizer steps stops the run before anything is exported."""
        planned = min(self.total_steps, (epoch + 1) * self.updates_per_epoch)
        if self.step != planned:
            raise TrainingError(
                f"epoch {epoch} ended at optimizer step {self.step} but step {planned} was planned "
                f"({self.updates_per_epoch} per epoch, {self.total_steps} in all): the training data ran out. "
                f"Nothing was exported from this epoch; see the skipped-sample warnings above.")

    def run(self) -> Dict[str, Any]:
        args = self.args
        self.write("args.json", lambda: write_text_atomic(self.out_dir / "args.json",
                                                          json.dumps(vars(args), indent=2, default=str) + "\n"))
        _logger.info("%s on %s: %d source domain(s) %s, held-out %s, %d classes, %d steps (%d per epoch), device %s%s",
                     args.method, args.model, len(self.sources), self.sources, args.holdout, len(self.train_classes),
                     self.total_steps, self.updates_per_epoch, self.device,
                     f", {self.world_size} processes" if self.distributed else "")
        metrics: Dict[str, float] = {}
        for epoch in range(self.start_epoch, self.epochs):
            train_metrics = self.train_epoch(epoch)
            self.check_planned_steps(epoch)
            last = self.step >= self.total_steps
            if (epoch + 1) % args.eval_interval == 0 or last:
                self.save()  # the epoch's training is safe before the export can fail; a resume redoes the evaluation
                metrics = self.evaluate()
                _logger.info("Eval %d (step %d): %s", epoch, self.step, metrics)
                score = metrics.get("source_top1")  # without a validation split: export the latest
                if score is None or self.best is None or score >= self.best:
                    self.best = score
                    self.export(metrics)
                    if self.wise_ft_alphas:
                        self.selected_state = cpu_state(self.eval_model)
                if last:
                    self.export_extra_weights()
                if self.is_main:
                    self.write_summary(epoch, train_metrics, metrics)
                    if args.checkpoint_hist:
                        self.keep_history(epoch, score)
            self.next_epoch = epoch + 1
            self.save()
            if self.stop_requested():
                self.interrupt()
            if last:
                break
        self.check_planned_steps(self.epochs - 1)
        if self.wise_ft_alphas:
            wise_ft_metrics = self.apply_wise_ft(self.out_dir / WISE_FT_DIR if args.export_wise_ft else None)
            if args.export_wise_ft_fixed is not None:
                self.export_fixed_wise_ft(args.export_wise_ft_fixed)
            if not args.export_wise_ft:  # WiSE-FT is then the run's model and result
                metrics = wise_ft_metrics
        skipped = self.train_loader.skipped
        if skipped.total:
            _logger.warning("Skipped %d bad training samples: %s", skipped.total, skipped.as_dict())
        eval_skipped = sum(self.eval_skipped.values())
        if eval_skipped:
            _logger.warning("Skipped %d bad evaluation samples: %s", eval_skipped,
                            {k: v for k, v in self.eval_skipped.items() if v})
        if self.nonfinite_steps:
            _logger.warning("Skipped %d of %d optimizer steps for a NaN/inf loss or gradient", self.nonfinite_steps,
                            self.total_steps)
        digest = weights_digest(self.eval_model)[:16]
        digests = [digest] * self.world_size
        if self.distributed:
            torch.distributed.all_gather_object(digests, digest)
        if self.is_main:
            _logger.info("final weights digest per rank: %s", " ".join(digests))
            if len(set(digests)) > 1:
                _logger.warning("the ranks ended with different weights (digests %s): rank 0's are exported", digests)
        result = {"step": self.step, **({"best_source_top1": self.best} if self.best is not None else {}),
                  "output": str(self.out_dir), "skipped_train": skipped.total, "skipped_eval": eval_skipped,
                  "nonfinite_steps": self.nonfinite_steps, **metrics}
        self.write(RESULT_NAME, lambda: write_text_atomic(self.out_dir / RESULT_NAME,
                                                          json.dumps(result, indent=2, default=str) + "\n"))
        if self.is_main and not args.keep_checkpoint:  # finished: the export is the run's product
            (self.out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
            for shards in self.out_dir.glob(SHARDS_GLOB):
                remove_subfolder(shards)
        return result


    @contextlib.contextmanager
    def samples_already_counted(self):
        """Evaluations of further weights read the same evaluation samples again: their bad ones are counted once."""
        counted = dict(self.eval_skipped)
        try:
            yield
        finally:
            self.eval_skipped = counted

    def export_extra_weights(self) -> None:
        """Last weights (when the run exports an average), the --export-ema EMA and the --export-bma-betas averages,
        each evaluated and exported into its own sub-folder: the study compares last, EMA and averaged weights, and
        BMA's betas, on one run."""
        extra = [(LAST_DIR, self.model, LAST_DIR, None)] if self.average is not None else []
        if self.extra_ema is not None:
            extra.append((EMA_DIR, self.extra_ema.module, f"ModelEmaV3 (decay {self.args.export_ema})", None))
        extra += [(bma_dir(beta), bma.module, "ModelBma", beta) for beta, bma in self.extra_bmas.items()]
        for folder, model, weights, beta in extra:
            with self.samples_already_counted():
                metrics = self.evaluate(model)
            self.export(metrics, model=model, out_dir=self.out_dir / folder, weights=weights, bma_beta=beta)

    def refuse_an_export_that_is_wise_ft(self) -> None:
        """A resumed run's export that already is its WiSE-FT (written in its place, without --export-wise-ft) is
        refused before anything is trained or written: mixing it again would be WiSE-FT of WiSE-FT. Only the config
        is read: an export the kill left half-written is redone by the resumed evaluation, not read here."""
        config_file = self.out_dir / "config.json"
        try:
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return  # not readable: no export to protect; the resumed evaluation writes a whole one
        if "wise_ft" in config.get("pretrained_cfg", {}).get("recipe", {}):
            raise ConfigError(f"{self.out_dir} already holds this run's WiSE-FT in place of its fine-tune: the run "
                              "is finished and its export is final; there is nothing to resume")

    def read_export(self) -> Dict[str, torch.Tensor]:
        """The weights of the run's own export, read back through the zoo's loader (sha256 checked): the selected
        model of a run resumed after its last export. Read only once training is over, so that an export a kill
        left half-written (weights new, config.json old) has been redone by the resumed evaluation first."""
        model = copy.deepcopy(self.eval_model)
        try:
            clipood_zoo.load_weights(model, self.out_dir)
        except WeightsError as e:
            raise CheckpointError(
                f"the run's selected export in {self.out_dir} cannot be read back to mix WiSE-FT. If the run was "
                "killed while it wrote its WiSE-FT in place of that export (--method wise_ft), the fine-tune is lost: "
                "start it again (--overwrite), with --export-wise-ft to keep the fine-tune beside its WiSE-FT. "
                f"({e})") from None
        return cpu_state(model)

    def apply_wise_ft(self, out_dir: Optional[Path] = None) -> Dict[str, float]:
        """Interpolate the run's exported weights (the evaluation source val selected, averaged where the method
        averages) with the zero-shot ones at each alpha, evaluate each on the source domains' val split only, and
        export the best (ties: the larger alpha) in place of the run's model, or into ``out_dir`` (--export-wise-ft).

        The exported weights, not the last ones: a WiSE-FT model is then ``(1 - alpha) zero-shot + alpha`` the
        fine-tune that run ships, so it can be rebuilt from the two shipped files and its alpha."""
        finetuned = self.selected_model()
        scores: Dict[float, float] = {}
        best: Optional[torch.nn.Module] = None
        for alpha in sorted(set(self.wise_ft_alphas)):
            candidate = wise_ft(finetuned, self.zeroshot_state, alpha)
            with self.samples_already_counted():
                scores[alpha] = self.evaluate_source(candidate)
            _logger.info("WiSE-FT alpha %.3g: source val top-1 %.3f", alpha, scores[alpha])
            if best is None or scores[alpha] >= max(scores.values()):
                best, best_alpha = candidate, alpha
        with self.samples_already_counted():
            metrics = {**self.evaluate(best), "wise_ft_alpha": best_alpha}
        self.export(metrics, model=best, out_dir=out_dir, wise_ft={"alpha": best_alpha, "scores": scores})
        return metrics

    def selected_model(self) -> torch.nn.Module:
        """A copy of the run's model holding its exported (selected) weights: what WiSE-FT mixes."""
        if self.selected_state is None:  # resumed after the selected export: it is read back from the run folder
            self.selected_state = self.read_export()
        model = copy.deepcopy(self.eval_model)
        model.load_state_dict(self.selected_state)
        return model

    def export_fixed_wise_ft(self, alpha: float) -> None:
        """WiSE-FT at a fixed ``alpha`` (no validation chooses it), evaluated and exported into ``wise_ft_fixed/``:
        beside the chosen alpha, which source validation may push to 1, the WiSE-FT paper's fixed alpha."""
        mixed = wise_ft(self.selected_model(), self.zeroshot_state, alpha)
        with self.samples_already_counted():
            metrics = {**self.evaluate(mixed), "wise_ft_alpha": alpha}
        self.export(metrics, model=mixed, out_dir=self.out_dir / WISE_FT_FIXED_DIR, wise_ft={"alpha": alpha})

    def evaluate_source(self, model: torch.nn.Module) -> float:
        """Top-1 of ``model`` on the source domains' val split (what the export and WiSE-FT's alpha are chosen on),
        over the training classes' head rows, as training scores them (validate.py --classes base for a base run):
        selection never involves the new classes' names either."""
        return evaluate(model, self.loader(self.args.val_split, self.sources, self.train_classes, relabel=True),
                        device=self.device, domain_names=self.info.domains, amp_dtype=self.amp_dtype,
                        channels_last=self.args.channels_last, logit_columns=self.train_classes)["top1"]


class _CountingLoader:
    """An evaluation loader whose skipped samples are added to the run's count once it has been read."""

    def __init__(self, run: Run, loader: Any):
        self.run, self.loader = run, loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        yield from self.loader
        for reason, n in self.loader.skipped.as_dict().items():
            self.run.eval_skipped[reason] = self.run.eval_skipped.get(reason, 0) + n


def setup_logging(level: str) -> None:
    """Rank 0 logs the run (every line once); the other ranks log only their own warnings, tagged with the rank,
    unless ``level`` is DEBUG. The rank is read from torchrun's global ``RANK``, before the process group exists."""
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    threshold = getattr(logging, level)
    if rank != 0 and threshold > logging.DEBUG:
        threshold = max(threshold, logging.WARNING)
    tag = f" [rank {rank}]" if world_size > 1 else ""
    logging.basicConfig(level=threshold, format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)])
    setup_logging(args.log_level)
    try:
        check_args(args)
        if args.model_config:
            open_clip.add_model_config(args.model_config)
        info = read_dataset_info(args.data_dir)  # a dataset that cannot be used is refused before a folder is made
        with claim_run_folder(args) as out_dir, StopSignals() as stop:
            result = Run(args, info, out_dir, stop).run()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank leaves together: a rank that tears its process group down while a peer is still writing the
            # result can abort in gloo's teardown ("terminate called without an active exception")
            torch.distributed.barrier()
    except RunInterrupted as e:
        parser.exit(EXIT_INTERRUPTED, f"train.py: {e}\n")
    except ClipoodError as e:
        parser.exit(2, f"train.py: error: {e}\n")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
