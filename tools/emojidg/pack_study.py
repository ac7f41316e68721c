#!/usr/bin/env python
"""Copy the study folder tools/emojidg/run_benchmark.py writes into a folder to commit, which report.py reads as it
reads the runner's.

    python tools/emojidg/pack_study.py --study output/emojidg_v2 --out docs/emojidg/v2/study [--overwrite]

Kept: ``selection.json``; every run's ``.run.json`` and validate.py rows; the per-image predictions (gzipped, with
reproducible bytes) of the zero-shot evaluations and of every run a comparison of the report pairs: the seeds and
ablation phases, and the grid runs at their variant's selected (lr, steps) and at its oracle one (which the
model-selection table pairs with it: :func:`emojidg.study_results.held_out_val_oracle`). A grid run at another
configuration keeps its rows (the accuracy-against-steps table and selection read them) and leaves its predictions out, which
its ``.run.json`` says (``predictions_kept: false``; the report refuses to pair it). That is most of the grid's
predictions: the whole study's would not fit beside the shipped weights in the tree the ``device`` tool carries
(64 MiB). Run folders (weights, checkpoints) are never copied. ``--out`` is written whole into a temporary folder
beside it and then renamed into place, so an interrupted pack leaves the previous one.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Set

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from clipood_zoo import ClipoodError, ConfigError  # noqa: E402
from emojidg.paths import occupied  # noqa: E402
from emojidg.study_results import (  # noqa: E402
    KEPT_KEY, PREDICTIONS_SUFFIX, RUN_SUFFIX, ZEROSHOT, Study, held_out_val_oracle, load_study, read_predictions,
)


def paired_grid_runs(study: Study) -> Set[str]:
    """The run ids of the grid runs the report pairs: those at each cell's selected configuration and at its held-out
    val oracle (which the model-selection table sets beside it), matched as the report matches them
    (:meth:`Study.find`)."""
    return {s.run.run_id for v, cells in study.selection.items() for d, cell in cells.items()
            for config in (cell, held_out_val_oracle(study, v, d)) if config
            for s in study.find(v, d, "selected", config["lr"], config["steps"], phase="grid")}


def paired(record: Dict, grid_runs: Set[str]) -> bool:
    """Whether the report compares this run's predictions: any run outside the grid, or one of
    :func:`paired_grid_runs`."""
    return record["phase"] != "grid" or record["run_id"] in grid_runs


def packed_predictions(rows_path: Path) -> bytes:
    """The run's predictions, gzipped with no file name or time in the header (the same bytes on every pack)."""
    predictions = read_predictions(rows_path.with_name(rows_path.name.removesuffix(".json") + PREDICTIONS_SUFFIX))
    if predictions is None:
        raise ConfigError(f"{rows_path} has no predictions beside it; re-run the runner to score it again")
    return gzip.compress(json.dumps(predictions, separators=(",", ":")).encode(), compresslevel=9, mtime=0)


def pack(study: Path, out: Path) -> Dict[str, int]:
    """Write the packed copy of ``study`` into ``out`` (a fresh folder); returns counts for the summary line."""
    results, packed = study / "results", out / "results"
    selection_path = study / "selection.json"
    if not selection_path.is_file():
        raise ConfigError(f"{selection_path} is missing: pack a study folder the runner wrote")
    grid_runs = paired_grid_runs(load_study(study, predictions=False))
    packed.mkdir(parents=True)
    shutil.copyfile(selection_path, out / "selection.json")
    counts = {"runs": 0, "with_predictions": 0}
    for rows in sorted(results.glob(f"{ZEROSHOT}-*.json")):
        if rows.name.endswith(PREDICTIONS_SUFFIX):
            continue
        shutil.copyfile(rows, packed / rows.name)
        (packed / f"{rows.stem}{PREDICTIONS_SUFFIX}.gz").write_bytes(packed_predictions(rows))
    for record_file in sorted(results.glob(f"*{RUN_SUFFIX}")):
        record = json.loads(record_file.read_text())
        rows = results / f"{record['run_id']}.json"
        if not rows.is_file():  # a run still training or being scored: not a result yet
            continue
        keep = paired(record, grid_runs)
        shutil.copyfile(rows, packed / rows.name)
        (packed / record_file.name).write_text(json.dumps({**record, KEPT_KEY: keep}, indent=2) + "\n")
        if keep:
            (packed / f"{record['run_id']}{PREDICTIONS_SUFFIX}.gz").write_bytes(packed_predictions(rows))
        counts["runs"] += 1
        counts["with_predictions"] += keep
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", type=Path, required=True, help="the runner's --out folder")
    p.add_argument("--out", type=Path, required=True, help="the folder to commit (e.g. docs/emojidg/v2/study)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier pack in --out")
    args = p.parse_args(argv)
    try:
        if occupied([args.out]) and not args.overwrite:
            raise ConfigError(f"{args.out} already holds files; pass --overwrite to replace that pack")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=f".{args.out.name}.") as tmp:
            counts = pack(args.study, Path(tmp) / "packed")
            previous = Path(tmp) / "previous"
            if args.out.exists():  # the earlier pack moves aside (and goes with the temporary folder) only now
                args.out.rename(previous)
            try:
                (Path(tmp) / "packed").rename(args.out)
            except OSError:
                if previous.exists():
                    previous.rename(args.out)
                raise
    except (ClipoodError, OSError) as e:
        p.exit(2, f"pack_study.py: error: {e}\n")
    print(f"packed {counts['runs']} runs into {args.out} ({counts['with_predictions']} with their per-image "
          "predictions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
