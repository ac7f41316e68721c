"""clipood-zoo: a timm-style model zoo of CLIP models fine-tuned with CLIPood to stay robust out of distribution.

>>> import clipood_zoo
>>> clipood_zoo.list_models('clipood_vitb16_pacs_*')
>>> model = clipood_zoo.create_model('clipood_vitb16_domainnet_sketch')
"""
import open_clip as _open_clip
from pathlib import Path as _Path

_open_clip.add_model_config(_Path(__file__).parent / "model_configs")  # the zoo's small open_clip archs

from . import models  # noqa: E402  registers every family, as importing timm.models does
from .bma import ModelBma, bma_weights  # noqa: E402
from .errors import (  # noqa: E402
    ClipoodError, ConfigError, DatasetError, UnknownModelError, UnsafeWeightsError, WeightsError,
    WeightsIntegrityError, WeightsMismatchError, WeightsNotFoundError,
)
from .hub import integrate_with_timm, load_weights, push_to_hub, save_pretrained  # noqa: E402
from .losses import MMSLoss, mms_loss  # noqa: E402
from .models import ClipoodClassifier  # noqa: E402
from .open_clip_export import export_open_clip  # noqa: E402
from .registry import create_model, get_pretrained_cfg, is_model, list_models, list_pretrained  # noqa: E402
from .version import __version__  # noqa: E402

integrate_with_timm()  # timm.create_model's hf-hub: errors and checkpoint_path= load zoo models the zoo's way

__all__ = [
    "create_model", "list_models", "list_pretrained", "is_model", "get_pretrained_cfg", "ModelBma", "bma_weights",
    "ClipoodClassifier", "MMSLoss", "mms_loss", "save_pretrained", "load_weights", "push_to_hub", "export_open_clip",
    "__version__",
    "ClipoodError", "ConfigError", "DatasetError", "UnknownModelError", "UnsafeWeightsError", "WeightsError",
    "WeightsIntegrityError", "WeightsMismatchError", "WeightsNotFoundError",
]
