"""Base-to-new generalisation on CoOp's 11 datasets (paper Table 3), from CoOp's own split files.

Protocol (CoOp/CoCoOp, ``KaiyangZhou/CoOp`` ``datasets/*.py`` and Dassl's ``DatasetBase``):

- splits: ``split_zhou_<Dataset>.json`` = ``{"train"|"val"|"test": [[relative_path, label, classname], ...]}``,
  paths relative to the dataset's image folder (:data:`clipood_zoo.data.catalog.BASE2NEW`). FGVCAircraft has no such file
  (``variants.txt`` + ``images_variant_{train,val,test}.txt``); ImageNet has none either
  (``images/train/<wnid>``, test = ``images/val/<wnid>``, names from ``classnames.txt``, no val split).
- few-shot: Dassl's ``generate_fewshot_dataset`` — group by label in order of first appearance,
  ``random.sample(items, k)`` per label (all of them when fewer, no repeats); train with ``k`` shots
  then val with ``min(k, 4)``, from one ``random.Random(seed)``. CoOp seeds the global ``random`` with
  ``cfg.SEED`` just before, so this reproduces its ``shot_<k>-seed_<s>.pkl`` as long as nothing else drew
  from ``random`` in between (not verifiable offline). CoOp/CoCoOp report seeds 1, 2, 3; CLIPood's
  ``converter_dassl.py`` uses seed 0.
- base/new: labels sorted, ``m = math.ceil(n / 2)``, base = the first ``m``, new = the rest
  (``OxfordPets.subsample_classes``). Shards keep all classes and declare ``base_classes``/``new_classes``;
  train with ``--train-classes base``; validate.py on ``test`` scores base and new each with the
  classifier restricted to its own classes, and their harmonic mean.
"""
from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from ...errors import DatasetError
from ..catalog import BASE2NEW as DATASETS  # noqa: F401  (the table, re-exported where callers look for it)
from ..catalog import CoopDataset, coop_dataset
from ..converters import ConversionReport
from ..info import path_inside
from ._common import Item, add_info_fields, image_files, missing_message, require_dir, subfolders, \
    unique_class_names, write_items


@dataclass(frozen=True)
class Entry:
    """One line of a CoOp split: image path relative to the image folder, label, class name."""

    path: str
    label: int
    classname: str


def read_split_file(path: str | os.PathLike) -> Dict[str, List[Entry]]:
    """CoOp's ``split_zhou_*.json``, checked: the three splits, ``[path, label, classname]`` entries,
    one class name per label, labels ``0..n-1`` all used."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read CoOp split file {path} ({e}); download it from CoOp's DATASETS.md.") from None
    if not isinstance(raw, dict) or any(k not in raw for k in ("train", "val", "test")):
        raise DatasetError(f"{path}: expected an object with 'train', 'val' and 'test' lists.")
    out = {}
    for split in ("train", "val", "test"):
        entries = []
        for e in raw[split]:
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[2], str)):
                raise DatasetError(f"{path}: {split} entry {e!r} is not [relative_path, label, classname].")
            entries.append(Entry(e[0], int(e[1]), e[2]))
        out[split] = entries
    class_names(out, where=str(path))
    return out


def class_names(splits: Dict[str, List[Entry]], where: str = "the split") -> List[str]:
    """Class names in label order, checking one name per label and contiguous labels."""
    names: Dict[int, str] = {}
    for entries in splits.values():
        for e in entries:
            if names.setdefault(e.label, e.classname) != e.classname:
                raise DatasetError(f"{where}: label {e.label} is called both {names[e.label]!r} and {e.classname!r}.")
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{where}: labels are not 0..{len(names) - 1}.")
    return [names[i] for i in range(len(names))]


def read_fgvc_aircraft(root: str | os.PathLike) -> Dict[str, List[Entry]]:
    """FGVCAircraft's ``data/`` folder: ``variants.txt`` (label order) and ``images_variant_<split>.txt``
    lines ``<image id> <variant name>``; images are ``images/<id>.jpg`` (as CoOp's ``fgvc_aircraft.py``)."""
    root = Path(root)
    names = [line.strip() for line in (root / "variants.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    label = {n: i for i, n in enumerate(names)}
    out = {}
    for split in ("train", "val", "test"):
        entries = []
        for line in (root / f"images_variant_{split}.txt").read_text(encoding="utf-8").splitlines():
            if line.strip():
                image_id, _, variant = line.strip().partition(" ")
                if variant not in label:
                    raise DatasetError(f"{root}/images_variant_{split}.txt: variant {variant!r} not in variants.txt.")
                entries.append(Entry(f"{image_id}.jpg", label[variant], variant))
        out[split] = entries
    return out


def read_imagenet(root: str | os.PathLike) -> Dict[str, List[Entry]]:
    """CoOp's ``imagenet/``: ``images/train/<wnid>/*`` and ``images/val/<wnid>/*`` (test), labels = sorted
    wnids, names from ``classnames.txt`` (``<wnid> <name>`` lines) or else CLIP's names (the same list).

    CoOp lists each class folder unsorted (``os.listdir`` order); here it is sorted by name, so ImageNet's
    few-shot draw matches CoOp's only where the two orders agree.
    """
    from .imagenet import imagenet_wnids, shard_classes

    root = Path(root)
    images = require_dir(root / "images", "imagenet/images/{train,val}/<wnid>/ (CoOp's layout)")
    wnids = list(imagenet_wnids())
    names_file = root / "classnames.txt"
    if names_file.is_file():
        by_wnid = dict(line.strip().split(" ", 1) for line in names_file.read_text(encoding="utf-8").splitlines()
                       if line.strip())
        names = [by_wnid[w] for w in wnids]
    else:
        names = shard_classes()
    out = {}
    for split, folder in (("train", "train"), ("test", "val")):
        base = require_dir(images / folder, f"one folder per wnid in images/{folder}")
        present = set(subfolders(base))
        missing = [w for w in wnids if w not in present]
        if missing:
            raise DatasetError(missing_message("wnid folder(s)", base, missing))
        out[split] = [Entry(f"{folder}/{w}/{f.name}", i, names[i]) for i, w in enumerate(wnids)
                      for f in image_files(base / w)]
    return out


def fewshot(entries: Sequence[Entry], num_shots: int, rng: random.Random) -> List[Entry]:
    """Dassl's ``generate_fewshot_dataset`` (``repeat=False``) with ``rng`` in place of the global random."""
    if num_shots < 1:
        return list(entries)
    by_label: Dict[int, List[Entry]] = {}
    for e in entries:
        by_label.setdefault(e.label, []).append(e)
    out: List[Entry] = []
    for items in by_label.values():
        out += rng.sample(items, num_shots) if len(items) >= num_shots else items
    return out


def base_new_split(num_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's halves: base = labels below ``ceil(n / 2)``, new = the rest."""
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def read_dataset(dataset: str | CoopDataset, src: str | os.PathLike) -> Dict[str, List[Entry]]:
    """The full (not few-shot) splits of ``src`` = CoOp's ``$DATA/<folder>`` (or that folder's parent)."""
    spec = dataset if isinstance(dataset, CoopDataset) else coop_dataset(dataset)
    root = dataset_root(spec, src)
    if spec.name == "imagenet":
        return read_imagenet(root)
    if spec.name == "fgvc_aircraft":
        return read_fgvc_aircraft(root)
    split_path = root / spec.split_file
    if not split_path.is_file():
        raise DatasetError(f"{split_path} is missing: download {spec.split_file} (links in CoOp's DATASETS.md) "
                           f"into {root}.")
    return read_split_file(split_path)


def dataset_root(dataset: str | CoopDataset, src: str | os.PathLike) -> Path:
    """CoOp's ``$DATA/<folder>``: ``src`` itself, or ``src/<folder>`` when ``src`` is ``$DATA``."""
    spec = dataset if isinstance(dataset, CoopDataset) else coop_dataset(dataset)
    root = Path(src)
    marker = spec.split_file or ("variants.txt" if spec.name == "fgvc_aircraft" else spec.image_dir)
    if not (root / marker).exists() and (root / spec.folder).is_dir():
        root = root / spec.folder
    return require_dir(root, f"CoOp's {spec.folder}/ folder")


def image_root(dataset: str | CoopDataset, src: str | os.PathLike) -> Path:
    """The folder the split's paths are relative to."""
    spec = dataset if isinstance(dataset, CoopDataset) else coop_dataset(dataset)
    root = dataset_root(spec, src)
    return root / spec.image_dir if spec.image_dir else root


def convert(dataset: str | CoopDataset, src: str | os.PathLike, out_dir: str | os.PathLike, *, shots: int = 16,
            seed: int = 1, shard_size: int = 1000) -> ConversionReport:
    """CoOp's data for ``dataset`` -> shards: ``train`` (``shots`` per class), ``val`` (``min(shots, 4)``;
    none for ImageNet, whose val is its test), ``test`` (all), every class kept, base/new declared.
    ``shots=0`` keeps the full train and val splits."""
    spec = dataset if isinstance(dataset, CoopDataset) else coop_dataset(dataset)
    splits = read_dataset(spec, src)
    names = class_names(splits, where=f"{spec.name} at {src}")
    if len(names) != spec.num_classes:
        raise DatasetError(f"{spec.name}: the split lists {len(names)} classes, CoOp's has {spec.num_classes}.")
    rng = random.Random(seed)
    chosen = {"train": fewshot(splits["train"], shots, rng)}
    if "val" in splits:
        chosen["val"] = fewshot(splits["val"], min(shots, 4), rng) if shots >= 1 else splits["val"]
    chosen["test"] = splits["test"]
    images = image_root(spec, src)
    outside = [e.path for entries in chosen.values() for e in entries if path_inside(images, e.path) is None]
    if outside:  # the split file came with the data: it may name images, never files elsewhere
        raise DatasetError(f"the split of {spec.name} lists path(s) outside {images}: {outside[:5]}; "
                           f"use CoOp's own split file.")
    missing = [e.path for entries in chosen.values() for e in entries if not (images / e.path).is_file()]
    if missing:
        raise DatasetError(missing_message("image file(s) listed in the split", images, missing,
                                           hint=f"paths are relative to {spec.folder}/{spec.image_dir}"))
    base, new = base_new_split(len(names))
    classes = unique_class_names(names)
    report = None
    for split, entries in chosen.items():
        items = [Item(images / e.path, e.label, spec.name, e.path) for e in entries]
        report = write_items(out_dir, split, items, name=spec.name, classes=classes, domains=[spec.name],
                             base_classes=base, new_classes=new, shard_size=shard_size, report=report)
    add_info_fields(out_dir, protocol="base2new", dataset=spec.name, shots=shots, fewshot_seed=seed,
                    template=spec.template)
    return report
