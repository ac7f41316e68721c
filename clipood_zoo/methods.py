"""Fine-tuning methods, each a small class with one ``loss`` (DomainBed's algorithms.py shape).

A method turns a batch into a scalar loss given the classifier; everything else (optimizer, BMA,
AMP, DDP, checkpoints) is the training loop's. :class:`TrainStep` puts model and method in one
module so that DDP, which only synchronises gradients of what runs inside its ``forward``, sees
the whole loss computation, and ``torch.compile`` can fuse the loss with the model.
"""
from __future__ import annotations

import inspect
from typing import ClassVar, Dict, Optional, Type

import torch
from torch import nn

from .errors import ConfigError
from .losses import mms_loss


class Method:
    """Base class: ``loss(model, images, target)``; ``default_bma`` says whether the method averages weights."""

    name: ClassVar[str]
    default_bma: ClassVar[bool] = False

    def __init__(self, temperature: Optional[float] = None):
        if temperature is not None and temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def resolve_temperature(self, model: nn.Module) -> float:
        """The method's tau, or the model's own (1 / its logit scale: 0.01 for OpenAI CLIP) when unset."""
        if self.temperature is None:
            self.temperature = float(1.0 / model.head.logit_scale.exp())
        return self.temperature

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> Dict[str, object]:
        return {"method": self.name, "temperature": self.temperature}


class Erm(Method):
    """Empirical risk minimisation: cross-entropy on cosine logits / tau; the last weights are the result."""

    name = "erm"

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mms_loss(model.forward_features(images), model.head.weight, target,
                        temperature=self.resolve_temperature(model), margin_lambda=0.0)


class Clipood(Method):
    """CLIPood: margin metric softmax with adaptive (text-similarity) margins, evaluated on the BMA weights."""

    name = "clipood"
    default_bma = True

    def __init__(self, temperature: Optional[float] = None, margin_lambda: float = 0.3, adaptive_margin: bool = True):
        super().__init__(temperature)
        if margin_lambda < 0:
            raise ConfigError(f"margin_lambda must be >= 0, got {margin_lambda}")
        self.margin_lambda = margin_lambda
        self.adaptive_margin = adaptive_margin

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mms_loss(model.forward_features(images), model.head.weight, target,
                        temperature=self.resolve_temperature(model), margin_lambda=self.margin_lambda,
                        adaptive=self.adaptive_margin)

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "margin_lambda": self.margin_lambda, "adaptive_margin": self.adaptive_margin}


METHODS: Dict[str, Type[Method]] = {m.name: m for m in (Clipood, Erm)}


def create_method(name: str, **kwargs: object) -> Method:
    """A method by name; keyword arguments a method does not take are ignored (CLI flags of other methods)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


class TrainStep(nn.Module):
    """``forward(images, target) -> loss`` of ``method`` on ``model``: the unit DDP and torch.compile wrap."""

    def __init__(self, model: nn.Module, method: Method):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.method.loss(self.model, images, target)
