"""ClipoodClassifier: an open_clip image tower classifying against frozen class-text embeddings.

CLIPood fine-tunes only the image encoder; the class text embeddings come from the frozen text
encoder and act as a fixed classifier. Holding them as a buffer (not running the text tower in
the forward pass) makes the model a plain timm-style image classifier: timm's train/validate
loops, ``ModelEmaV3`` and :class:`clipood_zoo.ModelBma` all work on it unchanged, and shipped
fine-tuned weights need only the image tower plus a [C, D] matrix.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from torch import nn

from ..errors import ConfigError
from ..hub import load_pretrained_file
from .text_cache import cached, entry_key

DEFAULT_TEMPLATES = ("a photo of a {}.",)  # CLIPood's single DomainBed template
TEMPLATE_SETS = {"openai_imagenet": OPENAI_IMAGENET_TEMPLATES, "simple_imagenet": SIMPLE_IMAGENET_TEMPLATES}
Templates = Union[str, Sequence[Union[str, Callable[[str], str]]]]


class CosineClassifierHead(nn.Module):
    """Logits = exp(logit_scale) * normalize(x) @ weight.T with ``weight`` the normalised class embeddings.

    ``weight`` and ``logit_scale`` are buffers: they are saved with the weights but never trained,
    which is what "the text encoder stays frozen" means for the classifier.
    """

    def __init__(self, class_embeddings: torch.Tensor, logit_scale: float):
        super().__init__()
        self.register_buffer("weight", F.normalize(class_embeddings.float(), dim=-1))
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)).log())

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def make_trainable(self) -> None:
        """Turn ``weight`` from a frozen buffer into a trained parameter (LP-FT's linear probe).

        The state-dict key stays ``head.weight``, so the trained head saves and loads like a frozen one.
        Rows are no longer renormalised: the probe is a linear head on normalised image features.
        """
        if isinstance(self.weight, nn.Parameter):
            return
        weight = self._buffers.pop("weight")
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        if pre_logits or self.num_classes == 0:
            return x
        return self.logit_scale.exp() * x @ self.weight.to(x.dtype).T


def check_class_names(class_names: Sequence[str]) -> None:
    """At least one name, each a non-empty string (a number or None would be embedded as its repr)."""
    if isinstance(class_names, str):
        raise ConfigError(f"class_names must be a list of names, got the string {class_names!r}")
    if len(class_names) == 0:
        raise ConfigError("set_classes needs at least one class name")
    for i, name in enumerate(class_names):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"class name {i} is {name!r} ({type(name).__name__}); every class name must be a "
                              "non-empty string")


def check_templates(templates: Sequence[Union[str, Callable[[str], str]]]) -> None:
    """At least one template; each a format string with exactly one ``{}`` (the class name) or a callable
    returning a string, tried on a sample name so that a bad one fails here, not deep in the text tower."""
    if len(templates) == 0:
        raise ConfigError("set_classes needs at least one template, e.g. ('a photo of a {}.',); or leave "
                          "templates=None for the model's own")
    if len({callable(t) for t in templates}) > 1:  # open_clip formats all or calls all, by the first's type
        raise ConfigError("templates must be all format strings or all callables, not a mix")
    for template in templates:
        if callable(template):
            if not isinstance(template("x"), str):
                raise ConfigError(f"template {template!r} must return a string for a class name")
            continue
        if not isinstance(template, str):
            raise ConfigError(f"template {template!r} ({type(template).__name__}) is neither a format string nor "
                              "a callable")
        try:
            filled = [template.format(name) for name in ("x", "y")]
        except (IndexError, KeyError, ValueError) as e:
            raise ConfigError(f"template {template!r} is not a format string with one {{}} for the class name "
                              f"({type(e).__name__}: {e})") from None
        if filled[0] == filled[1]:
            raise ConfigError(f"template {template!r} has no {{}} for the class name: every class would get the "
                              "same text")


class FrozenTextTower:
    """The open_clip text encoder and tokenizer, kept *outside* the module tree on purpose.

    Not an ``nn.Module`` attribute of the classifier, so it is not in ``state_dict()`` (shipped
    weights stay image-tower-only), gets no gradients, is not wrapped by DDP, and copies of the
    classifier (BMA/EMA) share it instead of duplicating hundreds of MB of frozen weights.
    """

    def __init__(self, clip_model: nn.Module, tokenizer: Any):
        clip_model.visual = nn.Identity()  # the image tower lives in the classifier; drop this reference
        clip_model.requires_grad_(False).eval()
        self.model = clip_model
        self.tokenizer = tokenizer

    def __deepcopy__(self, memo: dict) -> "FrozenTextTower":
        return self

    @torch.no_grad()
    def class_embeddings(
        self, class_names: Sequence[str], templates: Sequence[str], device: torch.device
    ) -> torch.Tensor:
        """[C, D] normalised, template-averaged embeddings (open_clip's zero-shot recipe), from the on-disk cache
        (:mod:`.text_cache`) when these prompts went through these text weights before."""
        self.model.to(device)
        def encode() -> torch.Tensor:
            return build_zero_shot_classifier(
                self.model, self.tokenizer, list(class_names), list(templates),
                num_classes_per_batch=32, device=device, use_tqdm=len(class_names) > 256,
            ).T.contiguous()
        return cached(entry_key(self.model, self.tokenizer, templates, class_names, device), encode).to(device)


class ClipoodClassifier(nn.Module):
    """open_clip image tower + frozen class-text embeddings, with timm's classifier interface."""

    def __init__(
        self,
        visual: nn.Module,
        class_embeddings: torch.Tensor,
        logit_scale: float = 100.0,
        class_names: Optional[Sequence[str]] = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        text_tower: Optional[FrozenTextTower] = None,
        image_size: int = 224,
    ):
        super().__init__()
        if class_names is not None and len(class_names) != class_embeddings.shape[0]:
            raise ConfigError(
                f"{len(class_names)} class names for {class_embeddings.shape[0]} class embeddings; "
                "pass one name per row of the embedding matrix"
            )
        self.visual = visual
        self.head = CosineClassifierHead(class_embeddings, logit_scale)
        self.class_names: List[str] = list(class_names) if class_names is not None else []
        self.templates = tuple(templates)
        self.text_tower = text_tower
        self.num_features = self.head_hidden_size = class_embeddings.shape[1]
        self.image_size = image_size
        self.pretrained_cfg: Dict[str, Any] = {}

    # --- timm's model interface -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def default_cfg(self) -> Dict[str, Any]:  # timm's older name, still read by some scripts
        return self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings [B, D], not normalised (open_clip's ``encode_image``)."""
        if x.shape[0] == 0:
            raise ConfigError(f"an empty batch (images of shape {tuple(x.shape)}): pass at least one image")
        return self.visual(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits [B, C]; with ``pre_logits`` the normalised embeddings the logits are computed from."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, class_names: Optional[Sequence[str]] = None) -> None:
        """timm semantics: a new, untrained head of ``num_classes`` rows; 0 makes ``forward`` return embeddings.

        With a text tower and ``class_names`` the new head holds their text embeddings instead.
        """
        if class_names is not None:
            if len(class_names) != num_classes:
                raise ConfigError(f"reset_classifier({num_classes}) got {len(class_names)} class names")
            self.set_classes(class_names)
            return
        weight = self.head.weight
        self.head.weight = F.normalize(torch.randn(num_classes, weight.shape[1], device=weight.device), dim=-1)
        self.class_names = []

    def update_pretrained_cfg(self) -> None:
        """Make ``pretrained_cfg`` say what the model is (classes, logit scale, input size), not what its registry
        entry assumed before weights, ``num_classes`` or ``img_size`` changed it."""
        size = getattr(self.visual, "image_size", self.image_size)
        self.image_size = size if isinstance(size, int) else size[0]
        self.pretrained_cfg.update(num_classes=self.num_classes, logit_scale=float(self.head.logit_scale.exp()),
                                   input_size=(3, self.image_size, self.image_size))
        if self.class_names:
            self.pretrained_cfg["label_names"] = tuple(self.class_names)
        else:
            self.pretrained_cfg.pop("label_names", None)

    def load_pretrained(self, file: str) -> None:
        """timm's hook for ``custom_load`` cfgs: ``timm.models.load_pretrained(model)`` loads the cfg's ``file``
        (relative to ``$CLIPOOD_WEIGHTS_DIR`` / ``weights/``) the zoo's way: sha256-checked, head resized."""
        load_pretrained_file(self, file)

    def keep_classes(self, rows: Sequence[int]) -> None:
        """Keep these head rows, in this order (a dataset's classes among the model's); the embeddings are unchanged."""
        self.head.weight = self.head.weight[list(rows)].clone()
        if self.class_names:
            self.class_names = [self.class_names[i] for i in rows]
        if self.pretrained_cfg:
            self.update_pretrained_cfg()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set:
        """timm's no-decay names: the image tower's, and a trained head (LP-FT): a base-to-new run trains only
        the base classes' rows, and decay alone would shrink the new classes' rows, which no gradient reaches."""
        nwd = getattr(self.visual, "no_weight_decay", lambda: set())()
        trained_head = {"head.weight"} if isinstance(self.head.weight, nn.Parameter) else set()
        return {f"visual.{n}" for n in nwd} | trained_head

    # --- open-vocabulary use ----------------------------------------------------------------
    def set_classes(self, class_names: Sequence[str], templates: Optional[Templates] = None) -> None:
        """Replace the classifier by the frozen text tower's embeddings of ``class_names``.

        ``templates``: format strings or callables, or the name of one of open_clip's sets
        (``'openai_imagenet'``: CLIP's 80 ImageNet prompts, ``'simple_imagenet'``); default: the model's.
        """
        if self.text_tower is None:
            raise ConfigError(
                "this model has no text tower, so it cannot embed new class names; create it with "
                "with_text_tower=True (the architecture's own text weights: the bundled MiniLM of the emoji models, "
                "random for a CLIP architecture) or clip_pretrained=<open_clip tag> "
                "(e.g. create_model(name, clip_pretrained='openai'))"
            )
        if isinstance(templates, str):
            if templates not in TEMPLATE_SETS:
                raise ConfigError(f"unknown template set {templates!r}; known: {', '.join(TEMPLATE_SETS)}")
            templates = TEMPLATE_SETS[templates]
        templates = tuple(templates) if templates is not None else self.templates
        check_class_names(class_names)
        check_templates(templates)
        device = self.head.weight.device
        self.head.weight = self.text_tower.class_embeddings(class_names, templates, device)
        self.class_names = list(class_names)
        self.templates = templates
