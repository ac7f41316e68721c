"""The manifest of the weights the repository ships (``clipood_zoo/models/shipped_weights.json``).

The registry loads ``weights/<name>/model.safetensors`` only if its sha256 is the manifest's, and its
registered cfg states the logit scale (and, for a fine-tune, the recipe and train command) the manifest
records. So every tool that writes a registered model's weights records them here in the same step:
weights without their record fail to load as "corrupted", a record without its weights misstates them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from safetensors.torch import load_file

from clipood_zoo.fileio import write_text_atomic
from clipood_zoo.hub import sha256_file
from clipood_zoo.models.emoji import MANIFEST

from .paths import REPO

WEIGHTS = REPO / "weights"


def registry_file(out: Path, name: str) -> bool:
    """Whether ``out`` is the folder the registry loads ``name``'s shipped weights from."""
    return Path(out).resolve() == (WEIGHTS / name).resolve()


def record_shipped(names: Sequence[str], trained: Optional[Dict[str, dict]] = None) -> None:
    """Write each ``weights/<name>/model.safetensors``'s sha256 and logit scale into the manifest the registry
    reads (so that the registered cfg says the scale the weights hold), and, for a fine-tune, how it was trained
    (``trained[name]``: its selected ``recipe`` values and ``train_command``, which the registered cfg then says).
    Other entries are kept; the file is replaced whole (never half-written)."""
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    for name in names:
        path = WEIGHTS / name / "model.safetensors"
        scale = round(float(load_file(path)["head.logit_scale"].float().exp()), 4)
        manifest[name] = {"file": f"{name}/model.safetensors", "sha256": sha256_file(path), "logit_scale": scale,
                          **(trained or {}).get(name, {})}
    write_text_atomic(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
