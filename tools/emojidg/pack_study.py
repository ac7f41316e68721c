#!/usr/bin/env python
"""Copy the study folder tools/emojidg/run_benchmark.py writes into a folder to commit, which report.py reads as it
reads the runner's; and copy such a pack back into a runner folder, so that a new machine resumes the study.

    python tools/emojidg/pack_study.py --study output/emojidg_v2 --out docs/emojidg/v2/peers_study [--overwrite]
    python tools/emojidg/pack_study.py --study output/emojidg_v2 --restore docs/emojidg/v2/peers_study

Kept: ``selection.json``; every run's ``.run.json`` and validate.py rows; the per-image predictions (gzipped, with
reproducible bytes) of the zero-shot evaluations and of every run a comparison of the report pairs: the seeds and
ablation phases, and the grid runs at their variant's selected (lr, steps) and at its oracle one (which the
model-selection table pairs with it: :func:`emojidg.study_results.held_out_val_oracle`). A grid run at another
configuration of a selected cell keeps its rows (the accuracy-against-steps table and selection read them) and leaves its
predictions out, which its ``.run.json`` says (``predictions_kept: false``; the report refuses to pair it). That is
most of the grid's predictions: the whole study's would not fit beside the shipped weights in the tree the ``device``
tool carries (64 MiB). A grid run of a cell not selected yet (a study in progress) keeps its predictions: any of them
may become the selected or oracle configuration. Run folders (weights, checkpoints) are never copied. ``--out`` is
written whole into a temporary folder beside it and then renamed into place, so an interrupted pack leaves the
previous one.

Why ``--restore``: the study takes tens of hours on a CPU, sessions are a few hours, and a session may start on a new
machine without the previous one's ``output/``. The pack committed at the end of a session is what survives; restoring
it writes its result files back (predictions un-gzipped) into ``--study``, where the runner skips every run that has
its rows (a run that was still training when the pack was made trains again). Nothing is overwritten: a file already
in ``--study`` must hold the same result (the same JSON), and a cell its ``selection.json`` holds the same
configuration, checked before any file is written; the pack's other cells are added to it. An interrupted restore is
finished by running it again.
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
from clipood_zoo.fileio import write_bytes_atomic, write_text_atomic  # noqa: E402
from emojidg.paths import occupied  # noqa: E402
from emojidg.selection import extended  # noqa: E402
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


def paired(record: Dict, grid_runs: Set[str], selection: Dict) -> bool:
    """Whether the report compares (or may come to compare) this run's predictions: any run outside the grid, one of
    :func:`paired_grid_runs`, or a grid run of a (variant, domain) cell that ``selection`` does not hold yet."""
    return (record["phase"] != "grid" or record["run_id"] in grid_runs
            or record["domain"] not in selection.get(record["variant"], {}))


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
    rows_only = load_study(study, predictions=False)
    grid_runs = paired_grid_runs(rows_only)
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
        keep = paired(record, grid_runs, rows_only.selection)
        shutil.copyfile(rows, packed / rows.name)
        (packed / record_file.name).write_text(json.dumps({**record, KEPT_KEY: keep}, indent=2) + "\n")
        if keep:
            (packed / f"{record['run_id']}{PREDICTIONS_SUFFIX}.gz").write_bytes(packed_predictions(rows))
        counts["runs"] += 1
        counts["with_predictions"] += keep
    return counts


def same_result(existing: Path, data: bytes) -> bool:
    """Whether ``existing`` holds the result ``data`` restores into it: the same JSON, the pack's bookkeeping key
    (``predictions_kept``) aside, since the runner wrote the file without it and other whitespace."""
    def parsed(raw: bytes):
        value = json.loads(raw)
        return {k: v for k, v in value.items() if k != KEPT_KEY} if isinstance(value, dict) else value
    try:
        return parsed(existing.read_bytes()) == parsed(data)
    except ValueError:
        return False


def merged_selection(local: Path, packed: Dict) -> Dict:
    """The selection ``local`` (a runner folder's ``selection.json``, maybe absent) extended by the pack's cells. A cell
    both hold must agree: a cell is selected once, from its finished grid runs, and never moves after."""
    kept = json.loads(local.read_text()) if local.is_file() else {}
    for variant, cells in packed.items():
        for domain, cell in cells.items():
            if kept.get(variant, {}).get(domain, cell) != cell:
                raise ConfigError(f"{local} selects another configuration for {variant} held out on {domain} than the "
                                  "pack; restore into an empty --study folder, or pack this one first")
    return extended(kept, packed)


def restore_order(path: Path, data: bytes) -> int:
    """Where a file goes in a restore: predictions, rows, WiSE-FT records, then the records of the runs they derive
    from. The runner reads a run as done from its rows and derives missing WiSE-FT runs from a recorded run, so a
    restore cut off part-way leaves nothing the runner would act on wrongly; run again, it writes the rest."""
    if path.name.endswith(PREDICTIONS_SUFFIX):
        return 0
    if not path.name.endswith(RUN_SUFFIX):
        return 1
    return 2 if "derived_from" in json.loads(data) else 3


def restore(pack_dir: Path, study: Path) -> Dict[str, int]:
    """Write the result files of the pack ``pack_dir`` into the runner folder ``study``; returns counts for the
    summary line. Every file is checked against what ``study`` already holds before any is written. The order makes an
    interrupted restore finished by running it again (:func:`restore_order`), ``selection.json`` last."""
    selection_path = pack_dir / "selection.json"
    if not selection_path.is_file():
        raise ConfigError(f"{selection_path} is missing: --restore takes a folder pack_study.py wrote")
    files = {}
    for path in sorted((pack_dir / "results").glob("*.json*")):
        if path.name.endswith(".json.gz"):
            files[study / "results" / path.name.removesuffix(".gz")] = gzip.decompress(path.read_bytes())
        else:
            files[study / "results" / path.name] = path.read_bytes()
    clashes = [p for p, data in files.items() if p.exists() and not same_result(p, data)]
    if clashes:
        raise ConfigError(f"{clashes[0]} already holds another result than {pack_dir} ({len(clashes)} such files); "
                          "restore into an empty --study folder, or pack this one first")
    local_selection = study / "selection.json"
    selection = merged_selection(local_selection, json.loads(selection_path.read_text()))
    written = sorted((p for p in files if not p.exists()), key=lambda p: restore_order(p, files[p]))
    for path in written:
        write_bytes_atomic(path, files[path])
    if not local_selection.is_file() or json.loads(local_selection.read_text()) != selection:
        write_text_atomic(local_selection, json.dumps(selection, indent=2) + "\n")
        written.append(local_selection)
    return {"runs": sum(p.name.endswith(RUN_SUFFIX) for p in files), "written": len(written)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", type=Path, required=True, help="the runner's --out folder")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="the folder to commit (e.g. docs/emojidg/v2/peers_study)")
    where.add_argument("--restore", type=Path, metavar="PACK",
                       help="instead, write the pack PACK's result files back into --study, for the runner to resume")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier pack in --out")
    args = p.parse_args(argv)
    if args.restore is not None:
        try:
            counts = restore(args.restore, args.study)
        except (ClipoodError, OSError) as e:
            p.exit(2, f"pack_study.py: error: {e}\n")
        print(f"restored {counts['runs']} runs from {args.restore} into {args.study} ({counts['written']} files "
              "written, the rest already there)")
        return 0
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
