"""What every protocol converter shares: listing files, writing a split from an item list, extra
``_info.json`` fields, and the error that names what a tree is missing."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from tqdm import tqdm

from ...errors import DatasetError
from ...fileio import atomic_write
from ..converters import ConversionReport, read_image
from ..info import INFO_FILENAME
from ..writer import Sample, write_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class Item:
    """One source image: its file, class index, domain and the path recorded in the sample's ``.json``."""

    path: Path
    label: int
    domain: str
    rel: str


def subfolders(path: Path) -> list[str]:
    """Sorted names of the non-hidden folders in ``path`` (files such as README.txt are ignored)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (case-insensitive suffix match)."""
    return sorted(Path(e.path) for e in os.scandir(folder)
                  if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES))


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder; expected {what}.{(' ' + hint) if hint else ''}")
    return path


def unique_class_names(names: Sequence[str]) -> list[str]:
    """Names made unique for ``_info.json`` by a trailing '_' per repeat.

    CLIP's curated ImageNet names repeat 'missile' (classes 657, 744) and 'sunglasses' (836, 837).
    :func:`clipood_zoo.data.catalog.prettify_class_name` strips the trailing '_', so prompts and the
    head-matching in ``align_classes`` still see CLIP's own name.
    """
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n + "_" * k)
    return out


def write_items(out_dir: str | os.PathLike, split: str, items: Sequence[Item], *, name: str,
                classes: Sequence[str], domains: Sequence[str], base_classes: Optional[Sequence[int]] = None,
                new_classes: Optional[Sequence[int]] = None, shard_size: int = 1000,
                report: Optional[ConversionReport] = None) -> ConversionReport:
    """Write ``items`` (in the given order) as ``split``; unreadable files are skipped and listed."""
    report = report or ConversionReport(out_dir=Path(out_dir))
    report.splits[split] = write_split(
        out_dir, split, tqdm(_samples(items, report.skipped), total=len(items), desc=f"{name} {split}",
                             unit="img", leave=False),
        name=name, classes=classes, domains=domains, base_classes=base_classes, new_classes=new_classes,
        max_samples_per_shard=shard_size)
    return report


def _samples(items: Iterable[Item], skipped: list[str]) -> Iterator[Sample]:
    for i, item in enumerate(items):
        image = read_image(str(item.path))
        if image is None:
            skipped.append(item.rel)
            continue
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", item.domain)
        yield Sample(key=f"{slug}-{i:07d}", image=image[0], image_format=image[1], label=item.label,
                     domain=item.domain, meta={"path": item.rel})


def add_info_fields(out_dir: str | os.PathLike, **fields: Any) -> None:
    """Add protocol fields (``eval_classes``, ``class_ids``, ``protocol``...) to ``_info.json``, atomically.

    :func:`clipood_zoo.data.writer.write_split` rewrites ``_info.json`` from its own fields, so call
    this after the last split is written.
    """
    path = Path(out_dir) / INFO_FILENAME
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.update(fields)
    with atomic_write(path) as f:
        f.write(json.dumps(raw, indent=1).encode("utf-8"))


def missing_message(what: str, where: Path, missing: Sequence[str], unexpected: Sequence[str] = (),
                    hint: str = "") -> str:
    parts = [f"{where}: "]
    if missing:
        parts.append(f"missing {len(missing)} {what}: {', '.join(map(repr, missing[:10]))}"
                     f"{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        parts.append(f"{'; ' if missing else ''}unexpected {what}: {', '.join(map(repr, unexpected[:10]))}"
                     f"{' ...' if len(unexpected) > 10 else ''}")
    if hint:
        parts.append(f". {hint}")
    return "".join(parts)
