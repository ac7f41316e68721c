"""CLIPood ViT-B/16 on the five DomainBed datasets, one entry per held-out domain (paper Table 1).

Names: ``clipood_vitb16_{dataset}_{heldout}``. Weights: none are published (the authors released no
checkpoints), so each cfg carries the paper's recipe and the train.py command that makes them.
Recipe (thuml/CLIPood, DomainBed scripts): AdamW, weight decay 0.1, cosine schedule, 12 images per
source domain per batch, 500 iterations per epoch, lambda 0.3, tau 0.01, BMA beta 0.5; lr 5e-6 for
PACS/VLCS/TerraIncognita (10 epochs), 1e-5 for OfficeHome (10) and DomainNet (20 epochs).
"""
from __future__ import annotations

import shlex
from typing import Dict

from ..data.catalog import DOMAINBED, DatasetSpec
from ..registry import ZooPretrainedCfg, generate_default_cfgs, register_entrypoints
from .factory import build_zoo_model, default_cfg

_LR_EPOCHS = {"pacs": (5e-6, 10), "vlcs": (5e-6, 10), "terraincognita": (5e-6, 10),
              "officehome": (1e-5, 10), "domainnet": (1e-5, 20)}
ITERS_PER_EPOCH = 500
IMAGES_PER_SOURCE_DOMAIN = 12


def _cfg(dataset: DatasetSpec, heldout: str) -> ZooPretrainedCfg:
    lr, epochs = _LR_EPOCHS[dataset.name]
    batch_size = IMAGES_PER_SOURCE_DOMAIN * (len(dataset.domains) - 1)
    recipe = dict(method="clipood", lr=lr, epochs=epochs, steps=epochs * ITERS_PER_EPOCH, batch_size=batch_size,
                  opt="adamw", weight_decay=0.1, sched="cosine", margin_lambda=0.3, temperature=0.01, bma_beta=0.5,
                  clip_pretrained="openai", holdout_fraction=0.2)
    name = f"clipood_vitb16_{dataset.name}_{heldout}"
    command = (f"python train.py --model {name} --clip-pretrained openai --data-dir <{dataset.name} shards> "
               f"--holdout {shlex.quote(dataset.domain(heldout).folder)} -b {batch_size} --lr {lr} "
               f"--steps {recipe['steps']} --margin-lambda 0.3 --temperature 0.01 --bma-beta 0.5 --weight-decay 0.1")
    return default_cfg(
        "ViT-B-16", quick_gelu=True, clip_pretrained="openai", num_classes=dataset.num_classes,
        label_names=dataset.class_names, dataset=dataset.name, heldout_domain=heldout, recipe=recipe,
        train_command=command, paper_name="CLIPood: Generalizing CLIP to Out-of-Distributions",
        paper_ids="arXiv:2302.00864", license="mit", origin_url="https://github.com/thuml/CLIPood",
        description=f"CLIP ViT-B/16 fine-tuned with CLIPood on {dataset.name} with '{heldout}' held out "
                    f"({dataset.source}).",
    )


default_cfgs: Dict = generate_default_cfgs({
    f"clipood_vitb16_{ds.name}_{d.slug}": _cfg(ds, d.slug) for ds in DOMAINBED.values() for d in ds.domains
})
register_entrypoints(__name__, build_zoo_model)
