"""WiSE-FT's weight rule against a per-tensor hand formula, and its error paths."""
import pytest
import torch

from clipood_zoo import ConfigError
from clipood_zoo.errors import WeightsMismatchError
from clipood_zoo.models import build_classifier
from clipood_zoo.weight_space import interpolate_state_dicts, wise_ft


def test_wise_ft_is_the_per_tensor_convex_combination_of_every_weight():
    zeroshot = build_classifier("clipood-test-tiny", num_classes=3)
    finetuned = build_classifier("clipood-test-tiny", num_classes=3)  # other random weights, head included
    zs = {k: v.clone() for k, v in zeroshot.state_dict().items()}
    for alpha in (0.0, 0.3, 1.0):
        mixed = wise_ft(finetuned, zs, alpha).state_dict()
        for key, ft in finetuned.state_dict().items():
            expected = [(1 - alpha) * a + alpha * b for a, b in zip(zs[key].double().flatten().tolist(),
                                                                    ft.double().flatten().tolist())]
            torch.testing.assert_close(mixed[key].double().flatten(), torch.tensor(expected, dtype=torch.float64),
                                       rtol=1e-6, atol=1e-7)
    assert not torch.equal(zs["head.weight"], finetuned.state_dict()["head.weight"])  # the head is interpolated too
    zero = wise_ft(finetuned, zs, 0.0).state_dict()
    torch.testing.assert_close(zero["visual.conv1.weight"], zs["visual.conv1.weight"])


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_the_unit_interval_is_refused(alpha):
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        interpolate_state_dicts({"w": torch.zeros(1)}, {"w": torch.ones(1)}, alpha)


def test_states_of_different_models_are_refused_by_name():
    with pytest.raises(WeightsMismatchError, match="only fine-tuned: \\['b'\\]"):
        interpolate_state_dicts({"a": torch.zeros(1)}, {"a": torch.zeros(1), "b": torch.zeros(1)}, 0.5)
    with pytest.raises(WeightsMismatchError, match=r"w: zero-shot shape \(2,\) != fine-tuned \(3,\)"):
        interpolate_state_dicts({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)
