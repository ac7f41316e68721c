"""WiSE-FT: interpolating a fine-tuned model's weights with its zero-shot weights (Wortsman et al., CVPR 2022).

``theta = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned`` over every floating-point tensor of the
state dict (image tower, head, buffers alike); alpha = 0 is the zero-shot model, 1 the fine-tuned one.
It applies to any finished run, whatever trained it ("CLIPood + WiSE-FT" interpolates the BMA weights).
"""
from __future__ import annotations

import math
from copy import deepcopy
from typing import Dict, Mapping

import torch
from torch import nn

from .errors import ConfigError, WeightsMismatchError


def interpolate_state_dicts(zeroshot: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                            alpha: float) -> Dict[str, torch.Tensor]:
    """``(1 - alpha) * zeroshot + alpha * finetuned`` per floating tensor (on the fine-tuned tensor's device and
    dtype, computed in float32 or wider); integer tensors are taken from ``finetuned``."""
    if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"WiSE-FT alpha must be in [0, 1] (0: zero-shot, 1: fine-tuned), got {alpha}")
    if set(zeroshot) != set(finetuned):
        missing, extra = sorted(set(finetuned) - set(zeroshot)), sorted(set(zeroshot) - set(finetuned))
        raise WeightsMismatchError(f"zero-shot and fine-tuned weights hold different tensors (only fine-tuned: "
                                   f"{missing[:3]}, only zero-shot: {extra[:3]}); interpolate two states of one model")
    out: Dict[str, torch.Tensor] = {}
    for key, ft in finetuned.items():
        zs = zeroshot[key]
        if zs.shape != ft.shape:
            raise WeightsMismatchError(f"{key}: zero-shot shape {tuple(zs.shape)} != fine-tuned {tuple(ft.shape)}")
        if not ft.is_floating_point():
            out[key] = ft.detach().clone()
            continue
        wide = torch.promote_types(ft.dtype, torch.float32)
        mixed = torch.lerp(zs.detach().to(ft.device, wide), ft.detach().to(wide), float(alpha))
        out[key] = mixed.to(ft.dtype)
    return out


def wise_ft(finetuned: nn.Module, zeroshot: Mapping[str, torch.Tensor], alpha: float) -> nn.Module:
    """A copy of ``finetuned`` holding the WiSE-FT weights for ``alpha``; ``zeroshot`` is the state dict of the
    model before fine-tuning (e.g. ``create_model(name, pretrained=True).state_dict()``)."""
    model = deepcopy(finetuned)
    model.load_state_dict(interpolate_state_dicts(zeroshot, finetuned.state_dict(), alpha))
    return model
