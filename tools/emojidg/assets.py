"""Per-set loaders: normalised codepoint sequence -> image asset.

Four layouts occur on npm: iconify JSON (SVG bodies keyed by names, optional chars.json mapping
codepoints to names), codepoint-named SVG files (OpenMoji), codepoint-named raster files
(Fluent 3D webp) and a Fontsource font package (Noto Emoji: one WOFF per weight). An asset is
("svg", svg_text), ("svgfile", path), ("raster", path) or ("font", JSON of the weight files and the
emoji text) so it can be sent to a worker process cheaply.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .catalog import Entry, name_keys, normalize_seq
from .render import open_font

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


def seq_text(seq: str) -> str:
    """A normalised codepoint sequence ('1F43B-200D-2744') as the text a font shapes."""
    return "".join(chr(int(h, 16)) for h in seq.split("-"))


def font_has_emoji(font, text: str, notdef_advance: float) -> bool:
    """Whether ``text`` shapes to the one glyph of its first codepoint's width, and that glyph exists.

    A codepoint the font lacks is drawn as .notdef; a ZWJ sequence the font (or a layout engine
    without shaping) does not ligate is drawn as several glyphs, wider than one.
    """
    first = font.getlength(text[0])
    return first != notdef_advance and font.getlength(text) == first


def load_fontsource(pkg_dir: Path, catalog: list[Entry], subset: str = "emoji") -> dict[str, Asset]:
    """A Fontsource package: each catalogue emoji the font draws, rendered at every weight it ships.

    Fontsource splits a font into unicode-range subsets (``unicode.json``); the ``emoji`` subset of
    Noto Emoji holds every emoji glyph and the ZWJ ligatures, so that one file per weight is used
    (``files/<id>-<subset>-<weight>-normal.woff``; Pillow's FreeType reads WOFF). Coverage is
    checked on the lightest weight by shaping each class's codepoints (:func:`font_has_emoji`).
    """
    font_id = json.loads((pkg_dir / "metadata.json").read_text())["id"]
    pattern = re.compile(rf"{re.escape(font_id)}-{re.escape(subset)}-(\d+)-normal\.woff")
    weights = sorted((int(m[1]), f) for f in (pkg_dir / "files").iterdir() if (m := pattern.fullmatch(f.name)))
    if not weights:
        raise ValueError(f"{pkg_dir}/files has no {font_id}-{subset}-<weight>-normal.woff")
    files = [str(f) for _, f in weights]
    font = open_font(files[0], 64)
    notdef = font.getlength("\U000F0000")  # a private-use codepoint: no emoji font draws it
    out: dict[str, Asset] = {}
    for e in sorted(catalog, key=lambda e: e.order):
        text = seq_text(e.seq)
        if e.seq not in out and font_has_emoji(font, text, notdef):
            out[e.seq] = ("font", json.dumps({"files": files, "text": text}))
    return out


def load_style(style: str, pkg_dir: Path, catalog: list[Entry]) -> dict[str, Asset]:
    """Dispatch on the set's layout; the style names are those in sources.json."""
    if style == "openmoji":
        return load_codepoint_files(pkg_dir / "color" / "svg", ".svg", "svgfile")
    if style == "line":
        return load_codepoint_files(pkg_dir / "black" / "svg", ".svg", "svgfile")
    if style == "3d":
        return load_codepoint_files(pkg_dir / "assets", ".webp", "raster")
    if (pkg_dir / "files").is_dir() and (pkg_dir / "unicode.json").is_file():
        return load_fontsource(pkg_dir, catalog)
    if (pkg_dir / "icons.json").exists():
        return load_iconify(pkg_dir, catalog)
    raise ValueError(f"unknown layout for style {style} in {pkg_dir}")
