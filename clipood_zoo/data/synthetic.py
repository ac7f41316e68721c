"""Tiny generated datasets for tests and smoke runs (no downloads, a few KB).

Every image is a solid colour that encodes where it came from, ``(40 * class, 60 * domain, index)``, so
a test can check from the pixels alone that a loader paired each image with the right label and domain
(:func:`decode_color`).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

from PIL import Image

from .info import DatasetInfo, read_dataset_info
from .writer import Sample, write_split

_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP"}


def color_for(class_idx: int, domain_idx: int, index: int) -> tuple[int, int, int]:
    return (40 * class_idx) % 256, (60 * domain_idx) % 256, index % 256


def decode_color(rgb: Sequence[int]) -> tuple[int, int]:
    """(class index, domain index) from a pixel of an image made by this module (up to 6 classes, 4 domains)."""
    return round(rgb[0] / 40), round(rgb[1] / 60)


def image_bytes(color: tuple[int, int, int], fmt: str = "png", size: int = 8) -> bytes:
    out = io.BytesIO()
    # Lossless settings so that decode_color also works for jpg/webp.
    Image.new("RGB", (size, size), color).save(out, format=_PIL_FORMATS[fmt], quality=100)
    return out.getvalue()


def make_image_tree(root: str | os.PathLike, domains: Sequence[str], classes: Sequence[str],
                    per_class: int | Sequence[int], fmt: str = "png") -> list[Path]:
    """Write ``root/<domain>/<class>/img_<i>.<fmt>`` (a DomainBed tree); ``domains=[""]`` writes an ImageFolder.

    ``per_class`` is a count, or one count per domain so domains can differ in size.
    """
    counts = [per_class] * len(domains) if isinstance(per_class, int) else list(per_class)
    paths = []
    for d, (domain, n) in enumerate(zip(domains, counts)):
        for c, cls in enumerate(classes):
            folder = Path(root, domain, cls)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = folder / f"img_{i:03d}.{fmt}"
                path.write_bytes(image_bytes(color_for(c, d, i), fmt))
                paths.append(path)
    return paths


def write_synthetic_dataset(out_dir: str | os.PathLike, domains: Sequence[str] = ("art", "photo", "sketch"),
                            classes: Sequence[str] = ("cat", "dog", "fish", "owl"), per_class: int = 3,
                            splits: Sequence[str] = ("train", "val"), shard_size: int = 5,
                            with_base_new: bool = True) -> DatasetInfo:
    """Shards of ``per_class`` images for every (split, domain, class), base = first half of the classes."""
    base = list(range(len(classes) // 2)) if with_base_new else None
    new = list(range(len(classes) // 2, len(classes))) if with_base_new else None
    for split in splits:
        samples = [Sample(key=f"{split}-{d}-{c}-{i}", image=image_bytes(color_for(c, d, i)), image_format="png",
                          label=c, domain=domain, meta={"index": i})
                   for d, domain in enumerate(domains) for c in range(len(classes)) for i in range(per_class)]
        write_split(out_dir, split, samples, name="synthetic", classes=classes, domains=domains,
                    base_classes=base, new_classes=new, max_samples_per_shard=shard_size)
    return read_dataset_info(out_dir)
