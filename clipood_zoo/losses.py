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


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision (AMP) features in float32; float32/float64 as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def flyp_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
) -> torch.Tensor:
    """FLYP's loss with a locked text tower: CLIP's symmetric InfoNCE between the B images and the B class
    prompts of their labels, ``(CE(S, arange B) + CE(S.T, arange B)) / 2`` with ``S[i, j] = cos(I_i, T_{y_j}) / tau``.

    As in the authors' code (``flyp_loss.py`` calls their ClipLoss without ``ground_labels``, so the labels
    are ``arange``), a prompt of the same class at another position is a negative. There each image draws
    a random template, so same-class prompts differ a little; here they are one embedding, exact ties. With the text side fixed this is *not* cross-entropy: the image-to-text term is
    a softmax over the batch's labels only, each class counted once per occurrence, i.e. CE over the classes
    present with logit ``S(I, T_c)/tau + log n_c`` (so even a perfect model pays ``log n_y``; absent classes
    are no negatives), and the text-to-image term pushes, for every prompt, the batch's other images away
    from it, a gradient CE does not have. What is lost by locking the text tower: FLYP also updates the text
    encoder (and the logit scale); here the class embeddings are the frozen head, so the exported model stays
    image tower + text-embedding head (unlocking the tower would mean training, averaging and re-embedding it).
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    f = F.normalize(_at_least_float32(image_features), dim=-1)
    t = F.normalize(_at_least_float32(text_features), dim=-1)[target]
    logits = f @ t.T / temperature
    labels = torch.arange(f.shape[0], device=f.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def carft_context_kl(
    teacher_features: torch.Tensor,
    student_features: torch.Tensor,
    context_features: torch.Tensor,
    *,
    temperature: float,
) -> torch.Tensor:
    """CAR-FT's regulariser: ``mean_b KL(p_zs(.|x_b) || p_ft(.|x_b))`` with ``p(k|x) = softmax_k(cos(f(x), W_k) / tau)``
    over the K context prompt weights W (rows of ``context_features``); p_zs from the frozen zero-shot tower."""
    ctx = F.normalize(_at_least_float32(context_features), dim=-1)
    log_p = F.log_softmax(F.normalize(_at_least_float32(teacher_features), dim=-1) @ ctx.T / temperature, dim=-1)
    log_q = F.log_softmax(F.normalize(_at_least_float32(student_features), dim=-1) @ ctx.T / temperature, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def croft_energy_gradient_penalty(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    delta: float = 1e-4,
) -> torch.Tensor:
    """CRoFT's penalty ``|| d/dDelta mean_{b,c} exp(cos(g_b(Delta), t_c)) ||^2`` (squared Frobenius norm) at
    ``Delta = delta * ones(D, D)``, with ``g_b(Delta) = z_b (I + Delta)``, ``z_b = normalize(f_b)``.

    In the authors' code the fine-tuned weights are an adapter matrix theta (identity at start) applied to
    the normalised CLIP features, ``z @ (theta + Delta)``, and the penalty is the gradient with respect to
    Delta (their PACS/VLCS path: mean over pairs, sum of squares; the logit scale is not applied). Here the
    whole tower is fine-tuned and its output plays ``z @ theta``, so Delta perturbs an identity map
    appended to it. The text side is frozen, so the text adapter's share of Delta is dropped.

    The authors take that gradient with ``autograd.grad(create_graph=True)``; it is written out here
    (chain rule through exp, the normalisation and the linear map) so that training needs no double
    backward, which torch.compile cannot trace: with ``u_b = z_b (I + Delta)``, ``g_b = u_b / |u_b|``,
    ``e_b = sum_c exp(g_b . t_c) t_c / (B C)`` (dE/dg_b), the gradient is
    ``sum_b z_b^T (e_b - (e_b . g_b) g_b) / |u_b|``.
    """
    z = F.normalize(_at_least_float32(image_features), dim=-1)
    t = F.normalize(_at_least_float32(text_features), dim=-1)
    u = z + delta * z.sum(dim=-1, keepdim=True)  # z @ (I + delta * ones)
    norm = u.norm(dim=-1, keepdim=True)
    g = u / norm
    d_energy_d_g = torch.exp(g @ t.T) @ t / (z.shape[0] * t.shape[0])
    d_energy_d_u = (d_energy_d_g - (d_energy_d_g * g).sum(dim=-1, keepdim=True) * g) / norm
    return (z.T @ d_energy_d_u).pow(2).sum()
