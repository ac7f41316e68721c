"""CLIPood ViT-B/16 on ImageNet, 16 shots per class (paper Table 2: ImageNet and its shifts).

Recipe (thuml/CLIPood, ImageNet script): batch 36, lr 5e-6, 10 epochs of 500 iterations, AdamW with
weight decay 0.1, cosine schedule, lambda 0.3, tau 0.01, BMA beta 0.1. Class names: open_clip's
curated ImageNet list. No weights are published; the cfg says how to make them.
"""
from __future__ import annotations

from typing import Dict

from ..data.catalog import IMAGENET
from ..registry import generate_default_cfgs, register_entrypoints
from .factory import build_zoo_model, default_cfg

_RECIPE = dict(method="clipood", lr=5e-6, epochs=10, steps=5000, batch_size=36, opt="adamw", weight_decay=0.1,
               sched="cosine", margin_lambda=0.3, temperature=0.01, bma_beta=0.1, shots=16, clip_pretrained="openai")

default_cfgs: Dict = generate_default_cfgs({
    "clipood_vitb16_imagenet": default_cfg(
        "ViT-B-16", quick_gelu=True, clip_pretrained="openai", num_classes=IMAGENET.num_classes,
        label_names=IMAGENET.class_names, dataset="imagenet", recipe=_RECIPE,
        train_command=("python train.py --model clipood_vitb16_imagenet --clip-pretrained openai "
                       "--data-dir <imagenet 16-shot shards> -b 36 --lr 5e-6 --steps 5000 --margin-lambda 0.3 "
                       "--temperature 0.01 --bma-beta 0.1 --weight-decay 0.1"),
        paper_name="CLIPood: Generalizing CLIP to Out-of-Distributions", paper_ids="arXiv:2302.00864",
        license="mit", origin_url="https://github.com/thuml/CLIPood",
        description="CLIP ViT-B/16 fine-tuned with CLIPood on 16-shot ImageNet (evaluated on V2, Sketch, A, R).",
    ),
})
register_entrypoints(__name__, build_zoo_model)
