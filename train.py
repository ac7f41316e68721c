#!/usr/bin/env python3
"""Fine-tune a CLIP image encoder out of distribution (CLIPood, ERM) on WebDataset shards.

Leave-one-domain-out, as DomainBed and the CLIPood paper run it:

    python train.py --model clip_vitt_emoji --pretrained --data-dir data/emojidg --holdout 3d \
        --train-classes base --method clipood --steps 500 --lr 1e-4 --output output/

trains on the other domains' ``train`` split (base classes only with ``--train-classes base``), picks
the evaluation with the best accuracy on the source domains' ``val`` split, and exports that model
(the BMA weights for CLIPood) with ``save_pretrained`` into the run's output folder, so that
``create_model(name, checkpoint_path=<run folder>)`` and ``validate.py --checkpoint`` load it.
Multi-process: ``torchrun --nproc_per_node N train.py ...`` (NCCL on GPU, gloo on CPU).
The flags follow timm's train.py where they mean the same thing.

Faults, and what the run does about them:

- Bad samples (image that does not decode, missing/out-of-range label, unknown domain, truncated shard)
  are skipped with a warning and counted; the final log and the printed result give the counts for
  training and evaluation (``skipped_train``/``skipped_eval``). ``--strict-data`` stops at the first one.
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
  uninterrupted run, including an evaluation/export that the kill interrupted. A checkpoint that cannot
  be written (disk full) stops the run with a :class:`CheckpointError`; the previous checkpoint is intact.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import open_clip
import torch
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, update_summary
from timm.utils.distributed import init_distributed_device_so

import clipood_zoo
from clipood_zoo import ClipoodError, ConfigError, ModelBma
from clipood_zoo.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from clipood_zoo.data import DatasetInfo, create_loader, read_dataset_info
from clipood_zoo.cli_utils import AMP_DTYPES, default_device, model_for_dataset
from clipood_zoo.errors import TrainingError
from clipood_zoo.evaluate import autocast, evaluate
from clipood_zoo.methods import METHODS, TrainStep, create_method
from clipood_zoo.weight_space import wise_ft

_logger = logging.getLogger("train")
LAST_DIR = "last"  # sub-folder of a run with a weight average that holds the run's last weights
EMA_DIR = "ema"  # sub-folder holding the --export-ema weights
MAX_NONFINITE_RUN = 10  # consecutive skipped steps after which a run is taken to have diverged


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="a clipood_zoo name (list_models()) or an open_clip architecture")
    g.add_argument("--pretrained", action="store_true", help="start from the registered weights of --model")
    g.add_argument("--checkpoint", "--initial-checkpoint", dest="checkpoint", default=None,
                   help="start from these weights (a safetensors file or a save_pretrained folder)")
    g.add_argument("--clip-pretrained", default=None, help="start from open_clip's CLIP weights with this tag, e.g. openai")
    g.add_argument("--model-config", default=None,
                   help="an open_clip model config JSON (or a folder of them) to register before --model is built")
    g.add_argument("--export-name", default=None, help="registry name written into the exported config (default: --model)")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", required=True, help="folder with _info.json and the shards")
    g.add_argument("--holdout", default=None, help="held-out (target) domain; the other domains are trained on")
    g.add_argument("--domains", nargs="+", default=None, help="source domains (default: all but --holdout)")
    g.add_argument("--train-classes", choices=("all", "base"), default="all", help="'base': CoOp-style base classes only")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val", help="split of the source domains used for model selection")
    g.add_argument("--eval-split", default="val", help="split of the held-out domain that is reported")
    g.add_argument("--workers", "-j", type=int, default=2)
    g.add_argument("--strict-data", action="store_true", help="stop at the first bad sample instead of skipping it")
    g = p.add_argument_group("method")
    g.add_argument("--method", default="clipood", help=f"one of {sorted(METHODS)}")
    g.add_argument("--temperature", type=float, default=None, help="tau (default: 1 / the model's logit scale)")
    g.add_argument("--margin-lambda", type=float, default=0.3)
    g.add_argument("--fixed-margin", action="store_true", help="ablation: the same margin for every wrong class")
    g.add_argument("--bma-beta", type=float, default=0.5, help="Beta(beta, beta) weights; 0 disables BMA")
    g.add_argument("--no-bma", action="store_true", help="evaluate and export the last weights")
    g.add_argument("--model-ema", action="store_true", help="timm's ModelEmaV3 instead of BMA (the paper's ablation)")
    g.add_argument("--model-ema-decay", type=float, default=0.999)
    g.add_argument("--export-ema", type=float, default=None, metavar="DECAY",
                   help="also keep timm's EMA with this decay beside the run's own average and export it to <run>/ema/ "
                        "(one run then gives last, EMA and BMA weights)")
    g.add_argument("--wise-ft-alphas", type=float, nargs="+", default=None,
                   help="WiSE-FT: after training, interpolate with the zero-shot weights at each alpha, keep the best "
                        "on the source domains' val split (default for --method wise_ft: 0 0.25 0.5 0.75 1)")
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
    g.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--output", default="output/train", help="parent folder of the run folder")
    g.add_argument("--experiment", default=None, help="run folder name (default: model-method-holdout)")
    g.add_argument("--resume", default=None, help="checkpoint.pt (or its run folder) of a run to continue")
    g.add_argument("--log-interval", type=int, default=50, help="optimizer steps between log lines")
    g.add_argument("--eval-interval", type=int, default=1, help="epochs between evaluations (the last always runs)")
    g.add_argument("--checkpoint-interval", type=int, default=None, help="steps between checkpoints (default: each epoch)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad arguments before any model or data is touched."""
    positive = {"--batch-size": args.batch_size, "--grad-accum-steps": args.grad_accum_steps, "--lr": args.lr,
                "--log-interval": args.log_interval, "--eval-interval": args.eval_interval}
    positive.update({k: v for k, v in (("--steps", args.steps), ("--epochs", args.epochs),
                                       ("--checkpoint-interval", args.checkpoint_interval)) if v is not None})
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
    if args.export_ema is not None and not 0.0 <= args.export_ema < 1.0:
        raise ConfigError(f"--export-ema is an EMA decay in [0, 1), got {args.export_ema}")
    if args.export_ema is not None and args.model_ema:
        raise ConfigError("--export-ema keeps an EMA beside the run's average, but --model-ema already makes the EMA "
                          "the run's average; drop one of them")
    for alpha in args.wise_ft_alphas or ():
        if not 0.0 <= alpha <= 1.0:  # also refuses nan
            raise ConfigError(f"--wise-ft-alphas must lie in [0, 1] (0: zero-shot, 1: fine-tuned), got {alpha}")


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


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class Run:
    """Everything one training run holds, so the loop reads as timm's does."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        device_name = args.device or default_device()
        dist = init_distributed_device_so(device=device_name)
        self.device = torch.device(dist["device"])
        self.rank, self.world_size, self.distributed = dist["global_rank"], dist["world_size"], dist["distributed"]
        self.is_main = self.rank == 0
        reseed(args.seed, 0, rank=0)  # the same initial weights (and BMA theta_0) on every rank

        self.info = read_dataset_info(args.data_dir)
        self.sources = source_domains(args, self.info)
        self.train_classes = self.info.class_subset(args.train_classes)
        self.model = model_for_dataset(args.model, self.info, args.pretrained, args.checkpoint,
                                       args.clip_pretrained).to(self.device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = create_method(args.method, temperature=args.temperature, margin_lambda=args.margin_lambda,
                                    adaptive_margin=not args.fixed_margin, lp_steps=args.lp_steps,
                                    carft_lambda=args.carft_lambda, croft_lambda=args.croft_lambda)
        self.method.prepare(self.model)
        self.wise_ft_alphas = args.wise_ft_alphas or self.method.default_wise_ft_alphas
        if self.wise_ft_alphas and args.val_split not in self.info.splits:
            raise ConfigError(f"WiSE-FT chooses alpha on the source domains' {args.val_split!r} split, which "
                              f"{self.info.path} does not have; pass --val-split or drop --wise-ft-alphas")
        self.zeroshot_state = ({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                               if self.wise_ft_alphas else None)
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
        self.train_loader = create_loader(
            args.data_dir, args.train_split, transform=train_transform, batch_size=args.batch_size, is_training=True,
            domains=self.sources, classes=self.train_classes, num_workers=args.workers, seed=args.seed,
            resampled=True, strict=args.strict_data, pin_memory=self.device.type == "cuda")
        self.batches_per_epoch = len(self.train_loader)
        self.updates_per_epoch = max(1, self.batches_per_epoch // args.grad_accum_steps)
        self.total_steps = args.steps or (args.epochs or 1) * self.updates_per_epoch
        self.epochs = math.ceil(self.total_steps / self.updates_per_epoch)

        self.optimizer = create_optimizer_v2(self.model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=args.sched, num_epochs=self.total_steps, updates_per_epoch=1, step_on_epochs=False,
            warmup_epochs=args.warmup_steps, warmup_lr=args.warmup_lr, min_lr=args.min_lr)
        self.average = self.weight_average()
        self.extra_ema = ModelEmaV3(self.model, decay=args.export_ema) if args.export_ema is not None else None
        self.amp_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
        self.scaler = NativeScaler(device=self.device.type) if self.amp_dtype == torch.float16 else None

        step_module: torch.nn.Module = TrainStep(self.model, self.method)
        if self.distributed:
            step_module = torch.nn.parallel.DistributedDataParallel(
                step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.method.has_unused_parameters)
        self.train_step = torch.compile(step_module, backend=args.torchcompile) if args.torchcompile else step_module

        name = args.experiment or "-".join(str(x) for x in (args.model, args.method, args.holdout or "all") if x)
        self.out_dir = Path(args.output) / name
        self.step, self.start_epoch, self.best = 0, 0, None
        self.nonfinite_steps, self._nonfinite_run, self.next_epoch = 0, 0, 0
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

    def resume(self, path: str) -> None:
        state = load_checkpoint(Path(path))
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
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.best = state["step"], state.get("best")
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        # "epoch" is the epoch to run next: the current one until its evaluation and export are done.
        self.start_epoch = int(state.get("epoch", self.step // self.updates_per_epoch))
        _logger.info("Resumed from %s at step %d (epoch %d)", path, self.step, self.start_epoch)

    def save(self) -> None:
        """Checkpoint; a resume starts at ``self.next_epoch`` (the current epoch until it is evaluated)."""
        if self.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT_NAME, model=self.model, average=self.average, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.scaler, step=self.step, epoch=self.next_epoch,
                            extra={"best": self.best, "nonfinite_steps": self.nonfinite_steps,
                                   "ema": self.extra_ema.module.state_dict() if self.extra_ema is not None else None})

    def _finite_step(self, finite: torch.Tensor) -> bool:
        """Whether the step's loss (and gradients) were finite, the same answer on every rank (one host sync)."""
        if self.distributed:
            flag = finite.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = flag.bool()
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
        loss_count, last_log, images_seen = 0, time.time(), 0
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        if replay >= self.updates_per_epoch * args.grad_accum_steps or self.step >= self.total_steps:
            return {"loss": float("nan")}  # resumed after this epoch's last step: only its evaluation is left
        for batch_idx, (images, target, _) in enumerate(self.train_loader):
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
                    if self._finite_step(finite & torch.isfinite(norm)):
                        self.optimizer.step()
            loss_sum += torch.where(loss_finite, loss.detach(), 0.0) * args.grad_accum_steps
            loss_count += 1
            images_seen += images.shape[0]
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
            if self.step % args.log_interval == 0 or self.step == self.total_steps:
                elapsed = time.time() - last_log
                _logger.info("Train: %d [%d/%d (%.0f%%)]  Loss: %.4f  LR: %.3e  %.1f img/s", epoch, self.step,
                             self.total_steps, 100.0 * self.step / self.total_steps, (loss_sum / loss_count).item(),
                             self.optimizer.param_groups[0]["lr"], images_seen * self.world_size / max(elapsed, 1e-9))
                last_log, images_seen = time.time(), 0
            if args.checkpoint_interval and self.step % args.checkpoint_interval == 0:
                self.save()
        return {"loss": (loss_sum / max(loss_count, 1)).item()}

    def loader(self, split: str, domains: Sequence[str], classes: Optional[Sequence[int]]):
        return _CountingLoader(self, create_loader(self.args.data_dir, split, transform=self.eval_transform, batch_size=self.args.batch_size,
                             is_training=False, domains=domains, classes=classes, num_workers=self.args.workers,
                             strict=self.args.strict_data))

    def evaluate(self, model: Optional[torch.nn.Module] = None) -> Dict[str, float]:
        """Source-domain validation (model selection) and the held-out domain (reported, never selected on)."""
        model = self.eval_model if model is None else model
        common = dict(device=self.device, domain_names=self.info.domains, amp_dtype=self.amp_dtype,
                      channels_last=self.args.channels_last)
        metrics: Dict[str, float] = {}
        if self.args.val_split in self.info.splits:
            metrics["source_top1"] = self.evaluate_source(model)
        if self.args.holdout is not None:
            target = evaluate(model, self.loader(self.args.eval_split, [self.args.holdout], None),
                              base_classes=self.info.base_classes, new_classes=self.info.new_classes, **common)
            per_domain = {f"top1_{d}" for d in self.info.domains}
            metrics.update({f"target_{k}": v for k, v in target.items() if k not in per_domain})
        return metrics

    def export(self, metrics: Dict[str, float], model: Optional[torch.nn.Module] = None,
               out_dir: Optional[Path] = None, weights: Optional[str] = None,
               wise_ft: Optional[Dict[str, Any]] = None) -> None:
        """``save_pretrained`` of ``model`` (default: the evaluated one) into ``out_dir`` (default: the run folder).

        ``weights`` names what is exported when it is not the run's evaluated model ('last'); ``wise_ft``
        records the chosen alpha and the validation score of each alpha.
        """
        args = self.args
        method = self.method.describe()
        recipe = {**method, "lr": args.lr, "steps": self.total_steps, "batch_size": args.batch_size * self.world_size,
                  "opt": args.opt, "weight_decay": args.weight_decay, "sched": args.sched,
                  "warmup_steps": args.warmup_steps, "weight_average": type(self.average).__name__ if self.average is not None else "last",
                  "bma_beta": args.bma_beta if isinstance(self.average, ModelBma) else None,
                  "seed": args.seed}
        if weights is not None:
            recipe.update(weight_average=weights, bma_beta=None)
        if wise_ft is not None:
            recipe["wise_ft"] = wise_ft
        model = self.eval_model if model is None else model
        model.pretrained_cfg = {**self.model.pretrained_cfg, "recipe": recipe, "heldout_domain": args.holdout,
                                "dataset": self.info.name}
        sections = {
            "Training": f"```\n{args.command_line}\n```\nData: `{args.data_dir}` ({self.info.name}); source domains "
                        f"{', '.join(self.sources)}; held-out {args.holdout}; classes {args.train_classes}.\n"
                        f"Selected at step {self.step} by source-domain validation accuracy."
                        + (f" WiSE-FT alpha {wise_ft['alpha']} (of {wise_ft['scores']}, source val top-1)."
                           if wise_ft else "") + (f" Exported weights: {weights}." if weights else ""),
            "Results": "\n".join(f"- {k}: {v}" for k, v in metrics.items()),
        }
        clipood_zoo.save_pretrained(model, out_dir or self.out_dir, model_name=args.export_name or args.model,
                                    card_sections=sections, extra_config={"train_results": metrics, "step": self.step})

    def run(self) -> Dict[str, Any]:
        args = self.args
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "args.json").write_text(json.dumps(vars(args), indent=2, default=str) + "\n")
        _logger.info("%s on %s: %d source domain(s) %s, held-out %s, %d classes, %d steps (%d per epoch), device %s%s",
                     args.method, args.model, len(self.sources), self.sources, args.holdout, len(self.train_classes),
                     self.total_steps, self.updates_per_epoch, self.device,
                     f", {self.world_size} processes" if self.distributed else "")
        metrics: Dict[str, float] = {}
        for epoch in range(self.start_epoch, self.epochs):
            train_metrics = self.train_epoch(epoch)
            last = self.step >= self.total_steps
            if (epoch + 1) % args.eval_interval == 0 or last:
                metrics = self.evaluate()
                _logger.info("Eval %d (step %d): %s", epoch, self.step, metrics)
                score = metrics.get("source_top1", self.step)  # without a validation split: the latest
                if self.best is None or score >= self.best:
                    self.best = score
                    if self.is_main:
                        self.export(metrics)
                if last:
                    self.export_extra_weights()
                if self.is_main:
                    update_summary(epoch, train_metrics, metrics, self.out_dir / "summary.csv",
                                   lr=self.optimizer.param_groups[0]["lr"], write_header=epoch == 0)
            self.next_epoch = epoch + 1
            self.save()
            if last:
                break
        if self.wise_ft_alphas:
            metrics = self.apply_wise_ft()
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
        _logger.info("rank %d final weights digest %s", self.rank, weights_digest(self.eval_model))
        return {"step": self.step, "best_source_top1": self.best, "output": str(self.out_dir),
                "skipped_train": skipped.total, "skipped_eval": eval_skipped, "nonfinite_steps": self.nonfinite_steps,
                **metrics}


    @contextlib.contextmanager
    def samples_already_counted(self):
        """Evaluations of further weights read the same evaluation samples again: their bad ones are counted once."""
        counted = dict(self.eval_skipped)
        try:
            yield
        finally:
            self.eval_skipped = counted

    def export_extra_weights(self) -> None:
        """Last weights (when the run exports an average) and the --export-ema EMA, each evaluated and exported into
        its own sub-folder: the study compares last, EMA and averaged weights of one run."""
        extra = [(LAST_DIR, self.model)] if self.average is not None else []
        if self.extra_ema is not None:
            extra.append((EMA_DIR, self.extra_ema.module))
        for label, model in extra:
            with self.samples_already_counted():
                metrics = self.evaluate(model)
            if self.is_main:
                self.export(metrics, model=model, out_dir=self.out_dir / label,
                            weights=label if label == LAST_DIR else f"ModelEmaV3 (decay {self.args.export_ema})")

    def apply_wise_ft(self) -> Dict[str, float]:
        """Interpolate the final (averaged) weights with the zero-shot ones at each alpha, evaluate each on the source
        domains' val split only, and export the best (ties: the larger alpha) in place of the run's model."""
        finetuned = self.eval_model
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
        if self.is_main:
            self.export(metrics, model=best, wise_ft={"alpha": best_alpha, "scores": scores})
        return metrics

    def evaluate_source(self, model: torch.nn.Module) -> float:
        """Top-1 of ``model`` on the source domains' val split (what WiSE-FT's alpha is chosen on)."""
        return evaluate(model, self.loader(self.args.val_split, self.sources, self.train_classes), device=self.device,
                        domain_names=self.info.domains, amp_dtype=self.amp_dtype,
                        channels_last=self.args.channels_last)["top1"]


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


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_args(args)
        if args.model_config:
            open_clip.add_model_config(args.model_config)
        result = Run(args).run()
    except ClipoodError as e:
        parser.exit(2, f"train.py: error: {e}\n")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
