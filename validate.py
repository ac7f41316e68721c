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
``--ood-classes new`` (a base-class model; the new classes' samples are the open set) adds
``ood_auroc_{mcm,energy}`` and ``ood_fpr95_{mcm,energy}`` (percent) to the row.
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--checkpoint", default=None, help="weights to load (a safetensors file or save_pretrained folder)")
    p.add_argument("--clip-pretrained", default=None, help="open_clip CLIP weights for zero-shot evaluation: a tag (e.g. openai) or an open_clip checkpoint file")
    p.add_argument("--model-config", default=None, help="an open_clip model config JSON (or folder) to register")
    p.add_argument("--data-dir", required=True,
                   help="where _info.json and the shards are: a folder, or a file://, http(s):// or fsspec URL")
    p.add_argument("--split", default="val")
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
                          "samples, both scored over the base classes")
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


def validate_one(name: str, args: argparse.Namespace, device: torch.device, info: DatasetInfo,
                 predictions: Optional[List[torch.Tensor]] = None) -> Dict[str, Any]:
    model = model_for_dataset(name, info, args.pretrained, args.checkpoint, args.clip_pretrained).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config({}, model=model)
    # a class subset to score over: --classes base/new, or the one the dataset declares (ImageNet-A/-R's 200)
    declared = info.eval_classes
    classes = args.classes
    if args.ood_classes == "new":
        if classes == "new":
            raise ConfigError("--ood-classes new treats the new classes as the open set of a base-class model; "
                              "drop --classes new (the in-distribution samples are the base classes')")
        classes = "base"
    subset = info.class_subset(classes) if classes != "all" else declared
    loader = create_loader(info, args.split, transform=create_transform(**data_config),
                           batch_size=args.batch_size, is_training=False, domains=args.domains, classes=subset,
                           relabel_classes=subset is not None, num_workers=args.workers, strict=args.strict_data,
                           pin_memory=device.type == "cuda", **data_limits(args))
    eval_model = torch.compile(model, backend=args.torchcompile) if args.torchcompile else model
    in_scores: Optional[List[torch.Tensor]] = [] if args.ood_data or args.ood_classes else None
    start = time.time()
    metrics = evaluate(eval_model, loader, device, info.domains,
                       base_classes=info.base_classes if subset is None else None,
                       new_classes=info.new_classes if subset is None else None,
                       amp_dtype=AMP_DTYPES[args.amp_dtype] if args.amp else None,
                       channels_last=args.channels_last, logit_columns=subset, progress=True, desc=name,
                       predictions=predictions, scores=in_scores)
    elapsed = time.time() - start
    open_set = open_set_row(eval_model, args, info, data_config, subset, in_scores, device, name) \
        if in_scores is not None else {}
    if loader.skipped.total:
        _logger.warning("%s: skipped %d bad samples: %s", name, loader.skipped.total, loader.skipped.as_dict())
    if metrics["nonfinite_logits"]:
        _logger.warning("%s: %d of %d samples had NaN/inf logits (counted as wrong)", name,
                        metrics["nonfinite_logits"], metrics["num_samples"])
    row = {
        "model": name,
        **{k: metrics[k] for k in ("top1", "top1_err", "top5", "top5_err")},
        "param_count": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "img_size": data_config["input_size"][-1],
        "crop_pct": data_config["crop_pct"],
        "interpolation": data_config["interpolation"],
        **{k: v for k, v in metrics.items() if k.startswith("top1_") and k != "top1_err"},
        **{k: metrics[k] for k in ("base_top1", "new_top1", "hm") if k in metrics},
        "num_samples": metrics["num_samples"],
        "nonfinite_logits": metrics["nonfinite_logits"],
        "split": args.split,
        "classes": classes,
        **open_set,
        **({"eval_classes": len(declared)} if declared is not None and args.classes == "all" else {}),
    }
    _logger.info("%s: top1 %.2f top5 %.2f on %d samples (%.1f img/s)", name, row["top1"], row["top5"],
                 row["num_samples"], row["num_samples"] / max(elapsed, 1e-9))
    return row


def open_set_row(model: torch.nn.Module, args: argparse.Namespace, info: DatasetInfo, data_config: Dict[str, Any],
                 subset: Optional[Sequence[int]], in_scores: List[torch.Tensor], device: torch.device,
                 name: str) -> Dict[str, Any]:
    """Score the open set (--ood-data's samples, or the new classes' with --ood-classes new) with the classifier
    restricted as for the in-distribution samples, and compare the two score sets (AUROC, FPR@95TPR)."""
    if args.ood_classes == "new":
        out_info, domains, classes = info, args.domains, info.class_subset("new")
    else:
        out_info, domains, classes = read_dataset_info(args.ood_data), None, None
    loader = create_loader(out_info, args.split, transform=create_transform(**data_config), batch_size=args.batch_size,
                           is_training=False, domains=domains, classes=classes, relabel_classes=classes is not None,
                           num_workers=args.workers, strict=args.strict_data, pin_memory=device.type == "cuda",
                           **data_limits(args))
    out_scores: List[torch.Tensor] = []
    evaluate(model, loader, device, out_info.domains, amp_dtype=AMP_DTYPES[args.amp_dtype] if args.amp else None,
             channels_last=args.channels_last, logit_columns=subset, progress=True, desc=f"{name} open set",
             scores=out_scores)
    if not in_scores or not out_scores:
        raise ConfigError(f"open-set detection needs samples on both sides; the {args.split!r} split gave "
                          f"{sum(len(s) for s in in_scores)} in-distribution and "
                          f"{sum(len(s) for s in out_scores)} out-of-distribution samples")
    return {**ood_metrics(torch.cat(in_scores), torch.cat(out_scores)),
            "ood_samples": sum(len(s) for s in out_scores),
            "ood": "new classes" if args.ood_classes == "new" else str(args.ood_data)}


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
        names = expand_models(args.model, args.pretrained)
        if args.checkpoint and len(names) > 1:
            raise ConfigError("--checkpoint holds one model's weights; pass a single --model with it")
        device = torch.device(args.device or default_device())
        predictions: Dict[str, List[torch.Tensor]] = {name: [] for name in names} if args.predictions_file else {}
        info = read_dataset_info(args.data_dir)  # read once: every model and loader gets this object
        rows = [validate_one(name, args, device, info, predictions.get(name)) for name in names]
    except ClipoodError as e:
        parser.exit(2, f"validate.py: error: {e}\n")
    print_table(rows)
    if args.results_file:
        fmt = args.results_format or ("json" if Path(args.results_file).suffix == ".json" else "csv")
        write_text_atomic(args.results_file, format_results(rows, fmt))
        _logger.info("Results written to %s", args.results_file)
    if args.predictions_file:
        columns = {n: torch.cat(p).T.tolist() if p else [[], [], []] for n, p in predictions.items()}
        write_text_atomic(args.predictions_file, json.dumps({"split": args.split, "models": {
            n: dict(zip(("target", "domain", "prediction"), c)) for n, c in columns.items()}}))
    return rows


if __name__ == "__main__":
    main()
