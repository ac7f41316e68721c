"""The implementations as they were before the speed fixes, kept so that each benchmark can report
before/after ratios measured in the same process. Behaviour is the same as the current code; only
the speed differs. Not used by the package."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from clipood_zoo import ModelBma


class ModelBmaBefore(ModelBma):
    """ModelBma with the update of commit bfd4e51: a named_parameters() walk (``_averaged_keys``) plus two
    state_dict() walks and a detach per tensor on every call."""

    def _averaged_keys(self) -> set:
        if self.exclude_buffers:
            return {name for name, _ in self.module.named_parameters()}
        return {k for k, v in self.module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: Optional[int] = None) -> None:
        decay = self.get_decay(step)
        self.num_updates = self.num_updates + 1 if step is None else int(step)
        averaged = self._averaged_keys()
        avg_values: List[torch.Tensor] = []
        model_values: List[torch.Tensor] = []
        written_back: List[torch.Tensor] = []
        masters: List[torch.Tensor] = []
        for (key, avg_v), model_v in zip(self.module.state_dict().items(), model.state_dict().values()):
            model_v = model_v.detach()
            if self.device is not None:
                model_v = model_v.to(self.device)
            if key not in averaged:
                avg_v.copy_(model_v)
                continue
            target = self._master(key, avg_v)
            if target is not avg_v:
                written_back.append(avg_v)
                masters.append(target)
            avg_values.append(target)
            model_values.append(model_v)
        self._average_into(avg_values, model_values, written_back, masters, 1.0 - decay)
