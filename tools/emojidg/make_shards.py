#!/usr/bin/env python
"""Turn the raw EmojiDG tree into WebDataset shards (the benchmark) and the committed mini subset.

    python tools/emojidg/make_shards.py --raw data/emojidg_raw --out data/emojidg \
        --mini datasets/emojidg-mini

Splits are by render, not at random: every (domain, class) has R renders of one source image; renders
0..R-2 are ``train`` and the last render is ``val``. So every class is in both splits of every domain,
and the source-domain ``val`` used for model selection is balanced. Benchmark v1 reports the held-out
domain on its ``val`` split (DomainBed's out-split role). From v2 a ``test`` split holds *every*
render of every domain (train and val renders again, R per class): the held-out domain is never
trained on, so all its images are test images (``train.py --eval-split test``, ``validate.py --split
test``), while train.py keeps reading ``train``/``val`` of the source domains unchanged. The
benchmark version (raw ``metadata.json``; absent = v1) decides whether ``test`` is written and is
recorded in ``_info.json`` as ``benchmark_version``. Class names, label order and the base/new split
come from the raw ``metadata.json`` (committed as ``clipood_zoo/data/emojidg_classes.json``).
The mini subset is the ``val`` split alone, plus the licences: small enough to commit (a few MB).
A folder that already holds files (the committed subset, an earlier build) is never written over
unless ``--overwrite`` asks for it: both targets are checked before anything is written.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterator, List

from clipood_zoo.data.info import INFO_FILENAME
from clipood_zoo.data.writer import Sample, write_split
from clipood_zoo.fileio import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes `emojidg` importable as a script
from emojidg.paths import occupied  # noqa: E402
from emojidg.versions import VERSION_KEY, get_version, version_of  # noqa: E402

SPLIT_RENDERS = {"train": slice(None, -1), "val": slice(-1, None), "test": slice(None)}


def samples(raw: Path, meta: Dict, split: str) -> Iterator[Sample]:
    for domain in meta["domains"]:
        for cls in meta["classes"]:
            renders = sorted((raw / domain / cls["dirname"]).glob("*.png"), key=lambda p: int(p.stem))
            for path in renders[SPLIT_RENDERS[split]]:
                yield Sample(key=f"{domain}-{cls['dirname']}-{path.stem}", image=path.read_bytes(), image_format="png",
                             label=cls["index"], domain=domain,
                             meta={"emoji": cls["emoji"], "category": cls["category"], "render": int(path.stem)})


def version_splits(meta: Dict) -> List[str]:
    """The splits the benchmark version of a raw tree has: train and val, plus test from v2."""
    return ["train", "val"] + (["test"] if get_version(version_of(meta)).test_split else [])


def stamp_version(out: Path, version: str) -> None:
    """Record the benchmark version in ``_info.json`` (the dataset readers ignore keys they do not use)."""
    info = json.loads((out / INFO_FILENAME).read_text())
    write_text_atomic(out / INFO_FILENAME, json.dumps({**info, VERSION_KEY: version}, indent=1))


def write(raw: Path, out: Path, splits: List[str], shard_size: int) -> None:
    meta = json.loads((raw / "metadata.json").read_text())
    names = [c["name"] for c in sorted(meta["classes"], key=lambda c: c["index"])]
    for split in splits:
        info = write_split(out, split, samples(raw, meta, split), name="emojidg", classes=names,
                           domains=meta["domains"], base_classes=meta["base_classes"], new_classes=meta["new_classes"],
                           max_samples_per_shard=shard_size)
        print(f"{out}: {split} {info.num_samples} samples in {len(info.filenames)} shards")
    stamp_version(out, version_of(meta))
    if (out / "licenses").exists():
        shutil.rmtree(out / "licenses")
    shutil.copytree(raw / "licenses", out / "licenses")


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", type=Path, default=Path("data/emojidg_raw"), help="output of tools/emojidg/build.py")
    p.add_argument("--out", type=Path, default=Path("data/emojidg"), help="full benchmark shards")
    p.add_argument("--mini", type=Path, default=None, help="also write the val-only subset here")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the splits and licences of --out/--mini folders that already hold data")
    args = p.parse_args(argv)
    if not (args.raw / "metadata.json").is_file():
        p.exit(2, f"{args.raw}/metadata.json not found: build the raw tree first with tools/emojidg/build.py\n")
    taken = occupied([args.out] + ([args.mini] if args.mini is not None else []))
    if taken and not args.overwrite:
        p.exit(2, f"make_shards.py: error: {', '.join(map(str, taken))} already hold(s) data (datasets/emojidg-mini "
                  f"is committed); write to an empty folder, or pass --overwrite to replace it\n")
    write(args.raw, args.out, version_splits(json.loads((args.raw / "metadata.json").read_text())), args.shard_size)
    if args.mini is not None:
        write(args.raw, args.mini, ["val"], args.shard_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
