"""One evaluation loop shared by validate.py and train.py's in-training evaluation."""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from .data.catalog import class_key, prettify_class_name
from .data.info import DatasetInfo
from .errors import ConfigError, DatasetError
from .metrics import AccuracyMeter, ood_scores

_logger = logging.getLogger(__name__)


def same_classes(model_names: Sequence[str], dataset_names: Sequence[str]) -> bool:
    """Class lists equal up to folder-name spelling ('Alarm_Clock' == 'alarm clock')."""
    return [class_key(n) for n in model_names] == [class_key(n) for n in dataset_names]


def head_rows_for(model_names: Sequence[str], dataset_names: Sequence[str]) -> Optional[list]:
    """The model's head row of each dataset class, by name; None unless every dataset class is one of the model's."""
    rows = {}
    for i, name in enumerate(model_names):
        rows.setdefault(class_key(name), i)
    if len(rows) != len(model_names):
        return None  # two model classes spelled alike: matching by name would be a guess
    found = [rows.get(class_key(n)) for n in dataset_names]
    return None if any(r is None for r in found) else found


def align_classes(model: nn.Module, info: DatasetInfo, embed_names: bool = True) -> None:
    """Make the head hold the dataset's classes in its label order, or say why it cannot.

    A dataset whose classes are the model's (or some of them) in another order, say sorted folder names,
    gets the model's own head rows, selected and reordered by name; otherwise a model with a text tower
    embeds the dataset's names, unless ``embed_names`` is False (a tower whose weights may not be the ones that
    made the head, e.g. a CLIP architecture's random one built for a method's own prompts).
    """
    if model.class_names and same_classes(model.class_names, info.classes):
        return
    rows = head_rows_for(model.class_names, info.classes) if model.class_names else None
    if rows is not None:
        _logger.info("%s: head rows selected and reordered by class name to %s's %d classes (the model has %d)",
                     model.pretrained_cfg.get("architecture", "the model"), info.path, len(rows), model.num_classes)
        model.keep_classes(rows)
        return
    if embed_names and model.text_tower is not None:
        model.set_classes([prettify_class_name(c) for c in info.classes])
        return
    name = model.pretrained_cfg.get("architecture", "the model")
    if not model.class_names:
        raise ConfigError(
            f"{name}'s head of {model.num_classes} classes has no class names (its weights do not say which row is "
            f"which class), so it cannot be matched to {info.path}'s classes. Start from CLIP weights "
            "(--clip-pretrained) so the text tower embeds the dataset's class names, or from weights that carry "
            "their class names (train.py exports them).")
    raise ConfigError(
        f"{name} classifies {model.num_classes} classes "
        f"({', '.join(model.class_names[:3])}...) but {info.path} has {len(info.classes)} "
        f"({', '.join(info.classes[:3])}...), not all of them the model's. Use a model made for this dataset, or "
        "start from CLIP weights (--clip-pretrained) so the text tower can embed the dataset's class names.")


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """torch.autocast for ``amp_dtype`` on ``device``; a no-op context when AMP is off."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    domain_names: Sequence[str],
    base_classes: Optional[Sequence[int]] = None,
    new_classes: Optional[Sequence[int]] = None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    logit_columns: Optional[Sequence[int]] = None,
    progress: bool = False,
    desc: str = "eval",
    predictions: Optional[List[torch.Tensor]] = None,
    scores: Optional[List[torch.Tensor]] = None,
    score_columns: Optional[Sequence[int]] = None,
) -> Dict[str, float]:
    """top1/top5, per-domain top1 and (with a base/new split) base/new/hm of ``model`` over ``loader``.

    ``logit_columns`` restricts the classifier to those classes (CoOp's base-only or new-only
    evaluation; the loader must then number targets by position, ``relabel_classes=True``). Counts stay
    on the device until the end (no host sync per batch) and are summed over ranks.
    ``predictions``, when given, receives a [B, 3] CPU tensor per batch of this rank's samples: target,
    domain and top-1 prediction (class indices of the dataset), for paired comparisons of two models
    on the same images (:mod:`clipood_zoo.stats`). ``scores``, when given, receives a [B, 2] CPU tensor per
    batch: the open-set scores of :func:`clipood_zoo.metrics.ood_scores` over the (restricted) logits, or over
    only ``score_columns`` of them (positions in the restricted logits): a base-class model's open-set scores
    taken in the same pass that scores every class.
    """
    was_training = model.training
    model.eval()
    meter = AccuracyMeter(len(domain_names), base_classes, new_classes, device=device)
    columns = None if logit_columns is None else torch.as_tensor(list(logit_columns), device=device)
    scored = None if score_columns is None else torch.as_tensor(list(score_columns), device=device)
    batches = tqdm(loader, desc=desc, total=len(loader), leave=False) if progress else loader
    for images, target, domain in batches:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images)
        if columns is not None:
            logits = logits[:, columns]
        meter.update(logits.float(), target.to(device, non_blocking=True), domain.to(device, non_blocking=True))
        if predictions is not None:
            pair = torch.stack([target.to(device), logits.float().topk(1, dim=1).indices[:, 0]])  # topk as the meter
            pair = columns[pair] if columns is not None else pair
            predictions.append(torch.stack([pair[0].cpu(), domain.cpu(), pair[1].cpu()], 1))
        if scores is not None:
            scores.append(ood_scores(logits if scored is None else logits[:, scored]).cpu())
    meter.all_reduce()
    model.train(was_training)
    if int(meter.counts[0]) == 0:  # the loader had samples to give (it checks), so every one was skipped
        raise DatasetError(f"{desc}: the evaluation data yielded no usable sample: every one was skipped as bad "
                           "(see the warnings above). Fix or re-convert the dataset.")
    return meter.compute(domain_names)
