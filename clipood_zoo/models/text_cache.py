"""An on-disk cache of a frozen text tower's embeddings of prompts.

The same prompts through the same text weights give the same embeddings, and on a CPU encoding them is the slow
part of starting some runs: CAR-FT's context is CLIP's 80 templates times every training class (about 18,000
prompts for EmojiDG, some six CPU-minutes per run). An entry is keyed by the sha256 of the text tower's weights
and their dtypes, its module structure (activation, pooling, projection: ``repr``), the tokenizer, the device
type, whether autocast is on, and the whole ordered grid of prompts, so a hit is what encoding would give. The
weights' digest is taken once per tower: the tower is frozen (FrozenTextTower). Entries are safetensors (never
unpickled), written atomically.

Where: ``$CLIPOOD_ZOO_CACHE/text_embeddings`` (default ``$XDG_CACHE_HOME/clipood_zoo``, i.e. ``~/.cache/clipood_zoo``);
``CLIPOOD_ZOO_CACHE=`` (empty) turns it off. An entry that cannot be read is encoded again and replaced; a cache
that cannot be written is skipped with a warning: the cache never fails a run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from ..fileio import write_bytes_atomic
from ..hub import weights_digest

_logger = logging.getLogger(__name__)

CACHE_ENV = "CLIPOOD_ZOO_CACHE"
TENSOR = "embeddings"


def cache_dir() -> Optional[Path]:
    """The folder of the entries, or None when ``$CLIPOOD_ZOO_CACHE`` is set empty (cache off)."""
    root = os.environ.get(CACHE_ENV)
    if root is None:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipood_zoo")
    return Path(root) / "text_embeddings" if root else None


def entry_key(text_model: nn.Module, tokenizer: Any, templates: Sequence[Union[str, Callable[[str], str]]],
              class_names: Sequence[str], device: torch.device) -> str:
    """The sha256 naming the embeddings of ``class_names`` under ``templates`` (format strings or callables, as
    open_clip takes them): keyed by the rendered prompts, so a lambda and a format string that render the same
    prompts share an entry (the whole [classes x templates] grid, in order: one entry per call)."""
    prompts = [[t.format(c) if isinstance(t, str) else t(c) for t in templates] for c in class_names]
    digest = getattr(text_model, "_clipood_text_digest", None)
    if digest is None:  # hashing ~100 MB of text weights once per (frozen) tower, not once per call
        dtypes = sorted({str(v.dtype) for v in text_model.state_dict().values()})
        digest = hashlib.sha256(f"{weights_digest(text_model)}|{dtypes}|{text_model!r}".encode()).hexdigest()
        text_model._clipood_text_digest = digest
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
    tokenizer_id = [type(tokenizer).__name__, getattr(tokenizer, "context_length", None),
                    getattr(inner, "name_or_path", None), type(inner).__name__ if inner is not None else None]
    device_type = torch.device(device).type
    payload = json.dumps([digest, tokenizer_id, device_type, torch.is_autocast_enabled(device_type), prompts],
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached(key: str, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The entry ``key`` names, else ``encode()``'s tensor, stored under ``key`` (when the cache is on)."""
    folder = cache_dir()
    if folder is None:
        return encode()
    path = folder / f"{key}.safetensors"
    if path.is_file():
        try:
            return safetensors_load(path.read_bytes())[TENSOR]
        except (OSError, SafetensorError, KeyError) as e:
            _logger.warning("text embedding cache entry %s is unreadable (%s): encoding again", path, e)
    value = encode()
    try:
        write_bytes_atomic(path, safetensors_save({TENSOR: value.detach().cpu().contiguous()}))
    except OSError as e:
        _logger.warning("text embeddings not cached: cannot write %s (%s); set %s to a writable folder, or to '' "
                        "to turn the cache off", path, e.strerror or e, CACHE_ENV)
    return value
