"""The paper's evaluation protocols at full scale: each benchmark family's distributed layout ->
checked -> shards with the fields its table needs.

- :mod:`.domainbed`  PACS, VLCS, OfficeHome, TerraIncognita, DomainNet (Table 1)
- :mod:`.imagenet`   ImageNet val and -V2/-Sketch/-A/-R, 200-class scoring for A and R (Table 2)
- :mod:`.base2new`   CoOp's 11 datasets: split files, few-shot draw, base/new halves (Table 3)

Command line: ``python -m clipood_zoo.data.protocols --help``; its ``run`` command trains, validates
and tabulates a whole table (:mod:`clipood_zoo.sweep`, outside this data package because it runs
train.py); commands per table in ``docs/paper_protocols.md``; tables from result rows with
``tools/paper_tables.py``.
"""
from . import base2new, domainbed, imagenet

__all__ = ["base2new", "domainbed", "imagenet"]
