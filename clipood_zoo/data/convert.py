"""Command line for the converters: ``python -m clipood_zoo.data.convert domainbed|imagefolder SRC OUT``.

Examples::

    python -m clipood_zoo.data.convert domainbed data/PACS data/pacs_wds --seed 0
    python -m clipood_zoo.data.convert imagefolder data/imagenet/train data/imagenet_wds \\
        --domain-name imagenet --holdout-fraction 0
    python -m clipood_zoo.data.convert imagefolder data/imagenet/val data/imagenet_wds \\
        --domain-name imagenet --holdout-fraction 1
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ClipoodError, ConfigError
from .converters import convert_domainbed, convert_imagefolder


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipood_zoo.data.convert",
        description="Convert an image folder tree into clipood-zoo WebDataset shards with _info.json.")
    parser.add_argument("layout", choices=("domainbed", "imagefolder"),
                        help="domainbed: SRC/<domain>/<class>/<image>; imagefolder: SRC/<class>/<image>")
    parser.add_argument("src", help="source folder")
    parser.add_argument("out", help="output folder for the shards and _info.json")
    parser.add_argument("--name", default=None,
                        help="dataset name (default: SRC's name for domainbed, OUT's for imagefolder)")
    parser.add_argument("--holdout-fraction", type=float, default=0.2,
                        help="fraction of each domain written to 'val' (DomainBed's out split; default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="split seed, DomainBed's trial_seed (default 0)")
    parser.add_argument("--shard-size", type=int, default=1000, help="max samples per shard (default 1000)")
    parser.add_argument("--domain-name", default=None,
                        help="imagefolder only: the domain's name (default: OUT's name)")
    parser.add_argument("--allow-missing-classes", action="store_true",
                        help="domainbed only: allow a class folder to be absent from some domains")
    parser.add_argument("--base-classes", type=_names, default=None,
                        help="comma-separated class names seen in training (CoOp base-to-new)")
    parser.add_argument("--new-classes", type=_names, default=None,
                        help="comma-separated new class names (default: all classes not in --base-classes)")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--classes", default=None, metavar="FILE",
                       help="number the classes in this file's order (one name per line; folder names match up to "
                            "'_'/space) instead of sorted, e.g. a model's class order")
    order.add_argument("--classes-from-model", default=None, metavar="NAME",
                       help="number the classes in this zoo model's class order (its label_names)")
    return parser


def class_order(args: argparse.Namespace) -> Optional[list[str]]:
    """The label order asked for: a file's lines or a zoo model's class names; None for sorted folder names."""
    if args.classes:
        try:
            lines = Path(args.classes).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--classes {args.classes}: cannot read it ({e}); pass a text file, one class per line")
        return [line.strip() for line in lines if line.strip()]
    if args.classes_from_model:
        from ..registry import get_pretrained_cfg

        names = get_pretrained_cfg(args.classes_from_model).label_names
        if not names:
            raise ConfigError(f"{args.classes_from_model} has no class names to take the order from")
        return list(names)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    common = dict(name=args.name, holdout_fraction=args.holdout_fraction, seed=args.seed,
                  shard_size=args.shard_size, base_classes=args.base_classes, new_classes=args.new_classes)
    if args.layout == "domainbed" and args.domain_name is not None:
        parser.error("--domain-name applies to imagefolder only")
    if args.layout == "imagefolder" and args.allow_missing_classes:
        parser.error("--allow-missing-classes applies to domainbed only")
    try:
        common["class_order"] = class_order(args)
        if args.layout == "domainbed":
            report = convert_domainbed(args.src, args.out, allow_missing_classes=args.allow_missing_classes,
                                       **common)
        else:
            report = convert_imagefolder(args.src, args.out, domain_name=args.domain_name, **common)
    except ClipoodError as e:  # bad input: the message says what to do, a traceback would only hide it
        parser.exit(2, f"error: {e}\n")
    for split, info in report.splits.items():
        print(f"{split}: {info.num_samples} samples in {len(info.filenames)} shard(s)")
    print(f"skipped {len(report.skipped)} unreadable image(s); wrote {report.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
