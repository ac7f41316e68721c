"""Data layer: WebDataset shards with timm's ``_info.json``, converters from image folders, loaders.

- :mod:`.catalog`    what each public dataset is: domains and class order
- :mod:`.info`       read and validate ``_info.json`` (:class:`DatasetInfo`)
- :mod:`.writer`     write shards and ``_info.json`` atomically (:func:`write_split`)
- :mod:`.converters` DomainBed / ImageFolder trees -> shards (CLI: ``python -m clipood_zoo.data.convert``)
- :mod:`.pipeline`   :func:`create_loader` -> batches ``(images, targets, domain_idx)``
- :mod:`.synthetic`  tiny generated datasets for tests
"""
from .converters import ConversionReport, convert_domainbed, convert_imagefolder
from .info import DatasetInfo, SplitInfo, read_dataset_info
from .pipeline import ShardLoader, SkipCounter, count_samples, create_loader
from .writer import Sample, write_split

__all__ = [
    "ConversionReport", "DatasetInfo", "Sample", "ShardLoader", "SkipCounter", "SplitInfo", "convert_domainbed",
    "convert_imagefolder", "count_samples", "create_loader", "read_dataset_info", "write_split",
]
