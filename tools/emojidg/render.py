"""Rasterise an emoji asset and composite it onto varied, deterministic backgrounds.

Why backgrounds: the sets ship with transparency; a model must not learn "transparent = emoji set X",
so every render gets its own solid / gradient / noise background, chosen to contrast with the icon
(black line art on a black background would be invisible), plus a small random scale and offset.
"""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

Asset = tuple[str, str]


def stable_seed(*parts: object) -> int:
    """Seed from any values, identical across processes and runs (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def svg_to_rgba(svg: str, size: int) -> Image.Image:
    """Rasterise SVG text to a size x size RGBA image with resvg-py (or cairosvg if installed)."""
    try:
        import resvg_py
        png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, skip_system_fonts=True)
    except ImportError:
        import cairosvg  # fallback rasteriser
        png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size)
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def fit_square(im: Image.Image, size: int) -> Image.Image:
    """Shrink to fit size x size (aspect kept) and centre on a transparent canvas."""
    im.thumbnail((size, size), Image.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def open_font(font_file: str, size: int) -> ImageFont.FreeTypeFont:
    """A FreeType font (TTF/OTF/WOFF) with complex text layout where Pillow has it: ZWJ sequences such
    as 'polar bear' are ligatures, which only the Raqm layout shapes into one glyph."""
    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    return ImageFont.truetype(font_file, size, layout_engine=layout)


def font_to_rgba(font_file: str, text: str, size: int) -> Image.Image:
    """One glyph (or ligature) drawn black, cropped to its ink and fitted into size x size RGBA."""
    font = open_font(font_file, size)
    left, top, right, bottom = font.getbbox(text)
    glyph = Image.new("RGBA", (max(right - left, 1), max(bottom - top, 1)), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text((-left, -top), text, font=font, fill=(0, 0, 0, 255))
    return fit_square(glyph, size)


def load_rgbas(asset: Asset, size: int) -> list[Image.Image]:
    """Asset -> its RGBA images, size x size: one per weight for a font asset, else one (:func:`load_rgba`).

    A font asset's payload is JSON ``{"files": [one font file per weight], "text": the emoji}``.
    """
    kind, payload = asset
    if kind == "font":
        spec = json.loads(payload)
        return [font_to_rgba(f, spec["text"], size) for f in spec["files"]]
    return [load_rgba(asset, size)]


def load_rgba(asset: Asset, size: int) -> Image.Image:
    """Asset -> RGBA image, size x size, aspect kept (padded) for rasters."""
    kind, payload = asset
    if kind == "svg":
        return svg_to_rgba(payload, size)
    if kind == "svgfile":
        with open(payload, encoding="utf-8") as f:
            return svg_to_rgba(f.read(), size)
    if kind == "raster":
        with Image.open(payload) as im:
            im = im.convert("RGBA")
        return fit_square(im, size)
    raise ValueError(f"unknown asset kind {kind}")


def luminance(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., :3] @ np.array([0.299, 0.587, 0.114])) / 255.0


def icon_luminance(rgba: Image.Image) -> float:
    """Alpha-weighted mean luminance of the icon's pixels (0 black .. 1 white)."""
    a = np.asarray(rgba, dtype=np.float64)
    w = a[..., 3] / 255.0
    return float((luminance(a) * w).sum() / max(w.sum(), 1e-6))


def _colour(rng: np.random.Generator, icon_lum: float, min_contrast: float = 0.3) -> np.ndarray:
    """A random colour whose luminance differs from the icon's by at least min_contrast."""
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if abs(luminance(c.astype(np.float64)) - icon_lum) >= min_contrast:
            return c
    return np.full(3, 255 if icon_lum < 0.5 else 0)


def background(size: int, rng: np.random.Generator, icon_lum: float) -> Image.Image:
    """Solid, linear gradient or smooth noise; all colours contrast with the icon."""
    kind = rng.choice(["solid", "gradient", "noise"], p=[0.4, 0.35, 0.25])
    c0 = _colour(rng, icon_lum).astype(np.float64)
    if kind == "solid":
        arr = np.broadcast_to(c0, (size, size, 3))
    elif kind == "gradient":
        c1 = _colour(rng, icon_lum).astype(np.float64)
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (xx * np.cos(theta) + yy * np.sin(theta))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        arr = c0 * (1 - t[..., None]) + c1 * t[..., None]
    else:
        low = rng.normal(0, 32, (max(size // 8, 2), max(size // 8, 2), 3))
        noise = np.asarray(Image.fromarray(np.clip(low + 128, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC), dtype=np.float64) - 128
        arr = c0 + noise + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def compose(rgba: Image.Image, size: int, rng: np.random.Generator,
            scale: tuple[float, float] = (0.7, 0.95)) -> Image.Image:
    """Paste the icon, scaled by a random factor and randomly offset, onto a background; RGB out."""
    bg = background(size, rng, icon_luminance(rgba))
    s = max(1, int(round(size * rng.uniform(*scale))))
    icon = rgba.resize((s, s), Image.LANCZOS)
    x, y = (int(rng.integers(0, size - s + 1)) for _ in range(2))
    bg.paste(icon, (x, y), icon)
    return bg


def render_variants(asset: Asset, size: int, n: int, seed: int, supersample: int = 2) -> list[Image.Image]:
    """n deterministic renders of one source image. The asset is rasterised once at
    supersample*size and downscaled per render (sharper than rasterising small); a font's weights
    take turns (render i uses weight i mod the number of weights)."""
    rgbas = load_rgbas(asset, size * supersample)
    return [compose(rgbas[i % len(rgbas)], size, np.random.default_rng(stable_seed(seed, i))) for i in range(n)]
