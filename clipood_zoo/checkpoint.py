"""Training checkpoints that a killed run resumes from to the same final weights.

A checkpoint holds the model, the weight average (BMA or EMA), optimizer, scheduler, AMP scaler, the step and epoch,
and the run's arguments. It is written atomically (temporary file, fsync, rename), so a crash during a
save leaves the previous checkpoint whole, and read with ``torch.load(weights_only=True)``, so it can
hold nothing but tensors and plain containers.

RNG state is not stored because it is not history: the loop reseeds every RNG from (seed, epoch) at the
start of each epoch and a resumed run replays the batches of the current epoch up to its step, so the
data order and augmentations after a resume are those of the uninterrupted run by construction.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from .errors import CheckpointError, WeightsError
from .fileio import write_bytes_atomic
from .hub import load_error_summary

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, *, model: nn.Module, average: Optional[nn.Module], optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, step: int, epoch: int, extra: Optional[Dict[str, Any]] = None,
                    shards: Optional[str] = None) -> None:
    """``shards``: the folder (next to ``path``) where :func:`save_shards` wrote the model, average and optimizer of
    a sharded (FSDP) run; the checkpoint then holds its name instead of them."""
    state = {
        "model": model.state_dict() if shards is None else None,
        "average": (average.module.state_dict() if average is not None else None) if shards is None else None,
        "optimizer": optimizer.state_dict() if shards is None else None,
        "shards": shards,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "epoch": epoch,
        **(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as e:  # disk full, quota, permissions: atomic_write has removed its temporary file
        raise CheckpointError(
            f"could not write the checkpoint {path} at step {step} ({e.strerror or e}); the previous checkpoint there, "
            "if any, is intact. Free space or fix the folder, then continue with --resume "
            f"{path}.") from e


def load_checkpoint(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise WeightsError(f"no checkpoint at {path}; --resume takes a checkpoint.pt written by train.py "
                           "(or the output folder holding one)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise WeightsError(f"{path} is not a readable train.py checkpoint ({load_error_summary(e)}); "
                           "resume from an earlier one or start again") from e


def _sharded_state(model: nn.Module, average: Optional[nn.Module], optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if average is not None:
        state["average"] = get_model_state_dict(average.module)
    return state


def save_shards(folder: Path, *, model: nn.Module, average: Optional[nn.Module],
                optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model, average and optimizer into ``folder`` (torch.distributed.checkpoint;
    a collective). The folder is whole once this returns on every rank: only then may a checkpoint name it."""
    try:
        dcp.save(_sharded_state(model, average, optimizer), checkpoint_id=folder)
    except Exception as e:  # DCP gathers the ranks' OSErrors into one CheckpointException
        raise CheckpointError(f"could not write the sharded checkpoint {folder} ({load_error_summary(e)}); the "
                              "previous checkpoint, if any, is intact") from e
    torch.distributed.barrier()


def load_shards(folder: Path, *, model: nn.Module, average: Optional[nn.Module],
                optimizer: torch.optim.Optimizer) -> None:
    """Load what :func:`save_shards` wrote into the sharded model, average and optimizer (each rank its shards)."""
    if not (folder / ".metadata").is_file():
        raise WeightsError(f"the sharded checkpoint {folder} is missing or incomplete (no .metadata); resume from "
                           "an earlier checkpoint or start again")
    state = _sharded_state(model, average, optimizer)
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if average is not None:
        set_model_state_dict(average.module, state["average"])
