"""Model classes and the families that register names; importing this registers every family."""
from . import base2new, domainbed, emoji, imagenet  # noqa: F401  (registration side effect, as timm.models does)
from .classifier import ClipoodClassifier, CosineClassifierHead, FrozenTextTower
from .factory import build_classifier, build_zoo_model

__all__ = ["ClipoodClassifier", "CosineClassifierHead", "FrozenTextTower", "build_classifier", "build_zoo_model"]
