"""What the CLIs share: building a model for a dataset, AMP dtypes, device choice, result files."""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .data.catalog import prettify_class_name
from .data.info import DatasetInfo
from .data.pipeline import MAX_IMAGE_PIXELS, MAX_MEMBER_BYTES
from .errors import ConfigError
from .evaluate import align_classes
from .hub import load_weights, sha256_file
from .models import build_classifier
from .models.factory import default_cfg
from .registry import create_model, is_model

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def add_data_limit_args(group: argparse._ActionsContainer) -> None:
    """``--max-member-bytes`` / ``--max-image-pixels``: what one sample may cost before it is read or decoded."""
    group.add_argument("--max-member-bytes", type=int, default=MAX_MEMBER_BYTES,
                       help="a larger tar member (image, label, metadata) is skipped unread and counted as too_large")
    group.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                       help="a larger image (width x height, from its header) is skipped undecoded and counted as "
                            "too_large")


def data_limits(args: argparse.Namespace) -> Dict[str, int]:
    """The caps of :func:`add_data_limit_args` as ``create_loader`` keyword arguments (refused unless > 0)."""
    limits = {"max_member_bytes": args.max_member_bytes, "max_image_pixels": args.max_image_pixels}
    for key, value in limits.items():
        if not value >= 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be > 0, got {value}")
    return limits


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_for_dataset(name: str, info: DatasetInfo, pretrained: bool = False, checkpoint: Optional[str] = None,
                      clip_pretrained: Optional[str] = None, with_text_tower: bool = False) -> nn.Module:
    """A zoo model by registry name, or a new classifier on an open_clip architecture, over ``info``'s classes.

    An open_clip architecture gets the dataset's class names (embedded by the text tower when
    ``clip_pretrained`` loads CLIP weights); a zoo model must already classify the dataset's classes
    unless it has a text tower to re-embed them (``align_classes``). ``with_text_tower``: keep the
    architecture's own text tower beside the image tower (for a method that embeds prompts of its own).
    """
    if is_model(name):
        model = create_model(name, pretrained=pretrained, checkpoint_path=checkpoint, clip_pretrained=clip_pretrained,
                             with_text_tower=with_text_tower)
        random_head = not (pretrained or checkpoint or clip_pretrained)
        if random_head and not model.class_names and model.num_classes == len(info.classes):
            # an entry whose class names are unknown offline (CoOp's datasets), built without weights: its head is
            # random, so any order is its order: the dataset's (the random-init smoke path of every family)
            model.class_names = [prettify_class_name(c) for c in info.classes]
    else:
        model = build_classifier(name, class_names=[prettify_class_name(c) for c in info.classes],
                                 clip_pretrained=clip_pretrained, with_text_tower=with_text_tower)
        model.pretrained_cfg = {**default_cfg(name).to_dict(), "architecture": name}
        if checkpoint:
            model.pretrained_cfg["loaded_weights"] = load_weights(model, checkpoint)
    model.pretrained_cfg.update(clip_pretrained=clip_pretrained, initial_weights=initial_weights(
        clip_pretrained, model.pretrained_cfg.pop("loaded_weights", None)))
    # only CLIP's own text weights re-embed the dataset's classes: a tower asked for a method's prompts without them
    # may hold weights of its own (random for a CLIP architecture), and never replaces the loaded head
    align_classes(model, info, embed_names=bool(clip_pretrained))
    return model


def initial_weights(clip_pretrained: Optional[str],
                    loaded_weights: Optional[Dict[str, str]]) -> Union[str, List[Dict[str, str]]]:
    """What ``model_for_dataset`` loaded, in load order, for the records a run exports: open_clip's CLIP
    weights (tag, or file and sha256), then the zoo or checkpoint weights (``load_weights``' record: the file
    and the sha256 of the bytes it parsed); or 'random init'.

    A registry cfg's ``clip_pretrained`` says where its published weights came from, not what a run loaded,
    so it is replaced by this record."""
    loaded: List[Dict[str, str]] = []
    if clip_pretrained:
        loaded.append({"open_clip_file": os.path.abspath(clip_pretrained), "sha256": sha256_file(clip_pretrained)}
                      if os.path.isfile(clip_pretrained) else {"open_clip_tag": clip_pretrained})
    if loaded_weights:
        loaded.append(loaded_weights)
    return loaded or "random init"


def format_results(rows: Sequence[Dict[str, Any]], fmt: str) -> str:
    """Result rows as JSON, or CSV whose header is the union of the rows' keys in first-seen order."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2) + "\n"
    fields: list = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
