"""clipood_zoo.schedules: a schedule in phases is timm's schedule over each phase, started again; one phase is timm's."""
import math

import pytest
import torch
from timm.scheduler import CosineLRScheduler

from clipood_zoo.errors import CheckpointError
from clipood_zoo.schedules import PhasedScheduler, create_phased_scheduler


def optimizer(lr=1.0):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def lrs(scheduler, opt, steps):
    """The LR each optimizer step uses: after construction, then after each step_update (train.py's order)."""
    seen = [opt.param_groups[0]["lr"]]
    for n in range(1, steps):
        scheduler.step_update(num_updates=n)
        seen.append(opt.param_groups[0]["lr"])
    return seen


def by_hand(t, length, warmup, base=1.0, warmup_lr=0.1, min_lr=0.0):
    """timm's cosine with a linear warmup (warmup_prefix off: the cosine counts from the phase start)."""
    if t < warmup:
        return warmup_lr + t * (base - warmup_lr) / warmup
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t / length))


def test_lp_ft_phases_restart_the_cosine_and_its_warmup_at_the_fine_tuning_step():
    opt = optimizer()
    scheduler = create_phased_scheduler(opt, (0, 4), total_steps=10, warmup_steps=2, sched="cosine", warmup_lr=0.1,
                                        min_lr=0.0)
    assert isinstance(scheduler, PhasedScheduler)
    expected = [by_hand(t, 4, round(2 * 4 / 10)) for t in range(4)] + [by_hand(t, 6, round(2 * 6 / 10)) for t in range(6)]
    assert lrs(scheduler, opt, 10) == pytest.approx(expected)
    assert expected[4] == pytest.approx(0.1) and expected[3] < 1.0  # fine-tuning opens with the warmup LR


def test_one_phase_is_timms_own_scheduler_with_the_same_rates():
    opt, reference_opt = optimizer(), optimizer()
    scheduler = create_phased_scheduler(opt, (0,), total_steps=10, warmup_steps=2, sched="cosine", warmup_lr=0.1,
                                        min_lr=0.0)
    reference = CosineLRScheduler(reference_opt, t_initial=10, lr_min=0.0, warmup_t=2, warmup_lr_init=0.1,
                                  t_in_epochs=False)
    assert type(scheduler) is CosineLRScheduler
    assert lrs(scheduler, opt, 10) == lrs(reference, reference_opt, 10) == pytest.approx(
        [by_hand(t, 10, 2) for t in range(10)])


def test_a_phased_schedule_refuses_the_state_of_other_phases_or_of_timms_single_schedule():
    state = create_phased_scheduler(optimizer(), (0, 3), 8, 0, sched="cosine", warmup_lr=0.0, min_lr=0.0).state_dict()
    assert state["starts"] == [0, 3] and len(state["phases"]) == 2
    other = create_phased_scheduler(optimizer(), (0, 4), 8, 0, sched="cosine", warmup_lr=0.0, min_lr=0.0)
    with pytest.raises(CheckpointError, match=r"starts at optimizer steps \[0, 3\], this run's at \[0, 4\]"):
        other.load_state_dict(state)
    single = create_phased_scheduler(optimizer(), (0,), 8, 0, sched="cosine", warmup_lr=0.0, min_lr=0.0)
    with pytest.raises(CheckpointError, match=r"starts at optimizer steps \[0\], this run's at \[0, 4\]"):
        other.load_state_dict(single.state_dict())  # an lp_ft checkpoint written before the schedule restarted


def test_the_phases_warmups_add_up_to_the_runs():
    opt = optimizer()
    scheduler = create_phased_scheduler(opt, (0, 5), total_steps=10, warmup_steps=3, sched="cosine", warmup_lr=0.1,
                                        min_lr=0.0)
    assert [s.warmup_t for s in scheduler.schedulers] == [2, 1]  # round(1.5) = 2, then the rest: 1
