"""FSDP2 (torch's ``fully_shard``) for image towers too big for DDP (ViT-L/14 and up).

Only the image tower is sharded: each residual block, then the tower as a whole, so a block's full weights exist
only while it runs. The head (frozen class-text embeddings) stays whole on every rank; methods that train it
are refused, since nothing would keep its copies equal. Sharded parameters are DTensors: a rank holds one slice
of each (``to_local()``), which is what :class:`clipood_zoo.ModelBma` averages, so the average never gathers.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from .errors import ConfigError


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a sharded tensor (a view: writing it writes the parameter), else the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_image_tower(model: nn.Module, mesh: DeviceMesh) -> None:
    """``fully_shard`` each block of ``model.visual`` (an open_clip VisionTransformer), then the tower."""
    visual = getattr(model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ConfigError(f"--fsdp shards open_clip VisionTransformer image towers (visual.transformer.resblocks); "
                          f"this model's tower is a {type(visual).__name__}: train it with DDP (drop --fsdp)")
    trained_outside = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("visual.")]
    if trained_outside:
        raise ConfigError(f"--fsdp shards the image tower only, but this method also trains {trained_outside}; "
                          "train it with DDP (drop --fsdp)")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(visual, mesh=mesh)


def full_state_dict(model: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """The whole weights of a sharded model, gathered one tensor at a time into CPU memory of rank 0 (other ranks
    get an empty dict; every rank must call it). None for a model that is not sharded: its state_dict is whole."""
    if not is_sharded(model):
        return None
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
