"""Model names and their pretrained cfgs, kept in timm's own registry.

Every clipood-zoo entrypoint is registered with ``timm.models.register_model`` so that
``timm.create_model('clipood_vitb16_pacs_art')`` and timm's train/validate scripts see it, and the
pretrained cfgs go through ``generate_default_cfgs`` exactly as timm's model files do. What timm's
registry cannot say is which names are ours; this module keeps that set and the zoo's extra cfg
fields (the open_clip architecture, the training recipe, the sha256 of the weights).
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import timm
from timm.models import PretrainedCfg, generate_default_cfgs
from timm.models import get_pretrained_cfg as timm_get_pretrained_cfg
from timm.models import register_model as timm_register_model
from torch import nn

from .errors import ConfigError, UnknownModelError
from .hub_files import CONFIG_NAME, checkpoint_file, hub_file

__all__ = [
    "ZooPretrainedCfg", "register_model", "register_entrypoints", "generate_default_cfgs", "create_model",
    "list_models", "list_pretrained", "is_model", "get_pretrained_cfg",
]

_ZOO_MODELS: Set[str] = set()


@dataclass
class ZooPretrainedCfg(PretrainedCfg):
    """timm's PretrainedCfg plus what a CLIP classifier needs to be rebuilt and its weights trusted."""

    clip_arch: str = ""  # open_clip model config name, e.g. 'ViT-B-16'
    quick_gelu: bool = False  # OpenAI's CLIP weights were trained with QuickGELU
    clip_pretrained: Optional[str] = None  # open_clip tag of the zero-shot starting point, e.g. 'openai'
    templates: Tuple[str, ...] = ("a photo of a {}.",)
    logit_scale: float = 100.0
    dataset: Optional[str] = None
    heldout_domain: Optional[str] = None
    sha256: Optional[str] = None  # of the weights file; checked before loading when set
    recipe: Dict[str, Any] = field(default_factory=dict)  # the paper's hyper-parameters for this entry
    train_command: Optional[str] = None  # how to make the weights where none are published
    # WiSE-FT weights that are not stored: {"zeroshot": name, "finetuned": name, "alpha": a}, built at load time as
    # (1 - a) * zeroshot + a * finetuned from those two registered models' own (sha256-checked) weights
    wise_ft: Optional[Dict[str, Any]] = None

    @property
    def has_weights(self) -> bool:
        """timm's rule (a file, url or hub repo), or weights mixed from two entries' (``list_pretrained`` lists it)."""
        return bool(super().has_weights or self.wise_ft)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """timm's ``register_model`` (cfgs read from the module's ``default_cfgs``), remembered as a zoo name."""
    timm_register_model(fn)
    _ZOO_MODELS.add(fn.__name__)
    return fn


def register_entrypoints(module_name: str, builder: Callable[..., nn.Module]) -> None:
    """Register one entrypoint per name in the module's ``default_cfgs``.

    A family (DomainBed x domains, say) has dozens of names that differ only in their cfg, so the
    entrypoints are generated rather than written out; each is an ordinary named function in that
    module, which is what timm's registry and ``list_models(module=...)`` expect.
    """
    for name in sys.modules[module_name].default_cfgs:
        def entrypoint(pretrained: bool = False, _name: str = name, **kwargs: Any) -> nn.Module:
            return builder(_name, pretrained=pretrained, **kwargs)

        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = module_name
        entrypoint.__doc__ = f"Create {name} (see get_pretrained_cfg('{name}') for its data and recipe)."
        register_model(entrypoint)


def _check_name(model_name: str) -> None:
    if model_name not in _ZOO_MODELS:
        close = difflib.get_close_matches(model_name, sorted(_ZOO_MODELS), n=5, cutoff=0.6)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        raise UnknownModelError(
            f"Unknown model {model_name!r}.{hint} List them with clipood_zoo.list_models('*pattern*')."
        )


def is_model(model_name: str) -> bool:
    return model_name in _ZOO_MODELS


def list_models(filter: str = "", pretrained: bool = False) -> List[str]:
    """Zoo names matching the fnmatch ``filter``, in timm's natural order; only those with weights if ``pretrained``."""
    return [m for m in timm.list_models(filter, pretrained=pretrained) if m in _ZOO_MODELS]


def list_pretrained(filter: str = "") -> List[str]:
    return list_models(filter, pretrained=True)


def get_pretrained_cfg(model_name: str) -> ZooPretrainedCfg:
    """A copy of the model's cfg, safe to change."""
    _check_name(model_name)
    return timm_get_pretrained_cfg(model_name)


# Where a cfg's weights come from. They travel as one unit: a cfg that names its own source (a hub repo's
# config.json, timm's local-dir:, an overlay's file) must not inherit the registry's file or its sha256, or
# the registry's weights would be loaded (and "verified") in place of the ones asked for.
WEIGHTS_SOURCE_FIELDS = ("file", "hf_hub_id", "hf_hub_filename", "url", "state_dict", "sha256", "source", "wise_ft")
_TUPLE_FIELDS = ("input_size", "test_input_size", "min_input_size", "mean", "std", "templates", "label_names")


def _apply(cfg: ZooPretrainedCfg, changes: Dict[str, Any]) -> ZooPretrainedCfg:
    """``cfg`` with ``changes`` (a config.json's pretrained_cfg or an overlay; JSON lists back to tuples)."""
    known = {f.name for f in fields(ZooPretrainedCfg)}
    changes = {k: tuple(v) if isinstance(v, list) and k in _TUPLE_FIELDS else v
               for k, v in changes.items() if k in known}  # a newer save may carry fields this version lacks
    given = [k for k in ("file", "hf_hub_id", "url", "state_dict", "wise_ft") if changes.get(k)]
    if "wise_ft" in given and len(given) > 1:
        raise ConfigError(f"a pretrained cfg gives both wise_ft (weights mixed from two entries) and {given[0]}: give "
                          "one source of weights")
    if given:
        cfg = replace(cfg, **{k: None for k in WEIGHTS_SOURCE_FIELDS})
    return replace(cfg, **changes)


def resolve_pretrained_cfg(
    model_name: str,
    pretrained_cfg: Optional[Any] = None,
    pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
) -> ZooPretrainedCfg:
    """The cfg to build with: the registered one, or one passed in (as timm does for ``hf-hub:`` ids, from the
    repo's config.json), with the overlay applied."""
    if isinstance(pretrained_cfg, ZooPretrainedCfg):
        cfg = pretrained_cfg
    elif isinstance(pretrained_cfg, dict):
        cfg = _apply(get_pretrained_cfg(model_name), pretrained_cfg)
    else:  # None, or a timm tag string (our names carry no tags)
        cfg = get_pretrained_cfg(model_name)
    return _apply(cfg, pretrained_cfg_overlay) if pretrained_cfg_overlay else cfg


def _hub_model_cfg(model_name: str, cache_dir: Optional[str]) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """(zoo name, pretrained cfg, model args) of ``hf-hub:ORG/NAME`` or ``local-dir:PATH``, parsed by timm's own
    config.json reader; a missing repo or file is one clear error naming it."""
    from timm.models._factory import parse_model_name
    from timm.models._hub import _parse_model_cfg, load_cfg_from_json

    source, model_id = parse_model_name(model_name)
    if source == "hf-hub":
        config_file = hub_file(model_id, CONFIG_NAME, cache_dir)
        extra = {"hf_hub_id": model_id, "source": "hf-hub"}
    else:
        config_file = checkpoint_file(model_id).parent / CONFIG_NAME
        extra = {"file": model_id, "source": "local-dir"}
    try:
        config = load_cfg_from_json(config_file)
        cfg, name, model_args = _parse_model_cfg(config, extra)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{config_file} of {model_name} is not a save_pretrained() config.json "
                          f"({type(e).__name__}: {e}); re-export it with clipood_zoo.save_pretrained().") from None
    if name not in _ZOO_MODELS:
        raise UnknownModelError(f"{model_name}'s config.json names architecture {name!r}, which is not a clipood-zoo "
                                "model; load it with timm.create_model, or fix its 'architecture'.")
    return name, cfg, model_args


def create_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
    checkpoint_path: Optional[str] = None,
    cache_dir: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a zoo model, timm's way.

    Args:
        model_name: a registered name (``list_models()``), or ``hf-hub:ORG/NAME`` / ``local-dir:PATH`` for a
            folder written by ``save_pretrained``/``push_to_hub`` (its config.json names the architecture;
            with ``pretrained`` its model.safetensors is loaded, never the registry's file).
        pretrained: load the weights its cfg points to (``weights/``, a file, or the HF hub).
        pretrained_cfg_overlay: cfg fields to replace, e.g. ``{'file': '/path/model.safetensors'}``.
        checkpoint_path: a safetensors file (or a folder written by ``save_pretrained``) loaded instead.
        cache_dir: huggingface_hub cache for hub weights.
        **kwargs: passed to the builder, e.g. ``clip_pretrained='openai'`` to start from open_clip's
            CLIP weights with class embeddings from its text tower, ``with_text_tower=True``, or timm's
            ``num_classes``/``img_size``/``drop_path_rate`` (see ``models.factory.build_zoo_model``).
    """
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    if model_name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        model_name, pretrained_cfg, model_args = _hub_model_cfg(model_name, cache_dir)
        kwargs = {**model_args, **kwargs}
    _check_name(model_name)
    entrypoint = timm.models.model_entrypoint(model_name)
    return entrypoint(
        pretrained=pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        checkpoint_path=checkpoint_path,
        cache_dir=cache_dir,
        **{k: v for k, v in kwargs.items() if v is not None},
    )
