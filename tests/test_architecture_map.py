"""docs/architecture.md is the map a newcomer reads: every source module has a row (by file name, or through the
folder it sits in), so a module added without one fails here instead of going missing from the map."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Set

from braceexpand import braceexpand  # what data/info.py expands shard names with

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("clipood_zoo", "tools", "benchmarks")


def mapped_names(text: str) -> Set[str]:
    """The file and folder names the map's backticked paths name: `a/b.py` gives b.py, `protocols/` gives protocols/,
    and `models/{x,y}.py` gives x.py and y.py."""
    names = set()
    for code in re.findall(r"`([^`\s]+)`", text):
        for path in braceexpand(code):
            if path.endswith("/"):
                names.add(path.rstrip("/").rsplit("/", 1)[-1] + "/")
            elif path.endswith(".py"):
                names.add(path.rsplit("/", 1)[-1])
    return names


def source_modules() -> Iterator[Path]:
    yield from (p for p in ROOT.glob("*.py") if p.name != "setup.py")
    for folder in SOURCE_DIRS:
        yield from (p for p in (ROOT / folder).rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def test_every_source_module_has_a_row_in_the_architecture_map():
    names = mapped_names((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    unmapped = [str(p.relative_to(ROOT)) for p in source_modules()
                if p.name not in names and not any(f"{d.name}/" in names for d in p.relative_to(ROOT).parents)]
    assert not unmapped, f"add these to the module table of docs/architecture.md: {sorted(unmapped)}"


def test_mapped_names_reads_paths_braces_and_folders():
    text = ("| `clipood_zoo/data/info.py`, `writer.py` | x |\n| `models/{a,b}.py` | `protocols/` | `--flag` `x y` |\n"
            "| `m/{c,d}_{x,y}.py` |")
    assert mapped_names(text) == {"info.py", "writer.py", "a.py", "b.py", "protocols/",
                                  "c_x.py", "c_y.py", "d_x.py", "d_y.py"}
