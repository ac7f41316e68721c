"""Learning-rate schedules in phases: a method whose training has stages starts the schedule again at each stage.

LP-FT (Kumar et al., ICLR 2022) probes the head, then fine-tunes everything as a run of its own. With one
schedule over both stages, the fine-tuning stage would start mid-cosine with no warmup, while the image tower's
AdamW moments are still empty: its first updates are then about the full learning rate in size, the very
distortion of pretrained features LP-FT exists to avoid. Each phase here gets timm's schedule over its own
steps, warmup included (the run's warmup share of the phase's steps).
"""
from __future__ import annotations

import bisect
from typing import Any, Dict, Sequence

import torch
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from .errors import CheckpointError


class PhasedScheduler:
    """timm schedulers, one per phase of the optimizer steps (``starts[i]`` opens phase i); ``step_update(n)``
    drives the scheduler of the phase ``n`` falls in, counted from that phase's start (timm's interface)."""

    def __init__(self, schedulers: Sequence[Scheduler], starts: Sequence[int]):
        if len(schedulers) != len(starts) or list(starts) != sorted(set(starts)) or starts[0] != 0:
            raise ValueError(f"one scheduler per phase, phases starting at 0 in increasing order; got {list(starts)}")
        self.schedulers, self.starts = list(schedulers), list(starts)
        self.step_update(0)  # each timm scheduler set the LR to its own start when made: the first phase's holds

    def step_update(self, num_updates: int, metric: Any = None) -> None:
        phase = bisect.bisect_right(self.starts, num_updates) - 1
        self.schedulers[phase].step_update(num_updates - self.starts[phase], metric)

    def state_dict(self) -> Dict[str, Any]:
        return {"starts": self.starts, "phases": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        stored = state.get("starts", [0])  # timm's own state: a schedule of one phase
        if stored != self.starts:
            raise CheckpointError(
                f"the checkpoint's learning-rate schedule starts at optimizer steps {stored}, this run's at "
                f"{self.starts}: it was written by another method or an older train.py (before LP-FT restarted its "
                "schedule for fine-tuning). Start the run again (--overwrite) rather than resume it.")
        for scheduler, phase in zip(self.schedulers, state["phases"]):
            scheduler.load_state_dict(phase)


def create_phased_scheduler(optimizer: torch.optim.Optimizer, starts: Sequence[int], total_steps: int,
                            warmup_steps: int, **timm_kwargs: Any) -> Any:
    """timm's scheduler (``create_scheduler_v2(..., **timm_kwargs)``) over ``total_steps`` optimizer steps, started
    again at each of ``starts`` (0 first); a single phase is timm's scheduler itself, exactly as without phases."""
    bounds = [*starts, total_steps]
    lengths = [end - begin for begin, end in zip(bounds, bounds[1:])]
    warmups = [round(warmup_steps * length / total_steps) for length in lengths[:-1]]
    warmups.append(max(warmup_steps - sum(warmups), 0))  # the phases' warmups add up to the run's
    schedulers = []
    for length, warmup in zip(lengths, warmups):
        scheduler, _ = create_scheduler_v2(optimizer, num_epochs=length, updates_per_epoch=1, step_on_epochs=False,
                                           warmup_epochs=warmup, **timm_kwargs)
        schedulers.append(scheduler)
    return schedulers[0] if len(schedulers) == 1 else PhasedScheduler(schedulers, starts)
