"""Write samples into WebDataset shards plus ``_info.json``, atomically.

Every file is written under a temporary name in the target folder, fsynced, then renamed, and the
shards of a split are renamed only once all of them are complete, followed by ``_info.json``. A
conversion killed half-way therefore leaves the previous shards and ``_info.json`` as they were (and no
temporary files): a reader never sees a shard list that points at half-written tars.

Sample layout inside a shard (the project's contract, see :mod:`clipood_zoo.data.info`)::

    {key}.png|jpg|webp   the image bytes, as encoded
    {key}.cls            class index, ascii int
    {key}.json           {"domain": ..., "classname": ..., **extra fields}
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import webdataset as wds

from ..errors import ConfigError, DatasetError
from ..fileio import atomic_write, fsync_dir
from .info import INFO_FILENAME, DatasetInfo, SplitInfo, parse_dataset_info, read_dataset_info

IMAGE_FORMATS = ("png", "jpg", "webp")
# webdataset splits a member name at the first dot of its basename, and skips names like "__x__".
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Sample:
    """One image to store. ``meta`` adds fields to the sample's ``.json`` (e.g. the source path)."""

    key: str
    image: bytes
    image_format: str
    label: int
    domain: str
    meta: Mapping[str, Any] = field(default_factory=dict)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def write_split(
        out_dir: str | os.PathLike,
        split: str,
        samples: Iterable[Sample],
        *,
        name: str,
        classes: Sequence[str],
        domains: Sequence[str],
        base_classes: Optional[Sequence[int]] = None,
        new_classes: Optional[Sequence[int]] = None,
        max_samples_per_shard: int = 1000,
) -> SplitInfo:
    """Write ``samples`` as split ``split`` of the dataset in ``out_dir`` and record it in ``_info.json``.

    Splits already in ``_info.json`` are kept, so train and val can be written by separate calls; the
    dataset-level fields (name, classes, domains, base/new) must then be the same as before. Writing a
    split that exists replaces it, and its old shards that the new version does not reuse are deleted
    after the new ``_info.json`` is in place.
    """
    if max_samples_per_shard < 1:
        raise ConfigError(f"max_samples_per_shard must be >= 1, got {max_samples_per_shard}.")
    if not _SPLIT_RE.match(split):
        raise ConfigError(f"split name {split!r} must be letters, digits and underscores (it names the shards).")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    wanted = parse_dataset_info(
        {"name": name, "classes": list(classes), "domains": list(domains), "splits": {},
         **({"base_classes": list(base_classes), "new_classes": list(new_classes or [])}
            if base_classes is not None else {})},
        root, check_files=False)
    previous = _previous_info(root, wanted)

    temps: list[tuple[Path, Path]] = []  # (temporary file, final shard path)
    try:
        split_info = _write_shards(root, split, samples, wanted, max_samples_per_shard, temps)
        for tmp, final in temps:
            os.replace(tmp, final)
        fsync_dir(root)  # the shards must be durable before _info.json points at them
        splits = dict(previous.splits) if previous else {}
        splits[split] = split_info
        with atomic_write(root / INFO_FILENAME) as f:
            f.write(json.dumps(dataclasses.replace(wanted, splits=splits).to_json(), indent=1).encode("utf-8"))
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    if previous and split in previous.splits:
        for stale in set(previous.splits[split].filenames) - set(split_info.filenames):
            (root / stale).unlink(missing_ok=True)
    fsync_dir(root)
    return split_info


def _previous_info(root: Path, wanted: DatasetInfo) -> Optional[DatasetInfo]:
    """The ``_info.json`` already in ``root`` (None if absent), which must describe the same dataset."""
    if not (root / INFO_FILENAME).exists():
        return None
    previous = read_dataset_info(root)
    for attr in ("name", "classes", "domains", "base_classes", "new_classes"):
        if getattr(previous, attr) != getattr(wanted, attr):
            raise DatasetError(
                f"{previous.path} describes a dataset with different {attr} than the split being written "
                f"({getattr(previous, attr)!r} vs {getattr(wanted, attr)!r}); write to an empty folder or "
                f"pass the same {attr}.")
    return previous


def _write_shards(root: Path, split: str, samples: Iterable[Sample], info: DatasetInfo,
                  max_per_shard: int, temps: list[tuple[Path, Path]]) -> SplitInfo:
    """Write all shards under temporary names (appended to ``temps``) and return the split's info."""
    domain_idx = {d: i for i, d in enumerate(info.domains)}
    counts = [[0] * len(info.classes) for _ in info.domains]
    lengths: list[int] = []
    shard_domains: list[set[int]] = []
    seen_keys: set[str] = set()
    # On an error the stack still closes the open shard normally; write_split deletes every temporary.
    stack = contextlib.ExitStack()
    writer = None
    try:
        for sample in samples:
            _check_sample(sample, info, domain_idx, seen_keys)
            if writer is None or lengths[-1] >= max_per_shard:
                stack.close()
                final = root / shard_name(split, len(lengths))
                f = stack.enter_context(atomic_write(final, commit=False))
                temps.append((Path(f.name), final))
                writer = stack.enter_context(wds.TarWriter(f, mtime=0))  # int 0: reproducible bytes, no pax header
                lengths.append(0)
                shard_domains.append(set())
            d = domain_idx[sample.domain]
            meta = {"domain": sample.domain, "classname": info.classes[sample.label], **sample.meta}
            writer.write({"__key__": sample.key, sample.image_format: sample.image,
                          "cls": str(sample.label).encode("ascii"), "json": json.dumps(meta).encode("utf-8")})
            lengths[-1] += 1
            counts[d][sample.label] += 1
            shard_domains[-1].add(d)
    finally:
        stack.close()
    if not lengths:
        raise DatasetError(f"no samples to write for split {split!r} of {root}; check the source folder.")
    return SplitInfo(
        name=split, num_samples=sum(lengths), filenames=tuple(shard_name(split, i) for i in range(len(lengths))),
        shard_lengths=tuple(lengths), domain_class_counts=tuple(map(tuple, counts)),
        shard_domains=tuple(tuple(sorted(s)) for s in shard_domains))


def _check_sample(sample: Sample, info: DatasetInfo, domain_idx: dict[str, int], seen_keys: set[str]) -> None:
    problem = None
    if not _KEY_RE.match(sample.key):
        problem = "key must be letters, digits, '_' and '-' (no dots: webdataset splits names at the first dot)"
    elif sample.key in seen_keys:
        problem = "key is used twice in this split"
    elif sample.image_format not in IMAGE_FORMATS:
        problem = f"image_format must be one of {IMAGE_FORMATS}, got {sample.image_format!r}"
    elif not 0 <= sample.label < len(info.classes):
        problem = f"label {sample.label} out of range [0, {len(info.classes)})"
    elif sample.domain not in domain_idx:
        problem = f"domain {sample.domain!r} is not one of {list(info.domains)}"
    if problem:
        raise DatasetError(f"sample {sample.key!r} cannot be written to {info.root}: {problem}.")
    seen_keys.add(sample.key)
