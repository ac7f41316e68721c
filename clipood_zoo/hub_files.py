"""Where a save_pretrained folder's or a hub repo's files are, and the one error when they cannot be had.

Kept apart from :mod:`clipood_zoo.hub` (which loads weights into models and so needs the registry) so that
the registry can resolve ``hf-hub:``/``local-dir:`` ids without importing the module that imports it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

from .errors import WeightsNotFoundError

PathLike = Union[str, os.PathLike]
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def checkpoint_file(checkpoint_path: PathLike) -> Path:
    path = Path(checkpoint_path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise WeightsNotFoundError(
            f"No weights file at {path}. Pass a .safetensors file or a folder written by save_pretrained()."
        )
    return path


def hub_file(repo_id: str, filename: str, cache_dir: Optional[PathLike]) -> Path:
    """``filename`` of hub repo ``repo_id`` (``ORG/NAME`` or ``ORG/NAME@revision``, as timm spells it)."""
    from huggingface_hub import hf_hub_download

    repo, _, revision = repo_id.partition("@")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision or None, cache_dir=cache_dir))
    except hub_errors() as e:
        raise hub_not_found(repo_id, filename, cache_dir, e) from e


def hub_errors() -> Tuple[type, ...]:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    return LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError, ValueError


def hub_not_found(repo_id: str, filename: str, cache_dir: Optional[PathLike], e: BaseException) -> WeightsNotFoundError:
    """One line naming the repo and file that could not be had, why, and how to get them."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    why = "HF_HUB_OFFLINE is set and the file is not in the cache" if offline else f"{type(e).__name__}: {e}"
    why = " ".join(why.split())
    return WeightsNotFoundError(
        f"Could not get {filename!r} from the Hugging Face hub repo {repo_id!r} ({why}). Download it where the "
        f"hub is reachable (huggingface-cli download {repo_id.partition('@')[0]} {filename}) into the cache "
        f"({cache_dir or 'the default HF cache'}), or pass the file with checkpoint_path=."
    )
