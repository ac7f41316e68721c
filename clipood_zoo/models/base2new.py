"""CLIPood ViT-B/16 base-to-new on CoOp's 11 datasets (paper Table 3), one entry per dataset.

Names: ``clipood_vitb16_b2n_{dataset}`` (datasets as in :data:`clipood_zoo.data.catalog.BASE2NEW`).
Recipe from thuml/CLIPood ``scripts.sh`` (``--task open_class``): 16 shots, batch 36, lr 5e-6, lambda 0.3,
BMA beta 0.1, 500 iterations per epoch, epochs per dataset below, AdamW weight decay 0.1, cosine,
tau 0.01 (CLIP's logit scale); prompt template per dataset from its ``converter_dassl.py``; trained on
the base half of the classes, evaluated on base and new separately.

Class names: only ImageNet's are known offline (CLIP's list). The others come from CoOp's split files,
so those cfgs carry ``num_classes`` and no ``label_names``: the head is built unnamed and train.py /
validate.py embed the shards' class names with CLIP's text tower (``--clip-pretrained openai``) —
:func:`clipood_zoo.evaluate.align_classes`. Weights trained that way carry their class names.
"""
from __future__ import annotations

from typing import Dict

from ..data.catalog import IMAGENET
from ..data.catalog import BASE2NEW as DATASETS
from ..data.catalog import CoopDataset
from ..registry import ZooPretrainedCfg, generate_default_cfgs, register_entrypoints
from .factory import build_zoo_model, default_cfg

EPOCHS = {"imagenet": 10, "caltech101": 1, "oxford_pets": 1, "stanford_cars": 5, "flowers102": 1, "food101": 1,
          "fgvc_aircraft": 10, "sun397": 5, "dtd": 1, "eurosat": 1, "ucf101": 2}
ITERS_PER_EPOCH = 500
BATCH_SIZE = 36


def _cfg(ds: CoopDataset) -> ZooPretrainedCfg:
    epochs = EPOCHS[ds.name]
    steps = epochs * ITERS_PER_EPOCH
    name = f"clipood_vitb16_b2n_{ds.name}"
    recipe = dict(method="clipood", lr=5e-6, epochs=epochs, steps=steps, batch_size=BATCH_SIZE, opt="adamw",
                  weight_decay=0.1, sched="cosine", margin_lambda=0.3, temperature=0.01, bma_beta=0.1, shots=16,
                  train_classes="base", fewshot_seeds=(1, 2, 3), clip_pretrained="openai")
    command = (f"python train.py --model {name} --clip-pretrained openai --data-dir <{ds.name} b2n shards> "
               f"--train-classes base -b {BATCH_SIZE} --lr 5e-6 --steps {steps} --margin-lambda 0.3 "
               "--temperature 0.01 --bma-beta 0.1 --weight-decay 0.1")
    return default_cfg(
        "ViT-B-16", quick_gelu=True, clip_pretrained="openai", num_classes=ds.num_classes,
        label_names=IMAGENET.class_names if ds.name == "imagenet" else None, templates=(ds.template,),
        dataset=ds.name, recipe=recipe, train_command=command,
        paper_name="CLIPood: Generalizing CLIP to Out-of-Distributions", paper_ids="arXiv:2302.00864",
        license="mit", origin_url="https://github.com/thuml/CLIPood",
        description=f"CLIP ViT-B/16 fine-tuned with CLIPood on the base classes of 16-shot {ds.coop_name} "
                    "(CoOp's splits), evaluated on base and new classes.",
    )


default_cfgs: Dict = generate_default_cfgs({f"clipood_vitb16_b2n_{ds.name}": _cfg(ds) for ds in DATASETS.values()})
register_entrypoints(__name__, build_zoo_model)
