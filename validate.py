#!/usr/bin/env python3
"""Evaluate zoo models on WebDataset shards: top-1/5, per-domain top-1, and base/new/harmonic mean.

    python validate.py --model 'clipood_vitt_emojidg_*' --pretrained --data-dir datasets/emojidg-mini

One row per model, with timm's result fields (model, top1, top1_err, top5, top5_err, param_count,
img_size, crop_pct, interpolation) plus ``top1_<domain>`` for every domain and, where the dataset
defines base/new classes, ``base_top1``/``new_top1``/``hm`` (each subset scored with the classifier
restricted to its own classes, as CoCoOp reports base-to-new). A dataset whose ``_info.json`` declares
``eval_classes`` (ImageNet-A and -R: 200 of the 1000 classes) is scored over those classes only. Class embeddings are part of the
weights, so the evaluation loop is image tower + one matrix product per batch.

Open-set detection: ``--ood-data SHARDS_DIR`` (another dataset's samples are the open set) or
``--ood-classes new`` (a base-class model; the new classes' samples are the open set, both sides scored
over the base classes, in the same pass that scores every class) adds ``ood_auroc_{mcm,energy}`` and
``ood_fpr95_{mcm,energy}`` (percent) to the row.

One call scores several splits (``--split val test``) and several weights of one architecture
(``--checkpoint RUN RUN/last RUN/ema --weights-names selected last ema``): each model is built once per
weights and scored on every split, one row per (model, weights, split), each row carrying its ``split``
and, when weights are named (or several are given: then named by their path), its ``weights``.

``--predictions-file`` writes ``{"split": ..., "models": {KEY: {"target", "domain", "prediction", "split"[,
"weights"]}}}`` with one entry per row. ``"split"`` is the split when the call scores one, else the list of
splits. KEY is the model name when the call scores one split and one unnamed weights per model (the
format of a single-split call); otherwise the model name followed by ``|weights=<name>`` when weights are
named and ``|split=<split>`` when several splits are scored, e.g. ``clip_vitt_emoji|weights=last|split=test``.
Every entry also carries its ``split`` (and ``weights``), so a reader can match entries by field too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import open_clip
import torch
from timm.data import create_transform, resolve_data_config

import clipood_zoo
from clipood_zoo import ClipoodError, ConfigError
from clipood_zoo.errors import DatasetError
from clipood_zoo.cli_utils import (
    AMP_DTYPES, add_data_limit_args, data_limits, default_device, format_results, model_for_dataset,
)
from clipood_zoo.data import DatasetInfo, create_loader, read_dataset_info
from clipood_zoo.evaluate import evaluate
from clipood_zoo.fileio import check_writable_file, write_text_atomic
from clipood_zoo.metrics import ood_metrics

_logger = logging.getLogger("validate")
TIMM_FIELDS = ("model", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size", "crop_pct", "interpolation")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", "-m", required=True, nargs="+",
                   help="zoo names, fnmatch patterns ('clipood_*'), 'all', or an open_clip architecture")
    p.add_argument("--pretrained", action="store_true", help="load each model's registered weights")
    p.add_argument("--checkpoint", default=None, nargs="+",
                   help="weights to load (a safetensors file or save_pretrained folder); several: each scored in turn")
    p.add_argument("--weights-names", default=None, nargs="+", metavar="NAME",
                   help="a name for each --checkpoint (or for the --pretrained weights), written as the rows' "
                        "'weights' field and into the predictions file's keys")
    p.add_argument("--clip-pretrained", default=None, help="open_clip CLIP weights for zero-shot evaluation: a tag (e.g. openai) or an open_clip checkpoint file")
    p.add_argument("--model-config", default=None, help="an open_clip model config JSON (or folder) to register")
    p.add_argument("--data-dir", required=True,
                   help="where _info.json and the shards are: a folder, or a file://, http(s):// or fsspec URL")
    p.add_argument("--split", default=["val"], nargs="+",
                   help="split(s) to score; several give one row each, the model built once")
    p.add_argument("--domains", nargs="+", default=None, help="domains to evaluate (default: all)")
    p.add_argument("--classes", choices=("all", "base", "new"), default="all",
                   help="'base'/'new': only those classes' samples, classifier restricted to them")
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--workers", "-j", type=int, default=2)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), default="bfloat16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--torchcompile", nargs="?", const="inductor", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--strict-data", action="store_true")
    add_data_limit_args(p)
    p.add_argument("--results-file", default=None)
    p.add_argument("--results-format", choices=("csv", "json"), default=None, help="default: from the file suffix")
    ood = p.add_mutually_exclusive_group()
    ood.add_argument("--ood-data", default=None, metavar="SHARDS_DIR",
                     help="open-set detection: this dataset's --split samples are out-of-distribution; reports AUROC "
                          "and FPR@95TPR of the MCM and energy scores (in-distribution: --data-dir's samples)")
    ood.add_argument("--ood-classes", choices=("new",), default=None,
                     help="open-set detection on a base-to-new split: in = base classes' samples, out = new classes' "
                          "samples, both scored over the base classes (accuracy stays over every class)")
    p.add_argument("--predictions-file", default=None,
                   help="also write each sample's target, domain and top-1 prediction per model (JSON), for paired "
                        "comparisons (tools/emojidg/report.py)")
    return p


def expand_models(patterns: Sequence[str], pretrained: bool) -> List[str]:
    """Names, wildcards and 'all' -> model names, in order, each once; an open_clip arch passes through."""
    names: List[str] = []
    for pattern in patterns:
        if pattern == "all":
            matches = clipood_zoo.list_models(pretrained=pretrained)
        elif any(c in pattern for c in "*?["):
            matches = clipood_zoo.list_models(pattern, pretrained=pretrained)
            if not matches:
                raise ConfigError(f"no {'pretrained ' if pretrained else ''}model matches {pattern!r}; "
                                  "see clipood_zoo.list_models()")
        elif clipood_zoo.is_model(pattern) or pattern in open_clip.list_models():
            matches = [pattern]
        else:
            clipood_zoo.get_pretrained_cfg(pattern)  # raises UnknownModelError with the closest names
            matches = []
        names += [m for m in matches if m not in names]
    return names


@dataclasses.dataclass(frozen=True)
class Weights:
    """One set of weights to score: a checkpoint (None: the registered or initial weights) and its name."""

    checkpoint: Optional[str]
    name: Optional[str]


def weights_to_score(args: argparse.Namespace) -> List[Weights]:
    """--checkpoint's paths paired with --weights-names (several unnamed checkpoints are named by their path)."""
    checkpoints = args.checkpoint or [None]
    names = args.weights_names
    if names is None:
        names = [None] if len(checkpoints) == 1 else list(checkpoints)
    if len(names) != len(checkpoints):
        given = "--checkpoint " + " ".join(args.checkpoint) if args.checkpoint else "the --pretrained or initial weights"
        raise ConfigError(f"--weights-names gives {len(names)} name(s) for {len(checkpoints)} set(s) of weights "
                          f"({given}); give one name per --checkpoint")
    if len(set(names)) != len(names):
        raise ConfigError(f"--weights-names must differ from each other, got {names}")
    return [Weights(c, n) for c, n in zip(checkpoints, names)]


def check_splits(splits: Sequence[str], info: DatasetInfo) -> None:
    """Every asked split exists, before any model is built (one error naming the splits the data has)."""
    missing = [s for s in splits if s not in info.splits]
    if missing:
        raise DatasetError(f"--split {' '.join(missing)}: {info.path} has no such split; its splits are "
                           f"{', '.join(sorted(info.splits))}. Pick from those.")
    if len(set(splits)) != len(splits):
        raise ConfigError(f"--split names a split more than once: {' '.join(splits)}")


def predictions_key(name: str, weights: Weights, split: str, several_splits: bool) -> str:
    """The predictions file's key of one row (the module docstring says the format)."""
    return name + (f"|weights={weights.name}" if weights.name is not None else "") + \
        (f"|split={split}" if several_splits else "")


def validate_one(name: str, weights: Weights, args: argparse.Namespace, device: torch.device, info: DatasetInfo,
                 predictions: Optional[Dict[str, List[torch.Tensor]]] = None) -> List[Dict[str, Any]]:
    """Build ``name`` with ``weights`` once and score it on every --split: one row per split."""
    model = model_for_dataset(name, info, args.pretrained, weights.checkpoint, args.clip_pretrained).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config({}, model=model)
    eval_model = torch.compile(model, backend=args.torchcompile) if args.torchcompile else model
    param_count = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    rows = []
    for split in args.split:
        key = predictions_key(name, weights, split, len(args.split) > 1)
        if predictions is not None:
            predictions[key] = []
        row = score_split(eval_model, name, split, args, device, info, data_config, param_count,
                          None if predictions is None else predictions[key])
        rows.append({**row, **({"weights": weights.name} if weights.name is not None else {})})
    return rows


def score_split(model: torch.nn.Module, name: str, split: str, args: argparse.Namespace, device: torch.device,
                info: DatasetInfo, data_config: Dict[str, Any], param_count: float,
                predictions: Optional[List[torch.Tensor]] = None) -> Dict[str, Any]:
    """The row of ``model`` on ``split``: accuracy over the asked classes, and open-set scores when asked."""
    # a class subset to score over: --classes base/new, or the one the dataset declares (ImageNet-A/-R's 200)
    declared = info.eval_classes
    if args.ood_classes == "new" and (args.classes != "all" or declared is not None):
        raise ConfigError("--ood-classes new treats the new classes as the open set of a base-class model, scored "
                          "in the pass over every class; drop --classes (the accuracy stays over all classes)")
    subset = info.class_subset(args.classes) if args.classes != "all" else declared
    # --ood-classes new: both sides' scores over the base classes; the targets say which side a sample is on
    base = info.class_subset("base") if args.ood_classes == "new" else None
    loader = create_loader(info, split, transform=create_transform(**data_config),
                           batch_size=args.batch_size, is_training=False, domains=args.domains, classes=subset,
                           relabel_classes=subset is not None, num_workers=args.workers, strict=args.strict_data,
                           pin_memory=device.type == "cuda", **data_limits(args))
    in_scores: Optional[List[torch.Tensor]] = [] if args.ood_data or args.ood_classes else None
    if base is not None and predictions is None:
        predictions = []  # the targets, to split the scores into base (in) and new (out) samples
    start = time.time()
    metrics = evaluate(model, loader, device, info.domains,
                       base_classes=info.base_classes if subset is None else None,
                       new_classes=info.new_classes if subset is None else None,
                       amp_dtype=AMP_DTYPES[args.amp_dtype] if args.amp else None,
                       channels_last=args.channels_last, logit_columns=subset, progress=True,
                       desc=name if len(args.split) == 1 else f"{name} ({split} split)",
                       predictions=predictions, scores=in_scores, score_columns=base)
    elapsed = time.time() - start
    open_set: Dict[str, Any] = {}
    if base is not None:
        scores, targets = torch.cat(in_scores), torch.cat(predictions)[:, 0]
        is_base = torch.isin(targets, torch.as_tensor(base))
        open_set = open_set_metrics(split, scores[is_base], scores[~is_base], "new classes")
    elif in_scores is not None:
        open_set = ood_data_row(model, args, split, data_config, subset, torch.cat(in_scores), device, name)
    if loader.skipped.total:
        _logger.warning("%s: skipped %d bad samples: %s", name, loader.skipped.total, loader.skipped.as_dict())
    if metrics["nonfinite_logits"]:
        _logger.warning("%s: %d of %d samples had NaN/inf logits (counted as wrong)", name,
                        metrics["nonfinite_logits"], metrics["num_samples"])
    row = {
        "model": name,
        **{k: metrics[k] for k in ("top1", "top1_err", "top5", "top5_err")},
        "param_count": param_count,
        "img_size": data_config["input_size"][-1],
        "crop_pct": data_config["crop_pct"],
        "interpolation": data_config["interpolation"],
        **{k: v for k, v in metrics.items() if k.startswith("top1_") and k != "top1_err"},
        **{k: metrics[k] for k in ("base_top1", "new_top1", "hm") if k in metrics},
        "num_samples": metrics["num_samples"],
        "nonfinite_logits": metrics["nonfinite_logits"],
        "split": split,
        "classes": args.classes,
        **open_set,
        **({"eval_classes": len(declared)} if declared is not None and args.classes == "all" else {}),
    }
    _logger.info("%s: top1 %.2f top5 %.2f on %d %s samples (%.1f img/s)", name, row["top1"], row["top5"],
                 row["num_samples"], split, row["num_samples"] / max(elapsed, 1e-9))
    return row


def ood_data_row(model: torch.nn.Module, args: argparse.Namespace, split: str, data_config: Dict[str, Any],
                 subset: Optional[Sequence[int]], in_scores: torch.Tensor, device: torch.device,
                 name: str) -> Dict[str, Any]:
    """Score --ood-data's ``split`` samples (the open set) with the classifier restricted as for the
    in-distribution samples, and compare the two score sets (AUROC, FPR@95TPR)."""
    out_info = read_dataset_info(args.ood_data)
    loader = create_loader(out_info, split, transform=create_transform(**data_config), batch_size=args.batch_size,
                           is_training=False, num_workers=args.workers, strict=args.strict_data,
                           pin_memory=device.type == "cuda", **data_limits(args))
    out_scores: List[torch.Tensor] = []
    evaluate(model, loader, device, out_info.domains, amp_dtype=AMP_DTYPES[args.amp_dtype] if args.amp else None,
             channels_last=args.channels_last, logit_columns=subset, progress=True, desc=f"{name} open set",
             scores=out_scores)
    return open_set_metrics(split, in_scores, torch.cat(out_scores) if out_scores else torch.empty(0, 2),
                            str(args.ood_data))


def open_set_metrics(split: str, in_scores: torch.Tensor, out_scores: torch.Tensor, ood: str) -> Dict[str, Any]:
    """AUROC and FPR@95TPR of each score, in- against out-of-distribution samples (both must be there)."""
    if not len(in_scores) or not len(out_scores):
        raise ConfigError(f"open-set detection needs samples on both sides; the {split!r} split gave "
                          f"{len(in_scores)} in-distribution and {len(out_scores)} out-of-distribution samples")
    return {**ood_metrics(in_scores, out_scores), "ood_samples": len(out_scores), "ood": ood}


def print_table(rows: List[Dict[str, Any]]) -> None:
    columns = [c for c in ("model", "top1", "top5", "base_top1", "new_top1", "hm", "ood_auroc_mcm", "ood_fpr95_mcm",
                           "ood_auroc_energy", "ood_fpr95_energy") if any(c in r for r in rows)]
    columns += sorted({k for r in rows for k in r if k.startswith("top1_") and k != "top1_err"})
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        data_limits(args)  # the sample caps, before any model is built
        if args.results_file:  # before any evaluation, not after it
            check_writable_file(args.results_file, "--results-file")
        if args.model_config:
            open_clip.add_model_config(args.model_config)
        weights = weights_to_score(args)
        names = expand_models(args.model, args.pretrained)
        if args.checkpoint and len(names) > 1:
            raise ConfigError("--checkpoint holds one model's weights; pass a single --model with it")
        device = torch.device(args.device or default_device())
        predictions: Optional[Dict[str, List[torch.Tensor]]] = {} if args.predictions_file else None
        info = read_dataset_info(args.data_dir)  # read once: every model and loader gets this object
        check_splits(args.split, info)
        rows = [row for name in names for w in weights for row in validate_one(name, w, args, device, info, predictions)]
    except ClipoodError as e:
        parser.exit(2, f"validate.py: error: {e}\n")
    print_table(rows)
    # the predictions first: a sweep treats the results file as the mark of a scored run, so a process killed
    # between the two writes must leave no results file without its predictions
    if predictions is not None:
        entries = {}
        for (key, batches), row in zip(predictions.items(), rows):
            columns = torch.cat(batches).T.tolist() if batches else [[], [], []]
            entries[key] = {**dict(zip(("target", "domain", "prediction"), columns)), "split": row["split"],
                            **({"weights": row["weights"]} if "weights" in row else {})}
        split = args.split[0] if len(args.split) == 1 else list(args.split)
        write_text_atomic(args.predictions_file, json.dumps({"split": split, "models": entries}))
    if args.results_file:
        fmt = args.results_format or ("json" if Path(args.results_file).suffix == ".json" else "csv")
        write_text_atomic(args.results_file, format_results(rows, fmt))
        _logger.info("Results written to %s", args.results_file)
    return rows


if __name__ == "__main__":
    main()
