"""A zoo family on the tiny test architecture, registered the way the real families are.

``testzoo_tiny_toy_shipped`` points at a file in ``weights/`` (the tests set CLIPOOD_WEIGHTS_DIR), so
it is listed by ``list_pretrained``; ``testzoo_tiny_toy_hub`` points at a hub repo.
"""
from clipood_zoo.models.factory import build_zoo_model, default_cfg
from clipood_zoo.registry import generate_default_cfgs, register_entrypoints

ARCH = "clipood-test-tiny"
CLASS_NAMES = ("cat", "dog", "red apple", "airplane")
SHIPPED_FILE = "testzoo_tiny_toy_shipped.safetensors"
HUB_ID = "clipood-zoo-tests/tiny-toy"


def _cfg(**kwargs):
    return default_cfg(ARCH, num_classes=len(CLASS_NAMES), label_names=CLASS_NAMES, logit_scale=20.0,
                       dataset="toy", **kwargs)


default_cfgs = generate_default_cfgs({
    "testzoo_tiny_toy_a": _cfg(heldout_domain="a", train_command="python train.py --model testzoo_tiny_toy_a ..."),
    "testzoo_tiny_toy_shipped": _cfg(file=SHIPPED_FILE),
    "testzoo_tiny_toy_hub": _cfg(hf_hub_id=HUB_ID),
})
register_entrypoints(__name__, build_zoo_model)
