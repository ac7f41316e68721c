"""Uncertainty of a difference in top-1 between two models scored on the same images.

Images of one class are not independent draws (the renders of one emoji share its design), and the
class list is itself a sample of the classes one could have picked. So the interval resamples
*classes* with replacement (a cluster bootstrap) and keeps each class's images paired across the
two models, as is usual for comparing two classifiers on one test set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class PairedInterval:
    """``diff`` = top-1(A) - top-1(B) in points on all images; [low, high] its bootstrap interval."""

    diff: float
    low: float
    high: float
    level: float
    num_classes: int
    num_images: int

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: the sign of the difference is resolved at this level."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        """``+1.2 [+0.3, +2.1]``; an end within 0.05 of 0 but not 0 gets two significant digits (``+0.031``): shown
        as +0.0, an interval that excludes 0 would look as if it touched it."""
        def end(x: float) -> str:
            return f"{x:+.2g}" if 0 < abs(x) < 0.05 else f"{x:+.1f}"
        return f"{self.diff:+.1f} [{end(self.low)}, {end(self.high)}]"


def paired_class_bootstrap(correct_a: Sequence[float], correct_b: Sequence[float], classes: Sequence[int], *,
                           num_resamples: int = 10000, level: float = 0.95, seed: int = 0) -> PairedInterval:
    """Percentile interval of top-1(A) - top-1(B), resampling classes with replacement.

    Args:
        correct_a, correct_b: per image, whether model A / B got it right (bool, or a mean over seeds
            in [0, 1]), the same images in the same order.
        classes: per image, its class (the cluster it is resampled with).
    A resample draws as many classes as there are, with replacement, and takes every image of each
    drawn class (a class drawn twice counts twice); its statistic is the difference in accuracy over
    those images, in points.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    labels = np.asarray(classes)
    if not (a.shape == b.shape == labels.shape and a.ndim == 1 and a.size):
        raise ConfigError(f"correct_a, correct_b and classes must be equally long, non-empty 1-d sequences "
                          f"(the same images for both models); got shapes {a.shape}, {b.shape}, {labels.shape}.")
    if not 0 < level < 1 or num_resamples < 1:
        raise ConfigError(f"level must be in (0, 1) and num_resamples >= 1, got {level} and {num_resamples}.")
    _, cluster = np.unique(labels, return_inverse=True)
    num_classes = int(cluster.max()) + 1
    diff_per_class = np.bincount(cluster, weights=a - b, minlength=num_classes)
    images_per_class = np.bincount(cluster, minlength=num_classes).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, num_classes, size=(num_resamples, num_classes))
    stats = 100.0 * diff_per_class[draws].sum(axis=1) / images_per_class[draws].sum(axis=1)
    tail = 100.0 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return PairedInterval(diff=100.0 * float((a - b).mean()), low=float(low), high=float(high), level=level,
                          num_classes=num_classes, num_images=int(a.size))
