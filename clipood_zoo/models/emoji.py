"""The shipped small family: a CLIP pretrained here on emoji styles, and CLIPood/ERM/WiSE-FT fine-tunes of it.

- ``clip_vitt_emoji``: the zero-shot base, a ViT (patch 8, 40 px) image tower trained LiT-style
  against a locked all-MiniLM-L6-v2 text tower on nine pretraining emoji styles (EmojiDG v2; none of the
  four downstream styles, nor their design families) (tools/pretrain_emoji_clip.py); its head holds the 444
  EmojiDG class embeddings.
- ``<method>_vitt_emojidg_<domain>`` for every method of the study (:data:`METHOD_LABELS`: CLIPood, ERM,
  WiSE-FT and the peers): fine-tuned with train.py on the other three downstream styles' base classes,
  ``<domain>`` held out, the (lr, steps) selected on the source styles' val split
  (tools/emojidg/run_benchmark.py ships CLIPood, ERM, WiSE-FT and the best peer).

Weights live in the repo's ``weights/<name>/``; their sha256 is recorded in ``shipped_weights.json``
(tools/emojidg/run_benchmark.py writes it, with the selected lr and steps and the exact train.py command of
a fine-tune, which the cfg then says), and a name without an entry has no weights yet. A WiSE-FT entry whose
fine-tune is the shipped ERM run stores no weights: its manifest entry says ``wise_ft`` (base,
fine-tune, alpha) and the weights are mixed from those two files at load time; ``weights/<name>/`` holds its card.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from ..data import emojidg
from ..registry import ZooPretrainedCfg, generate_default_cfgs, register_entrypoints
from .factory import build_zoo_model, default_cfg

ARCH = "ViT-T-8-40-MiniLM"
# the templates clip_vitt_emoji's class embeddings average (tools/pretrain_emoji_clip.py NAME_TEMPLATES)
TEMPLATES = ("a photo of a {}.", "an emoji of a {}.", "a {} emoji.", "a {} icon.", "an icon of a {}.", "a drawing of a {}.")
MANIFEST = Path(__file__).parent / "shipped_weights.json"
SHIPPED: Dict[str, Dict] = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
METHOD_LABELS = {"clipood": "CLIPood", "erm": "ERM", "wise_ft": "WiSE-FT (on ERM)",
                 "clipood_wise_ft": "CLIPood + WiSE-FT", "lp_ft": "LP-FT", "flyp": "FLYP", "car_ft": "CAR-FT",
                 "croft": "CRoFT"}
V1_METHODS = ("clipood", "erm", "wise_ft")  # train.py methods whose weights v1's fixed RECIPE made or can make
RECIPE = dict(lr=1e-4, steps=300, batch_size=64, warmup_steps=30, opt="adamw", weight_decay=0.1, sched="cosine",
              train_classes="base")


def _cfg(name: str, heldout: str = None, method: str = None) -> ZooPretrainedCfg:
    shipped = SHIPPED.get(name, {})
    recipe = dict(RECIPE, method=method, **({"margin_lambda": 0.3, "bma_beta": 0.5} if method == "clipood" else {}),
                  **shipped.get("recipe", {}))
    command = shipped.get("train_command")  # the shipped run's own (v2 study); else v1's fixed recipe, for
    if method in V1_METHODS and command is None:  # the methods v1 trained with it (a peer has no command until shipped)
        command = (f"python train.py --model clip_vitt_emoji --pretrained --data-dir data/emojidg --holdout {heldout} "
                   f"--train-classes base --method {method} --steps {RECIPE['steps']} -b {RECIPE['batch_size']} "
                   f"--lr {RECIPE['lr']} --warmup-steps {RECIPE['warmup_steps']} --export-name {name}")
    return default_cfg(
        ARCH, file=shipped.get("file"), sha256=shipped.get("sha256"), wise_ft=shipped.get("wise_ft"),
        num_classes=len(emojidg.CLASS_NAMES),
        label_names=emojidg.CLASS_NAMES, templates=TEMPLATES, logit_scale=shipped.get("logit_scale", 20.0),
        dataset="emojidg", heldout_domain=heldout, recipe=recipe if method else {}, train_command=command,
        license="cc-by-sa-4.0", description=(
            f"{METHOD_LABELS[method]} fine-tune of clip_vitt_emoji on EmojiDG, "
            f"'{heldout}' held out." if method else
            "A small CLIP (ViT patch 8, 40 px; locked all-MiniLM-L6-v2 text) pretrained on nine emoji styles "
            "(EmojiDG v2)."),
    )


default_cfgs: Dict = generate_default_cfgs({
    "clip_vitt_emoji": _cfg("clip_vitt_emoji"),
    **{f"{method}_vitt_emojidg_{d}": _cfg(f"{method}_vitt_emojidg_{d}", d, method)
       for method in METHOD_LABELS for d in emojidg.DOMAINS},
})
register_entrypoints(__name__, build_zoo_model)
