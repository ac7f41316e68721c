"""The paired, class-clustered bootstrap against an exact enumeration, and its defining properties."""
import itertools

import numpy as np
import pytest

from clipood_zoo.errors import ConfigError
from clipood_zoo.stats import PairedInterval, paired_class_bootstrap


def _tiny_case():
    """Four classes of unequal size; A and B disagree differently in each."""
    classes = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    a = [1, 1, 0, 1, 0, 1, 1, 1, 0, 1]
    b = [1, 0, 0, 0, 0, 1, 0, 1, 1, 1]
    return a, b, classes


def _exact_quantiles(a, b, classes, level):
    """Every ordered draw of 4 classes out of 4 (256, equally likely): the bootstrap's exact distribution."""
    ids = sorted(set(classes))
    d = {c: sum(x - y for x, y, k in zip(a, b, classes) if k == c) for c in ids}
    n = {c: classes.count(c) for c in ids}
    values = sorted(100 * sum(d[c] for c in draw) / sum(n[c] for c in draw)
                    for draw in itertools.product(ids, repeat=len(ids)))
    cdf_steps = np.arange(1, len(values) + 1) / len(values)
    tail = (1 - level) / 2
    # far from any step of the CDF, so a Monte Carlo percentile must land on the same atom
    assert min(abs(cdf_steps - tail).min(), abs(cdf_steps - (1 - tail)).min()) > 0.001
    return values[int(np.ceil(tail * len(values))) - 1], values[int(np.ceil((1 - tail) * len(values))) - 1]


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_interval_equals_the_exact_enumeration_of_class_resamples(level):
    a, b, classes = _tiny_case()
    r = paired_class_bootstrap(a, b, classes, num_resamples=200_000, level=level, seed=1)
    assert (r.low, r.high) == pytest.approx(_exact_quantiles(a, b, classes, level))
    assert r.diff == pytest.approx(100 * (sum(a) - sum(b)) / len(a))
    assert (r.num_classes, r.num_images) == (4, 10)


def test_identical_models_give_a_zero_width_interval_at_zero():
    rng = np.random.default_rng(0)
    correct = rng.random(400) < 0.6
    r = paired_class_bootstrap(correct, correct, rng.integers(0, 40, 400))
    assert (r.diff, r.low, r.high) == (0.0, 0.0, 0.0) and not r.resolved


def test_a_shift_equal_in_every_class_is_known_exactly():
    """B loses exactly one of every four images in every class that A gets right: -25 points, no spread."""
    classes = np.repeat(np.arange(30), 8)
    a = np.ones(240)
    b = np.tile([1, 1, 1, 0, 1, 1, 1, 0], 30)
    r = paired_class_bootstrap(a, b, classes)
    assert (r.diff, r.low, r.high) == pytest.approx((25.0, 25.0, 25.0)) and r.resolved


def test_pairing_and_clustering_matter():
    """The same accuracies with a class-level effect give a wider interval than with the effect spread out."""
    classes = np.repeat(np.arange(50), 10)
    b = np.zeros(500)
    clustered = (classes < 5).astype(float)  # A wins all images of 5 classes
    spread = np.tile(np.r_[1.0, np.zeros(9)], 50)  # A wins one image of every class
    wide = paired_class_bootstrap(clustered, b, classes)
    narrow = paired_class_bootstrap(spread, b, classes)
    assert wide.diff == narrow.diff == pytest.approx(10.0)
    assert narrow.low == narrow.high == pytest.approx(10.0) and wide.high - wide.low > 10


def test_seeded_and_accepts_seed_averaged_correctness():
    a, b, classes = _tiny_case()
    halves = [0.5 * x for x in a]
    assert paired_class_bootstrap(halves, b, classes, seed=3) == paired_class_bootstrap(halves, b, classes, seed=3)
    assert str(paired_class_bootstrap(a, a, classes)) == "+0.0 [+0.0, +0.0]"


@pytest.mark.parametrize("low, high, text", [(0.031, 2.14, "+1.0 [+0.031, +2.1]"), (-2.0, -0.0042, "+1.0 [-2.0, -0.0042]"),
                                            (0.0, 0.26, "+1.0 [+0.0, +0.3]"), (-0.05, 0.05, "+1.0 [-0.1, +0.1]")])
def test_an_interval_end_near_zero_keeps_its_sign_in_print(low, high, text):
    """An end that rounds to 0.0 but is not 0 is printed with two significant digits: [+0.0, +2.1] beside a
    "resolved" star would look as if the interval touched 0."""
    interval = PairedInterval(diff=1.0, low=low, high=high, level=0.95, num_classes=4, num_images=8)
    assert str(interval) == text


@pytest.mark.parametrize("kwargs, message", [
    (dict(correct_a=[1, 0], correct_b=[1], classes=[0, 1]), "equally long"),
    (dict(correct_a=[], correct_b=[], classes=[]), "non-empty"),
    (dict(correct_a=[1], correct_b=[0], classes=[0], level=1.0), "level must be in"),
])
def test_bad_input_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        paired_class_bootstrap(**kwargs)
