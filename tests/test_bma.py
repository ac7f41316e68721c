"""ModelBma against the explicit weighted average sum_k a_k theta_k / sum_k a_k, computed here from scratch."""
import math

import pytest
import torch
from timm.utils import CheckpointSaver, ModelEmaV3, unwrap_model
from torch import nn

from clipood_zoo import ConfigError, ModelBma, bma_weights


def beta_pdf(x: float, b: float) -> float:
    log_norm = 2 * math.lgamma(b) - math.lgamma(2 * b)
    return math.exp((b - 1) * math.log(x) + (b - 1) * math.log(1 - x) - log_norm)


def explicit_average(snapshots, steps, total, beta):
    """sum_k a_k theta_k / sum_k a_k over the given (step, state) pairs, float64."""
    weights = [beta_pdf((k + 0.5) / (total + 1), beta) for k in steps]
    out = {}
    for key in snapshots[0]:
        if not snapshots[0][key].is_floating_point():
            continue
        acc = sum(w * s[key].double() for w, s in zip(weights, snapshots))
        out[key] = acc / sum(weights)
    return out


def make_model(dtype=torch.float32):
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).to(dtype)


def perturb(model, scale=1.0):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
        model[1].running_mean.add_(torch.randn(5).to(model[1].running_mean.dtype))
        model[1].num_batches_tracked += 1


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_weights_are_the_beta_pdf():
    w = bma_weights(9, 0.5)
    assert w.shape == (10,)
    for t in range(10):
        assert w[t].item() == pytest.approx(beta_pdf((t + 0.5) / 10, 0.5), rel=1e-9)


def test_a_beta_whose_weights_underflow_is_refused_not_averaged_into_nan():
    assert (bma_weights(3000, 50.0) > 0).all()  # large but representable: kept
    with pytest.raises(ConfigError) as exc:
        bma_weights(3000, 200.0)
    assert str(exc.value) == ("Beta(200, 200) weights over 3000 steps underflow to 0 at the start and the end of the "
                              "run, so the average would be 0/0 there; use a smaller beta (0.5 in the paper; 1 is the "
                              "uniform average)")
    with pytest.raises(ConfigError, match="underflow to 0"):
        ModelBma(nn.Linear(2, 2), total_steps=3000, beta=200.0)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("foreach", [True, False])
def test_running_average_equals_explicit_weighted_average(beta, foreach):
    total = 12
    model = make_model()
    bma = ModelBma(model, total_steps=total, beta=beta, foreach=foreach)
    snaps = [snapshot(model)]
    for step in range(1, total + 1):
        perturb(model)
        bma.update(model, step=step)
        snaps.append(snapshot(model))
        expected = explicit_average(snaps, range(step + 1), total, beta)
        got = bma.module.state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(got[key].double(), value, rtol=1e-5, atol=1e-5)
        # integer buffers are copied, not averaged
        assert got["1.num_batches_tracked"] == model[1].num_batches_tracked


def test_beta_one_is_the_uniform_average():
    model = make_model()
    bma = ModelBma(model, total_steps=5, beta=1.0)
    snaps = [snapshot(model)]
    for step in range(1, 6):
        perturb(model)
        bma.update(model)
        snaps.append(snapshot(model))
    mean = sum(s["0.weight"] for s in snaps) / len(snaps)
    torch.testing.assert_close(bma.module[0].weight, mean)


def test_exclude_buffers_copies_float_buffers():
    model = make_model()
    bma = ModelBma(model, total_steps=4, exclude_buffers=True)
    perturb(model)
    bma.update(model, step=1)
    torch.testing.assert_close(bma.module[1].running_mean, model[1].running_mean)
    assert not torch.allclose(bma.module[0].weight, model[0].weight)


def test_bf16_model_is_averaged_in_float32():
    total = 50
    model = make_model(torch.bfloat16)
    bma = ModelBma(model, total_steps=total, beta=0.5)
    snaps = [snapshot(model)]
    for step in range(1, total + 1):
        perturb(model, scale=1e-2)
        bma.update(model, step=step)
        snaps.append(snapshot(model))
    expected = explicit_average(snaps, range(total + 1), total, 0.5)["0.weight"]
    got = bma.module[0].weight
    assert got.dtype == torch.bfloat16
    # one bf16 rounding of the exact average, not 50 accumulated roundings
    torch.testing.assert_close(got.double(), expected.to(torch.bfloat16).double(), rtol=0, atol=1e-2)
    assert (got.double() - expected).abs().max() <= expected.abs().max() * 2 ** -7


def test_restart_from_saved_average_continues_the_same_average():
    """Steps 1-4, save .module (all timm's saver keeps), a fresh ModelBma loads it and runs 5-10."""
    total = 10
    model = make_model()
    initial = snapshot(model)
    states = []
    for _ in range(total):
        perturb(model)
        states.append(snapshot(model))

    model.load_state_dict(initial)
    straight = ModelBma(model, total_steps=total)
    for step, state in enumerate(states, 1):
        model.load_state_dict(state)
        straight.update(model, step=step)

    model.load_state_dict(initial)
    first_run = ModelBma(model, total_steps=total)
    for step in range(1, 5):
        model.load_state_dict(states[step - 1])
        first_run.update(model, step=step)
    saved = {k: v.clone() for k, v in first_run.module.state_dict().items()}

    resumed = ModelBma(make_model(), total_steps=total)
    resumed.module.load_state_dict(saved)
    for step in range(5, total + 1):
        model.load_state_dict(states[step - 1])
        resumed.update(model, step=step)
    torch.testing.assert_close(resumed.module.state_dict(), straight.module.state_dict())


def test_internal_counter_matches_explicit_steps():
    model = make_model()
    a, b = ModelBma(model, total_steps=6), ModelBma(model, total_steps=6)
    for step in range(1, 7):
        perturb(model)
        a.update(model)
        b.update(model, step=step)
    assert a.num_updates == 6
    torch.testing.assert_close(a.module.state_dict(), b.module.state_dict())


def test_step_beyond_total_warns_and_stays_finite():
    model = make_model()
    bma = ModelBma(model, total_steps=3, beta=0.5)
    with pytest.warns(UserWarning, match="beyond total_steps"):
        for step in range(1, 8):
            perturb(model)
            bma.update(model, step=step)
    assert all(torch.isfinite(v).all() for v in bma.module.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("kwargs,match", [({"total_steps": 0}, "total_steps"), ({"total_steps": 5, "beta": 0}, "beta"),
                                          ({"total_steps": 5, "beta": -1.0}, "beta")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelBma(make_model(), **kwargs)


def test_driven_like_timm_train_py_with_grad_accumulation(tmp_path):
    """timm's train.py: update(model, step=num_updates) once per optimizer step; CheckpointSaver saves .module."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    epochs, batches, accum = 2, 6, 2
    updates_per_epoch = (batches + accum - 1) // accum
    bma = ModelBma(model, total_steps=epochs * updates_per_epoch, beta=0.5)
    ema = ModelEmaV3(model, decay=0.9)
    snaps, steps = [snapshot(model)], [0]
    for epoch in range(epochs):
        num_updates = epoch * updates_per_epoch
        for batch_idx in range(batches):
            loss = model(torch.randn(4, 6)).pow(2).mean() / accum
            loss.backward()
            if not ((batch_idx + 1) % accum == 0 or batch_idx == batches - 1):
                continue
            optimizer.step()
            optimizer.zero_grad()
            num_updates += 1
            bma.update(model, step=num_updates)
            ema.update(model, step=num_updates)
            snaps.append(snapshot(model))
            steps.append(num_updates)
    expected = explicit_average(snaps, steps, epochs * updates_per_epoch, 0.5)
    torch.testing.assert_close(bma.module[0].weight.double(), expected["0.weight"], rtol=1e-5, atol=1e-6)
    assert unwrap_model(bma) is bma.module and unwrap_model(ema) is ema.module

    saver = CheckpointSaver(model, optimizer, model_ema=bma, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(epoch=1, metric=0.5)
    checkpoint = torch.load(tmp_path / "checkpoint-1.pth.tar", weights_only=False)
    torch.testing.assert_close(checkpoint["state_dict_ema"], bma.module.state_dict())
