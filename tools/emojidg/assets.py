"""Per-set loaders: normalised codepoint sequence -> image asset.

Three layouts occur on npm: iconify JSON (SVG bodies keyed by names, optional chars.json mapping
codepoints to names), codepoint-named SVG files (OpenMoji) and codepoint-named raster files
(Fluent 3D webp). An asset is ("svg", svg_text) or ("svgfile", path) or ("raster", path) so it can be
sent to a worker process cheaply.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .catalog import Entry, name_keys, normalize_seq

Asset = tuple[str, str]


def iconify_svg(icon: dict, default_w: int, default_h: int) -> str:
    """Wrap an iconify icon body in a standalone SVG document."""
    left, top = icon.get("left", 0), icon.get("top", 0)
    w, h = icon.get("width", default_w), icon.get("height", default_h)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {w} {h}">{icon["body"]}</svg>')


def load_iconify(pkg_dir: Path, catalog: list[Entry]) -> dict[str, Asset]:
    """chars.json where the set has one; otherwise (and for gaps) match icon names to catalogue names.

    Names with a numeric alternate suffix ('hamburger-2', Streamline) only fill gaps, so the plain
    design wins.
    """
    data = json.loads((pkg_dir / "icons.json").read_text())
    icons: dict[str, dict] = dict(data["icons"])
    for alias, a in data.get("aliases", {}).items():
        if set(a) == {"parent"} and a["parent"] in icons:  # transformed aliases are skipped
            icons.setdefault(alias, icons[a["parent"]])
    dw, dh = data.get("width", 16), data.get("height", 16)
    out: dict[str, Asset] = {}
    chars_path = pkg_dir / "chars.json"
    chars = json.loads(chars_path.read_text()) if chars_path.exists() else {}
    for hexseq, name in chars.items():
        if name in icons:
            out.setdefault(normalize_seq(hexseq), ("svg", iconify_svg(icons[name], dw, dh)))
    key_to_seq: dict[str, str] = {}
    for e in sorted(catalog, key=lambda e: e.order):
        for k in name_keys(e):
            key_to_seq.setdefault(k, e.seq)
    plain = sorted(n for n in icons if not re.search(r"-\d+$", n))
    suffixed = sorted(n for n in icons if re.search(r"-\d+$", n))
    for name in plain + suffixed:
        base = re.sub(r"-\d+$", "", name) if name in suffixed else name
        seq = key_to_seq.get(base) or key_to_seq.get(base.replace("-", ""))
        if seq and seq not in out:
            out[seq] = ("svg", iconify_svg(icons[name], dw, dh))
    return out


def load_codepoint_files(folder: Path, suffix: str, kind: str) -> dict[str, Asset]:
    """Files named by codepoint sequence ('1F34E.svg', '1f34e-fe0f.webp')."""
    out: dict[str, Asset] = {}
    for f in sorted(folder.glob(f"*{suffix}")):
        try:
            out.setdefault(normalize_seq(f.name[: -len(suffix)]), (kind, str(f)))
        except ValueError:  # extras with non-hex names
            continue
    return out


def load_style(style: str, pkg_dir: Path, catalog: list[Entry]) -> dict[str, Asset]:
    """Dispatch on the set's layout; the style names are those in sources.json."""
    if style == "openmoji":
        return load_codepoint_files(pkg_dir / "color" / "svg", ".svg", "svgfile")
    if style == "line":
        return load_codepoint_files(pkg_dir / "black" / "svg", ".svg", "svgfile")
    if style == "3d":
        return load_codepoint_files(pkg_dir / "assets", ".webp", "raster")
    if (pkg_dir / "icons.json").exists():
        return load_iconify(pkg_dir, catalog)
    raise ValueError(f"unknown layout for style {style} in {pkg_dir}")
