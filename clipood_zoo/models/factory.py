"""Build a ClipoodClassifier from a pretrained cfg: open_clip towers, class embeddings, weights.

The image tower alone is built with open_clip's own ``_build_vision_tower`` when no text is needed,
so creating a ViT-B/16 classifier does not construct (let alone run) a 63M-parameter text encoder.
The full open_clip model is built only when its text tower is wanted: ``clip_pretrained`` (start from
CLIP's weights, class embeddings from its text encoder) or ``with_text_tower`` (for ``set_classes``).
"""
from __future__ import annotations

import difflib
import logging
from typing import Any, Optional, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import _build_vision_tower

from ..errors import ConfigError
from ..hub import load_weights, resolve_weights
from ..registry import ZooPretrainedCfg, resolve_pretrained_cfg
from .classifier import DEFAULT_TEMPLATES, ClipoodClassifier, FrozenTextTower
from .text_towers import create_clip

_logger = logging.getLogger(__name__)


def clip_model_config(clip_arch: str) -> dict:
    cfg = open_clip.get_model_config(clip_arch)
    if cfg is None:
        close = difflib.get_close_matches(clip_arch, open_clip.list_models(), n=5)
        raise ConfigError(f"Unknown open_clip architecture {clip_arch!r}; closest: {', '.join(close) or 'none'}. "
                          "See open_clip.list_models().")
    return cfg


def build_classifier(
    clip_arch: str,
    class_names: Optional[Sequence[str]] = None,
    num_classes: Optional[int] = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    quick_gelu: bool = False,
    clip_pretrained: Optional[str] = None,
    with_text_tower: bool = False,
    logit_scale: float = 100.0,
    cache_dir: Optional[str] = None,
) -> ClipoodClassifier:
    """A classifier over ``class_names`` (or ``num_classes`` unnamed classes) on an open_clip architecture.

    Without CLIP weights the head is random unit vectors, as a timm model's head is random before
    training; with ``clip_pretrained`` it is the zero-shot classifier of the text encoder.
    """
    model_cfg = clip_model_config(clip_arch)
    if class_names is None and num_classes is None:
        raise ConfigError("build_classifier needs class_names or num_classes")
    num_classes = len(class_names) if class_names is not None else num_classes
    quick_gelu = quick_gelu or model_cfg.get("quick_gelu", False)
    image_size = model_cfg["vision_cfg"]["image_size"]
    text_tower = None
    if clip_pretrained or with_text_tower:
        clip, tokenizer = create_clip(clip_arch, pretrained=clip_pretrained, force_quick_gelu=quick_gelu,
                                      cache_dir=cache_dir)
        visual = clip.visual
        if clip_pretrained:
            logit_scale = float(clip.logit_scale.exp())
        text_tower = FrozenTextTower(clip, tokenizer)
    else:
        visual = _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu=quick_gelu)
    embed_dim = model_cfg["embed_dim"]
    model = ClipoodClassifier(
        visual, F.normalize(torch.randn(num_classes, embed_dim), dim=-1), logit_scale=logit_scale,
        class_names=class_names, templates=templates, text_tower=text_tower,
        image_size=image_size if isinstance(image_size, int) else image_size[0],
    )
    if clip_pretrained and class_names is not None:
        model.set_classes(class_names)
    return model


def default_cfg(clip_arch: str, **kwargs: Any) -> ZooPretrainedCfg:
    """A zoo cfg with the preprocessing open_clip uses for ``clip_arch`` (OpenAI mean/std, bicubic, full crop)."""
    size = clip_model_config(clip_arch)["vision_cfg"]["image_size"]
    return ZooPretrainedCfg(
        clip_arch=clip_arch, input_size=(3, size, size), interpolation="bicubic", crop_pct=1.0,
        mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, first_conv="visual.conv1", classifier="head", **kwargs,
    )


def build_zoo_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg: Optional[Any] = None,
    pretrained_cfg_overlay: Optional[dict] = None,
    cache_dir: Optional[str] = None,
    checkpoint_path: Optional[str] = None,
    clip_pretrained: Optional[str] = None,
    with_text_tower: bool = False,
    allow_pickle: bool = False,
    **kwargs: Any,
) -> ClipoodClassifier:
    """The entrypoint body every registered name shares (``registry.register_entrypoints``)."""
    if kwargs:
        raise ConfigError(
            f"{model_name} does not take {', '.join(sorted(kwargs))}; clipood models take clip_pretrained, "
            "with_text_tower, checkpoint_path, cache_dir, pretrained_cfg_overlay and allow_pickle"
        )
    cfg = resolve_pretrained_cfg(model_name, pretrained_cfg, pretrained_cfg_overlay)
    model = build_classifier(
        cfg.clip_arch, class_names=cfg.label_names, num_classes=cfg.num_classes, templates=cfg.templates,
        quick_gelu=cfg.quick_gelu, clip_pretrained=clip_pretrained, with_text_tower=with_text_tower,
        logit_scale=cfg.logit_scale, cache_dir=cache_dir,
    )
    model.pretrained_cfg = cfg.to_dict()
    model.pretrained_cfg["architecture"] = model_name
    if checkpoint_path is not None or pretrained:
        path, sha256 = resolve_weights(cfg, checkpoint_path=checkpoint_path, cache_dir=cache_dir)
        _logger.info("Loading %s weights from %s", model_name, path)
        load_weights(model, path, allow_pickle=allow_pickle, expected_sha256=sha256)
    return model
