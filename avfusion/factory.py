"""Model names -> models; self-describing checkpoints (``config.json`` + ``model.safetensors``).

Named architectures are YAML files in ``configs/models/`` (the file name is the model name).
Extra search folders: the ``AVFUSION_MODEL_CONFIGS`` environment variable (``os.pathsep``-separated).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig, from_dict, load_yaml, merge
from .model import AVModel

_REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "models"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _config_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("AVFUSION_MODEL_CONFIGS", "").split(os.pathsep) if p]
    return extra + [_REPO_CONFIGS]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    names = set()
    for d in _config_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def get_model_config(name_or_path: str | Path, **overrides: Any) -> ModelConfig:
    """Resolve a model name, a YAML file or an exported folder into a :class:`ModelConfig`.

    ``overrides`` are merged into the config dict, nested: ``fusion={"n_layers": 2}``.
    """
    path = Path(name_or_path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        data = json.loads((path / CONFIG_NAME).read_text())["model"]
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        data = load_yaml(path)
    else:
        for d in _config_dirs():
            f = d / f"{name_or_path}.yaml"
            if f.is_file():
                data = load_yaml(f)
                data.setdefault("name", str(name_or_path))
                break
        else:
            raise ValueError(f"unknown model {str(name_or_path)!r}: known models are {list_models()}, "
                             "or pass a YAML file or a folder written by save_pretrained")
    data = merge(data, overrides)
    return from_dict(ModelConfig, data)


def create_model(name_or_path: str | Path | ModelConfig, **overrides: Any) -> AVModel:
    """Build a model by name (``"tiny"``, ``"afew_emonet_video"``...), YAML file or ModelConfig.

    A folder written by :func:`save_pretrained` is loaded with its weights (:func:`from_pretrained`).
    """
    if isinstance(name_or_path, ModelConfig):
        cfg = from_dict(ModelConfig, merge(dataclasses.asdict(name_or_path), overrides))
        return AVModel(cfg)
    path = Path(name_or_path)
    if path.is_dir() and (path / WEIGHTS_NAME).is_file():
        return from_pretrained(path, **overrides)
    return AVModel(get_model_config(name_or_path, **overrides))


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


def save_pretrained(model: AVModel, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write ``config.json`` (architecture + ``extra`` info) and ``model.safetensors``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _self_contained_config(model)
    from . import __version__

    meta = {"avfusion_version": __version__, "model": dataclasses.asdict(cfg), **(extra or {})}
    tmp = out / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    wtmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(wtmp), metadata={"format": "pt"})
    os.replace(wtmp, out / WEIGHTS_NAME)
    os.replace(tmp, out / CONFIG_NAME)
    return out


def from_pretrained(path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any) -> AVModel:
    """Load a folder written by :func:`save_pretrained` (strictly: every key must match)."""
    path = Path(path)
    cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: expected a folder written by save_pretrained")
    model = AVModel(get_model_config(path, **overrides))
    state = load_file(str(w_file), device=str(map_location))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{w_file} does not match {cfg_file}: {e}") from None
    return model
