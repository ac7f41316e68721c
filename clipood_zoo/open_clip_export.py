"""Back to open_clip: a zoo model as the full CLIP it is, loadable with ``open_clip.create_model('local-dir:...')``.

A CLIPood model is a CLIP whose image tower was fine-tuned while its text tower stayed frozen; the zoo keeps
only the image tower plus the class embeddings that text tower made. Exporting puts the three parts back
together in open_clip's own folder format (``open_clip_config.json`` with ``model_cfg`` and
``preprocess_cfg``, as ``open_clip.push_to_hf_hub.save_config_for_hf`` writes it, and
``open_clip_model.safetensors``): the fine-tuned image tower, the text tower the head was embedded with,
and the head's logit scale. ``python -m clipood_zoo.export NAME OUT --checkpoint RUN`` does the same from
the command line (clipood_zoo/export.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import open_clip
import torch

from .errors import ConfigError
from .fileio import write_bytes_atomic, write_text_atomic
from .hub import PathLike, canonical_safetensors
from .models.classifier import ClipoodClassifier
from .models.factory import clip_model_config

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"  # the first name open_clip's local-dir: loader looks for


def open_clip_state_dict(model: ClipoodClassifier) -> Dict[str, torch.Tensor]:
    """The CLIP state dict: ``visual.*`` from the zoo model, the text tower's tensors, and its logit scale."""
    if model.text_tower is None:
        raise ConfigError(
            "export_open_clip needs the text tower the model's head was embedded with; create the model with "
            "with_text_tower=True (the architecture's text weights, e.g. the bundled MiniLM) or "
            "clip_pretrained=<open_clip tag>, then load the fine-tuned weights (checkpoint_path=)."
        )
    text = {k: v for k, v in model.text_tower.model.state_dict().items() if not k.startswith("visual.")}
    visual = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    return {**text, **visual, "logit_scale": model.head.logit_scale.detach().clone()}


def export_open_clip(model: ClipoodClassifier, out_dir: PathLike) -> Path:
    """Write ``model`` as an open_clip CLIP folder; returns it. Load with
    ``open_clip.create_model_and_transforms('local-dir:' + str(out_dir))``."""
    cfg = model.pretrained_cfg or {}
    clip_arch = cfg.get("clip_arch")
    if not clip_arch:
        raise ConfigError("the model's pretrained_cfg names no clip_arch; export models made by "
                          "clipood_zoo.create_model")
    model_cfg = dict(clip_model_config(clip_arch))
    model_cfg["vision_cfg"] = {**model_cfg["vision_cfg"], "image_size": model.image_size}
    if cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # the zoo forces it for OpenAI weights; open_clip must build the same tower
    state = {k: v.detach().cpu().float().contiguous() if v.is_floating_point() else v.detach().cpu()
             for k, v in open_clip_state_dict(model).items()}
    out_dir = Path(out_dir)
    write_bytes_atomic(out_dir / OPEN_CLIP_WEIGHTS, canonical_safetensors(state, {"format": "pt"}))
    preprocess = {"mean": list(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                  "std": list(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
                  "interpolation": cfg.get("interpolation", "bicubic"), "resize_mode": "shortest"}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess,
              "clipood_zoo": {"architecture": cfg.get("architecture"), "class_names": list(model.class_names),
                              "templates": list(model.templates)}}
    write_text_atomic(out_dir / OPEN_CLIP_CONFIG, json.dumps(config, indent=2) + "\n")
    return out_dir

