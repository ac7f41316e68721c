"""Fine-tuning methods, each a small class with one ``loss`` (DomainBed's algorithms.py shape).

A method turns a batch into a scalar loss given the classifier; everything else (optimizer, BMA,
AMP, DDP, checkpoints) is the training loop's. :class:`TrainStep` puts model and method in one
module so that DDP, which only synchronises gradients of what runs inside its ``forward``, sees
the whole loss computation, and ``torch.compile`` can fuse the loss with the model.
"""
from __future__ import annotations

import inspect
from copy import deepcopy
from typing import ClassVar, Dict, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .losses import carft_context_kl, croft_energy_gradient_penalty, flyp_contrastive_loss, mms_loss
from .models.classifier import TEMPLATE_SETS


class Method:
    """Base class: ``loss(model, images, target)``; ``default_bma`` says whether the method averages weights.

    ``prepare(model)`` runs once, after the model is on its device and before the optimizer is built
    (a method that trains more than the image tower, or keeps a frozen teacher, sets that up there).
    ``step`` is the number of optimizer steps done so far; the training loop keeps it current, for
    methods with phases. ``default_wise_ft_alphas``: the WiSE-FT grid applied after training when the
    user gives none (empty: no interpolation). ``has_unused_parameters``: some steps leave parameters
    without gradients (DDP must then be told to look for them). ``needs_text_tower``: the method embeds prompts
    of its own, so the model is built with its architecture's text tower.
    """

    name: ClassVar[str]
    needs_text_tower: ClassVar[bool] = False  # train.py then builds the model with its text tower
    default_bma: ClassVar[bool] = False
    default_wise_ft_alphas: ClassVar[Tuple[float, ...]] = ()
    has_unused_parameters: ClassVar[bool] = False

    def __init__(self, temperature: Optional[float] = None):
        if temperature is not None and temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.step = 0
        self.class_rows: Optional[torch.Tensor] = None  # the head rows training scores (restrict_to)
        self.positions: Optional[torch.Tensor] = None  # a class's index in the head -> its position among them

    def restrict_to(self, classes: Optional[Sequence[int]], num_classes: int) -> None:
        """Score training batches against these classes' head rows only: CoOp's base-to-new protocol, which
        CLIPood follows, trains on the base classes' names alone, so the new classes' names take no part in
        training, not even as negatives in the softmax. None, or every class: the whole head."""
        if classes is None or sorted(classes) == list(range(num_classes)):
            self.class_rows = self.positions = None
            return
        self.class_rows = torch.as_tensor(list(classes), dtype=torch.long)
        self.positions = torch.full((num_classes,), -1, dtype=torch.long)
        self.positions[self.class_rows] = torch.arange(len(self.class_rows))

    def head_and_targets(self, model: nn.Module, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The head rows a loss scores and the batch's targets as positions among them (restrict_to)."""
        weight = model.head.weight
        if self.class_rows is None:
            return weight, target
        if self.class_rows.device != weight.device:  # moved once, not copied to the device every step
            self.class_rows, self.positions = self.class_rows.to(weight.device), self.positions.to(weight.device)
        return weight[self.class_rows], self.positions[target]

    def prepare(self, model: nn.Module) -> None:
        """Set up what the method needs besides the model's own weights (nothing by default)."""

    def phase_starts(self, total_steps: int) -> Tuple[int, ...]:
        """The optimizer steps at which the learning-rate schedule starts (again, warmup included): one schedule
        over the whole run by default (clipood_zoo.schedules)."""
        return (0,)

    def resolve_temperature(self, model: nn.Module) -> float:
        """The method's tau, or the model's own (1 / its logit scale: 0.01 for OpenAI CLIP) when unset."""
        if self.temperature is None:
            self.temperature = float(1.0 / model.head.logit_scale.exp())
        return self.temperature

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> Dict[str, object]:
        """The method's record in a run's recipe: its hyper-parameters, and the classes training scored (since
        2026-11-29 a base run scores the base classes' rows only; before, every row)."""
        return {"method": self.name, "temperature": self.temperature,
                "trained_class_rows": "all" if self.class_rows is None else len(self.class_rows)}


class Erm(Method):
    """Empirical risk minimisation: cross-entropy on cosine logits / tau; the last weights are the result."""

    name = "erm"

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight, target = self.head_and_targets(model, target)
        return mms_loss(model.forward_features(images), weight, target,
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
        weight, target = self.head_and_targets(model, target)
        return mms_loss(model.forward_features(images), weight, target,
                        temperature=self.resolve_temperature(model), margin_lambda=self.margin_lambda,
                        adaptive=self.adaptive_margin)

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "margin_lambda": self.margin_lambda, "adaptive_margin": self.adaptive_margin}


class WiseFt(Erm):
    """WiSE-FT (Wortsman et al., CVPR 2022): fine-tune end to end (ERM), then ship
    ``theta = (1 - alpha) theta_zeroshot + alpha theta_finetuned`` over every weight, alpha chosen on held-in
    validation data (here the source domains' val split, from ``default_wise_ft_alphas`` or --wise-ft-alphas)."""

    name = "wise_ft"
    default_wise_ft_alphas = (0.0, 0.25, 0.5, 0.75, 1.0)


class LpFt(Method):
    """LP-FT (Kumar et al., ICLR 2022): first linear-probe (train the head on the frozen backbone), then fine-tune all
    parameters starting from the probed head. The head starts as the frozen class text embeddings and
    becomes a trained parameter (``make_trainable``); the first ``lp_steps`` optimizer steps update only it
    (the authors fit the probe by logistic regression on cached features; here it shares the run's
    optimizer, without weight decay on the head (``ClipoodClassifier.no_weight_decay``: rows of classes that
    training does not score get no gradient, and decay alone would shrink them), and the head's optimizer state
    carries into FT; the learning-rate schedule starts again with its warmup for FT: ``phase_starts``).

    The text tower itself stays frozen and outside the model: after LP the head is a learned matrix, no
    longer the text tower's output, so ``set_classes`` (re-embedding class names) would discard it. Loss:
    cross-entropy on ``normalize(f) @ W.T / tau`` (W not renormalised: a linear head on normalised features).
    """

    name = "lp_ft"
    has_unused_parameters = True  # the image tower gets no gradient during the LP phase

    def __init__(self, temperature: Optional[float] = None, lp_steps: int = 0):
        super().__init__(temperature)
        if lp_steps < 0:
            raise ConfigError(f"lp_steps must be >= 0 (optimizer steps that train only the head), got {lp_steps}")
        self.lp_steps = lp_steps

    def prepare(self, model: nn.Module) -> None:
        model.head.make_trainable()

    def phase_starts(self, total_steps: int) -> Tuple[int, ...]:
        """Fine-tuning starts its schedule again, warmup included, as a run of its own would (Kumar et al. fine-tune
        in a second run): one schedule over both stages would start it mid-cosine, without warmup, on empty AdamW
        moments for the image tower."""
        return (0, self.lp_steps) if 0 < self.lp_steps < total_steps else (0,)

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.step < self.lp_steps:
            with torch.no_grad():  # the backbone is frozen: no activations kept, no gradients
                features = model.forward_features(images)
        else:
            features = model.forward_features(images)
        weight, target = self.head_and_targets(model, target)
        logits = model.forward_head(features, pre_logits=True) @ weight.T / self.resolve_temperature(model)
        return F.cross_entropy(logits.float(), target)

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "lp_steps": self.lp_steps}


class Flyp(Method):
    """FLYP (Goyal et al., CVPR 2023): "finetune like you pretrain", CLIP's contrastive loss between the batch's
    images and the prompts of their class names, ground truth on the diagonal (duplicates are negatives, as in
    the authors' code, which uses open_clip's ClipLoss). The text tower is locked here: see
    losses.flyp_contrastive_loss for what that reduces to and how it differs from CE."""

    name = "flyp"

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight, target = self.head_and_targets(model, target)
        return flyp_contrastive_loss(model.forward_features(images), weight, target,
                                     temperature=self.resolve_temperature(model))


class CarFt(Method):
    """CAR-FT (Mao et al., IJCV 2023): "minimizing the Kullback-Leibler Divergence (KLD) between context distributions
    induced by original/fine-tuned CLIP models": ``CE + lambda KL(p_zs(ctx|x) || p_ft(ctx|x))``, p a softmax over
    context prompt weights (our reading of the paper's zero-shot prompt weights: each template's text
    embedding averaged over the class names).

    ``prepare`` keeps a frozen copy of the zero-shot image tower as the teacher: one more image tower of
    weights in memory (no optimizer state, no stored activations: its forward runs without grad), and one
    more forward pass per step. The context prompts are averaged over the classes training scores (``restrict_to``:
    a base-to-new run never feeds the new classes' names to training), by default every class of the model.

    The class head stays the frozen text embeddings, as for every method here but LP-FT (the paper also trains
    a head initialised from them), so the comparison isolates the regulariser.

    The context prompts must live in the text space the class head came from: ``prepare`` checks that the
    model's text tower reproduces the head on a sample of classes. That refuses a text tower with weights of
    its own (an architecture whose text weights ship only with CLIP's, built without --clip-pretrained) rather
    than regularise towards random directions.
    """

    name = "car_ft"
    needs_text_tower = True
    HEAD_CHECK_CLASSES = 8  # classes re-embedded to check the text tower against the head
    HEAD_CHECK_MIN_COSINE = 0.99  # fp16 shipped heads reproduce to ~0.9999

    def __init__(self, temperature: Optional[float] = None, carft_lambda: float = 1.0,
                 context_templates: Optional[Sequence[str]] = None):
        super().__init__(temperature)
        if not carft_lambda >= 0:
            raise ConfigError(f"carft_lambda must be >= 0, got {carft_lambda}")
        self.carft_lambda = carft_lambda
        self.context_templates = context_templates
        self.teacher: Optional[nn.Module] = None
        self.context: Optional[torch.Tensor] = None

    def prepare(self, model: nn.Module) -> None:
        if model.text_tower is None:
            raise ConfigError("car_ft embeds context prompts with the text tower, and this model has none: start from "
                              "CLIP weights (--clip-pretrained <tag>) or create the model with with_text_tower=True")
        device = model.head.weight.device
        self.check_text_tower_made_the_head(model, device)
        templates = self.context_templates or TEMPLATE_SETS["openai_imagenet"]
        rows = range(len(model.class_names)) if self.class_rows is None else self.class_rows.tolist()
        classes = [model.class_names[r] for r in rows]
        per_template = [model.text_tower.class_embeddings(classes, [t], device).mean(0) for t in templates]
        self.context = F.normalize(torch.stack(per_template), dim=-1)
        self.teacher = deepcopy(model.visual).requires_grad_(False).eval()

    def check_text_tower_made_the_head(self, model: nn.Module, device: torch.device) -> None:
        if not model.class_names:
            raise ConfigError("car_ft embeds context prompts of the model's class names, and its head has none: start "
                              "from CLIP weights (--clip-pretrained <tag>) or weights that carry their class names")
        n = len(model.class_names)
        rows = sorted(set(torch.linspace(0, n - 1, min(self.HEAD_CHECK_CLASSES, n)).round().long().tolist()))
        embedded = model.text_tower.class_embeddings([model.class_names[r] for r in rows], model.templates, device)
        cosine = float((embedded * F.normalize(model.head.weight[rows], dim=-1)).sum(-1).min())
        if cosine < self.HEAD_CHECK_MIN_COSINE:
            raise ConfigError(
                f"car_ft: the model's text tower does not reproduce its class head (lowest cosine {cosine:.3f} over "
                f"{len(rows)} classes, {self.HEAD_CHECK_MIN_COSINE} needed), so context prompts and classes would "
                "live in different text spaces. Its text weights are not the ones that made the head: start from "
                "CLIP weights (--clip-pretrained <tag>) so that one text tower makes both.")

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            raise ConfigError("car_ft: call prepare(model) before training (train.py does)")
        tau = self.resolve_temperature(model)
        features = model.forward_features(images)
        with torch.no_grad():
            teacher_features = self.teacher(images)
        weight, target = self.head_and_targets(model, target)
        ce = mms_loss(features, weight, target, temperature=tau, margin_lambda=0.0)
        return ce + self.carft_lambda * carft_context_kl(teacher_features, features, self.context, temperature=tau)

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "carft_lambda": self.carft_lambda,
                "context_prompts": len(self.context) if self.context is not None else None}


class Croft(Method):
    """CRoFT (Zhu et al., ICML 2024): CE plus lambda times the squared gradient of the energy
    ``mean_{b,c} exp(cos(f_b, t_c))`` with respect to a perturbation of the fine-tuned linear map, at
    ``delta = 1e-4`` (the authors' PACS/VLCS code path; they sweep lambda in {0, 1, 10, 100, 1000}).
    See losses.croft_energy_gradient_penalty for how the adapter's map is placed on a fully fine-tuned tower."""

    name = "croft"

    def __init__(self, temperature: Optional[float] = None, croft_lambda: float = 1.0):
        super().__init__(temperature)
        if not croft_lambda >= 0:
            raise ConfigError(f"croft_lambda must be >= 0, got {croft_lambda}")
        self.croft_lambda = croft_lambda

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        features = model.forward_features(images)
        weight, target = self.head_and_targets(model, target)
        ce = mms_loss(features, weight, target, temperature=self.resolve_temperature(model), margin_lambda=0.0)
        return ce + self.croft_lambda * croft_energy_gradient_penalty(features, weight)

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "croft_lambda": self.croft_lambda}


METHODS: Dict[str, Type[Method]] = {m.name: m for m in (Clipood, Erm, WiseFt, LpFt, Flyp, CarFt, Croft)}


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
