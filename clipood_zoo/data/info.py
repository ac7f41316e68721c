"""``_info.json``: what a folder of shards holds, read once and checked up front.

The file is timm's WebDataset info format (``timm/data/readers/reader_wds.py``), so timm's own reader
can open our shards, plus the fields a domain-generalisation benchmark needs::

    {"name": "pacs",
     "classes": ["dog", ...],                 # index = label stored in each sample's .cls
     "domains": ["art_painting", ...],        # each sample's .json names one of them
     "base_classes": [0, 2, ...],             # optional, CoOp-style base-to-new split (class indices)
     "new_classes": [1, 3, ...],
     "eval_classes": [6, 11, ...],            # optional, the classes it is scored on (ImageNet-A/-R's 200)
     "splits": {"train": {"name": "train", "num_samples": 8, "filenames": ["train-000000.tar"],
                          "shard_lengths": [8],
                          "domain_class_counts": [[...], ...],   # optional [domain][class] counts
                          "shard_domains": [[0, 1]]}}}           # optional domains in each shard

The two optional per-split fields are written by :mod:`clipood_zoo.data.writer`; they let a loader
count a filtered split without reading it and skip shards that hold none of the wanted domains.
Validation happens here so that a broken folder fails at start-up with the file and the fix in the
message, not minutes later inside a DataLoader worker.

A dataset is data: every name in ``_info.json`` must be a plain relative file name under the dataset
folder (:func:`check_shard_name`, after timm's brace notation is expanded), so that no name can be read
as a ``pipe:`` command or a URL by webdataset's ``gopen`` or reach outside the folder (``..``, absolute
paths, escaping symlinks). The folder itself may be a URL (:mod:`clipood_zoo.data.remote`): the names
are then joined to it, never opened on their own.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Optional, Sequence

from braceexpand import braceexpand

from ..errors import ConfigError, DatasetError
from .remote import DEFAULT_RETRY, Location, RetryPolicy, is_remote, join, read_remote, resolve_location

INFO_FILENAME = "_info.json"
MAX_SHARDS = 1_000_000  # shards one split may list (brace patterns included)
CLASS_SUBSETS = ("all", "base", "new")
# A shard name: folder/file parts of letters, digits, '.', '_' and '-', none starting with '.' or '-'.
# No ':' (so no 'pipe:', 'file:', 'http:' or drive letter), no spaces, ';', '|', '$', backslashes or '..'.
_SHARD_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
# 'scheme:' as webdataset's gopen and fsspec read it (two letters at least, so 'C:' is a Windows drive).
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


@dataclass(frozen=True)
class SplitInfo:
    """One split: its shards (relative to the dataset folder) and how many samples each holds."""

    name: str
    num_samples: int
    filenames: tuple[str, ...]
    shard_lengths: tuple[int, ...]
    domain_class_counts: Optional[tuple[tuple[int, ...], ...]] = None
    shard_domains: Optional[tuple[tuple[int, ...], ...]] = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "num_samples": self.num_samples,
            "filenames": list(self.filenames),
            "shard_lengths": list(self.shard_lengths),
        }
        if self.domain_class_counts is not None:
            out["domain_class_counts"] = [list(row) for row in self.domain_class_counts]
        if self.shard_domains is not None:
            out["shard_domains"] = [list(row) for row in self.shard_domains]
        return out


@dataclass(frozen=True)
class DatasetInfo:
    """A validated ``_info.json``; ``root`` is where it and the shards are: a local folder (``Path``) or a URL
    (``str``, see :mod:`clipood_zoo.data.remote`)."""

    root: Location
    name: str
    classes: tuple[str, ...]
    domains: tuple[str, ...]
    splits: dict[str, SplitInfo]
    base_classes: Optional[tuple[int, ...]] = None
    new_classes: Optional[tuple[int, ...]] = None
    eval_classes: Optional[tuple[int, ...]] = None  # scored over these classes only (None: all)

    @property
    def path(self) -> Location:
        return join(self.root, INFO_FILENAME)

    def split(self, name: str) -> SplitInfo:
        """The split called ``name``; the error lists the splits there are."""
        if name not in self.splits:
            raise DatasetError(
                f"{self.path} has no split {name!r}; it has {sorted(self.splits)}. "
                f"Pick one of those or write the split with clipood_zoo.data.writer.write_split.")
        return self.splits[name]

    def shard_paths(self, split: str) -> list[str]:
        return [str(join(self.root, f)) for f in self.split(split).filenames]

    def domain_index(self, name: str) -> int:
        """Index of domain ``name`` (the ``domain_idx`` a loader yields)."""
        try:
            return self.domains.index(name)
        except ValueError:
            raise ConfigError(
                f"unknown domain {name!r} for dataset {self.name!r} ({self.path}); "
                f"its domains are {list(self.domains)}.") from None

    def class_subset(self, which: str) -> tuple[int, ...]:
        """Class indices of ``'all'`` classes or of the CoOp-style ``'base'``/``'new'`` halves."""
        if which not in CLASS_SUBSETS:
            raise ConfigError(f"class subset must be one of {CLASS_SUBSETS}, got {which!r}.")
        if which == "all":
            return tuple(range(len(self.classes)))
        subset = self.base_classes if which == "base" else self.new_classes
        if subset is None:
            raise DatasetError(
                f"dataset {self.name!r} ({self.path}) defines no base/new split of its classes; use "
                f"'all', or convert it again with base classes (--base-classes).")
        if not subset:
            raise DatasetError(
                f"dataset {self.name!r} ({self.path}) has an empty '{which}_classes' list, so there is nothing to "
                f"train or evaluate on with {which!r}; use 'all', or convert it again with a non-empty base split.")
        return subset

    def domain_indices(self, names: Optional[Sequence[str] | str]) -> Optional[tuple[int, ...]]:
        """Domain names -> sorted indices (None keeps all); unknown names raise with the list of domains."""
        if names is None:
            return None
        if isinstance(names, str):
            names = [names]
        return tuple(sorted({self.domain_index(n) for n in names}))

    def class_indices(self, classes: Optional[Sequence[int] | str]) -> Optional[tuple[int, ...]]:
        """``'all'``/``'base'``/``'new'`` or class indices -> validated indices in the order given."""
        if classes is None:
            return None
        if isinstance(classes, str):
            return self.class_subset(classes)
        indices = tuple(int(c) for c in classes)
        bad = [c for c in indices if not 0 <= c < len(self.classes)]
        if bad:
            raise ConfigError(f"class indices {bad[:5]} out of range for dataset {self.name!r} "
                              f"({len(self.classes)} classes).")
        if len(set(indices)) != len(indices):
            raise ConfigError(f"class indices {list(indices)} contain duplicates.")
        return indices

    def count(self, split: str, domains: Optional[Iterable[int]] = None,
              classes: Optional[Iterable[int]] = None) -> Optional[int]:
        """Samples of ``split`` in the given domain/class indices (all when None).

        None when the filter needs per-domain/class counts the file does not record (shards written by
        another tool); :func:`clipood_zoo.data.pipeline.count_samples` then scans the shards.
        """
        info = self.split(split)
        if domains is None and classes is None:
            return info.num_samples
        if info.domain_class_counts is None:
            return None
        domain_set = set(range(len(self.domains)) if domains is None else domains)
        class_set = set(range(len(self.classes)) if classes is None else classes)
        return sum(n for d, row in enumerate(info.domain_class_counts) if d in domain_set
                   for c, n in enumerate(row) if c in class_set)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "classes": list(self.classes), "domains": list(self.domains)}
        if self.base_classes is not None:
            out["base_classes"] = list(self.base_classes)
            out["new_classes"] = list(self.new_classes or ())
        if self.eval_classes is not None:
            out["eval_classes"] = list(self.eval_classes)
        out["splits"] = {name: s.to_json() for name, s in self.splits.items()}
        return out


def check_shard_name(name: str) -> Optional[str]:
    """Why ``name`` (from a dataset's own files) is not a safe shard name, or None when it is.

    Names are allow-listed rather than known-bad ones rejected, because whoever hands over a dataset
    picks them and whatever opens them (webdataset's ``gopen``, fsspec) may read a prefix as a command.
    """
    if _URL_RE.match(name):
        return "it is a URL or command, not the name of a file in the dataset folder"
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        return "it must be a path inside the dataset folder"
    if not _SHARD_NAME_RE.fullmatch(name):
        return ("a shard name may hold only letters, digits, '.', '_', '-' and '/' between folders, "
                "no part starting with '.' or '-'")
    return None


def path_inside(root: Path, name: str) -> Optional[Path]:
    """``root / name`` with symlinks resolved, or None when that leaves ``root`` (``..``, absolute, link)."""
    target = (root / name).resolve()
    return target if target.is_relative_to(root.resolve()) else None


def read_dataset_info(data_dir: str | os.PathLike, retry: RetryPolicy = DEFAULT_RETRY) -> DatasetInfo:
    """Read and validate ``_info.json`` of a folder (including that every listed shard exists) or of a URL
    (``http(s)://``, ``file://``, fsspec; remote shards are checked when they are read)."""
    root = resolve_location(data_dir)
    path = join(root, INFO_FILENAME)
    if is_remote(root):
        try:
            text = read_remote(str(path), retry)
        except DatasetError as e:
            raise DatasetError(f"no readable {INFO_FILENAME} at {root}: {e}") from None
        return parse_dataset_info(_decode_json(text, path), root, check_files=False)
    if not path.is_file():
        raise DatasetError(
            f"no {INFO_FILENAME} in {root}: it is not a clipood-zoo dataset folder. Convert the images with "
            f"`python -m clipood_zoo.data.convert domainbed|imagefolder SRC {root}`.")
    return parse_dataset_info(_decode_json(path.read_bytes(), path), root, check_files=True)


def _decode_json(data: bytes, path: Location) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e or type(e).__name__}); convert the dataset again.") from None


def parse_dataset_info(raw: Any, root: Location, check_files: bool = True) -> DatasetInfo:
    """Build a :class:`DatasetInfo` from the decoded JSON, raising :class:`DatasetError` on any flaw."""
    path = join(root, INFO_FILENAME)

    def fail(problem: str) -> DatasetError:
        return DatasetError(f"{path}: {problem}. Fix the file or convert the dataset again.")

    if not isinstance(raw, dict):
        raise fail("the top level must be a JSON object")
    missing = [k for k in ("name", "classes", "domains", "splits") if k not in raw]
    if missing:
        raise fail(f"missing key(s) {missing}")
    classes = _str_list(raw["classes"], "classes", fail)
    domains = _str_list(raw["domains"], "domains", fail)
    if not classes or not domains:
        raise fail("'classes' and 'domains' must not be empty")
    if ("base_classes" in raw) != ("new_classes" in raw):
        raise fail("'base_classes' and 'new_classes' must be given together")
    base = new = None
    if "base_classes" in raw:
        base = _index_list(raw["base_classes"], len(classes), "base_classes", fail)
        new = _index_list(raw["new_classes"], len(classes), "new_classes", fail)
        if set(base) & set(new):
            raise fail(f"classes {sorted(set(base) & set(new))} are in both 'base_classes' and 'new_classes'")
    scored = None
    if raw.get("eval_classes") is not None:
        scored = _index_list(raw["eval_classes"], len(classes), "eval_classes", fail)
        if not scored or len(set(scored)) != len(scored):
            raise fail("'eval_classes' must be a non-empty list of distinct class indices")
    if not isinstance(raw["splits"], dict):
        raise fail("'splits' must be an object {split name: split info}")
    splits = {name: _parse_split(name, s, len(domains), len(classes), fail)
              for name, s in raw["splits"].items()}
    if check_files:
        for s in splits.values():
            outside = [f for f in s.filenames if path_inside(root, f) is None]
            if outside:
                raise fail(f"split {s.name!r} lists shard(s) that are links to files outside {root}: {outside[:5]}; "
                           f"copy them into the folder (a link to the whole folder is fine)")
            absent = [f for f in s.filenames if not (root / f).is_file()]
            if absent:
                raise fail(f"split {s.name!r} lists shard(s) missing on disk: {absent[:5]}"
                           f"{' ...' if len(absent) > 5 else ''} (in {root})")
    return DatasetInfo(root=root, name=str(raw["name"]), classes=classes, domains=domains, splits=splits,
                       base_classes=base, new_classes=new, eval_classes=scored)


def _expand_braces(names: tuple[str, ...], where: str, fail) -> tuple[str, ...]:
    """timm's and webdataset's brace notation (``train-{000000..000099}.tar``), expanded before any name is checked
    (each expanded name is then checked on its own); at most ``MAX_SHARDS`` names, so a pattern cannot exhaust memory."""
    out: list[str] = []
    for name in names:
        out += islice(braceexpand(name), MAX_SHARDS + 1 - len(out)) if "{" in name else [name]
        if len(out) > MAX_SHARDS:
            raise fail(f"{where} lists more than {MAX_SHARDS} shards")
    if len(set(out)) != len(out):
        raise fail(f"{where}: the shard names (braces expanded) have duplicates")
    return tuple(out)


def _str_list(value: Any, key: str, fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(f"'{key}' must be a list of strings")
    if len(set(value)) != len(value):
        raise fail(f"'{key}' has duplicates")
    return tuple(value)


def _index_list(value: Any, size: int, key: str, fail) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise fail(f"'{key}' must be a list of integers")
    bad = [v for v in value if not 0 <= v < size]
    if bad:
        raise fail(f"'{key}' has indices {bad[:5]} out of range [0, {size})")
    return tuple(value)


def _parse_split(name: str, raw: Any, num_domains: int, num_classes: int, fail) -> SplitInfo:
    where = f"split {name!r}"
    if not isinstance(raw, dict):
        raise fail(f"{where} must be an object")
    missing = [k for k in ("num_samples", "filenames", "shard_lengths") if k not in raw]
    if missing:
        raise fail(f"{where} is missing key(s) {missing}")
    filenames = _expand_braces(_str_list(raw["filenames"], f"splits.{name}.filenames", fail), where, fail)
    for f in filenames:
        problem = check_shard_name(f)
        if problem:
            raise fail(f"{where}: shard name {f!r} is refused: {problem}")
    lengths = _index_list(raw["shard_lengths"], 2 ** 63, f"splits.{name}.shard_lengths", fail)
    if len(lengths) != len(filenames):
        raise fail(f"{where} has {len(filenames)} filenames but {len(lengths)} shard_lengths")
    if raw["num_samples"] != sum(lengths):
        raise fail(f"{where}: num_samples {raw['num_samples']} != sum of shard_lengths {sum(lengths)}")
    counts = raw.get("domain_class_counts")
    if counts is not None:
        if not isinstance(counts, list) or len(counts) != num_domains:
            raise fail(f"{where}: domain_class_counts must have one row per domain ({num_domains})")
        counts = tuple(_index_list(row, 2 ** 63, f"splits.{name}.domain_class_counts", fail) for row in counts)
        if any(len(row) != num_classes for row in counts) or sum(map(sum, counts)) != sum(lengths):
            raise fail(f"{where}: domain_class_counts must be [domain][class] and sum to num_samples")
    shard_domains = raw.get("shard_domains")
    if shard_domains is not None:
        if not isinstance(shard_domains, list) or len(shard_domains) != len(filenames):
            raise fail(f"{where}: shard_domains must have one list of domain indices per shard")
        shard_domains = tuple(_index_list(row, num_domains, f"splits.{name}.shard_domains", fail)
                              for row in shard_domains)
    return SplitInfo(name=str(raw.get("name", name)), num_samples=sum(lengths), filenames=filenames,
                     shard_lengths=lengths, domain_class_counts=counts, shard_domains=shard_domains)
