"""Model names -> models; self-describing checkpoints (``config.json`` + ``model.safetensors``).

One function, :func:`resolve_model`, decides what a model string means: an exported folder
(``save_pretrained``), a YAML file, or the name of a shipped architecture (``configs/models/``,
installed with the package; extra folders in ``AVFUSION_MODEL_CONFIGS``). Every caller goes through it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .config import ModelConfig, check_serving, check_types, find_config, from_dict, list_configs, load_yaml, merge
from .files import atomic_path, write_text_atomic
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
    """Decide whether ``name_or_path`` is an exported folder, a model YAML or a model name.

    A registered name always means that model: a folder of the same name in the working directory
    is reached as ``./name``."""
    text = str(name_or_path)
    if "/" not in text and "\\" not in text and not text.startswith("."):
        found = find_config(text, "models")
        if found is not None:
            return ModelSource("name", found, text)
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
        data = dict(meta["model"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{f}: not a readable avfusion model config ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); re-export the model") from None
    if "serving" not in data:
        data["serving"] = _legacy_serving(folder)
    return data


_warned_legacy: set[str] = set()


def _legacy_serving(folder: Path) -> dict:
    """The serving spec of a folder exported before models carried one: what the training
    experiment beside it (``experiment.yaml``) says, else the defaults; one warning per folder."""
    import warnings

    import yaml

    spec: dict[str, Any] = {}
    exp = folder / "experiment.yaml"
    if exp.is_file():
        try:
            d = (yaml.safe_load(exp.read_text()) or {}).get("data") or {}
        except (yaml.YAMLError, AttributeError, OSError):
            d = {}
        for key, field in (("clip_len", "clip_len"), ("face_margin", "face_margin"),
                           ("face_smoothing", "face_smoothing")):
            if d.get(key) is not None:
                spec[field] = d[key]
        if d.get("hsv"):
            spec["colour"] = "hsv"
    if str(folder) not in _warned_legacy:
        _warned_legacy.add(str(folder))
        said = f"from {exp.name}: {spec}" if spec else "the defaults (window 32 frames, RGB crops, margin 0.25)"
        warnings.warn(f"{folder / CONFIG_NAME}: exported before models carried their serving spec; using "
                      f"{said}. Export it again (save_pretrained) to record it", RuntimeWarning, stacklevel=3)
    return spec


def check_model_config(cfg: ModelConfig) -> list[str]:
    """Problems of a model config as a whole, as phrases naming the key: types, encoders the mode
    needs and their names, positive sizes and depths, attention heads that divide the width,
    fractions in range, the serving spec. (Checked when the config is read, so a bad value stops
    before any work with the file named, not as an assertion deep inside PyTorch.)"""
    from .encoders import AUDIO_ENCODERS, VIDEO_ENCODERS
    from .fusion import DESIGNS, GATES, TEMPORAL
    from .model import MODES

    problems = check_types(cfg, skip=("serving",))
    if problems:
        return problems
    if cfg.mode not in MODES:
        return [f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}"]
    if cfg.mode in ("av", "video"):
        v = cfg.video
        if v is None:
            problems.append(f"mode {cfg.mode!r} needs a video encoder (video: ...)")
        else:
            if v.name not in (*VIDEO_ENCODERS, "features"):
                problems.append(f"video.name must be one of {', '.join(sorted(VIDEO_ENCODERS) + ['features'])}, "
                                f"got {v.name!r}")
            for key in ("width", "num_modules", "n_blocks", "dim"):
                if getattr(v, key) < 1:
                    problems.append(f"video.{key} must be >= 1, got {getattr(v, key)}")
            if v.image_size < 0:
                problems.append(f"video.image_size must be >= 0 (0: the encoder's default), got {v.image_size}")
            if v.pool not in ("cls", "avg"):
                problems.append(f"video.pool must be 'cls' or 'avg', got {v.pool!r}")
    if cfg.mode in ("av", "audio"):
        a = cfg.audio
        if a is None:
            problems.append(f"mode {cfg.mode!r} needs an audio encoder (audio: ...)")
        else:
            if a.name not in (*AUDIO_ENCODERS, "features"):
                problems.append(f"audio.name must be one of {', '.join(sorted(AUDIO_ENCODERS) + ['features'])}, "
                                f"got {a.name!r}")
            for key in ("dim", "n_mels"):
                if getattr(a, key) < 1:
                    problems.append(f"audio.{key} must be >= 1, got {getattr(a, key)}")
            if not (isinstance(a.layer, int) and not isinstance(a.layer, bool)) and a.layer not in ("weighted", "output"):
                problems.append(f"audio.layer must be a layer index, 'weighted' or 'output', got {a.layer!r}")
    f = cfg.fusion
    if f is not None:
        for key, low in (("d_model", 1), ("n_layers", 1), ("n_heads", 1), ("ff_mult", 1), ("max_len", 1),
                         ("joint_layers", 0)):
            if getattr(f, key) < low:
                problems.append(f"fusion.{key} must be >= {low}, got {getattr(f, key)}")
        for key, hi in (("dropout", 1.0), ("modality_dropout", 1.0)):
            if not 0.0 <= getattr(f, key) <= hi or (key == "dropout" and f.dropout == 1.0):
                problems.append(f"fusion.{key} must be in [0, 1{')' if key == 'dropout' else ']'}, got {getattr(f, key)}")
        if f.aux_weight < 0:
            problems.append(f"fusion.aux_weight must be >= 0, got {f.aux_weight}")
        for key, allowed in (("design", DESIGNS), ("temporal", TEMPORAL), ("gate", GATES),
                             ("input_norm", ("layer", "none"))):
            if getattr(f, key) not in allowed:
                problems.append(f"fusion.{key} must be one of {', '.join(allowed)}, got {getattr(f, key)!r}")
        if f.temporal == "transformer" and f.n_heads >= 1 and f.d_model >= 1 and f.d_model % f.n_heads:
            problems.append(f"fusion.n_heads ({f.n_heads}) must divide fusion.d_model ({f.d_model}): each "
                            "attention head takes d_model / n_heads of the width")
        if f.temporal in ("gru", "lstm") and f.bidirectional and f.d_model % 2:
            problems.append(f"fusion.d_model must be even for a bidirectional {f.temporal}, got {f.d_model}")
    return problems + check_serving(cfg.serving)


def get_model_config(name_or_path: PathLike, overrides_from: str = "overrides", **overrides: Any) -> ModelConfig:
    """Resolve a model name, a YAML file or an exported folder into a :class:`ModelConfig`,
    checked as a whole (:func:`check_model_config`); an error names the file, or ``overrides_from``
    when the overrides brought the problem.

    ``overrides`` are merged into the config dict, nested: ``fusion={"n_layers": 2}``.
    """
    src = resolve_model(name_or_path)
    if src.kind == "exported":
        data = _read_exported_config(src.path)
    else:
        data = load_yaml(src.path)
        if src.kind == "name":
            data.setdefault("name", src.name)
    where = src.path / CONFIG_NAME if src.kind == "exported" else src.path
    cfg, problem = _checked(data)
    if problem:
        raise ValueError(f"{where}: {problem}")
    if overrides:
        cfg, problem = _checked(merge(data, overrides))
        if problem:  # the file alone is fine: the overrides brought it
            raise ValueError(f"{overrides_from} of model {src.name if src.kind == 'name' else where}: {problem}")
    return cfg


def _checked(data: dict) -> tuple[Optional[ModelConfig], str]:
    """A model config dict as a ModelConfig and its problems as one phrase ('' when none)."""
    try:
        cfg = from_dict(ModelConfig, data)
    except (TypeError, ValueError) as e:
        return None, str(e)
    return cfg, "; ".join(check_model_config(cfg))


def create_model(name_or_path: Union[PathLike, ModelConfig], checkpoint: Optional[PathLike] = None,
                 **overrides: Any) -> AVModel:
    """Build a model by name (``"tiny"``, ``"afew_emonet_video"``...), YAML file or ModelConfig.

    ``checkpoint``: the weights of its one pretrained encoder (:func:`set_checkpoint`); without it
    the encoders start from random weights (training). A folder written by :func:`save_pretrained`
    is loaded with its weights (:func:`from_pretrained`).
    """
    if isinstance(name_or_path, ModelConfig):
        cfg = from_dict(ModelConfig, merge(dataclasses.asdict(name_or_path), overrides))
        problems = check_model_config(cfg)
        if problems:
            raise ValueError(f"model config{f' {cfg.name}' if cfg.name else ''}: {'; '.join(problems)}")
    elif resolve_model(name_or_path).kind == "exported":
        if checkpoint is not None:
            raise ValueError(f"{name_or_path} is an exported model with its own weights: a checkpoint applies "
                             "only to a named architecture")
        return from_pretrained(name_or_path, **overrides)
    else:
        cfg = get_model_config(name_or_path, **overrides)
    if checkpoint is not None:
        set_checkpoint(cfg, checkpoint, str(getattr(name_or_path, "name", name_or_path)))
    return AVModel(cfg)


def set_checkpoint(cfg: ModelConfig, checkpoint: PathLike, name: str) -> None:
    """Point the model's one pretrained encoder at ``checkpoint``: the video encoder's weight file
    (``emonet_8.pth``; the face expert's ``.safetensors``, ``.pt`` or ``.onnx``), or for a voice-only
    model its folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``)."""
    if cfg.mode in ("av", "video") and cfg.video is not None:
        if cfg.mode == "av" and cfg.audio is not None and cfg.audio.weights:
            raise ValueError(f"{name}: two pretrained encoders, one checkpoint: set video.checkpoint and "
                             "audio.path (--set), or download both")
        cfg.video.checkpoint = str(checkpoint)
    elif cfg.mode == "audio" and cfg.audio is not None:
        cfg.audio.path = str(checkpoint)
    else:
        raise ValueError(f"{name}: this model has no pretrained encoder a checkpoint applies to")


def load_model(name_or_path: PathLike, checkpoint: Optional[PathLike] = None, overrides_from: str = "overrides",
               **overrides: Any) -> AVModel:
    """A model ready for inference (eval mode): an exported folder with its weights, or a named /
    YAML architecture with ``checkpoint`` as its pretrained encoder's weights (``emonet_8`` +
    ``emonet_8.pth``: EmoNet frame by frame, the zero-shot setting). A named pretrained model
    without ``checkpoint`` finds its downloaded weights, or stops with one line naming
    ``avfusion download``: it never runs on random weights."""
    src = resolve_model(name_or_path)
    if src.kind == "exported":
        if checkpoint is not None:
            raise ValueError(f"{src.path} is an exported model with its own weights: a checkpoint applies "
                             "only to a named architecture")
        return from_pretrained(src.path, overrides_from=overrides_from, **overrides)
    cfg = get_model_config(name_or_path, overrides_from, **overrides)
    if checkpoint is not None:
        set_checkpoint(cfg, checkpoint, src.name)
    else:
        _find_weights(cfg, src.name)
    return AVModel(cfg).eval()


def _find_weights(cfg: ModelConfig, name: str) -> None:
    """Point a named pretrained model's encoders at their downloaded weights (``weights:`` in its
    config names the source); a missing file is a one-line error naming ``avfusion download``."""
    if cfg.mode in ("av", "video") and cfg.video is not None and cfg.video.weights and not cfg.video.checkpoint:
        from .sources import require

        cfg.video.checkpoint = str(require(cfg.video.weights, name))
    if cfg.mode in ("av", "audio") and cfg.audio is not None and cfg.audio.weights and not cfg.audio.path:
        from .sources import require

        cfg.audio.path = str(require(cfg.audio.weights, name))


def is_pretrained_name(name_or_path: PathLike) -> bool:
    """Whether a model string names a shipped model that serves with downloaded weights."""
    try:
        src = resolve_model(name_or_path)
    except (ValueError, FileNotFoundError):
        return False
    if src.kind == "exported":
        return False
    cfg = get_model_config(name_or_path)
    return bool((cfg.video is not None and cfg.video.weights) or (cfg.audio is not None and cfg.audio.weights))


def _self_contained_config(model: AVModel) -> ModelConfig:
    """The config with encoder weight sources removed: the exported weights carry them."""
    cfg = copy.deepcopy(model.cfg)
    cfg.serving = model.serving  # every field filled: the folder needs nothing else at serving time
    if cfg.video is not None:
        cfg.video.checkpoint = None
        cfg.video.weights = None
    if cfg.audio is not None:
        cfg.audio.weights = None
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
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Weights first, config last: a folder with a config.json is complete.
    with atomic_path(out / WEIGHTS_NAME) as wtmp:
        save_file(state, str(wtmp), metadata={"format": "pt"})
    write_text_atomic(out / CONFIG_NAME, json.dumps(meta, indent=2))
    return out


def from_pretrained(path: PathLike, map_location: Union[str, torch.device] = "cpu", overrides_from: str = "overrides",
                    **overrides: Any) -> AVModel:
    """Load a folder written by :func:`save_pretrained` (strictly), in eval mode for inference."""
    path = Path(path)
    cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: expected a folder written by save_pretrained")
    model = AVModel(get_model_config(path, overrides_from, **overrides))
    try:
        load_strict(model, w_file, family="avfusion model weight")
    except ValueError as e:
        raise ValueError(f"{e} (config: {cfg_file})") from None
    # Its serving spec is what it was trained on: data settings do not change it at serving time.
    model.serving_locked = True
    return model.to(map_location).eval()


__all__ = ["ModelSource", "resolve_model", "is_pretrained_name", "check_model_config", "set_checkpoint", "list_models", "get_model_config", "create_model", "load_model",
           "save_pretrained", "from_pretrained", "CONFIG_NAME", "WEIGHTS_NAME"]
