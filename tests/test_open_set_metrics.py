"""AUROC, FPR@95TPR, MCM and energy scores against independent computations (brute force, sklearn, formulas)."""
import math

import pytest
import torch

from clipood_zoo.metrics import auroc, energy_score, fpr_at_tpr, mcm_score, ood_metrics


def brute_auroc(pos, neg):
    """Every (in, out) pair: 1 when in scores higher, 1/2 on a tie."""
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos.tolist() for n in neg.tolist()]
    return sum(pairs) / len(pairs)


def brute_fpr95(pos, neg):
    """Walk thresholds from the highest score down; the first whose TPR reaches 95% gives the FPR."""
    for t in sorted(set(pos.tolist()) | set(neg.tolist()), reverse=True):
        if sum(p >= t for p in pos.tolist()) >= 0.95 * len(pos) - 1e-12:
            return sum(n >= t for n in neg.tolist()) / len(neg)
    raise AssertionError("unreachable: the lowest threshold accepts everything")


@pytest.mark.parametrize("seed,n_in,n_out,ties", [(0, 20, 13, False), (1, 40, 40, True), (2, 7, 3, True)])
def test_auroc_and_fpr95_match_brute_force(seed, n_in, n_out, ties):
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randn(n_in, generator=g) + 0.7, torch.randn(n_out, generator=g)
    if ties:  # coarse scores: many ties, within and across the two sets
        pos, neg = (pos * 2).round(), (neg * 2).round()
    assert auroc(pos, neg) == pytest.approx(brute_auroc(pos, neg), abs=1e-12)
    assert fpr_at_tpr(pos, neg) == pytest.approx(brute_fpr95(pos, neg), abs=1e-12)


def test_auroc_and_fpr95_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(3)
    pos, neg = (torch.randn(57, generator=g) * 3 + 1).round(), (torch.randn(41, generator=g) * 3).round()
    labels = [1] * 57 + [0] * 41
    scores = torch.cat([pos, neg]).tolist()
    assert auroc(pos, neg) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    assert fpr_at_tpr(pos, neg) == pytest.approx(fpr[next(i for i, t in enumerate(tpr) if t >= 0.95)], abs=1e-12)


def test_separable_and_identical_scores():
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert fpr_at_tpr(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert auroc(torch.ones(5), torch.ones(3)) == 0.5
    assert fpr_at_tpr(torch.ones(5), torch.ones(3)) == 1.0
    assert math.isnan(auroc(torch.ones(2), torch.ones(0)))


def test_mcm_and_energy_scores_follow_their_formulas():
    logits = torch.tensor([[10.0, 2.0, -1.0], [0.5, 0.5, 0.5]])
    for row, logit in enumerate(logits.tolist()):
        z = sum(math.exp(v) for v in logit)
        assert mcm_score(logits)[row].item() == pytest.approx(max(math.exp(v) for v in logit) / z, rel=1e-6)
        assert energy_score(logits)[row].item() == pytest.approx(math.log(z), rel=1e-6)
        assert energy_score(logits, 2.0)[row].item() == pytest.approx(
            2.0 * math.log(sum(math.exp(v / 2.0) for v in logit)), rel=1e-6)


def test_ood_metrics_reports_percentages_per_score():
    in_scores = torch.tensor([[0.9, 5.0], [0.8, 4.0], [0.7, 1.0]])
    out_scores = torch.tensor([[0.1, 4.5], [0.2, 0.0]])
    m = ood_metrics(in_scores, out_scores)
    assert m["ood_auroc_mcm"] == 100.0 and m["ood_fpr95_mcm"] == 0.0
    assert m["ood_auroc_energy"] == pytest.approx(100 * brute_auroc(in_scores[:, 1], out_scores[:, 1]), abs=1e-3)
    assert m["ood_fpr95_energy"] == 50.0
