"""Image folders -> shards: DomainBed's ``root/<domain>/<class>/<image>`` and torchvision's ImageFolder.

PACS, VLCS, OfficeHome, TerraIncognita and DomainNet are distributed as DomainBed trees. The listing
and the train/val split reproduce DomainBed's own (``domainbed/datasets.py`` + ``scripts/train.py``):
files are listed with torchvision's ``make_dataset`` (sorted classes, sorted walk, sorted names, so
the filesystem's listing order does not matter), then per domain ``i`` the indices are shuffled with
``np.random.RandomState(seed_hash(seed, i))`` and the first ``int(n * holdout_fraction)`` form the
held-out split. Our ``val`` is therefore exactly DomainBed's "out" split for ``trial_seed == seed``,
which is what CLIPood selects models on and tests with.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from tqdm import tqdm

from ..errors import ConfigError, DatasetError
from .catalog import class_key
from .info import SplitInfo
from .writer import Sample, write_split

_logger = logging.getLogger(__name__)

# PIL format name -> shard extension of the formats stored as they are, without re-encoding.
_KEPT_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
_PNG_MODES = {"1", "L", "LA", "I", "P", "RGB", "RGBA"}


@dataclass
class ConversionReport:
    """What a conversion wrote, and the source files it skipped because they are not readable images."""

    out_dir: Path
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def convert_domainbed(
        src: str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        name: Optional[str] = None,
        holdout_fraction: float = 0.2,
        seed: int = 0,
        shard_size: int = 1000,
        allow_missing_classes: bool = False,
        base_classes: Optional[Sequence[str]] = None,
        new_classes: Optional[Sequence[str]] = None,
        class_order: Optional[Sequence[str]] = None,
) -> ConversionReport:
    """Convert ``src/<domain>/<class>/<image>`` into ``train``/``val`` shards in ``out_dir``.

    Classes are the sorted union over domains; a class missing from a domain is an error unless
    ``allow_missing_classes`` (DomainBed would silently number the classes differently per domain).
    ``base_classes``/``new_classes`` are class names (``new`` defaults to all the others).
    ``class_order`` (e.g. a model's class names) numbers the classes in its order instead of sorted, matching
    folder names up to spelling ('hot_dog' is 'hot dog'); every folder must be in it.
    """
    src = Path(src)
    domain_dirs = {d: src / d for d in _subfolders(src, "domain")}
    return _convert(domain_dirs, out_dir, name=name or src.name, holdout_fraction=holdout_fraction, seed=seed,
                    shard_size=shard_size, allow_missing_classes=allow_missing_classes,
                    base_classes=base_classes, new_classes=new_classes, class_order=class_order)


def convert_imagefolder(
        src: str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        domain_name: Optional[str] = None,
        name: Optional[str] = None,
        holdout_fraction: float = 0.2,
        seed: int = 0,
        shard_size: int = 1000,
        base_classes: Optional[Sequence[str]] = None,
        new_classes: Optional[Sequence[str]] = None,
        class_order: Optional[Sequence[str]] = None,
) -> ConversionReport:
    """Convert ``src/<class>/<image>`` (torchvision ImageFolder) as one domain, ``domain_name``.

    ``holdout_fraction=0`` writes everything to ``train`` and ``1`` everything to ``val``, so a dataset
    that ships its own train and val folders is converted by two calls into the same ``out_dir``; that
    is why the name and the domain default to ``out_dir``'s name rather than ``src``'s (``train``/``val``).
    """
    default = Path(out_dir).resolve().name
    return _convert({domain_name or default: Path(src)}, out_dir, name=name or default,
                    holdout_fraction=holdout_fraction, seed=seed, shard_size=shard_size, allow_missing_classes=False,
                    base_classes=base_classes, new_classes=new_classes, class_order=class_order)


def seed_hash(*args: object) -> int:
    """DomainBed's ``misc.seed_hash``: an integer seed derived from the arguments' repr."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def holdout_split(n: int, holdout_fraction: float, seed: int, domain_index: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices) of a domain's ``n`` files, as DomainBed's ``split_dataset``."""
    keys = list(range(n))
    np.random.RandomState(seed_hash(seed, domain_index)).shuffle(keys)
    n_out = int(n * holdout_fraction)
    return keys[n_out:], keys[:n_out]


def _convert(domain_dirs: dict[str, Path], out_dir: str | os.PathLike, *, name: str, holdout_fraction: float,
             seed: int, shard_size: int, allow_missing_classes: bool, base_classes: Optional[Sequence[str]],
             new_classes: Optional[Sequence[str]], class_order: Optional[Sequence[str]] = None) -> ConversionReport:
    if not 0.0 <= holdout_fraction <= 1.0:
        raise ConfigError(f"holdout_fraction must be in [0, 1], got {holdout_fraction}.")
    domains = sorted(domain_dirs)
    classes = _classes(domain_dirs, allow_missing_classes)
    if class_order is not None:
        classes = order_classes(classes, class_order)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    base, new = _base_new(classes, base_classes, new_classes)
    try:
        files = {d: make_dataset(domain_dirs[d], class_to_idx, IMG_EXTENSIONS, allow_empty=allow_missing_classes)
                 for d in domains}
    except FileNotFoundError as e:  # a class folder without a single image file
        raise DatasetError(f"{e}; remove the empty class folders or pass allow_missing_classes=True.") from None
    split_indices: dict[str, dict[str, list[int]]] = {"train": {}, "val": {}}
    for i, d in enumerate(domains):
        split_indices["train"][d], split_indices["val"][d] = holdout_split(len(files[d]), holdout_fraction, seed, i)

    report = ConversionReport(out_dir=Path(out_dir))
    for split, per_domain in split_indices.items():
        total = sum(map(len, per_domain.values()))
        if total == 0:
            continue
        samples = _samples(domains, domain_dirs, files, per_domain, report.skipped)
        report.splits[split] = write_split(
            out_dir, split, tqdm(samples, total=total, desc=f"{name} {split}", unit="img", leave=False),
            name=name, classes=classes, domains=domains, base_classes=base, new_classes=new,
            max_samples_per_shard=shard_size)
    if report.skipped:
        _logger.warning("skipped %d unreadable image(s), first: %s", len(report.skipped), report.skipped[:5])
    return report


def _subfolders(path: Path, what: str) -> list[str]:
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder; pass the folder that holds one subfolder per {what}.")
    names = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DatasetError(f"{path} has no subfolders; expected one per {what}.")
    return names


def _classes(domain_dirs: dict[str, Path], allow_missing: bool) -> list[str]:
    per_domain = {d: _subfolders(p, "class") for d, p in domain_dirs.items()}
    classes = sorted(set().union(*per_domain.values()))  # sorted like ImageFolder: labels match DomainBed's
    missing = {d: sorted(set(classes) - set(c)) for d, c in per_domain.items() if set(classes) - set(c)}
    if missing and not allow_missing:
        raise DatasetError(
            f"classes missing from some domains: { {d: m[:5] for d, m in missing.items()} }; every domain must "
            f"hold every class folder, or pass allow_missing_classes=True (--allow-missing-classes).")
    return classes


def order_classes(folders: Sequence[str], order: Sequence[str]) -> list[str]:
    """Class folders sorted by their name's position in ``order``, matched up to spelling ('hot_dog' == 'hot dog')."""
    position = {}
    for i, name in enumerate(order):
        position.setdefault(class_key(name), i)
    unknown = [f for f in folders if class_key(f) not in position]
    if unknown:
        raise ConfigError(f"class folders {unknown[:5]} (+{max(len(unknown) - 5, 0)} more) are not in the class order "
                          f"given ({len(order)} names: {', '.join(order[:3])}, ...); fix the folder names or the list.")
    return sorted(folders, key=lambda f: position[class_key(f)])


def _base_new(classes: list[str], base: Optional[Sequence[str]],
              new: Optional[Sequence[str]]) -> tuple[Optional[list[int]], Optional[list[int]]]:
    """Class names -> sorted class indices; ``new`` defaults to every class not in ``base``."""
    if base is None:
        if new is not None:
            raise ConfigError("new_classes needs base_classes too.")
        return None, None
    unknown = sorted(set(base).union(new or ()) - set(classes))
    if unknown:
        raise ConfigError(f"base/new classes {unknown[:5]} are not class folders; classes are {classes[:10]} ...")
    base_idx = sorted(classes.index(c) for c in set(base))
    new_idx = sorted(classes.index(c) for c in set(new)) if new is not None else \
        [i for i in range(len(classes)) if i not in set(base_idx)]
    return base_idx, new_idx


def _samples(domains: list[str], domain_dirs: dict[str, Path], files: dict[str, list[tuple[str, int]]],
             indices: dict[str, list[int]], skipped: list[str]) -> Iterator[Sample]:
    """Samples in split order (domain by domain, shuffled within), appending unreadable files to ``skipped``."""
    for d_idx, domain in enumerate(domains):
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", domain)
        for i in indices[domain]:
            path, label = files[domain][i]
            rel = Path(path).relative_to(domain_dirs[domain]).as_posix()
            image = read_image(path)
            if image is None:
                skipped.append(f"{domain}/{rel}")
                continue
            # The index prefix keeps keys unique whatever the slug; the index is DomainBed's sample index.
            yield Sample(key=f"{d_idx:02d}-{slug}-{i:07d}", image=image[0], image_format=image[1], label=label,
                         domain=domain, meta={"path": rel})


def read_image(path: str) -> Optional[tuple[bytes, str]]:
    """(bytes, shard extension), the original bytes for png/jpg/webp and a png otherwise; None if unreadable.

    The image is fully decoded once so that a truncated file is caught here rather than at training time.
    """
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.format in _KEPT_FORMATS:
                return data, _KEPT_FORMATS[img.format]
            if img.mode not in _PNG_MODES:
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            out = io.BytesIO()
            img.save(out, format="PNG")
            return out.getvalue(), "png"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        _logger.warning("skipping unreadable image %s (%s)", path, e)
        return None
