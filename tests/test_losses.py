"""MMS against the paper's formula written out per sample, independently of clipood_zoo.losses."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipood_zoo import ConfigError, MMSLoss, mms_loss


def loop_mms(image_features, text_features, target, tau, lam, adaptive=True):
    """-log(exp(S(I,T_y)/tau) / sum_c exp((S(I,T_c) + m_c)/tau)), m_y = 0, one sample at a time, float64."""
    losses = []
    for i in range(image_features.shape[0]):
        img = image_features[i] / image_features[i].norm()
        y = int(target[i])
        terms = []
        for c in range(text_features.shape[0]):
            t_c = text_features[c] / text_features[c].norm()
            t_y = text_features[y] / text_features[y].norm()
            s = torch.dot(img, t_c)
            if c == y:
                margin = 0.0
            else:
                margin = lam * (1 - torch.dot(t_y, t_c)) if adaptive else lam
            terms.append((s + margin) / tau)
        s_y = torch.dot(img, text_features[y] / text_features[y].norm()) / tau
        losses.append(-(s_y - torch.logsumexp(torch.stack(terms), 0)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("lam,tau,adaptive", [(0.3, 0.01, True), (1.0, 0.05, True), (0.0, 0.07, True),
                                              (0.3, 0.05, False)])
def test_mms_matches_per_sample_formula(lam, tau, adaptive):
    g = torch.Generator().manual_seed(1)
    img = torch.randn(6, 8, generator=g, dtype=torch.float64)
    txt = torch.randn(5, 8, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4, 2])
    ours = mms_loss(img, txt, target, temperature=tau, margin_lambda=lam, adaptive=adaptive)
    assert ours.item() == pytest.approx(loop_mms(img, txt, target, tau, lam, adaptive).item(), rel=1e-6)


def test_mms_gradient_matches_per_sample_formula():
    g = torch.Generator().manual_seed(2)
    img = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(6, 8, generator=g, dtype=torch.float64)
    target = torch.tensor([5, 0, 3, 3])
    (grad_ours,) = torch.autograd.grad(mms_loss(img, txt, target, temperature=0.05, margin_lambda=0.3), img)
    (grad_loop,) = torch.autograd.grad(loop_mms(img, txt, target, 0.05, 0.3), img)
    torch.testing.assert_close(grad_ours, grad_loop)


def test_zero_margin_is_cross_entropy_on_cosine_logits():
    img, txt = torch.randn(7, 16), torch.randn(9, 16)
    target = torch.randint(0, 9, (7,))
    cos = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    expected = F.cross_entropy(cos / 0.01, target)
    torch.testing.assert_close(mms_loss(img, txt, target, temperature=0.01, margin_lambda=0.0), expected)


def test_margin_raises_loss_and_module_matches_function():
    img, txt = torch.randn(7, 16), torch.randn(9, 16)
    target = torch.randint(0, 9, (7,))
    plain = mms_loss(img, txt, target, temperature=0.05, margin_lambda=0.0)
    with_margin = MMSLoss(temperature=0.05, margin_lambda=0.3)(img, txt, target)
    assert with_margin > plain  # every wrong-class logit got a non-negative margin
    torch.testing.assert_close(with_margin, mms_loss(img, txt, target, temperature=0.05, margin_lambda=0.3))
    assert not math.isnan(with_margin.item())


@pytest.mark.parametrize("tau", [0.0, -0.1])
def test_bad_temperature_is_refused(tau):
    with pytest.raises(ConfigError, match="temperature"):
        MMSLoss(temperature=tau)
    with pytest.raises(ConfigError, match="temperature"):
        mms_loss(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 1]), temperature=tau, margin_lambda=0.1)
