"""Training objectives on image/text cosine similarities.

The margin metric softmax (MMS) of CLIPood adds, to the logit of every wrong class c, a margin
lambda * (1 - S(T_y, T_c)) that grows with how *unlike* the true class c is in text space, so the
image encoder is pushed away from semantically distant classes more than from near ones, keeping
the geometry of the frozen text space. ``margin_lambda=0`` is plain cross-entropy on cosine logits
(the ERM baseline); ``adaptive=False`` is the fixed-margin ablation (the same lambda for every c != y).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


def mms_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    margin_lambda: float,
    adaptive: bool = True,
) -> torch.Tensor:
    """The logits MMS takes the softmax of, up to a per-row constant (which the softmax ignores).

    Adaptive margin, as the authors implement it: ``(f - lambda * t_y) @ T.T / tau`` equals
    ``(S(I,T_c) + lambda * (1 - S(T_y,T_c))) / tau - lambda / tau`` for normalised T. One [B,D]x[D,C]
    product, so the cost never grows with C^2 as a precomputed [C,C] margin matrix would.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    f = F.normalize(image_features, dim=-1)
    t = F.normalize(text_features, dim=-1).to(f.dtype)
    if adaptive:
        return (f - margin_lambda * t[target]) @ t.T / temperature
    logits = f @ t.T / temperature
    return logits + (margin_lambda / temperature) * (1.0 - F.one_hot(target, t.shape[0]).to(logits.dtype))


def mms_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    margin_lambda: float,
    adaptive: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Margin metric softmax: mean over the batch of
    ``-log(exp(S(I,T_y)/tau) / sum_c exp((S(I,T_c) + lambda (1 - S(T_y,T_c)))/tau))``.

    Args:
        image_features: [B, D] image embeddings (normalised inside).
        text_features: [C, D] class text embeddings (normalised inside), frozen.
        target: [B] class indices.
    """
    logits = mms_logits(image_features, text_features, target, temperature=temperature,
                        margin_lambda=margin_lambda, adaptive=adaptive)
    return F.cross_entropy(logits.float(), target, reduction=reduction)


class MMSLoss(nn.Module):
    """``mms_loss`` as a module, configured once: ``MMSLoss(0.01, 0.3)(features, text_features, target)``."""

    def __init__(self, temperature: float = 0.01, margin_lambda: float = 0.3, adaptive: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.margin_lambda = margin_lambda
        self.adaptive = adaptive

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mms_loss(image_features, text_features, target, temperature=self.temperature,
                        margin_lambda=self.margin_lambda, adaptive=self.adaptive)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, margin_lambda={self.margin_lambda}, adaptive={self.adaptive}"
