"""Hyperparameter selection of the EmojiDG study: DomainBed's training-domain validation, as a pure function.

Per (variant, held-out domain), the (lr, steps) whose mean source-domain val top-1 over its seeds is highest
is selected; ties go to fewer steps, then the smaller lr (the cheaper, gentler fine-tune). Only the
``source_val_top1`` of each run is read, so no held-out number can move a selection. run_benchmark.py
writes the result as ``OUT/selection.json``; report.py may import this module to check or redo it (it
imports nothing but the standard library).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

Selection = Dict[str, Dict[str, Dict[str, Any]]]  # variant -> domain -> the selected cell (selection.json)


def select(records: Iterable[Mapping[str, Any]]) -> Selection:
    """``{variant: {domain: {"lr", "steps", "source_val_top1", "seeds", "candidates": [...]}}}`` from run records.

    Each record needs ``variant``, ``domain``, ``lr``, ``steps``, ``seed`` and ``source_val_top1`` (other fields,
    held-out accuracy included, are ignored). ``source_val_top1`` of a cell is the mean over its seeds;
    ``candidates`` lists every (lr, steps) of the cell, best first.
    """
    cells: Dict[tuple, Dict[tuple, Dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        cells[r["variant"], r["domain"]][float(r["lr"]), int(r["steps"])][int(r["seed"])] = float(r["source_val_top1"])
    out: Selection = {}
    for (variant, domain), configs in sorted(cells.items()):
        candidates = [{"lr": lr, "steps": steps, "source_val_top1": statistics.mean(by_seed.values()),
                       "seeds": sorted(by_seed)} for (lr, steps), by_seed in configs.items()]
        candidates.sort(key=lambda c: (-c["source_val_top1"], c["steps"], c["lr"]))
        out.setdefault(variant, {})[domain] = {**candidates[0], "candidates": candidates}
    return out


def extended(kept: Selection, cells: Selection) -> Selection:
    """``kept`` with the (variant, domain) cells of ``cells`` put in (``cells`` win where both hold one): how a
    ``selection.json`` grows, cell by cell, and is never cut."""
    return {v: {**kept.get(v, {}), **cells.get(v, {})} for v in {**kept, **cells}}


def best_of(selection: Selection, variants: Sequence[str], domains: Sequence[str]) -> Optional[str]:
    """The variant of ``variants`` whose selected cells have the best mean source val top-1 over ``domains``
    (ties: the first in ``variants``); None while any of them lacks a selected cell for a domain."""
    means: List[tuple] = []
    for i, variant in enumerate(variants):
        cells = selection.get(variant, {})
        if any(d not in cells for d in domains):
            return None
        means.append((-statistics.mean(cells[d]["source_val_top1"] for d in domains), i, variant))
    return min(means)[2] if means else None
