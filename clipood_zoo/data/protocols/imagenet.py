"""ImageNet and its four shifts as distributed (paper Table 2: ImageNet, -V2, -Sketch, -A, -R).

Label order is the standard one: index ``i`` is the ``i``-th of the 1000 WordNet ids sorted, which is
the order of open_clip's ``IMAGENET_CLASSNAMES`` (CLIP's curated names, the catalog's ``IMAGENET``).
The wnid list and the 200-class subsets of ImageNet-A and ImageNet-R come from the files timm ships in
``timm/data/_info/`` (``imagenet_synsets.txt``, ``imagenet_{a,r}_synsets.txt``,
``imagenet_{a,r}_indices.txt``), which reproduce ``indices_in_1k`` of hendrycks/natural-adv-examples
(``eval.py``) and ``imagenet_r_wnids`` of hendrycks/imagenet-r (``eval.py``); they are checked on load
(1000 sorted unique wnids; 200 wnids each whose indices are their positions). Where timm's files are
absent, :func:`wnids_from_tree` takes the sorted folder names of an ImageNet train/val tree (and
insists on 1000 of them).

Distributed layouts (``src`` may be the folder below or the folder that holds it):

- ImageNet val: ``val/<wnid>/*.JPEG`` (after the usual ``valprep.sh`` or torchvision's ``ImageNet``),
  or the flat ``val/ILSVRC2012_val_XXXXXXXX.JPEG`` with a label file: ``<file> <index 0..999>`` lines
  (caffe's ``val.txt``), ``<file> <wnid>`` lines, or Kaggle's ``LOC_val_solution.csv``. The devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` numbers classes in the devkit's own order (not sorted
  wnids) and is refused with that explanation.
- ImageNet-V2: ``imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg`` (folder = class index).
- ImageNet-Sketch: ``sketch/<wnid>/*.JPEG`` (CoOp's instructions call the folder ``images/``).
- ImageNet-A / -R: ``imagenet-a/<wnid>/*.jpg`` / ``imagenet-r/<wnid>/*.jpg``, 200 wnids each, with a
  ``README.txt`` beside the folders.

Every shift is written as a 1000-class dataset (one domain, split ``test``), so the ImageNet model's
head applies unchanged; A and R add ``"eval_classes"`` (their 200 class indices) to ``_info.json`` and
are scored with the logits restricted to those columns (:func:`clipood_zoo.protocol_eval.evaluate_shift`;
``DatasetInfo.eval_classes``), as both original
repositories and CoOp/CLIPood evaluate them.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from ...errors import ConfigError, DatasetError
from ..catalog import IMAGENET
from ..converters import ConversionReport
from ._common import (Item, add_info_fields, image_files, missing_message, require_dir,
                      subfolders, unique_class_names, write_items)

_logger = logging.getLogger(__name__)
_WNID_RE = re.compile(r"^n\d{8}$")
SPLIT = "test"


def _timm_list(name: str) -> list[str]:
    try:
        text = resources.files("timm.data._info").joinpath(name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DatasetError(f"timm's {name} is not available ({e}); install timm>=0.9, or pass the wnid list "
                           "(wnids_from_tree on an ImageNet train or val folder).") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in label order (sorted), checked."""
    wnids = tuple(_timm_list("imagenet_synsets.txt"))
    _check_wnids(wnids, "timm's imagenet_synsets.txt")
    return wnids


def _check_wnids(wnids: Sequence[str], where: str) -> None:
    if len(wnids) != 1000 or len(set(wnids)) != 1000 or list(wnids) != sorted(wnids) or \
            not all(_WNID_RE.match(w) for w in wnids):
        raise DatasetError(f"{where} is not 1000 sorted unique wnids (n########): got {len(wnids)}.")


def wnids_from_tree(folder: str | os.PathLike) -> tuple[str, ...]:
    """Label order from an ImageNet train/val tree: its sorted ``n########`` folder names (must be 1000)."""
    wnids = tuple(n for n in subfolders(require_dir(Path(folder), "an ImageNet folder of wnid folders"))
                  if _WNID_RE.match(n))
    _check_wnids(wnids, f"the wnid folders of {folder}")
    return wnids


@lru_cache(maxsize=None)
def subset_indices(name: str) -> tuple[int, ...]:
    """Class indices (into the 1000) of ``'imagenet_a'`` or ``'imagenet_r'``, ascending, checked."""
    if name not in ("imagenet_a", "imagenet_r"):
        raise ConfigError(f"no 200-class subset called {name!r}; use 'imagenet_a' or 'imagenet_r'.")
    wnids = _timm_list(f"{name}_synsets.txt")
    indices = [int(i) for i in _timm_list(f"{name}_indices.txt")]
    all_wnids = imagenet_wnids()
    if len(wnids) != 200 or len(indices) != 200 or [all_wnids[i] for i in indices] != wnids:
        raise DatasetError(f"timm's {name} synset and index files disagree; reinstall timm.")
    return tuple(indices)


def subset_wnids(name: str) -> tuple[str, ...]:
    return tuple(imagenet_wnids()[i] for i in subset_indices(name))


@dataclass(frozen=True)
class Shift:
    domain: str  # domain name in _info.json, and the results column top1_<domain>
    folders: tuple[str, ...]  # the distributed folder name(s) that hold the class folders
    by_index: bool  # class folders named 0..999 (ImageNet-V2) rather than by wnid
    subset: Optional[str]  # the 200-class subset it is scored on
    num_images: Optional[int]  # as distributed, for the log (not enforced)


SHIFTS: Dict[str, Shift] = {
    "imagenet": Shift("imagenet", ("val",), False, None, 50000),
    "imagenet_v2": Shift("imagenet_v2", ("imagenetv2-matched-frequency-format-val",), True, None, 10000),
    "imagenet_sketch": Shift("imagenet_sketch", ("sketch", "images"), False, None, 50889),
    "imagenet_a": Shift("imagenet_a", ("imagenet-a",), False, "imagenet_a", 7500),
    "imagenet_r": Shift("imagenet_r", ("imagenet-r",), False, "imagenet_r", 30000),
}
OOD_SHIFTS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def shard_classes() -> list[str]:
    """The 1000 class names written to ``_info.json``: CLIP's names, the two repeats suffixed '_'."""
    return unique_class_names(IMAGENET.class_folders)


def _find(src: Path, shift: Shift) -> Path:
    require_dir(src, f"the {shift.domain} folder")
    for name in shift.folders:
        if (src / name).is_dir() and src.name != name:
            inner = subfolders(src / name)
            if inner and (shift.by_index or any(_WNID_RE.match(n) for n in inner)):
                return src / name
    return src


def _tree_items(root: Path, shift: Shift, wnids: Sequence[str]) -> list[Item]:
    """Items of ``root/<wnid or index>/<image>``, checking the class folders against what is expected."""
    if shift.by_index:
        expected = [str(i) for i in range(1000)]
    elif shift.subset:
        expected = list(subset_wnids(shift.subset))
    else:
        expected = list(wnids)
    present = subfolders(root)
    missing = [c for c in expected if c not in set(present)]
    unexpected = [c for c in present if c not in set(expected)]
    if missing or unexpected:
        raise DatasetError(missing_message(
            "class folder(s)", root, missing, unexpected,
            hint=f"{shift.domain} is distributed as {shift.folders[0]}/<{'class index' if shift.by_index else 'wnid'}>/"
                 f"<image> with {len(expected)} class folders."))
    label = {c: (int(c) if shift.by_index else wnids.index(c)) for c in expected}
    items = []
    for c in sorted(expected, key=label.get):
        files = image_files(root / c)
        if not files:
            raise DatasetError(f"{root / c} holds no images.")
        items += [Item(f, label[c], shift.domain, f"{c}/{f.name}") for f in files]
    return items


def convert_shift(kind: str, src: str | os.PathLike, out_dir: str | os.PathLike, *, shard_size: int = 1000,
                  label_file: Optional[str | os.PathLike] = None,
                  wnids: Optional[Sequence[str]] = None) -> ConversionReport:
    """Convert ImageNet val (``kind='imagenet'``) or a shift (``imagenet_v2``/``_sketch``/``_a``/``_r``)
    from its distributed layout into 1000-class shards, split ``test``, domain ``kind``.

    ``label_file`` is for a flat ImageNet val folder only. ``wnids`` overrides the label order (default:
    :func:`imagenet_wnids`).
    """
    if kind not in SHIFTS:
        raise ConfigError(f"unknown ImageNet set {kind!r}; one of {', '.join(SHIFTS)}.")
    shift = SHIFTS[kind]
    wnids = tuple(wnids) if wnids is not None else imagenet_wnids()
    _check_wnids(wnids, "the wnid list")
    root = _find(Path(src), shift)
    if kind == "imagenet" and (label_file is not None or not any(_WNID_RE.match(n) for n in subfolders(root))):
        items = _flat_val_items(root, label_file, wnids)
    else:
        if label_file is not None:
            raise ConfigError("label_file is only for a flat ImageNet val folder.")
        items = _tree_items(root, shift, wnids)
    if shift.num_images and len(items) != shift.num_images:
        _logger.warning("%s: %d images, the distributed set has %d", kind, len(items), shift.num_images)
    report = write_items(out_dir, SPLIT, items, name=kind, classes=shard_classes(), domains=[shift.domain],
                         shard_size=shard_size)
    extra: dict[str, Any] = {"protocol": "imagenet_shift", "class_ids": list(wnids)}
    if shift.subset:
        extra["eval_classes"] = list(subset_indices(shift.subset))
    add_info_fields(out_dir, **extra)
    return report


def _flat_val_items(root: Path, label_file: Optional[str | os.PathLike], wnids: Sequence[str]) -> list[Item]:
    if label_file is None:
        raise DatasetError(
            f"{root} holds no wnid folders, so it is the flat ImageNet val folder: pass its label file "
            "(caffe's val.txt '<file> <index>', '<file> <wnid>' lines, or Kaggle's LOC_val_solution.csv), or "
            "sort it into val/<wnid>/ with valprep.sh.")
    labels = read_val_labels(label_file, wnids)
    files = {f.name: f for f in image_files(root)}
    by_stem = {f.stem: f for f in files.values()}
    items, missing = [], []
    for name, label in sorted(labels.items()):
        f = files.get(name) or by_stem.get(name) or by_stem.get(Path(name).stem)
        if f is None:
            missing.append(name)
            continue
        items.append(Item(f, label, "imagenet", f.name))
    if missing:
        raise DatasetError(missing_message("image(s) named in the label file", root, missing))
    unlabelled = sorted(set(files) - {i.rel for i in items})
    if unlabelled:
        raise DatasetError(missing_message("label(s) for image(s)", Path(label_file), unlabelled))
    return items


def read_val_labels(label_file: str | os.PathLike, wnids: Sequence[str]) -> dict[str, int]:
    """{file name or stem: class index} from a flat-val label file (formats in the module docstring)."""
    path = Path(label_file)
    text = path.read_text(encoding="utf-8")
    index = {w: i for i, w in enumerate(wnids)}
    out: dict[str, int] = {}
    if text.startswith("ImageId,PredictionString"):
        for row in csv.DictReader(io.StringIO(text)):
            out[row["ImageId"]] = _label(row["PredictionString"].split()[0], index, path)
        return out
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if lines and all(len(parts) == 1 for parts in lines):
        raise DatasetError(
            f"{path} has one number per line: the devkit's ILSVRC2012_validation_ground_truth.txt, whose ids follow "
            "the devkit's meta.mat order, not the sorted-wnid order. Sort the images with valprep.sh or "
            "torchvision.datasets.ImageNet(root, split='val'), or use a '<file> <wnid>' label file.")
    for parts in lines:
        if len(parts) != 2:
            raise DatasetError(f"{path}: expected '<file> <label>' lines, got {' '.join(parts)!r}.")
        out[parts[0]] = _label(parts[1], index, path)
    return out


def _label(value: str, index: dict[str, int], path: Path) -> int:
    if value in index:
        return index[value]
    if value.isdigit() and 0 <= int(value) < len(index):
        return int(value)
    raise DatasetError(f"{path}: label {value!r} is neither a known wnid nor a class index 0..{len(index) - 1}.")


def restricted_top1(logits: torch.Tensor, target: torch.Tensor, classes: Sequence[int]) -> float:
    """Top-1 (percent) with the argmax taken over ``classes`` only; ``target`` are indices into all classes."""
    columns = torch.as_tensor(list(classes), device=logits.device)
    pred = columns[logits[:, columns].argmax(dim=1)]
    return 100.0 * (pred == target.to(logits.device)).float().mean().item()
