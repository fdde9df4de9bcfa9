"""Model names -> models; self-describing checkpoints (``config.json`` + ``model.safetensors``).

One function, :func:`resolve_model`, decides what a model string means: an exported folder
(``save_pretrained``), a YAML file, or the name of a shipped architecture (``configs/models/``,
installed with the package; extra folders in ``AVFUSION_MODEL_CONFIGS``). Every caller goes through it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .config import ModelConfig, find_config, from_dict, list_configs, load_yaml, merge
from .model import AVModel
from .version import __version__
from .weights import load_strict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PathLike = Union[str, Path]


@dataclass(frozen=True)
class ModelSource:
    """What a model string means: ``kind`` is "exported", "yaml" or "name"; ``path`` its file/folder."""

    kind: str
    path: Path
    name: str


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list_configs("models")


def resolve_model(name_or_path: PathLike) -> ModelSource:
    """Decide whether ``name_or_path`` is an exported folder, a model YAML or a model name."""
    path = Path(name_or_path)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            return ModelSource("exported", path, path.name)
        raise FileNotFoundError(f"{path / CONFIG_NAME} not found: expected a folder written by save_pretrained")
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {path}")
        return ModelSource("yaml", path, path.stem)
    found = find_config(str(name_or_path), "models")
    if found is None:
        raise ValueError(f"unknown model {str(name_or_path)!r}: known models are {list_models()}, "
                         "or pass a YAML file or a folder written by save_pretrained")
    return ModelSource("name", found, str(name_or_path))


def _read_exported_config(folder: Path) -> dict:
    f = folder / CONFIG_NAME
    try:
        meta = json.loads(f.read_text())
        return dict(meta["model"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{f}: not a readable avfusion model config ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); re-export the model") from None


def get_model_config(name_or_path: PathLike, **overrides: Any) -> ModelConfig:
    """Resolve a model name, a YAML file or an exported folder into a :class:`ModelConfig`.

    ``overrides`` are merged into the config dict, nested: ``fusion={"n_layers": 2}``.
    """
    src = resolve_model(name_or_path)
    if src.kind == "exported":
        data = _read_exported_config(src.path)
    else:
        data = load_yaml(src.path)
        if src.kind == "name":
            data.setdefault("name", src.name)
    data = merge(data, overrides)
    try:
        return from_dict(ModelConfig, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{src.path}: {e}") from None


def create_model(name_or_path: Union[PathLike, ModelConfig], **overrides: Any) -> AVModel:
    """Build a model by name (``"tiny"``, ``"afew_emonet_video"``...), YAML file or ModelConfig.

    A folder written by :func:`save_pretrained` is loaded with its weights (:func:`from_pretrained`).
    """
    if isinstance(name_or_path, ModelConfig):
        cfg = from_dict(ModelConfig, merge(dataclasses.asdict(name_or_path), overrides))
        return AVModel(cfg)
    if resolve_model(name_or_path).kind == "exported":
        return from_pretrained(name_or_path, **overrides)
    return AVModel(get_model_config(name_or_path, **overrides))


def load_model(name_or_path: PathLike, checkpoint: Optional[PathLike] = None, **overrides: Any) -> AVModel:
    """A model ready for inference (eval mode): an exported folder with its weights, or a named /
    YAML architecture with ``checkpoint`` as its video encoder's weight file (``emonet_8`` +
    ``emonet_8.pth``: EmoNet frame by frame, the zero-shot setting)."""
    src = resolve_model(name_or_path)
    if src.kind == "exported":
        if checkpoint is not None:
            raise ValueError(f"{src.path} is an exported model with its own weights: a checkpoint applies "
                             "only to a named architecture")
        return from_pretrained(src.path, **overrides)
    if checkpoint is not None:
        overrides = dict(overrides)
        overrides["video"] = {**dict(overrides.get("video") or {}), "checkpoint": str(checkpoint)}
    return create_model(name_or_path, **overrides).eval()


def _self_contained_config(model: AVModel) -> ModelConfig:
    """The config with encoder weight sources removed: the exported weights carry them."""
    cfg = copy.deepcopy(model.cfg)
    if cfg.video is not None:
        cfg.video.checkpoint = None
    if cfg.audio is not None and model.audio_encoder is not None:
        hf = getattr(model.audio_encoder, "hf_config_dict", None)
        if cfg.audio.path is not None:
            if hf is None:
                raise ValueError("audio encoder cannot describe its architecture for export")
            cfg.audio.hf_config = hf()
        cfg.audio.path = None
    return cfg


def save_pretrained(model: AVModel, out_dir: PathLike, extra: dict | None = None) -> Path:
    """Write ``config.json`` (architecture + ``extra`` info) and ``model.safetensors``, each whole."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _self_contained_config(model)
    meta = {"avfusion_version": __version__, "model": dataclasses.asdict(cfg), **(extra or {})}
    tmp = out / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    wtmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(wtmp), metadata={"format": "pt"})
    os.replace(wtmp, out / WEIGHTS_NAME)
    os.replace(tmp, out / CONFIG_NAME)
    return out


def from_pretrained(path: PathLike, map_location: Union[str, torch.device] = "cpu", **overrides: Any) -> AVModel:
    """Load a folder written by :func:`save_pretrained` (strictly), in eval mode for inference."""
    path = Path(path)
    cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: expected a folder written by save_pretrained")
    model = AVModel(get_model_config(path, **overrides))
    try:
        load_strict(model, w_file, family="avfusion model weight")
    except ValueError as e:
        raise ValueError(f"{e} (config: {cfg_file})") from None
    return model.to(map_location).eval()


__all__ = ["ModelSource", "resolve_model", "list_models", "get_model_config", "create_model", "load_model",
           "save_pretrained", "from_pretrained", "CONFIG_NAME", "WEIGHTS_NAME"]
