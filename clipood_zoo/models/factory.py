"""Build a ClipoodClassifier from a pretrained cfg: open_clip towers, class embeddings, weights.

The image tower alone is built with open_clip's own ``_build_vision_tower`` when no text is needed,
so creating a ViT-B/16 classifier does not construct (let alone run) a 63M-parameter text encoder.
The full open_clip model is built only when its text tower is wanted: ``clip_pretrained`` (start from
CLIP's weights, class embeddings from its text encoder) or ``with_text_tower`` (for ``set_classes``).
"""
from __future__ import annotations

import difflib
import logging
from typing import Any, Dict, Mapping, Optional, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import _build_vision_tower

from ..errors import ConfigError, WeightsError, WeightsIntegrityError
from ..hub import fit_position_embedding, load_weights, resolve_weights
from ..registry import ZooPretrainedCfg, resolve_pretrained_cfg
from ..weight_space import interpolate_state_dicts
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
    vision_cfg: Optional[dict] = None,
) -> ClipoodClassifier:
    """A classifier over ``class_names`` (or ``num_classes`` unnamed classes) on an open_clip architecture.

    Without CLIP weights the head is random unit vectors, as a timm model's head is random before
    training; with ``clip_pretrained`` it is the zero-shot classifier of the text encoder.
    ``vision_cfg`` replaces the architecture's image tower config (see :func:`timm_vision_cfg`).
    """
    model_cfg = clip_model_config(clip_arch)
    if vision_cfg is not None:
        model_cfg = {**model_cfg, "vision_cfg": vision_cfg}
    if class_names is None and num_classes is None:
        raise ConfigError("build_classifier needs class_names or num_classes")
    num_classes = len(class_names) if class_names is not None else num_classes
    quick_gelu = quick_gelu or model_cfg.get("quick_gelu", False)
    image_size = model_cfg["vision_cfg"]["image_size"]
    text_tower = None
    if clip_pretrained or with_text_tower:
        clip, tokenizer = create_clip(clip_arch, pretrained=clip_pretrained, force_quick_gelu=quick_gelu,
                                      cache_dir=cache_dir, **({"vision_cfg": vision_cfg} if vision_cfg else {}))
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
        mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, first_conv="visual.conv1", classifier="head",
        custom_load=True, **kwargs,  # timm's load_pretrained(model) then calls ClipoodClassifier.load_pretrained
    )


TIMM_KWARGS = ("num_classes", "in_chans", "img_size", "global_pool", "drop_rate", "drop_path_rate", "drop_block_rate",
               "features_only", "bn_momentum", "bn_eps")
_POOLS = {"token": "tok", "avg": "avg"}  # timm's global_pool -> open_clip's ViT pool_type


def timm_vision_cfg(clip_arch: str, model_name: str, in_chans: Optional[int] = None, img_size: Optional[Any] = None,
                    global_pool: Optional[str] = None, drop_rate: Optional[float] = None,
                    drop_path_rate: Optional[float] = None, drop_block_rate: Optional[float] = None,
                    features_only: Optional[bool] = None, bn_momentum: Optional[float] = None,
                    bn_eps: Optional[float] = None) -> Optional[dict]:
    """The arch's open_clip ``vision_cfg`` with timm's model kwargs applied in their timm meaning (None: unchanged).

    What open_clip's image tower cannot do is refused by name rather than silently ignored: other than 3
    input channels, dropout / drop path on open_clip's own ViT (it has neither; timm backbones do), drop
    block and batch-norm settings (a ViT has neither), a feature pyramid.
    """
    vision = dict(clip_model_config(clip_arch)["vision_cfg"])
    timm_backbone = bool(vision.get("timm_model_name"))

    def refuse(kwarg: str, why: str) -> None:
        raise ConfigError(f"{model_name} cannot take {kwarg}: {why}. Zoo models take timm's num_classes, "
                          "in_chans=3, img_size, global_pool ('token' or 'avg'), and drop_rate / drop_path_rate where "
                          "the image tower has them (timm backbones); and clip_pretrained, with_text_tower, "
                          "checkpoint_path, cache_dir, pretrained_cfg_overlay, allow_pickle.")

    if in_chans not in (None, 3):
        refuse(f"in_chans={in_chans}", "CLIP image towers take 3-channel RGB images")
    if features_only:
        refuse("features_only=True", "the open_clip image tower has no multi-scale feature maps; use "
               "model.forward_features(x) for the image embedding")
    for kwarg, value in (("drop_block_rate", drop_block_rate), ("bn_momentum", bn_momentum), ("bn_eps", bn_eps)):
        if value is not None and (kwarg != "drop_block_rate" or value):
            refuse(f"{kwarg}={value}", "a ViT has no convolutional feature maps or batch norm")
    changed = False
    for kwarg, value, key in (("drop_rate", drop_rate, "timm_drop"),
                              ("drop_path_rate", drop_path_rate, "timm_drop_path")):
        if value:
            if not timm_backbone:
                what = kwarg.rsplit("_", 1)[0]
                refuse(f"{kwarg}={value}", f"open_clip's ViT image tower ({clip_arch}) has no {what}")
            vision[key], changed = value, True
    if global_pool is not None:
        if global_pool not in _POOLS or timm_backbone:
            refuse(f"global_pool={global_pool!r}", "the image tower pools with 'token' or 'avg'")
        vision["pool_type"], changed = _POOLS[global_pool], True
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(size) != 2 or size[0] != size[1]:
            refuse(f"img_size={img_size}", "open_clip's ViT takes square images")
        vision["image_size"], changed = size[0], True
    return vision if changed else None


WISE_FT_ROLES = ("zeroshot", "finetuned")


def load_wise_ft(model: ClipoodClassifier, spec: Mapping[str, Any], cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """Load a WiSE-FT entry's weights, which are not stored: ``(1 - alpha) zeroshot + alpha finetuned`` of the two
    registered models ``spec`` names, each loaded (and sha256-checked) as ``create_model(name, pretrained=True)``
    would. A WiSE-FT model is the shipped fine-tune mixed with the shipped base (train.py's WiSE-FT interpolates
    the run's exported weights), so shipping it costs no file. ``spec["sha256"]`` (role -> digest), when given, pins
    the two files the mix was measured with: a source re-shipped since then is refused, not silently mixed.
    Returns the record of what was mixed."""
    name = model.pretrained_cfg["architecture"]
    missing = [k for k in (*WISE_FT_ROLES, "alpha") if k not in spec]
    if missing or any(resolve_pretrained_cfg(spec[role]).wise_ft for role in WISE_FT_ROLES if role in spec):
        raise ConfigError(f"{name}'s wise_ft spec {dict(spec)} must name two entries with weights of their own (not "
                          f"mixes) and alpha: {{'zeroshot': NAME, 'finetuned': NAME, 'alpha': A}}")
    alpha = float(spec["alpha"])
    try:
        sources = {role: build_zoo_model(spec[role], pretrained=True, cache_dir=cache_dir) for role in WISE_FT_ROLES}
    except WeightsError as e:
        raise type(e)(f"{name} is WiSE-FT of two shipped models, mixed when it loads ({1 - alpha:g} x "
                      f"{spec['zeroshot']} + {alpha:g} x {spec['finetuned']}), and one could not be loaded: {e}") from e
    for role, source in sources.items():
        pinned, loaded = spec.get("sha256", {}).get(role), source.pretrained_cfg["loaded_weights"]["sha256"]
        if pinned is not None and pinned != loaded:
            raise WeightsIntegrityError(
                f"{name} was measured as a mix of {spec[role]} with sha256 {pinned}, but {spec[role]}'s weights are "
                f"now {loaded}: {spec[role]} was re-shipped since; re-ship {name} with it (run_benchmark.py --ship)")
    mixed = interpolate_state_dicts(sources["zeroshot"].state_dict(), sources["finetuned"].state_dict(), alpha)
    fit_position_embedding(model, mixed)  # a model built with timm's img_size=
    model.load_state_dict(mixed)
    return {"wise_ft_alpha": alpha, **{role: {"model": spec[role], **m.pretrained_cfg["loaded_weights"]}
                                       for role, m in sources.items()}}


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
    num_classes: Optional[int] = None,
    pretrained_model_args: Optional[dict] = None,
    **kwargs: Any,
) -> ClipoodClassifier:
    """The entrypoint body every registered name shares (``registry.register_entrypoints``).

    timm's model kwargs keep their timm meaning: ``num_classes`` gives a new head after the weights are
    loaded (as ``reset_classifier``), ``img_size`` resamples the position embedding of loaded weights (open_clip's
    ``resize_pos_embed``); see :func:`timm_vision_cfg` for the rest. ``pretrained_model_args`` is timm's record
    of a hub config's ``model_args``, already merged into the kwargs by timm.
    """
    unknown = sorted(set(kwargs) - set(TIMM_KWARGS))
    if unknown:
        raise ConfigError(
            f"{model_name} does not take {', '.join(unknown)}; clipood models take timm's {', '.join(TIMM_KWARGS)} "
            "(see clipood_zoo.models.factory.timm_vision_cfg) and clip_pretrained, with_text_tower, "
            "checkpoint_path, cache_dir, pretrained_cfg_overlay, allow_pickle"
        )
    cfg = resolve_pretrained_cfg(model_name, pretrained_cfg, pretrained_cfg_overlay)
    vision_cfg = timm_vision_cfg(cfg.clip_arch, model_name, **kwargs)
    model = build_classifier(
        cfg.clip_arch, class_names=cfg.label_names, num_classes=cfg.num_classes, templates=cfg.templates,
        quick_gelu=cfg.quick_gelu, clip_pretrained=clip_pretrained, with_text_tower=with_text_tower,
        logit_scale=cfg.logit_scale, cache_dir=cache_dir, vision_cfg=vision_cfg,
    )
    model.pretrained_cfg = cfg.to_dict()
    model.pretrained_cfg["architecture"] = model_name
    if checkpoint_path is None and pretrained and cfg.wise_ft:
        model.pretrained_cfg["loaded_weights"] = load_wise_ft(model, cfg.wise_ft, cache_dir)
    elif checkpoint_path is not None or pretrained:
        path, sha256 = resolve_weights(cfg, checkpoint_path=checkpoint_path, cache_dir=cache_dir)
        _logger.info("Loading %s weights from %s", model_name, path)
        model.pretrained_cfg["loaded_weights"] = load_weights(model, path, allow_pickle=allow_pickle,
                                                              expected_sha256=sha256)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    model.update_pretrained_cfg()
    return model
