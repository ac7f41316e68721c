"""The weights in weights/ load (sha256-checked) and still score what their model cards recorded.

Each EmojiDG fine-tune's card records validate.py's top-1 of the shipped model (its fp16 file; for a WiSE-FT
entry, the mix of two such files) on its held-out domain in the committed subset datasets/emojidg-mini
(``mini_top1``); re-scoring it here catches a drift in the weights, the data, the transforms or the evaluation loop.
"""
from pathlib import Path

import pytest

import clipood_zoo
import validate
from clipood_zoo.data import emojidg
from clipood_zoo.models.emoji import SHIPPED as MANIFEST
from tests.shipped_cards import recorded_mini_top1

REPO = Path(__file__).resolve().parent.parent
MINI = REPO / "datasets" / "emojidg-mini"
SHIPPED = sorted(MANIFEST)  # shipped_weights.json: what weights/ holds, with sha256 (WiSE-FT: mixed from two of them)


def test_every_shipped_name_is_listed_and_loads():
    assert "clip_vitt_emoji" in SHIPPED and set(SHIPPED) <= set(clipood_zoo.list_pretrained())
    for name in SHIPPED:
        model = clipood_zoo.create_model(name, pretrained=True)
        assert model.num_classes == len(emojidg.CLASS_NAMES) and model.class_names == list(emojidg.CLASS_NAMES)


def test_zero_shot_base_is_far_above_chance_on_every_held_out_style():
    (row,) = validate.main(["--model", "clip_vitt_emoji", "--pretrained", "--data-dir", str(MINI), "--workers", "0"])
    chance = 100 / len(emojidg.CLASS_NAMES)
    for domain in emojidg.DOMAINS:
        assert row[f"top1_{domain}"] >= 10 * chance, (domain, row)


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "clip_vitt_emoji"])
def test_fine_tuned_models_reproduce_their_model_card(name):
    heldout = clipood_zoo.get_pretrained_cfg(name).heldout_domain
    (row,) = validate.main(["--model", name, "--pretrained", "--data-dir", str(MINI), "--domains", heldout,
                            "--workers", "0"])
    assert row["num_samples"] == 444
    assert row["top1"] == pytest.approx(recorded_mini_top1(name), abs=1e-3)  # the same fp16 file, the same images
