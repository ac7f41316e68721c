"""EmojiDG benchmark versions: what each one renders, from which sources, and how it is split.

Why explicit versions: numbers are only comparable on the same images. v1 is the benchmark the
shipped v1 weights were scored on; its build must stay byte-identical, so every choice v2 changes is a
field here rather than a new default. The label space (444 classes, base/new split) is the same in
every version: classes are always selected with v1's pretraining styles (:data:`CLASS_SELECTION_VERSION`),
so a version that adds or drops pretraining styles never changes the labels.

A ``sources.json`` package entry may carry ``"versions": [...]``; without it the package is in every
version. The version is written into the raw ``metadata.json``, the shards' ``_info.json`` and
every model card the tools write (``benchmark_version``); a tree or dataset without one is v1.
"""
from __future__ import annotations

from dataclasses import dataclass

CLASS_SELECTION_VERSION = "v1"
VERSION_KEY = "benchmark_version"
UNVERSIONED = "v1"  # what a tree, dataset or card written before versions existed is


@dataclass(frozen=True)
class BenchmarkVersion:
    """The build choices of one benchmark version (the CLIs' defaults for it)."""

    name: str
    renders: int              # renders per downstream source image
    pretrain_renders: int     # renders per pretraining source image (a font renders each weight in turn)
    dropped_pretrain_styles: frozenset[str]  # styles a package provides that this version does not pretrain on
    test_split: bool          # make_shards.py also writes a `test` split holding every render of every domain
    why: str


VERSIONS: dict[str, BenchmarkVersion] = {
    "v1": BenchmarkVersion(
        "v1", renders=4, pretrain_renders=4, dropped_pretrain_styles=frozenset(), test_split=False,
        why="First release: 4 renders per downstream class (3 train, 1 val); the held-out domain is "
            "scored on its 444 val renders."),
    "v2": BenchmarkVersion(
        "v2", renders=10, pretrain_renders=10, dropped_pretrain_styles=frozenset({"openmoji"}), test_split=True,
        why="10 renders per downstream class (9 train, 1 val) and a `test` split with all 4,440 renders of each "
            "domain, on which the held-out domain is scored; OpenMoji colour is no longer a pretraining style "
            "(same design family as the downstream `line`); monochrome emoji (EmojiOne monotone) and the "
            "Noto Emoji monochrome font (5 weights) are added."),
}
DEFAULT_VERSION = "v1"


def get_version(name: str) -> BenchmarkVersion:
    """The version called ``name``; ValueError naming the known ones otherwise."""
    if name not in VERSIONS:
        raise ValueError(f"unknown EmojiDG benchmark version {name!r}; known: {sorted(VERSIONS)}")
    return VERSIONS[name]


def version_of(info: dict) -> str:
    """The benchmark version a raw ``metadata.json``, an ``_info.json`` or a results file records (v1 if none)."""
    return info.get(VERSION_KEY, UNVERSIONED)


def card_section(version: str) -> dict[str, str]:
    """The model-card section naming the benchmark version a model was trained or scored on."""
    v = get_version(version)
    return {"Benchmark version": f"EmojiDG {v.name}. {v.why}"}


def held_out_split(info: dict) -> str:
    """The split the held-out domain is scored on: ``test`` (every render) from v2, ``val`` in v1."""
    return "test" if get_version(version_of(info)).test_split else "val"
