"""Accuracy counters for OOD evaluation: top-k, per domain, and CoOp's base/new/harmonic mean.

timm's ``accuracy`` gives batch percentages; domain generalisation needs *counts* kept per domain
and per class subset (so ranks and batches can be summed exactly), and base-to-new needs each
subset scored with the classifier restricted to that subset's classes, as CoCoOp evaluates it.

A sample whose logits hold a NaN/inf is never counted correct (``topk`` ranks NaN first, so a batch of
NaN logits would otherwise score top-5 = 100%) and is counted in ``nonfinite_logits``.
Open-set detection (MCM and energy scores, AUROC, FPR@95TPR) is pure functions of logits and scores.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


class AccuracyMeter:
    """Counts of correct predictions, updated batch by batch, all on the logits' device (no host syncs).

    Args:
        num_domains: size of the domain index space (per-domain top-1 is kept for each).
        base_classes / new_classes: class indices of a base-to-new split; when given, each sample of a
            base (new) class is also scored by the argmax over the base (new) columns only.
    """

    def __init__(self, num_domains: int = 1, base_classes: Optional[Sequence[int]] = None,
                 new_classes: Optional[Sequence[int]] = None, device: Optional[torch.device] = None):
        self.num_domains = num_domains
        # counts: [total, top1, top5, base_total, base_top1, new_total, new_top1, nonfinite_logits]
        self.counts = torch.zeros(8, dtype=torch.long, device=device)
        self.domain_counts = torch.zeros(2, num_domains, dtype=torch.long, device=device)  # [total, top1]
        self.subsets = None
        if base_classes is not None and new_classes is not None:
            self.subsets = (torch.as_tensor(list(base_classes), device=device),
                            torch.as_tensor(list(new_classes), device=device))

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, domain: Optional[torch.Tensor] = None) -> None:
        device = self.counts.device
        logits, target = logits.to(device), target.to(device)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        finite = torch.isfinite(logits).all(dim=1)
        top1 = (topk[:, 0] == target) & finite
        top5 = (topk == target[:, None]).any(dim=1) & finite
        self.counts[0] += target.numel()
        self.counts[7] += (~finite).sum()
        self.counts[1] += top1.sum()
        self.counts[2] += top5.sum()
        domain = torch.zeros_like(target) if domain is None else domain.to(device)
        self.domain_counts[0].index_add_(0, domain, torch.ones_like(domain))
        self.domain_counts[1].index_add_(0, domain, top1.long())
        if self.subsets is not None:
            for offset, subset in ((3, self.subsets[0]), (5, self.subsets[1])):
                member = (target[:, None] == subset[None, :])
                in_subset = member.any(dim=1)
                pred = subset[logits[:, subset].argmax(dim=1)]
                self.counts[offset] += in_subset.sum()
                self.counts[offset + 1] += (in_subset & (pred == target) & finite).sum()

    def all_reduce(self) -> None:
        """Sum the counts over distributed ranks (each rank saw different samples)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.counts)
            torch.distributed.all_reduce(self.domain_counts)

    def compute(self, domain_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """Percentages: top1, top5, their errors, ``top1_<domain>`` and, with subsets, base/new/hm."""
        c = self.counts.tolist()
        pct = lambda num, den: round(100.0 * num / den, 3) if den else float("nan")  # noqa: E731
        out = {"top1": pct(c[1], c[0]), "top5": pct(c[2], c[0]), "num_samples": c[0], "nonfinite_logits": c[7]}
        out["top1_err"], out["top5_err"] = round(100 - out["top1"], 3), round(100 - out["top5"], 3)
        totals, correct = self.domain_counts.tolist()
        for i, (n, k) in enumerate(zip(totals, correct)):
            if n:
                name = domain_names[i] if domain_names is not None else str(i)
                out[f"top1_{name}"] = pct(k, n)
        if self.subsets is not None:
            out["base_top1"], out["new_top1"] = pct(c[4], c[3]), pct(c[6], c[5])
            if c[3] and c[5]:
                out["hm"] = round(harmonic_mean(out["base_top1"], out["new_top1"]), 3)
        return out


# --- open-set detection: does a sample belong to the classes the model was made for? -----------------
OOD_SCORES = ("mcm", "energy")  # the columns of :func:`ood_scores`, higher = more in-distribution


def mcm_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum concept matching (Ming et al., NeurIPS 2022): ``max_c softmax(cos(x, t_c) / tau)``.

    ``logits`` are the classifier's, ``exp(logit_scale) * cos`` = cos / tau with the model's tau.
    """
    return torch.softmax(logits.float(), dim=-1).max(dim=-1).values


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The negative free energy ``T * logsumexp(logits / T)`` (Liu et al., NeurIPS 2020): higher = in-distribution."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


def ood_scores(logits: torch.Tensor) -> torch.Tensor:
    """[B, len(OOD_SCORES)]: every open-set score of each sample."""
    return torch.stack([mcm_score(logits), energy_score(logits)], dim=1)


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the ROC curve of telling in- (positive) from out-of-distribution samples by score.

    The Mann-Whitney form: the probability that a random in-sample scores above a random out-sample, ties
    counting one half, computed from the average ranks of the pooled scores (O(n log n), no n x m matrix).
    """
    n_in, n_out = in_scores.numel(), out_scores.numel()
    if n_in == 0 or n_out == 0:
        return float("nan")
    pooled = torch.cat([in_scores.flatten(), out_scores.flatten()]).double()
    values, order = pooled.sort()
    _, counts = torch.unique_consecutive(values, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of the last member of each tie group
    ranks = torch.empty_like(pooled)
    ranks[order] = (ends - (counts.double() - 1) / 2).repeat_interleave(counts)
    u = ranks[:n_in].sum().item() - n_in * (n_in + 1) / 2
    return u / (n_in * n_out)


def fpr_at_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """The fraction of out-samples accepted at the highest threshold that accepts at least ``tpr`` of in-samples.

    A sample is accepted as in-distribution when its score is >= the threshold (ties accepted together,
    as sklearn's ``roc_curve`` counts them); FPR@95TPR is the usual open-set number.
    """
    n_in = in_scores.numel()
    if n_in == 0 or out_scores.numel() == 0:
        return float("nan")
    needed = math.ceil(round(tpr * n_in, 9))  # round: 0.95 * 20 is 19.000000000000004 in floating point
    threshold = in_scores.flatten().double().sort(descending=True).values[max(needed, 1) - 1]
    return (out_scores.flatten().double() >= threshold).double().mean().item()


def ood_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> Dict[str, float]:
    """Percent AUROC and FPR@95TPR for each score in :data:`OOD_SCORES`, from [N, k] and [M, k] score tensors."""
    out: Dict[str, float] = {}
    for i, name in enumerate(OOD_SCORES):
        out[f"ood_auroc_{name}"] = round(100.0 * auroc(in_scores[:, i], out_scores[:, i]), 3)
        out[f"ood_fpr95_{name}"] = round(100.0 * fpr_at_tpr(in_scores[:, i], out_scores[:, i]), 3)
    return out
