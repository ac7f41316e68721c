"""ModelBma: CLIPood's Beta moving average, with the interface of timm's ``ModelEmaV2``/``ModelEmaV3``.

The average is ``sum_k a_k theta_k / sum_k a_k`` over optimizer steps k = 0..t, theta_0 = the weights
at construction (the pretrained model) and ``a_k = Beta(beta, beta).pdf((k + 0.5) / (T + 1))``. It is
kept as a running lerp, ``avg_t = d_t avg_{t-1} + (1 - d_t) theta_t`` with
``d_t = S_{t-1} / S_t``, ``S_t = sum_{k<=t} a_k``. The decay depends on the step alone, so a resumed run
(timm's CheckpointSaver stores only ``.module``) continues the same average, as with timm's EMA.

timm's EMA cannot express this: its decay is a constant (or a warm-up curve) in (0, 1), while a Beta
average weights early *and* late steps more than the middle (beta < 1) and must know the total number
of steps. The update itself uses timm's foreach-lerp strategy.
"""
from __future__ import annotations

import warnings
from copy import deepcopy
from typing import Dict, List, Optional

import torch
from torch import nn

from .errors import ConfigError
from .sharding import local_shard

_LOW_PRECISION = (torch.float16, torch.bfloat16)
PAPER_BETA = 0.5  # CLIPood's Beta(0.5, 0.5): weights the start and the end of training more than the middle


def bma_weights(total_steps: int, beta: float) -> torch.Tensor:
    """a_t for t = 0..total_steps (float64): the Beta(beta, beta) density at (t + 0.5) / (total_steps + 1)."""
    if total_steps < 1:
        raise ConfigError(f"total_steps must be >= 1 (the number of optimizer steps of the run), got {total_steps}")
    if not beta > 0:
        raise ConfigError(f"beta must be > 0 (0.5 in the paper; 1 is the uniform average), got {beta}")
    x = (torch.arange(total_steps + 1, dtype=torch.float64) + 0.5) / (total_steps + 1)
    b = torch.tensor(float(beta), dtype=torch.float64)
    weights = torch.distributions.Beta(b, b).log_prob(x).exp()
    if not (torch.isfinite(weights).all() and (weights > 0).all()):  # a large beta underflows at the ends
        raise ConfigError(f"Beta({beta:g}, {beta:g}) weights over {total_steps} steps underflow to 0 at the start and "
                          "the end of the run, so the average would be 0/0 there; use a smaller beta (0.5 in the "
                          "paper; 1 is the uniform average)")
    return weights


class ModelBma(nn.Module):
    """Beta moving average of a model's weights; ``.module`` is the averaged model (evaluate and ship it).

    Drop-in for ``timm.utils.ModelEmaV3``: construct after the model is on its device, call
    ``update(model, step=num_updates)`` after every optimizer step, evaluate ``bma.module``.

    Args:
        model: the model being trained; its current weights are theta_0.
        total_steps: T, the number of optimizer steps the run will make (epochs x updates per epoch).
        beta: Beta distribution parameter; < 1 favours the start and the end of training.
        device: keep the average on another device (e.g. 'cpu') to save accelerator memory.
        foreach: use fused ``torch._foreach_*`` kernels (one launch per dtype group, not per tensor).
        exclude_buffers: average parameters only and copy buffers (what the CLIPood authors do).

    With FSDP2 (``fully_shard``, which cannot be deep-copied), construct from the model before it is sharded, then
    shard ``bma.module`` the same way: each rank then averages its own slice of every parameter, no gather.
    """

    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        beta: float = PAPER_BETA,
        device: Optional[torch.device] = None,
        foreach: bool = True,
        exclude_buffers: bool = False,
    ):
        super().__init__()
        weights = bma_weights(total_steps, beta)
        self.module = deepcopy(model)
        self.module.eval()
        self.total_steps = int(total_steps)
        self.beta = float(beta)
        self.device = device
        self.foreach = foreach
        self.exclude_buffers = exclude_buffers
        self.num_updates = 0
        self._cum_weights = torch.cumsum(weights, 0).tolist()  # S_t, t = 0..T
        self._masters: Dict[str, torch.Tensor] = {}  # float32 copies of half-precision tensors
        self._warned_overflow = False
        if device is not None and device != next(model.parameters()).device:
            self.foreach = False  # foreach kernels need every tensor on one device
            self.module.to(device=device)

    def get_decay(self, step: Optional[int] = None) -> float:
        """d_t = S_{t-1} / S_t for the 1-based optimizer step t (the next step when None)."""
        step = self.num_updates + 1 if step is None else int(step)
        if step < 1:
            raise ConfigError(f"BMA steps are 1-based optimizer steps (step 0 is the initial model), got {step}")
        if step > self.total_steps:
            if not self._warned_overflow:
                warnings.warn(
                    f"ModelBma step {step} is beyond total_steps={self.total_steps}; the weight of the last step is "
                    "used from here on. Pass the real number of optimizer steps as total_steps.", stacklevel=3)
                self._warned_overflow = True
            step = self.total_steps
        return self._cum_weights[step - 1] / self._cum_weights[step]

    def _master(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """The float32 accumulator for a half-precision tensor: averaging in fp16/bf16 would round updates away."""
        if tensor.dtype not in _LOW_PRECISION:
            return tensor
        master = self._masters.get(key)
        if master is None or master.device != tensor.device:
            master = self._masters[key] = tensor.float()
        return master

    @torch.no_grad()
    def update(self, model: nn.Module, step: Optional[int] = None) -> None:
        decay = self.get_decay(step)
        self.num_updates = self.num_updates + 1 if step is None else int(step)
        # One pass over both state dicts, as timm's EMA does: ``keep_vars=True`` on the average tells
        # parameters (nn.Parameter) from buffers without a further named_parameters() walk, and the
        # model's state_dict() is already detached. A tensor reached under two names (tied weights) is
        # averaged once.
        avg_values: List[torch.Tensor] = []
        model_values: List[torch.Tensor] = []
        written_back: List[torch.Tensor] = []
        masters: List[torch.Tensor] = []
        seen = set()
        params_only = self.exclude_buffers
        to_device = self.device
        for (key, avg_v), model_v in zip(self.module.state_dict(keep_vars=True).items(),
                                         model.state_dict().values()):
            if to_device is not None:
                model_v = model_v.to(to_device)
            if not (isinstance(avg_v, nn.Parameter) if params_only else avg_v.is_floating_point()):
                avg_v.copy_(model_v)
                continue
            if id(avg_v) in seen:
                continue
            seen.add(id(avg_v))
            avg_v, model_v = local_shard(avg_v), local_shard(model_v)  # FSDP: each rank averages its own slice
            target = self._master(key, avg_v)
            if target is not avg_v:
                written_back.append(avg_v)
                masters.append(target)
            avg_values.append(target)
            model_values.append(model_v)
        self._average_into(avg_values, model_values, written_back, masters, 1.0 - decay)

    def _average_into(self, avg_values: List[torch.Tensor], model_values: List[torch.Tensor],
                      written_back: List[torch.Tensor], masters: List[torch.Tensor], weight: float) -> None:
        """Lerp the averages toward the model, then round the float32 masters back into the half tensors."""
        self._lerp(avg_values, model_values, weight)
        if written_back:
            if self.foreach:
                torch._foreach_copy_(written_back, masters)
            else:
                for dst, src in zip(written_back, masters):
                    dst.copy_(src)

    def _lerp(self, avg_values: List[torch.Tensor], model_values: List[torch.Tensor], weight: float) -> None:
        if not avg_values:
            return
        if not self.foreach:
            for a, m in zip(avg_values, model_values):
                a.lerp_(m.to(a.dtype), weight)
            return
        same = [i for i, (a, m) in enumerate(zip(avg_values, model_values)) if a.dtype == m.dtype]
        mixed = [i for i in range(len(avg_values)) if avg_values[i].dtype != model_values[i].dtype]
        if same:
            torch._foreach_lerp_([avg_values[i] for i in same], [model_values[i] for i in same], weight=weight)
        if mixed:  # fp32 masters of a half model: add_ promotes in-kernel, no cast copies of the model
            mixed_avg = [avg_values[i] for i in mixed]
            torch._foreach_mul_(mixed_avg, 1.0 - weight)
            torch._foreach_add_(mixed_avg, [model_values[i] for i in mixed], alpha=weight)

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Make the average equal to ``model`` (timm's ``set``), e.g. after loading a checkpoint into both."""
        for avg_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values()):
            avg_v.copy_(model_v.to(device=avg_v.device))
        self._masters.clear()

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"total_steps={self.total_steps}, beta={self.beta}, num_updates={self.num_updates}"
