"""``python -m clipood_zoo.data.protocols COMMAND``: convert the paper's benchmarks from their
distributed layouts, score ImageNet's shifts, and run a whole table (``run``: train, validate, tabulate
with :mod:`clipood_zoo.sweep`). See ``docs/paper_protocols.md``."""
from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Optional, Sequence

import open_clip

from ... import protocol_eval, sweep
from ...cli_utils import AMP_DTYPES, format_results
from ...errors import ClipoodError
from ...fileio import write_text_atomic
from . import base2new, domainbed, imagenet


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clipood_zoo.data.protocols", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("domainbed-check", help="check a DomainBed tree against the catalog")
    c.add_argument("dataset", choices=list(domainbed.LAYOUTS))
    c.add_argument("src")
    c = sub.add_parser("domainbed", help="check, then convert a DomainBed dataset (DomainBed's in/out split)")
    c.add_argument("dataset", choices=list(domainbed.LAYOUTS))
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--seed", type=int, default=0, help="DomainBed's trial_seed (default 0)")
    c.add_argument("--holdout-fraction", type=float, default=0.2)
    c.add_argument("--shard-size", type=int, default=1000)
    c.add_argument("--remove-listed", default=None,
                   help="file of paths to delete first (DomainBed's misc/domain_net_duplicates.txt)")
    c = sub.add_parser("terraincognita-organize", help="sort the camera-trap images as DomainBed does")
    c.add_argument("images", help="eccv_18_all_images_sm/")
    c.add_argument("annotations", help="caltech_images_20210113.json")
    c.add_argument("out", help="terra_incognita/ (gets location_XX/<class>/)")
    c.add_argument("--link", action="store_true", help="hard-link instead of copying")
    c = sub.add_parser("imagenet", help="convert ImageNet val or a shift (1000-class shards, split 'test')")
    c.add_argument("kind", choices=list(imagenet.SHIFTS))
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--label-file", default=None, help="labels of a flat ImageNet val folder")
    c.add_argument("--shard-size", type=int, default=1000)
    c = sub.add_parser("b2n", help="convert a CoOp dataset for base-to-new (few-shot train/val, full test)")
    c.add_argument("dataset", choices=list(base2new.DATASETS))
    c.add_argument("src", help="CoOp's $DATA/<dataset folder> (or $DATA)")
    c.add_argument("out", help="output folder; one subfolder seed<k> per seed")
    c.add_argument("--shots", type=int, default=16)
    c.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    c.add_argument("--shard-size", type=int, default=1000)
    c = sub.add_parser("validate-imagenet", help="score a model on converted ImageNet sets, A/R on 200 classes")
    c.add_argument("--model", required=True)
    c.add_argument("--checkpoint", default=None)
    c.add_argument("--clip-pretrained", default=None, help="a tag (e.g. openai) or an open_clip checkpoint file")
    c.add_argument("--pretrained", action="store_true")
    c.add_argument("--model-config", default=None, help="an open_clip model config JSON (or folder) to register")
    c.add_argument("--data-dir", nargs="+", required=True)
    c.add_argument("--split", default=imagenet.SPLIT, help="split of every set to score")
    c.add_argument("--amp", action="store_true", help="mixed precision (autocast) with --amp-dtype")
    c.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), default="bfloat16")
    c.add_argument("-b", "--batch-size", type=int, default=256)
    c.add_argument("-j", "--workers", type=int, default=2)
    c.add_argument("--device", default=None)
    c.add_argument("--results-file", default=None, help="CSV (or .json) of rows for tools/paper_tables.py")
    _add_run_parser(sub)
    return p


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, help="converted shards (b2n, imagenet: the folder of seed<k>/)")
    common.add_argument("--output", required=True, help="runs/, results/ and the table go here")
    common.add_argument("--method", default="clipood", help="train.py --method; also the table's row label")
    common.add_argument("--model", default=None, help="train this architecture instead of the entries' ViT-B/16")
    common.add_argument("--model-config", default=None, help="open_clip config JSON for --model")
    common.add_argument("--clip-pretrained", default=None,
                        help="a tag or an open_clip checkpoint file (default: the recipe's 'openai'); 'none': random init")
    common.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    common.add_argument("-b", "--batch-size", type=int, default=None, help="default: the recipe's")
    common.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    common.add_argument("-j", "--workers", type=int, default=None)
    common.add_argument("--device", default=None)
    common.add_argument("--train-args", default="", help="more train.py flags, one shell-quoted string")
    common.add_argument("--dry-run", action="store_true", help="print the commands of what is left, run nothing")
    run = sub.add_parser("run", help="a whole table: train every held-out domain / dataset and seed, validate, tabulate")
    kinds = run.add_subparsers(dest="protocol", required=True)
    c = kinds.add_parser("domainbed", parents=[common], help="Table 1 row of one DomainBed dataset")
    c.add_argument("dataset", choices=list(domainbed.LAYOUTS))
    c.add_argument("--seeds", type=int, nargs="+", default=[0])
    c.add_argument("--eval-split", choices=list(sweep.EVAL_SPLITS), default="val",
                   help="; ".join(f"{k}: {v}" for k, v in sweep.EVAL_SPLITS.items()))
    c = kinds.add_parser("imagenet", parents=[common], help="Table 2: 16-shot ImageNet and its shifts")
    c.add_argument("--shifts", nargs="*", default=[], help="converted -V2, -Sketch, -A, -R folders")
    c.add_argument("--seeds", type=int, nargs="+", default=[1])
    c = kinds.add_parser("b2n", parents=[common], help="Table 3 row of one CoOp dataset (base-to-new)")
    c.add_argument("dataset", choices=list(base2new.DATASETS))
    c.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])


def _run_sweep(args: argparse.Namespace) -> None:
    opts = sweep.SweepOptions(
        data=Path(args.data), output=Path(args.output), seeds=args.seeds, method=args.method, model=args.model,
        model_config=args.model_config, clip_pretrained=args.clip_pretrained, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, eval_split=getattr(args, "eval_split", "val"), workers=args.workers,
        device=args.device, train_args=shlex.split(args.train_args))
    if args.protocol == "domainbed":
        jobs, table, label = sweep.domainbed_jobs(args.dataset, opts), 1, args.dataset
    elif args.protocol == "b2n":
        jobs, table, label = sweep.b2n_jobs(args.dataset, opts), 3, args.dataset
    else:
        jobs, table, label = sweep.imagenet_jobs([Path(s) for s in args.shifts], opts), 2, "imagenet"
    text = sweep.run_sweep(jobs, table, label, opts, dry_run=args.dry_run)
    if text is not None:
        print(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            _run_sweep(args)
        elif args.command == "domainbed-check":
            check = domainbed.check_tree(args.dataset, args.src)
            print(f"{check.root}: {check.dataset.name} OK, {check.num_images} images in "
                  f"{len(check.counts)} domains x {check.dataset.num_classes} classes")
        elif args.command == "domainbed":
            report = domainbed.convert(args.dataset, args.src, args.out, seed=args.seed,
                                       holdout_fraction=args.holdout_fraction, shard_size=args.shard_size,
                                       remove_listed=args.remove_listed)
            _print(report)
        elif args.command == "terraincognita-organize":
            stats = domainbed.organize_terraincognita(args.images, args.annotations, args.out, link=args.link)
            for loc, cats in sorted(stats.items()):
                print(loc, sum(cats.values()), dict(sorted(cats.items())))
        elif args.command == "imagenet":
            _print(imagenet.convert_shift(args.kind, args.src, args.out, label_file=args.label_file,
                                          shard_size=args.shard_size))
        elif args.command == "b2n":
            for seed in args.seeds:
                _print(base2new.convert(args.dataset, args.src, Path(args.out) / f"seed{seed}", shots=args.shots,
                                        seed=seed, shard_size=args.shard_size))
        elif args.command == "validate-imagenet":
            if args.model_config:
                open_clip.add_model_config(args.model_config)
            rows = protocol_eval.validate_shifts(args.model, args.data_dir, checkpoint=args.checkpoint,
                                            clip_pretrained=args.clip_pretrained, pretrained=args.pretrained,
                                            batch_size=args.batch_size, workers=args.workers, device=args.device,
                                            split=args.split, amp_dtype=AMP_DTYPES[args.amp_dtype] if args.amp else None)
            for r in rows:
                print(r["dataset"], r["top1"], f"({r['eval_classes']} classes, {r['num_samples']} images)")
            if args.results_file:
                fmt = "json" if args.results_file.endswith(".json") else "csv"
                write_text_atomic(args.results_file, format_results(rows, fmt))
    except ClipoodError as e:
        parser.exit(2, f"error: {e}\n")
    return 0


def _print(report) -> None:
    for split, info in report.splits.items():
        print(f"{report.out_dir} {split}: {info.num_samples} samples in {len(info.filenames)} shard(s)")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable image(s), first: {report.skipped[:5]}")


if __name__ == "__main__":
    raise SystemExit(main())
