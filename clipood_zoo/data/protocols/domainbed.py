"""DomainBed's five datasets as distributed: check a tree against the catalog, then convert it.

Paper Table 1 protocol (CLIPood, following DomainBed): leave one domain out; per domain DomainBed's
seeded 80/20 in/out split (:func:`clipood_zoo.data.converters.convert_domainbed`); the model is
selected on the source domains' 20% ``val`` split (training-domain validation, what train.py does) and
the held-out domain's ``val`` (DomainBed's "out" split, as CLIPood's converter) is reported by default;
DomainBed's own tables report the held-out domain's "in" split (``train`` here): ``run domainbed
--eval-split train``. One row per held-out domain,
the dataset's number is their mean, Table 1's "Avg" the mean of the five datasets
(``tools/paper_tables.py``).

Layouts, as DomainBed's ``domainbed/scripts/download.py`` leaves them (the converter wants the folder
holding the domain folders):

- PACS: ``PACS/{art_painting,cartoon,photo,sketch}/<class>/*``; the zip unpacks to ``kfold/`` which
  DomainBed renames to ``PACS``.
- VLCS: ``VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/<class>/*`` (capitalised domain folders).
- OfficeHome: ``office_home/{Art,Clipart,Product,Real World}/<Class_Name>/*``; the zip unpacks to
  ``OfficeHomeDataset_10072016/`` (renamed by DomainBed) next to ``ImageInfo.csv``/``imagelist.txt``;
  the domain folder is ``Real World`` *with a space*.
- TerraIncognita: ``terra_incognita/location_{100,38,43,46}/<class>/*``, built by DomainBed from the
  camera-trap images and the annotation JSON (:func:`organize_terraincognita` does the same).
- DomainNet: ``domain_net/<domain>/<class>/*.jpg`` after unzipping the six domain zips in one folder
  (the ``<domain>_train.txt``/``_test.txt`` files beside them are ignored: DomainBed does not use them).
  DomainBed then deletes the files listed in its ``domainbed/misc/domain_net_duplicates.txt``; that
  list is not available offline here, so pass it as ``remove_listed`` to :func:`check_tree` or delete
  them yourself — with the list unapplied, conversion still works but the split differs from DomainBed's.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ...errors import DatasetError
from ..catalog import DOMAINBED, DatasetSpec
from ..converters import ConversionReport, convert_domainbed
from ..info import path_inside
from ._common import add_info_fields, image_files, missing_message, require_dir, subfolders

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    root: str  # the folder name DomainBed's download script leaves
    raw_roots: tuple[str, ...] = ()  # what the archive unpacks to, before DomainBed renames it
    domain_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # wrong spellings seen in the wild
    note: str = ""


LAYOUTS: dict[str, Layout] = {
    "pacs": Layout("PACS", ("kfold",), {"art_painting": ("art", "ArtPainting", "art-painting")},
                   "PACS.zip unpacks to kfold/; DomainBed renames it to PACS."),
    "vlcs": Layout("VLCS", (), {"Caltech101": ("caltech101", "CALTECH"), "LabelMe": ("labelme", "LABELME"),
                                "SUN09": ("sun09", "SUN"), "VOC2007": ("voc2007", "PASCAL", "VOC")},
                   "VLCS.tar.gz unpacks to VLCS/ with capitalised domain folders."),
    "officehome": Layout("office_home", ("OfficeHomeDataset_10072016",),
                         {"Real World": ("Real_World", "RealWorld", "real_world", "Real-World", "Real")},
                         "the zip unpacks to OfficeHomeDataset_10072016/; the domain is 'Real World' with a space."),
    "terraincognita": Layout("terra_incognita", (), {},
                             "build it from eccv_18_all_images_sm/ and the annotation JSON with "
                             "organize_terraincognita (DomainBed's download script does the same)."),
    "domainnet": Layout("domain_net", (), {},
                        "unzip the six domain zips (clipart, infograph, painting, quickdraw, real, sketch) "
                        "into one folder."),
}


@dataclass
class TreeCheck:
    """A tree that matches the catalog: its root and the image count per domain and class."""

    dataset: DatasetSpec
    root: Path
    counts: dict[str, dict[str, int]]

    @property
    def num_images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def dataset_spec(name: str) -> DatasetSpec:
    key = name.lower().replace("_", "").replace("-", "")
    if key not in DOMAINBED:
        raise DatasetError(f"unknown DomainBed dataset {name!r}; one of {', '.join(DOMAINBED)}.")
    return DOMAINBED[key]


def find_root(dataset: str | DatasetSpec, src: str | os.PathLike) -> Path:
    """The folder that holds the domain folders: ``src`` itself, or the known folder inside it
    (``PACS``/``kfold``, ``office_home``/``OfficeHomeDataset_10072016``, ``VLCS``, ``terra_incognita``,
    ``domain_net``)."""
    spec = dataset if isinstance(dataset, DatasetSpec) else dataset_spec(dataset)
    src = require_dir(Path(src), f"the {spec.name} folder that holds its domain folders")
    folders = {d.folder for d in spec.domains}
    if folders & set(subfolders(src)):
        return src
    layout = LAYOUTS[spec.name]
    for name in (layout.root, *layout.raw_roots):
        if (src / name).is_dir() and folders & set(subfolders(src / name)):
            return src / name
    return src


def check_tree(dataset: str | DatasetSpec, src: str | os.PathLike,
               remove_listed: Optional[str | os.PathLike] = None) -> TreeCheck:
    """Check ``src`` against the catalog's domains and classes; raise naming what is missing or extra.

    Every domain folder must exist (misspellings such as ``Real_World`` are named with the fix), hold
    every class folder, and each class folder at least one image; any other folder at the domain level
    is an error too, since the converter would take it for a domain. ``remove_listed``: a file of paths
    relative to the root (DomainBed's ``domain_net_duplicates.txt``) deleted first, as DomainBed does.
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else dataset_spec(dataset)
    layout = LAYOUTS[spec.name]
    root = find_root(spec, src)
    if remove_listed is not None:
        removed = remove_listed_files(root, remove_listed)
        _logger.info("removed %d listed file(s) from %s", removed, root)
    present = set(subfolders(root))
    expected = [d.folder for d in spec.domains]
    missing = [d for d in expected if d not in present]
    unexpected = sorted(present - set(expected))
    if missing or unexpected:
        hints = []
        for d in missing:
            for alias in layout.domain_aliases.get(d, ()):
                if alias in present:
                    hints.append(f"rename {alias!r} to {d!r}")
        if any(r in present for r in layout.raw_roots + (layout.root,)):
            hints.append(f"pass the folder inside ({', '.join(r for r in (layout.root,) + layout.raw_roots if r in present)})")
        if "eccv_18_all_images_sm" in present:
            hints.append("the raw camera-trap images must first be sorted with organize_terraincognita")
        hint = "; ".join(hints) or f"{spec.name}'s domain folders are {expected} ({layout.note})"
        raise DatasetError(missing_message("domain folder(s)", root, missing, unexpected, hint=hint[0].upper() + hint[1:]))
    counts: dict[str, dict[str, int]] = {}
    problems = []
    for d in expected:
        classes = set(subfolders(root / d))
        miss = [c for c in spec.class_folders if c not in classes]
        extra = sorted(classes - set(spec.class_folders))
        if miss or extra:
            problems.append(missing_message("class folder(s)", root / d, miss, extra))
            continue
        counts[d] = {c: len(image_files(root / d / c)) for c in spec.class_folders}
        empty = [c for c, n in counts[d].items() if n == 0]
        if empty:
            problems.append(f"{root / d}: class folder(s) without images: {empty[:10]}")
    if problems:
        raise DatasetError(f"{spec.name} tree does not match the catalog ({spec.num_classes} classes per domain, "
                           f"as {spec.source}):\n  " + "\n  ".join(problems))
    return TreeCheck(spec, root, counts)


def remove_listed_files(root: str | os.PathLike, list_file: str | os.PathLike) -> int:
    """Delete the files listed (one path relative to ``root`` per line) that exist; return how many."""
    n = 0
    root = Path(root).resolve()
    for line in Path(list_file).read_text(encoding="utf-8").splitlines():
        rel = line.strip()
        if not rel:
            continue
        path = path_inside(root, rel)
        if path is None:
            raise DatasetError(f"{list_file}: {rel!r} points outside {root}.")
        if path.is_file():
            path.unlink()
            n += 1
    return n


def convert(dataset: str | DatasetSpec, src: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0,
            holdout_fraction: float = 0.2, shard_size: int = 1000,
            remove_listed: Optional[str | os.PathLike] = None) -> ConversionReport:
    """:func:`check_tree`, then DomainBed's conversion (``train``/``val`` = DomainBed's in/out splits of
    ``trial_seed == seed``), named after the catalog entry so registry names and results agree."""
    check = check_tree(dataset, src, remove_listed=remove_listed)
    report = convert_domainbed(check.root, out_dir, name=check.dataset.name, seed=seed,
                               holdout_fraction=holdout_fraction, shard_size=shard_size)
    add_info_fields(out_dir, protocol="domainbed", dataset=check.dataset.name, split_seed=seed,
                    holdout_fraction=holdout_fraction)
    return report


TERRA_LOCATIONS = ("38", "46", "100", "43")
TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel")


def organize_terraincognita(images_dir: str | os.PathLike, annotations_json: str | os.PathLike,
                            out_dir: str | os.PathLike, link: bool = False) -> dict[str, dict[str, int]]:
    """Sort the Caltech Camera Traps images into ``out_dir/location_<loc>/<category>/<file_name>``.

    What DomainBed's ``download_terra_incognita`` does with ``eccv_18_all_images_sm/`` and
    ``caltech_images_20210113.json``: keep locations 38, 46, 100, 43 and the ten categories; an image
    goes to the folder of every category annotated on it. ``link`` hard-links instead of copying.
    Returns the image count per location folder and category.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    data = json.loads(Path(annotations_json).read_text(encoding="utf-8"))
    category = {c["id"]: c["name"] for c in data["categories"]}
    per_image: dict = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], set()).add(category[a["category_id"]])
    stats: dict[str, dict[str, int]] = {}
    for image in data["images"]:
        loc = str(image["location"])
        if loc not in TERRA_LOCATIONS:
            continue
        for cat in sorted(per_image.get(image["id"], ())):
            if cat not in TERRA_CATEGORIES:
                continue
            src = path_inside(images_dir, image["file_name"])
            if src is None:  # the annotations came with the data: they may name images, never files elsewhere
                raise DatasetError(f"{annotations_json} names {image['file_name']!r}, outside {images_dir}; "
                                   "use the original caltech_images_20210113.json.")
            if not src.is_file():
                raise DatasetError(f"{src} is listed in {annotations_json} but missing; unpack "
                                   "eccv_18_all_images_sm.tar.gz completely.")
            dst = out_dir / f"location_{loc}" / cat / Path(image["file_name"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                os.link(src, dst) if link else shutil.copyfile(src, dst)
            stats.setdefault(f"location_{loc}", {}).setdefault(cat, 0)
            stats[f"location_{loc}"][cat] += 1
    return stats
