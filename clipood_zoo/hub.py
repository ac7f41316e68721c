"""Where weights live and how their bytes get into a model: ``weights/``, a local file, or the HF hub.

Only safetensors are loaded by default, because a pickle (.pth/.bin) can run code when unpickled and
a model zoo is trusted with other people's files. A pickle is read only when the caller says it
trusts it (``allow_pickle=True``), and then with ``torch.load(weights_only=True)``.
``save_pretrained`` writes the folder ``create_model(name, checkpoint_path=folder)`` reads back:
``model.safetensors`` + ``config.json`` (cfg, class names, sha256) + a model card ``README.md``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from open_clip.model import resize_pos_embed
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from .errors import UnsafeWeightsError, WeightsError, WeightsIntegrityError, WeightsMismatchError, WeightsNotFoundError
from .fileio import write_bytes_atomic, write_text_atomic
from .hub_files import CONFIG_NAME, WEIGHTS_NAME, checkpoint_file, hub_errors, hub_file, hub_not_found
from .registry import WEIGHTS_SOURCE_FIELDS, get_pretrained_cfg, is_model

_logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
REPO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # a source checkout's weights/

PathLike = Union[str, "os.PathLike[str]"]


def weights_dirs() -> List[Path]:
    """Folders searched for a cfg's relative ``file``: ``$CLIPOOD_WEIGHTS_DIR`` (os.pathsep-separated), then a
    source checkout's ``weights/`` (absent from a wheel install, which ships no weights)."""
    env = os.environ.get("CLIPOOD_WEIGHTS_DIR", "")
    return [Path(p) for p in env.split(os.pathsep) if p] + ([REPO_WEIGHTS_DIR] if REPO_WEIGHTS_DIR.is_dir() else [])


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """sha256 of a module's whole weights (name and float32 values of every state-dict entry, sorted by name): equal
    for equal weights on any device; an FSDP-sharded tensor is gathered (a collective every rank takes part in)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if hasattr(value, "full_tensor"):  # a DTensor
            value = value.full_tensor()
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def verify_sha256(data: bytes, expected: Optional[str], path: PathLike) -> None:
    """Check the bytes about to be parsed (not a second read of ``path``, which could differ)."""
    if not expected:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise WeightsIntegrityError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is corrupted or not the "
            "published one; delete it and fetch it again (or pass the right file with checkpoint_path=)."
        )


def _local_file(cfg: Any) -> Optional[Path]:
    """The cfg's ``file``: an absolute file, a ``local-dir:`` folder, or a path under :func:`weights_dirs`."""
    if Path(cfg.file).is_absolute() or getattr(cfg, "source", None) == "local-dir":
        return checkpoint_file(cfg.file)
    return next((d / cfg.file for d in weights_dirs() if (d / cfg.file).is_file()), None)


def load_pretrained_file(model: nn.Module, file: PathLike) -> None:
    """Load ``file`` as ``model``'s registry cfg names it (timm's ``load_pretrained``), with that cfg's sha256."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    path = _local_file(SimpleNamespace(file=str(file)))
    if path is None:
        tried = ", ".join(str(d / file) for d in weights_dirs()) or "CLIPOOD_WEIGHTS_DIR is unset"
        raise WeightsNotFoundError(f"Weights {str(file)!r} of {cfg.get('architecture')} not found (looked in: "
                                   f"{tried}); set CLIPOOD_WEIGHTS_DIR to the folder holding them.")
    expected = cfg.get("sha256") if str(file) == cfg.get("file") else None
    load_weights(model, path, expected_sha256=expected)
    model.update_pretrained_cfg()


def integrate_with_timm() -> None:
    """Two hooks into ``timm.create_model``'s own steps, installed once on import:

    - an ``hf-hub:`` id's config.json is read by timm before any zoo code runs, and huggingface_hub's offline
      error names neither repo nor file: that error becomes :func:`hub_not_found`'s line (a
      ``FileNotFoundError``, as huggingface_hub's is);
    - ``checkpoint_path=`` is loaded by timm's ``load_checkpoint``, which knows neither save_pretrained folders
      nor a head of another class count: for zoo models it goes through :func:`load_weights` instead.
    Other models are untouched.
    """
    import timm.models._factory as timm_factory

    if getattr(timm_factory.load_checkpoint, "clipood_zoo", False):
        return
    read_config, load_checkpoint = timm_factory.load_model_config_from_hf, timm_factory.load_checkpoint

    @functools.wraps(read_config)
    def load_model_config_from_hf(model_id: str, cache_dir: Optional[PathLike] = None, **kwargs: Any):
        try:
            return read_config(model_id, cache_dir=cache_dir, **kwargs)
        except hub_errors() as e:
            raise hub_not_found(model_id, CONFIG_NAME, cache_dir, e) from e

    @functools.wraps(load_checkpoint)
    def load_checkpoint_into(model: nn.Module, checkpoint_path: PathLike, *args: Any, **kwargs: Any):
        if not is_model(getattr(model, "pretrained_cfg", {}).get("architecture", "")):  # not a zoo model
            return load_checkpoint(model, checkpoint_path, *args, **kwargs)
        load_weights(model, checkpoint_path)
        model.update_pretrained_cfg()

    load_checkpoint_into.clipood_zoo = True
    timm_factory.load_model_config_from_hf = load_model_config_from_hf
    timm_factory.load_checkpoint = load_checkpoint_into


def resolve_weights(
    cfg: Any, checkpoint_path: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None,
) -> Tuple[Path, Optional[str]]:
    """(weights file, the sha256 it must have) for a model: ``checkpoint_path``, else the cfg's ``file``, else its
    ``hf_hub_id``.

    Only the registry's own files carry an expected sha256: a user's ``checkpoint_path`` or hub repo is
    checked against the sha256 its own config.json records (see :func:`load_weights`), if any.
    """
    if checkpoint_path is not None:
        return checkpoint_file(checkpoint_path), None
    path = _local_file(cfg) if cfg.file else None
    if path is None and cfg.hf_hub_id:
        path = hub_file(cfg.hf_hub_id, cfg.hf_hub_filename or WEIGHTS_NAME, cache_dir)
    if path is None and cfg.file:
        tried = ", ".join(str(d / cfg.file) for d in weights_dirs()) or "no folder: CLIPOOD_WEIGHTS_DIR is unset"
        raise WeightsNotFoundError(
            f"Weights {cfg.file!r} of {cfg.architecture} not found (looked in: {tried}); a wheel install ships no "
            "weights: set CLIPOOD_WEIGHTS_DIR to a folder holding them (a clipood-zoo checkout's weights/), pass "
            "checkpoint_path=<file or save_pretrained folder>, or load a hub copy with create_model('hf-hub:ORG/NAME')."
        )
    if path is None:
        how = f"\n  {cfg.train_command}" if getattr(cfg, "train_command", None) else ""
        raise WeightsNotFoundError(
            f"{cfg.architecture} has no published weights (its cfg has no file or hf_hub_id). Make them by "
            f"fine-tuning:{how}\nthen load them with create_model('{cfg.architecture}', "
            "checkpoint_path='<output>/model.safetensors'). pretrained=False builds the untrained model."
        )
    return path, getattr(cfg, "sha256", None)


_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip container; a raw pickle (protocol >= 2)


def load_error_summary(e: BaseException) -> str:
    """One line of a torch.load error: the refused global when weights_only names one, else its first line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    line = next((x for x in lines if "GLOBAL" in x or "global" in x), lines[0] if lines else "empty or truncated file")
    return f"{type(e).__name__}: {line[:200]}"


def state_dict_from_bytes(data: bytes, path: PathLike, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """Tensors from the bytes of ``path`` (read once by the caller, so that what is hashed is what is loaded):
    safetensors; a pickle only with ``allow_pickle`` (and then ``torch.load(weights_only=True)``)."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeWeightsError(
                f"{path} is a pickle ({path.suffix}); loading it could run arbitrary code, so it is refused. "
                "Convert it to safetensors (clipood_zoo.hub.save_pretrained or safetensors.torch.save_file), "
                "or pass allow_pickle=True if you trust the file."
            )
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError (code or classes weights_only refuses), EOFError, zip errors ...
            raise UnsafeWeightsError(
                f"{path} cannot be read with torch.load(weights_only=True) ({load_error_summary(e)}). It is empty, "
                "truncated, or "
                "a pickle that holds more than tensors (which is never unpickled here, even with allow_pickle=True). "
                "Re-export the weights with safetensors.torch.save_file from a session where you trust the file."
            ) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; pass a file "
                               "saved from model.state_dict().")
        return state
    try:
        return safetensors_load(data)
    except (SafetensorError, ValueError) as e:
        if data.startswith(_PICKLE_MAGIC):
            raise UnsafeWeightsError(
                f"{path} is named {path.suffix or 'without a suffix'} but holds a pickle (torch.save), not "
                "safetensors; it was not unpickled. Convert it to safetensors, or rename it to .pth and pass "
                "allow_pickle=True if you trust the file."
            ) from None
        what = "empty" if not data else "truncated or corrupted"
        raise WeightsError(
            f"{path} is not a readable safetensors file ({e}); it is {what}. Fetch or export it again."
        ) from e


def canonical_safetensors(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes that depend only on the tensors and metadata: the same model always gives the same
    file and sha256. safetensors itself writes ``__metadata__`` in hash-map order, which changes from process
    to process; its header is re-written here with the metadata keys sorted (tensor offsets are relative to the
    end of the header, so they stay valid).
    """
    data = safetensors_save(dict(state_dict), metadata=dict(metadata))
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text = text.ljust(-(-len(text) // 8) * 8, b" ")  # safetensors pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + data[8 + header_len:]


def _read_config(weights_file: Path) -> Dict[str, Any]:
    config_file = weights_file.parent / CONFIG_NAME
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{config_file} is not valid JSON ({e}); re-export it with save_pretrained() "
                           f"or delete it to load {weights_file.name} without its class names.") from None
    cfg = config.get("pretrained_cfg", {}) if isinstance(config, dict) else None
    names = cfg.get("label_names") if isinstance(cfg, dict) else None
    if cfg is None or not isinstance(cfg, dict) or not (
            names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))):
        raise WeightsError(f"{config_file} is not a save_pretrained() config (expected an object whose "
                           "'pretrained_cfg.label_names' is a list of strings); re-export it with save_pretrained() "
                           f"or delete it to load {weights_file.name} without its class names.")
    return config


def _check_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape
    ]
    wrong_shape += [
        f"{k}: file dtype {state_dict[k].dtype} vs model {v.dtype}" for k, v in expected.items()
        if k in state_dict and state_dict[k].is_floating_point() != v.is_floating_point()
    ]
    if missing or unexpected or wrong_shape:
        def few(items: List[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = [f"{name}: {few(items)}" for name, items in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if items]
        raise WeightsMismatchError(
            f"{path} does not fit {type(model).__name__} ({'; '.join(problems)}). Is it the weights of another "
            "architecture? Create the model whose name matches the file's config.json."
        )
    not_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not_finite:
        raise WeightsError(
            f"{path} holds NaN/inf values in {len(not_finite)} tensor(s) ({', '.join(not_finite[:5])}); the run that "
            "wrote it diverged or the file is corrupted. Use an earlier checkpoint or export it again."
        )


def _config_clip_arch(config: Mapping[str, Any]) -> Optional[str]:
    """The open_clip architecture a config.json says its tensors are: its ``clip_arch``, else its registry name's."""
    arch = config.get("pretrained_cfg", {}).get("clip_arch")
    name = config.get("architecture")
    if not arch and isinstance(name, str) and is_model(name):
        arch = get_pretrained_cfg(name).clip_arch
    return arch or None


def _check_config_matches(model: nn.Module, config: Mapping[str, Any], path: Path) -> None:
    """A config.json is only trusted where it agrees with the tensors: one class name per head row, and the
    architecture the tensors (which fit ``model``) were made for."""
    config_file = path.parent / CONFIG_NAME
    names = config.get("pretrained_cfg", {}).get("label_names")
    if names is not None and hasattr(model, "num_classes") and len(names) != model.num_classes:
        raise WeightsMismatchError(
            f"{config_file} lists {len(names)} label_names but {path.name}'s head has {model.num_classes} rows; "
            "the config belongs to other weights. Re-export the folder with save_pretrained() or delete config.json "
            "to load the weights without class names."
        )
    model_arch = (getattr(model, "pretrained_cfg", None) or {}).get("clip_arch")
    config_arch = _config_clip_arch(config)
    if model_arch and config_arch and model_arch != config_arch:
        raise WeightsMismatchError(
            f"{config_file} says its weights are {config.get('architecture')!r} (open_clip {config_arch}) but "
            f"{path.name} holds {model_arch} tensors; the config belongs to other weights. Re-export the folder "
            "with save_pretrained() or delete config.json."
        )


def fit_position_embedding(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Weights of another input size fit a tower built for ``img_size``: open_clip's own resampling, in fp32."""
    key = "visual.positional_embedding"
    target = model.state_dict().get(key)
    if key in state_dict and target is not None and state_dict[key].shape != target.shape:
        state_dict[key] = state_dict[key].float()
        resize_pos_embed(state_dict, model)


def load_weights(model: nn.Module, path: PathLike, allow_pickle: bool = False,
                 expected_sha256: Optional[str] = None) -> Dict[str, str]:
    """Load a weights file (or a save_pretrained folder) into a ClipoodClassifier, with the file's classes.

    Returns the record of what was loaded, ``{'file': absolute path, 'sha256': of the bytes parsed}``, for
    the run records that say what a model started from.

    The file is read once: the sha256 checked (``expected_sha256``, the registry's, and the one a
    save_pretrained config.json beside it records) is that of the very bytes parsed. A fine-tuned model may
    classify a different class set than its registry entry (its head is just frozen text embeddings), so the
    head is resized to the file's ``head.weight`` and the class names are read from the ``config.json``.
    """
    path = checkpoint_file(path)
    config = _read_config(path)
    data = path.read_bytes()
    state_dict = state_dict_from_bytes(data, path, allow_pickle=allow_pickle)  # a truncated file says so first
    verify_sha256(data, expected_sha256, path)
    if path.name == WEIGHTS_NAME and isinstance(config.get("sha256"), str):
        verify_sha256(data, config["sha256"], path)  # save_pretrained recorded it: catches flipped bits
    loaded = {"file": str(path.resolve()), "sha256": hashlib.sha256(data).hexdigest()}
    del data
    fit_position_embedding(model, state_dict)
    head_weight = state_dict.get("head.weight")
    if head_weight is not None and hasattr(model, "reset_classifier") and head_weight.shape[0] != model.num_classes:
        model.reset_classifier(head_weight.shape[0])
    _check_fits(model, state_dict, path)
    _check_config_matches(model, config, path)
    model.load_state_dict(state_dict, strict=True)
    label_names = config.get("pretrained_cfg", {}).get("label_names")
    if label_names is not None and hasattr(model, "class_names"):
        model.class_names = list(label_names)
    return loaded


def save_pretrained(
    model: nn.Module,
    save_dir: PathLike,
    model_name: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    card_sections: Optional[Mapping[str, str]] = None,
    extra_config: Optional[Mapping[str, Any]] = None,
    state_dict: Optional[Mapping[str, torch.Tensor]] = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``save_dir``; returns the weights path.

    ``dtype`` (e.g. ``torch.float16``) casts floating tensors for a smaller file. ``state_dict`` is written in
    place of ``model.state_dict()`` (the whole weights of a model sharded with FSDP, gathered beforehand). Each file is written
    atomically, weights first, so a folder never holds a config describing weights that are not there.
    """
    save_dir = Path(save_dir)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    model_name = model_name or cfg.get("architecture") or type(model).__name__
    state_dict = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in (model.state_dict() if state_dict is None else state_dict).items()
    }
    weights_path = save_dir / WEIGHTS_NAME
    data = canonical_safetensors(state_dict, {"format": "pt", "architecture": model_name})
    write_bytes_atomic(weights_path, data)
    digest = hashlib.sha256(data).hexdigest()

    for key in WEIGHTS_SOURCE_FIELDS:
        cfg.pop(key, None)  # where the *registry's* weights live (or what they are mixed from) says nothing of this folder
    cfg.update(architecture=model_name, num_classes=getattr(model, "num_classes", cfg.get("num_classes")))
    if getattr(model, "class_names", None):
        cfg["label_names"] = list(model.class_names)
    config = {"architecture": model_name, "sha256": digest, "pretrained_cfg": cfg, **_model_args(model, model_name),
              **dict(extra_config or {})}
    write_text_atomic(save_dir / CONFIG_NAME, json.dumps(config, indent=2, default=str) + "\n")
    write_text_atomic(save_dir / CARD_NAME, model_card(model_name, cfg, digest, card_sections))
    return weights_path


def _model_args(model: nn.Module, model_name: str) -> Dict[str, Any]:
    """timm's ``model_args`` of a config.json: what rebuilds this model's tower where it differs from its registered
    name's (an ``img_size``), so that an ``hf-hub:``/``local-dir:`` id builds the tower the weights are for."""
    size = getattr(model, "image_size", None)
    if size is None or not is_model(model_name) or get_pretrained_cfg(model_name).input_size[-1] == size:
        return {}
    return {"model_args": {"img_size": size}}


def model_card(model_name: str, cfg: Mapping[str, Any], digest: str, sections: Optional[Mapping[str, str]],
               load: Optional[str] = None) -> str:
    """A Hugging Face style model card: what the model is, how to load it (``load``: the create_model call, by
    default from this folder), and what the caller adds."""
    load = load or f"clipood_zoo.create_model('{model_name}', checkpoint_path='path/to/this/folder')"
    lines = [
        "---", "library_name: clipood-zoo", "tags: [image-classification, clip, domain-generalization, clipood]",
        f"license: {cfg.get('license') or 'apache-2.0'}", "---", f"# {model_name}", "",
        cfg.get("description") or "A CLIP image encoder fine-tuned with CLIPood; class text embeddings frozen.", "",
        "## Model details",
        f"- open_clip architecture: {cfg.get('clip_arch', 'n/a')}",
        f"- classes: {cfg.get('num_classes')}",
        f"- dataset: {cfg.get('dataset') or 'n/a'}; held-out domain: {cfg.get('heldout_domain') or 'n/a'}",
        f"- input size: {cfg.get('input_size')}; mean {cfg.get('mean')}; std {cfg.get('std')}",
        f"- weights sha256: `{digest}`", "",
        "## Use", "```python", "import clipood_zoo",
        f"model = {load}", "```", "",
    ]
    if cfg.get("recipe"):
        lines += ["## Recipe", *(f"- {k}: {v}" for k, v in cfg["recipe"].items()), ""]
    for title, body in (sections or {}).items():
        lines += [f"## {title}", body.rstrip(), ""]
    return "\n".join(lines)


def push_to_hub(model: nn.Module, repo_id: str, model_name: Optional[str] = None, private: bool = False,
                commit_message: str = "Add clipood-zoo weights", token: Optional[str] = None, **save_kwargs: Any) -> str:
    """``save_pretrained`` into a temporary folder and upload it with huggingface_hub; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, model_name=model_name, **save_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message))

