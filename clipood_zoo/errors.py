"""Exceptions raised by clipood-zoo.

Every error names the input that was wrong and what to do about it, so a user never has to read a
traceback from deep inside torch, safetensors or huggingface_hub. They subclass the built-in
``ValueError``/``RuntimeError`` so existing ``except`` clauses keep working.
"""


class ClipoodError(Exception):
    """Base class of every error raised on purpose by clipood-zoo."""


class UnknownModelError(ClipoodError, ValueError):
    """A model name that is not in the registry."""


class WeightsError(ClipoodError, RuntimeError):
    """Weights that cannot be found, trusted or loaded."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights at the place the cfg or the user pointed to."""


class WeightsIntegrityError(WeightsError):
    """A weights file whose sha256 differs from the one recorded in the pretrained cfg."""


class UnsafeWeightsError(WeightsError):
    """A weights file in a format that would need unpickling (.pth/.bin/.pt)."""


class WeightsMismatchError(WeightsError):
    """A weights file whose tensor names or shapes do not fit the model."""


class DatasetError(ClipoodError, ValueError):
    """A dataset folder, its ``_info.json`` or its shards are not usable as asked."""


class ConfigError(ClipoodError, ValueError):
    """An argument that is out of range or inconsistent (batch size 0, beta <= 0, unknown domain ...)."""


class CheckpointError(WeightsError):
    """A training checkpoint that cannot be written (disk full, permissions) or read back."""


class TrainingError(ClipoodError, RuntimeError):
    """A training run that cannot go on (e.g. its loss stayed NaN/inf for many consecutive steps)."""


class LockedError(ClipoodError, RuntimeError):
    """A folder another live process holds (e.g. two train.py runs writing to one run folder)."""


class RunInterrupted(ClipoodError, RuntimeError):
    """A training run stopped on SIGTERM/SIGINT after saving a checkpoint to resume from."""
