"""The manifest of the weights the repository ships (``clipood_zoo/models/shipped_weights.json``).

The registry loads ``weights/<name>/model.safetensors`` only if its sha256 is the manifest's, and its
registered cfg states the logit scale (and, for a fine-tune, the recipe and train command) the manifest
records. So every tool that writes a registered model's weights records them here in the same step:
weights without their record fail to load as "corrupted", a record without its weights misstates them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

from safetensors.torch import load_file

from clipood_zoo.fileio import write_text_atomic
from clipood_zoo.hub import sha256_file
from clipood_zoo.models.emoji import MANIFEST
from clipood_zoo.models.factory import WISE_FT_ROLES

from .paths import REPO

WEIGHTS = REPO / "weights"


def registry_file(out: Path, name: str) -> bool:
    """Whether ``out`` is the folder the registry loads ``name``'s shipped weights from."""
    return Path(out).resolve() == (WEIGHTS / name).resolve()


def log_logit_scale(name: str) -> float:
    """The log logit scale (``head.logit_scale``) ``weights/<name>/model.safetensors`` holds."""
    return float(load_file(WEIGHTS / name / "model.safetensors")["head.logit_scale"].float())


def source_pins(spec: Dict) -> Dict[str, str]:
    """role -> sha256 of the shipped file of each model a WiSE-FT ``spec`` mixes (what its card was measured with)."""
    return {role: sha256_file(WEIGHTS / spec[role] / "model.safetensors") for role in WISE_FT_ROLES}


def record_shipped(names: Sequence[str], trained: Optional[Dict[str, dict]] = None,
                   wise_ft: Optional[Dict[str, dict]] = None) -> None:
    """Write each ``weights/<name>/model.safetensors``'s sha256 and logit scale into the manifest the registry
    reads (so that the registered cfg says the scale the weights hold), and, for a fine-tune, how it was trained
    (``trained[name]``: its selected ``recipe`` values and ``train_command``, which the registered cfg then says).
    A name in ``wise_ft`` stores no file: its entry is its spec (``{zeroshot, finetuned, alpha}``, two shipped
    names the registry mixes at load time, pinned to the sha256 of the files it was measured with) and the logit
    scale that mix holds. Other entries are kept; the file
    is replaced whole (never half-written)."""
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    for name in names:
        spec = (wise_ft or {}).get(name)
        if spec is None:
            path = WEIGHTS / name / "model.safetensors"
            entry = {"file": f"{name}/model.safetensors", "sha256": sha256_file(path),
                     "logit_scale": round(math.exp(log_logit_scale(name)), 4)}
        else:  # the head's log scale is interpolated like every other weight
            log_scale = ((1 - spec["alpha"]) * log_logit_scale(spec["zeroshot"])
                         + spec["alpha"] * log_logit_scale(spec["finetuned"]))
            entry = {"wise_ft": {**spec, "sha256": source_pins(spec)}, "logit_scale": round(math.exp(log_scale), 4)}
        manifest[name] = {**entry, **(trained or {}).get(name, {})}
    write_text_atomic(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
