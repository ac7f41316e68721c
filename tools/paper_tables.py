#!/usr/bin/env python3
"""validate.py result rows -> the CLIPood paper's Tables 1-3, the paper's own numbers beside ours.

    python tools/paper_tables.py results/domainbed.csv results/imagenet.csv results/b2n.csv
    python tools/paper_tables.py clipood=results/clipood.csv zeroshot=results/zs.csv --table 1

Each argument is a CSV or JSON file of rows (validate.py's ``--results-file``, or
``python -m clipood_zoo.data.protocols validate-imagenet``), optionally ``label=path``: every label
becomes a method row (default label ``ours``). Rows for the same cell (several seeds) are averaged.

How a row is placed (explicit ``dataset``/``heldout`` fields win, so hand-written rows work too):

- Table 1 (DomainBed): a model whose cfg names a DomainBed dataset and held-out domain contributes its
  ``top1_<held-out folder>``; a row without a held-out domain (zero-shot CLIP) contributes every
  ``top1_<domain>`` of the one DomainBed dataset whose domain folders hold all its ``top1_`` columns.
  A dataset's number is the mean over its held-out domains, "Avg" the mean of the five datasets.
- Table 2 (ImageNet): ``top1_imagenet``, ``top1_imagenet_v2``, ``_sketch``, ``_a``, ``_r``; A and R rows
  must say ``eval_classes`` 200 (scored on their 200 classes), else they are refused.
  "OOD avg" is the mean of the four shifts.
- Table 3 (base-to-new): rows with ``base_top1``/``new_top1`` whose dataset is a CoOp dataset; H per
  dataset is the harmonic mean of its base and new; the average row's H is the harmonic mean of the
  average base and new (as CoCoOp reports it).

A cell is left blank when any of its parts is missing. Paper numbers: only those known for certain
(Table 1 Avg of CLIPood 78.6, zero-shot CLIP 70.2, ERM 76.7; Table 2 CLIPood ImageNet 71.6 and OOD
average 60.4; Table 3 average base 83.9, new 74.5, H 78.9); the per-dataset cells are blank.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import clipood_zoo
from clipood_zoo.data.catalog import DOMAINBED
from clipood_zoo.data.protocols.base2new import DATASETS as B2N_DATASETS
from clipood_zoo.data.protocols.imagenet import OOD_SHIFTS, SHIFTS
from clipood_zoo.errors import ConfigError
from clipood_zoo.metrics import harmonic_mean

DB_ORDER = ("pacs", "vlcs", "officehome", "terraincognita", "domainnet")
DB_TITLES = {"pacs": "PACS", "vlcs": "VLCS", "officehome": "OfficeHome", "terraincognita": "TerraInc",
             "domainnet": "DomainNet"}
IN_ORDER = ("imagenet",) + OOD_SHIFTS
IN_TITLES = {"imagenet": "ImageNet", "imagenet_v2": "-V2", "imagenet_sketch": "-Sketch", "imagenet_a": "-A",
             "imagenet_r": "-R"}
B2N_ORDER = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101", "fgvc_aircraft",
             "sun397", "dtd", "eurosat", "ucf101")
B2N_TITLES = {"imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
              "stanford_cars": "StanfordCars", "flowers102": "Flowers102", "food101": "Food101",
              "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DTD", "eurosat": "EuroSAT",
              "ucf101": "UCF101"}

# The paper's numbers we are sure of (CLIPood, ICML 2023); everything else is left blank.
PAPER_TABLE1 = {"CLIPood (paper)": {"avg": 78.6}, "ERM (paper)": {"avg": 76.7},
                "zero-shot CLIP (paper)": {"avg": 70.2}}
PAPER_TABLE2 = {"CLIPood (paper)": {"imagenet": 71.6, "ood_avg": 60.4}}
PAPER_TABLE3 = {"CLIPood (paper)": {"average": (83.9, 74.5, 78.9)}}


# ----------------------------------------------------------------------------- reading rows
def read_rows(path: str | Path) -> List[Dict[str, Any]]:
    """Rows of a CSV or JSON results file, numbers as floats (blank CSV cells dropped)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith(("[", "{")):
        rows = json.loads(text)
        rows = rows if isinstance(rows, list) else [rows]
    else:
        rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(text.splitlines())]
    return [{k: _number(v) for k, v in r.items()} for r in rows]


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _cfg(model: Any) -> Tuple[Optional[str], Optional[str]]:
    """(dataset, held-out domain slug) from a zoo model's cfg; (None, None) for other names."""
    if isinstance(model, str) and clipood_zoo.is_model(model):
        cfg = clipood_zoo.get_pretrained_cfg(model)
        return cfg.dataset, cfg.heldout_domain
    return None, None


def _top1_columns(row: Dict[str, Any]) -> Dict[str, float]:
    return {k[5:]: float(v) for k, v in row.items()
            if k.startswith("top1_") and k != "top1_err" and isinstance(v, (int, float)) and not math.isnan(v)}


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- Table 1
def domainbed_cells(rows: Iterable[Dict[str, Any]]) -> Dict[Tuple[str, str], List[float]]:
    """{(dataset, held-out domain folder): [accuracies]} from the rows that are DomainBed results."""
    cells: Dict[Tuple[str, str], List[float]] = defaultdict(list)
    for row in rows:
        dataset, heldout = row.get("dataset"), row.get("heldout")
        cfg_dataset, cfg_heldout = _cfg(row.get("model"))
        dataset, heldout = dataset or cfg_dataset, heldout or cfg_heldout
        tops = _top1_columns(row)
        if dataset is None:
            matches = [n for n, s in DOMAINBED.items() if tops and set(tops) <= {d.folder for d in s.domains}]
            if len(matches) != 1:
                continue  # not a DomainBed row, or ambiguous (only 'sketch': PACS or DomainNet) -> give 'dataset'
            dataset = matches[0]
        if dataset not in DOMAINBED:
            continue
        spec = DOMAINBED[dataset]
        if heldout is not None:
            folder = spec.domain(str(heldout)).folder
            value = tops.get(folder, row.get("top1") if len(tops) <= 1 else None)
            if value is not None:
                cells[(dataset, folder)].append(float(value))
        else:
            for folder, value in tops.items():
                cells[(dataset, folder)].append(value)
    return cells


def table1(labelled: Dict[str, List[Dict[str, Any]]]) -> Tuple[List[str], List[List[str]], List[List[str]]]:
    """(header, method rows, per-domain rows) of Table 1."""
    header = ["Method"] + [DB_TITLES[d] for d in DB_ORDER] + ["Avg"]
    rows, detail = [], []
    per_label = {label: domainbed_cells(r) for label, r in labelled.items()}
    for label, cells in per_label.items():
        values = {}
        for d in DB_ORDER:
            per_domain = [_mean(cells.get((d, dom.folder), [])) for dom in DOMAINBED[d].domains]
            values[d] = _mean(per_domain) if all(v is not None for v in per_domain) else None
        avg = _mean(list(values.values())) if all(v is not None for v in values.values()) else None
        rows.append([label] + [_fmt(values[d]) for d in DB_ORDER] + [_fmt(avg)])
    for label, paper in PAPER_TABLE1.items():
        rows.append([label] + [_fmt(paper.get(d)) for d in DB_ORDER] + [_fmt(paper.get("avg"))])
    for d in DB_ORDER:
        for dom in DOMAINBED[d].domains:
            if any((d, dom.folder) in c for c in per_label.values()):
                detail.append([DB_TITLES[d], dom.folder] + [_fmt(_mean(c.get((d, dom.folder), [])), n=len(c.get((d, dom.folder), [])))
                                                           for c in per_label.values()])
    return header, rows, detail


# ----------------------------------------------------------------------------- Table 2
def imagenet_cells(rows: Iterable[Dict[str, Any]]) -> Dict[str, List[float]]:
    cells: Dict[str, List[float]] = defaultdict(list)
    for row in rows:
        tops = _top1_columns(row)
        names = [row["dataset"]] if row.get("dataset") in SHIFTS else [n for n in IN_ORDER if n in tops]
        for name in names:
            value = tops.get(name, row.get("top1"))
            if value is None:
                continue
            if SHIFTS[name].subset and int(row.get("eval_classes", 0) or 0) != 200:
                raise ConfigError(
                    f"row of {row.get('model')!r} on {name} was not scored on its 200 classes (eval_classes="
                    f"{row.get('eval_classes')!r}); evaluate it with `python -m clipood_zoo.data.protocols "
                    "validate-imagenet`, which restricts the logits.")
            cells[name].append(float(value))
    return cells


def table2(labelled: Dict[str, List[Dict[str, Any]]]) -> Tuple[List[str], List[List[str]]]:
    header = ["Method"] + [IN_TITLES[n] for n in IN_ORDER] + ["OOD avg"]
    rows = []
    for label, r in labelled.items():
        cells = imagenet_cells(r)
        values = {n: _mean(cells.get(n, [])) for n in IN_ORDER}
        ood = [values[n] for n in OOD_SHIFTS]
        rows.append([label] + [_fmt(values[n]) for n in IN_ORDER] +
                    [_fmt(_mean(ood) if all(v is not None for v in ood) else None)])
    for label, paper in PAPER_TABLE2.items():
        rows.append([label] + [_fmt(paper.get(n)) for n in IN_ORDER] + [_fmt(paper.get("ood_avg"))])
    return header, rows


# ----------------------------------------------------------------------------- Table 3
def b2n_cells(rows: Iterable[Dict[str, Any]]) -> Dict[str, List[Tuple[float, float]]]:
    cells: Dict[str, List[Tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if not isinstance(row.get("base_top1"), float) or not isinstance(row.get("new_top1"), float):
            continue
        dataset = row.get("dataset") or _cfg(row.get("model"))[0]
        if dataset not in B2N_DATASETS:
            matches = [n for n in _top1_columns(row) if n in B2N_DATASETS]
            dataset = matches[0] if len(matches) == 1 else None
        if dataset is None:
            continue
        cells[dataset].append((row["base_top1"], row["new_top1"]))
    return cells


def table3(labelled: Dict[str, List[Dict[str, Any]]]) -> Tuple[List[str], List[List[str]]]:
    labels = list(labelled) + list(PAPER_TABLE3)
    header = ["Dataset"] + [f"{label} {m}" for label in labels for m in ("Base", "New", "H")]
    per_label = {label: b2n_cells(r) for label, r in labelled.items()}
    means: Dict[str, Dict[str, Optional[Tuple[float, float, float]]]] = {}
    for label, cells in per_label.items():
        means[label] = {}
        for d in B2N_ORDER:
            if cells.get(d):
                b, n = _mean([c[0] for c in cells[d]]), _mean([c[1] for c in cells[d]])
                means[label][d] = (b, n, harmonic_mean(b, n))
            else:
                means[label][d] = None
        if all(means[label][d] is not None for d in B2N_ORDER):
            b = _mean([means[label][d][0] for d in B2N_ORDER])
            n = _mean([means[label][d][1] for d in B2N_ORDER])
            means[label]["average"] = (b, n, harmonic_mean(b, n))
        else:
            means[label]["average"] = None
    for label, paper in PAPER_TABLE3.items():
        means[label] = {d: paper.get(d) for d in ("average",) + B2N_ORDER}
    rows = []
    for d in ("average",) + B2N_ORDER:
        title = "Average" if d == "average" else B2N_TITLES[d]
        row = [title]
        for label in labels:
            cell = means[label].get(d)
            row += [_fmt(v) for v in cell] if cell else ["", "", ""]
        rows.append(row)
    return header, rows


# ----------------------------------------------------------------------------- output
def _fmt(value: Optional[float], n: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.1f}" + (f" (n={n})" if n > 1 else "")


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(labelled: Dict[str, List[Dict[str, Any]]], tables: Sequence[int] = (1, 2, 3)) -> str:
    out = []
    if 1 in tables:
        header, rows, detail = table1(labelled)
        out += ["## Table 1: DomainBed, leave-one-domain-out top-1 (training-domain validation)", "",
                markdown(header, rows), ""]
        if detail:
            out += ["Per held-out domain (mean over rows; n = rows averaged):", "",
                    markdown(["Dataset", "Held-out"] + list(labelled), detail), ""]
    if 2 in tables:
        header, rows = table2(labelled)
        out += ["## Table 2: ImageNet (16 shots) and its shifts, top-1 (-A, -R on their 200 classes)", "",
                markdown(header, rows), ""]
    if 3 in tables:
        header, rows = table3(labelled)
        out += ["## Table 3: base-to-new on CoOp's 11 datasets (16 shots), top-1 and harmonic mean", "",
                markdown(header, rows), ""]
    return "\n".join(out)


def parse_inputs(specs: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
    labelled: Dict[str, List[Dict[str, Any]]] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            label, path = "ours", spec
        if not Path(path).is_file():
            raise ConfigError(f"results file {path!r} does not exist.")
        labelled.setdefault(label, []).extend(read_rows(path))
    return labelled


def main(argv: Optional[Sequence[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result files (CSV/JSON), optionally label=path")
    p.add_argument("--table", type=int, choices=(1, 2, 3), action="append", help="only these tables (default all)")
    p.add_argument("--output", default=None, help="write the markdown here instead of stdout")
    args = p.parse_args(argv)
    try:
        text = render(parse_inputs(args.results), args.table or (1, 2, 3))
    except ConfigError as e:
        p.exit(2, f"paper_tables.py: error: {e}\n")
    if args.output:
        from clipood_zoo.fileio import write_text_atomic
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
