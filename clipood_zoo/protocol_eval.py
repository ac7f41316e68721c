"""Scoring a model on converted ImageNet shift sets (paper Table 2), outside the data package.

Data modules convert and describe datasets; building models and evaluating them lives here, on top of
:func:`clipood_zoo.evaluate.evaluate` (the one evaluation loop validate.py and train.py use too), so that
``clipood_zoo.data`` never imports the model side.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from timm.data import create_transform, resolve_data_config

from .cli_utils import default_device, model_for_dataset
from .data.info import DatasetInfo, read_dataset_info
from .data.pipeline import create_loader
from .data.protocols.imagenet import SPLIT
from .evaluate import evaluate


def evaluate_shift(model: torch.nn.Module, data: str | os.PathLike | DatasetInfo, *, batch_size: int = 256,
                   workers: int = 2, device: Optional[torch.device] = None, amp_dtype: Optional[torch.dtype] = None,
                   split: str = SPLIT, transform=None, progress: bool = False) -> Dict[str, Any]:
    """top1/top5 and ``top1_<domain>`` of ``model`` on a converted set, restricted to its ``eval_classes``
    when ``_info.json`` declares them (A, R); ``eval_classes`` in the result is the number of columns."""
    device = device or torch.device("cpu")
    info = data if isinstance(data, DatasetInfo) else read_dataset_info(data)
    subset = info.eval_classes
    if transform is None:
        transform = create_transform(**resolve_data_config({}, model=model))
    loader = create_loader(info, split, transform=transform, batch_size=batch_size, is_training=False,
                           classes=subset, relabel_classes=subset is not None, num_workers=workers)
    metrics = evaluate(model, loader, device, info.domains, amp_dtype=amp_dtype, logit_columns=subset,
                       progress=progress, desc=info.name)
    return {**metrics, "eval_classes": len(subset) if subset is not None else len(info.classes), "split": split}


def validate_shifts(model_name: str, data_dirs: Sequence[str | os.PathLike], *, checkpoint: Optional[str] = None,
                    clip_pretrained: Optional[str] = None, pretrained: bool = False, batch_size: int = 256,
                    workers: int = 2, device: Optional[str] = None, split: str = SPLIT,
                    amp_dtype: Optional[torch.dtype] = None, progress: bool = True) -> List[Dict[str, Any]]:
    """One validate.py-style row per converted set (ImageNet, V2, Sketch, A, R) for ``model_name``
    (split ``split`` of each; a progress bar per set unless ``progress=False``)."""
    dev = torch.device(device or default_device())
    rows = []
    model = None
    for data_dir in data_dirs:
        info = read_dataset_info(data_dir)
        if model is None:
            model = model_for_dataset(model_name, info, pretrained, checkpoint, clip_pretrained).to(dev)
        m = evaluate_shift(model, info, batch_size=batch_size, workers=workers, device=dev, amp_dtype=amp_dtype,
                           split=split, progress=progress)
        rows.append({"model": model_name, **{k: m[k] for k in ("top1", "top1_err", "top5", "top5_err")},
                     **{k: v for k, v in m.items() if k.startswith("top1_") and k != "top1_err"},
                     "num_samples": m["num_samples"], "split": m["split"], "eval_classes": m["eval_classes"],
                     "dataset": info.name})
    return rows
