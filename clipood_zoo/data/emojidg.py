"""EmojiDG, the built-in benchmark: 444 emoji classes, four downstream styles, a fixed base/new split.

The class list is committed (``emojidg_classes.json``, written by tools/pretrain_emoji_clip.py from
the raw build's metadata), so models and evaluation agree on label order without the images.
Images: built from pinned npm packages by ``tools/emojidg/build.py`` + ``make_shards.py``; the ``val``
split ships in ``datasets/emojidg-mini``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

_META: Dict = json.loads((Path(__file__).parent / "emojidg_classes.json").read_text())

CLASS_NAMES: Tuple[str, ...] = tuple(c["name"] for c in sorted(_META["classes"], key=lambda c: c["index"]))
BASE_CLASSES: Tuple[int, ...] = tuple(_META["base_classes"])
NEW_CLASSES: Tuple[int, ...] = tuple(_META["new_classes"])
DOMAINS: Tuple[str, ...] = tuple(_META["domains"])
PRETRAIN_STYLES: Tuple[str, ...] = tuple(_META["pretrain_styles"])
IMAGE_SIZE: int = _META["image_size"]
SOURCES = tuple(_META["sources"])
