#!/usr/bin/env python
"""Turn the raw EmojiDG tree into WebDataset shards (the benchmark) and the committed mini subset.

    python tools/emojidg/make_shards.py --raw data/emojidg_raw --out data/emojidg \
        --mini datasets/emojidg-mini

Splits are by render, not at random: every (domain, class) has R renders of one source image; renders
0..R-2 are ``train`` and the last render is ``val``. So every class is in both splits of every domain,
the source-domain ``val`` used for model selection is balanced, and the held-out domain is reported
on its ``val`` split (DomainBed's out-split role). Class names, label order and the base/new split
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

from clipood_zoo.data.writer import Sample, write_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes `emojidg` importable as a script
from emojidg.paths import occupied  # noqa: E402


def samples(raw: Path, meta: Dict, split: str) -> Iterator[Sample]:
    for domain in meta["domains"]:
        for cls in meta["classes"]:
            renders = sorted((raw / domain / cls["dirname"]).glob("*.png"), key=lambda p: int(p.stem))
            chosen = renders[-1:] if split == "val" else renders[:-1]
            for path in chosen:
                yield Sample(key=f"{domain}-{cls['dirname']}-{path.stem}", image=path.read_bytes(), image_format="png",
                             label=cls["index"], domain=domain,
                             meta={"emoji": cls["emoji"], "category": cls["category"], "render": int(path.stem)})


def write(raw: Path, out: Path, splits: List[str], shard_size: int) -> None:
    meta = json.loads((raw / "metadata.json").read_text())
    names = [c["name"] for c in sorted(meta["classes"], key=lambda c: c["index"])]
    for split in splits:
        info = write_split(out, split, samples(raw, meta, split), name="emojidg", classes=names,
                           domains=meta["domains"], base_classes=meta["base_classes"], new_classes=meta["new_classes"],
                           max_samples_per_shard=shard_size)
        print(f"{out}: {split} {info.num_samples} samples in {len(info.filenames)} shards")
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
    write(args.raw, args.out, ["train", "val"], args.shard_size)
    if args.mini is not None:
        write(args.raw, args.mini, ["val"], args.shard_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
