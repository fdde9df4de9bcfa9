"""Typed configuration: encoders, fusion, the whole model, data and training.

YAML files set these; the command line overrides single fields (``key=value``). Dicts become
dataclasses at the boundary (:func:`from_dict`), so the rest of the code reads attributes.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Type, TypeVar

import yaml

T = TypeVar("T")


@dataclass
class VideoEncoderConfig:
    # "emonet" (face-alignment trunk + emotion head), "mae_vit" (timm ViT with MAE weights), "timm"
    # (any timm image model named by `arch`, e.g. resnet50: its pooled feature per crop), "hog"
    # (weight-free HOG descriptor: the tiny demo model), "enet_b0_va" (the published face expert
    # enet_b0_8_va_mtl: its own per-frame valence/arousal, or its 1280-wide pooled feature;
    # `checkpoint`: its state dict, pickled model or ONNX file), or "features" (no network: the model
    # reads cached per-frame features of width `dim`).
    name: str = "emonet"
    # EmoNet: 8 or 5 expression classes, as the official emonet_8.pth / emonet_5.pth.
    n_expression: int = 8
    # EmoNet widths; the official checkpoints use 256 (tests use tiny widths to stay fast).
    width: int = 256
    # EmoNet: number of stacked hourglasses (official: 2) and emotion-head blocks (official: 4).
    num_modules: int = 2
    n_blocks: int = 4
    # timm architecture for "mae_vit" (vit_base_patch16_224, vit_large_patch16_224, ...) and "timm"
    # (resnet50, efficientnet_b0, ...).
    arch: str = "vit_base_patch16_224"
    # MAE-ViT pooling of the token sequence into one per-frame feature: "cls" or "avg" (MAE's
    # fine-tuning recipe uses global average pooling of the patch tokens).
    pool: str = "avg"
    # timm keyword overrides (tiny test models: embed_dim, depth, num_heads, img_size ...).
    timm_kwargs: dict = field(default_factory=dict)
    # Weight file (emonet_8.pth, mae_pretrain_vit_base.pth, ...) or None for random init.
    checkpoint: Optional[str] = None
    # Name of the weight source (avfusion.sources: `avfusion download NAME`) a named pretrained
    # model serves with; inference without weights is an error naming the download, never random.
    weights: Optional[str] = None
    # Frozen encoders get no gradients and stay in eval() (BatchNorm statistics, dropout).
    frozen: bool = True
    # EmoNet's official evaluation averages predictions with those of the mirrored face.
    flip_average: bool = False
    # Width of cached features when name == "features".
    dim: int = 256
    # Input side for "hog" (0 = the encoder's default, 64 px).
    image_size: int = 0


@dataclass
class AudioEncoderConfig:
    # "wav2vec2" (transformers Wav2Vec2Model), "w2v2_msp_dim" (the published voice expert: wav2vec2 +
    # its arousal/dominance/valence head; `hf_config` overrides its published architecture), "logmel"
    # (weight-free log-mel energies: the tiny demo model) or "features" (cached per-frame features of
    # width `dim`).
    name: str = "wav2vec2"
    # Local folder with config.json + model.safetensors (from_pretrained), or None: build from
    # `hf_config` (random weights; tiny configs for tests and the demo).
    path: Optional[str] = None
    # Wav2Vec2Config overrides when building from a config.
    hf_config: dict = field(default_factory=dict)
    # Weight source name (avfusion.sources), as for the video encoder.
    weights: Optional[str] = None
    # Which hidden state to use: an index into hidden_states (0 = CNN features after projection),
    # -1 for the last layer, or "weighted" for a learned softmax-weighted sum of all layers;
    # "w2v2_msp_dim" also takes "output": last_hidden_state, after the final LayerNorm that
    # hidden_states[-1] lacks (the sequence its head pools).
    layer: Any = -1
    frozen: bool = True
    # Width of cached features when name == "features".
    dim: int = 768
    # Mel bands for "logmel".
    n_mels: int = 64


@dataclass
class FusionConfig:
    # Transformer width; ABAW5's MAE + audio + Transformer system used a 6-layer encoder.
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    # Longest window (frames) the learned temporal embedding covers.
    max_len: int = 512
    # Probability, per clip in training, of dropping a whole modality so the model learns to cope
    # with a missing audio track or missing faces.
    modality_dropout: float = 0.1
    # Probability, per clip and sense in training, of hiding that sense over a stretch of 20-50 % of
    # the window (never both senses at one frame), so the model learns to cover for a sense that
    # drops out for a while (a covered face, a pause in the speech).
    frame_dropout: float = 0.0
    # Extra expression-classification head (0 = none).
    n_expression: int = 0
    # Normalisation of each incoming feature vector before its projection: "layer" (LayerNorm: for
    # learned features of arbitrary scale) or "none" (keeps the vector's overall level, e.g. the
    # loudness that log-mel energies carry in their mean, which a LayerNorm would remove).
    input_norm: str = "layer"
    # Architecture (avfusion.fusion): "gated" (a temporal module and a head per sense, a joint
    # module and head, a per-dimension mix of the heads, see `gate`) or "joint" (one temporal
    # module over all tokens, one head: plain early fusion).
    design: str = "gated"
    # Temporal module: "transformer" (pre-norm encoder), "gru" or "lstm" (recurrent, see
    # `bidirectional`). n_layers is the depth of each sense's module (of the only module in "joint").
    temporal: str = "transformer"
    bidirectional: bool = True
    # Depth of the joint (cross-modal) module of the "gated" design.
    joint_layers: int = 1
    # How the "gated" design weighs its heads (each sense's, the joint one) per dimension:
    # "validation": fixed weights fitted after every epoch on the validation split's frames (stacking;
    # the heads train on their own losses only, so none of them learns to lean on another), or
    # "learned": a per-frame gate read from the joint features, trained with the mixed output's loss.
    gate: str = "validation"
    # "learned" gate: weight of the heads' own losses (mean over the heads) beside the mixed output's.
    aux_weight: float = 1.0
    # "validation" gate: also fit, per dimension and head, how long the head stays trusted after
    # its sense drops out (a decay over the frames since the sense was last seen, or until it is
    # seen again, within the window): per-frame reliability, fitted on the validation frames with
    # the weights. False: a head counts only where its sense is present.
    reliability: bool = False


@dataclass
class ServingSpec:
    """What the model needs at serving time, saved with it (``config.json``) and read by predict,
    evaluate, cache, live and Predictor: a model is served the inputs it was trained on."""

    # Frames per window of a temporal model (training's data.clip_len: longer windows would use
    # temporal positions the model never saw).
    clip_len: int = 32
    # Frames between window starts in prediction; None: clip_len // 2 (a frame near one window's
    # edge is in the middle of the next; overlapping windows are averaged).
    hop: Optional[int] = None
    # Audio rate the audio encoder reads (wav2vec2: 16 kHz).
    sample_rate: int = 16000
    # Face crop: side in pixels (None: the video encoder's input size), margin (fraction of the face
    # size added on each side; the face expert was trained on tight boxes: 0) and box smoothing
    # (frames, centred in files, past-only live).
    crop_size: Optional[int] = None
    face_margin: float = 0.25
    face_smoothing: int = 5
    # Colour space of the crops before normalisation: "rgb" or "hsv" (the HSV EmoNet fine-tuning
    # of AFEW-VA work); mean/std per channel (None: the video encoder's pretrained_cfg).
    colour: str = "rgb"
    mean: Optional[list] = None
    std: Optional[list] = None
    # Precision of the per-frame network that the model's reference figures were computed in.
    precision: str = "fp32"
    # Utterance-level voice models (w2v2_msp_dim): seconds of audio per window and between window
    # starts; each window's value sits at its centre and frames take the interpolation between.
    # A hop of 3 s runs the network over 1.33x the track (2 s: 2x; the voice's cost is its network),
    # and its values follow changes over ~6 s: the scale of the labels it was trained on
    # (MSP-Podcast rates whole speaking turns, 2.75-11 s).
    audio_window: float = 4.0
    audio_hop: float = 3.0
    # Speech detection for models that listen (avfusion.data.speech): "vad", the audio of frames
    # without speech is masked like a video without a track (Silero VAD's per-frame probabilities,
    # then the rule below: threshold, shortest speech, shortest pause, padding, in seconds); "off",
    # the whole track counts. Training records what it applied, so predict applies the same.
    speech: str = "vad"
    speech_threshold: float = 0.5
    speech_min: float = 0.25
    speech_min_silence: float = 0.1
    speech_pad: float = 0.03


COLOURS = ("rgb", "hsv")
SPEECH_MODES = ("vad", "off")


def speech_mode(value: Any) -> str:
    """``"vad"`` or ``"off"`` from a config value (YAML reads a bare ``off`` as false, ``on`` as true)."""
    text = str(value).strip().lower()
    if text in ("vad", "on", "true", "yes", "1"):
        return "vad"
    if text in ("off", "false", "no", "0", "none"):
        return "off"
    raise ValueError(f"speech must be one of {', '.join(SPEECH_MODES)}, got {value!r}")



def check_serving(s: ServingSpec) -> list[str]:
    """Problems of a serving spec, as phrases naming the field."""
    problems = []
    if not isinstance(s.clip_len, int) or s.clip_len < 1:
        problems.append(f"serving.clip_len must be a positive integer, got {s.clip_len!r}")
    if s.hop is not None and (not isinstance(s.hop, int) or not 1 <= s.hop <= max(1, int(s.clip_len or 1))):
        problems.append(f"serving.hop must be between 1 and clip_len ({s.clip_len}), got {s.hop!r}")
    if s.colour not in COLOURS:
        problems.append(f"serving.colour must be one of {COLOURS}, got {s.colour!r}")
    if not isinstance(s.face_margin, (int, float)) or s.face_margin < 0:
        problems.append(f"serving.face_margin must be >= 0, got {s.face_margin!r}")
    if not isinstance(s.face_smoothing, int) or s.face_smoothing < 0:
        problems.append(f"serving.face_smoothing must be an integer >= 0, got {s.face_smoothing!r}")
    if s.crop_size is not None and (not isinstance(s.crop_size, int) or s.crop_size < 1):
        problems.append(f"serving.crop_size must be a positive integer, got {s.crop_size!r}")
    for k in ("mean", "std"):
        v = getattr(s, k)
        if v is not None and (not isinstance(v, (list, tuple)) or len(v) != 3):
            problems.append(f"serving.{k} must be 3 numbers, got {v!r}")
    if s.precision not in ("fp32", "bf16"):
        problems.append(f"serving.precision must be fp32 or bf16, got {s.precision!r}")
    if not isinstance(s.audio_window, (int, float)) or not isinstance(s.audio_hop, (int, float)) \
            or not 0 < s.audio_hop <= s.audio_window:
        problems.append(f"serving.audio_hop must be in (0, audio_window], got {s.audio_hop!r} and {s.audio_window!r}")
    try:
        speech_mode(s.speech)
    except ValueError:
        problems.append(f"serving.speech must be one of {SPEECH_MODES}, got {s.speech!r}")
    if not isinstance(s.speech_threshold, (int, float)) or not 0 < s.speech_threshold < 1:
        problems.append(f"serving.speech_threshold must be in (0, 1), got {s.speech_threshold!r}")
    for k in ("speech_min", "speech_min_silence", "speech_pad"):
        v = getattr(s, k)
        if not isinstance(v, (int, float)) or v < 0:
            problems.append(f"serving.{k} must be >= 0 seconds, got {v!r}")
    if not isinstance(s.sample_rate, int) or s.sample_rate <= 0:
        problems.append(f"serving.sample_rate must be a positive integer, got {s.sample_rate!r}")
    return problems


@dataclass
class ModelConfig:
    # "av" (audio-visual), "video" (video only: AFEW-VA has no audio) or "audio".
    mode: str = "av"
    video: Optional[VideoEncoderConfig] = field(default_factory=VideoEncoderConfig)
    audio: Optional[AudioEncoderConfig] = field(default_factory=AudioEncoderConfig)
    # None: no temporal model; the video encoder's own per-frame valence/arousal are the output
    # (EmoNet applied frame by frame, the zero-shot setting researchers start from).
    fusion: Optional[FusionConfig] = field(default_factory=FusionConfig)
    # Name of the registry entry this config came from (informational).
    name: str = ""
    # Models without a temporal part that have a face and a voice expert (av_experts): per
    # dimension, the weights of [face, voice] ({"valence": [wf, wv], "arousal": [wf, wv]}),
    # renormalised per frame over the experts present there (`avfusion fit-mix` fits them).
    mix: Optional[dict] = None
    # Serving-time inputs (window, crops, colour space, ...): set by training from its data
    # settings, saved with the model.
    serving: ServingSpec = field(default_factory=ServingSpec)


def _coerce(tp: Any, value: Any, name: str = "") -> Any:
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value)
        if not isinstance(value, tp):  # `train=3`: a whole section replaced by a value
            raise ValueError(f"{name} must be a mapping of {tp.__name__} fields, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def check_types(obj: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """Fields of dataclass ``obj`` (nested ones too) whose value does not have the declared type,
    as phrases naming the key (``fusion.n_heads must be an integer, got 'four'``). Numbers written
    as strings (YAML reads ``1e-3`` as one) become floats in place; whole floats in int fields
    become ints."""
    import typing

    problems: list[str] = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        tp = hints.get(f.name, Any)
        args = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Union:
            if value is None and type(None) in args:
                continue
            tp = next((a for a in args if a is not type(None)), Any)
        nested = _resolve_type(type(obj), f)
        if dataclasses.is_dataclass(nested):
            if value is None:
                continue
            if not isinstance(value, nested):
                problems.append(f"{key} must be a mapping of {nested.__name__} fields, got {value!r}")
            else:
                problems += check_types(value, f"{key}.")
            continue
        if tp is Any or tp is object:
            continue
        ok = True
        if tp is bool:
            ok = isinstance(value, bool)
        elif tp is int:
            if isinstance(value, float) and value.is_integer():
                setattr(obj, f.name, int(value))
            else:
                ok = isinstance(value, int) and not isinstance(value, bool)
        elif tp is float:
            if isinstance(value, str):
                try:
                    setattr(obj, f.name, float(value))
                except ValueError:
                    ok = False
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif tp is str:
            ok = isinstance(value, str)
        elif tp in (dict, list):
            ok = isinstance(value, (list, tuple) if tp is list else dict)
        if not ok:
            problems.append(f"{key} must be {_type_name(tp)}, got {value!r}")
    return problems


def from_dict(cls: Type[T], data: dict | None) -> T:
    """Build dataclass ``cls`` from a (possibly nested) dict; unknown keys are an error."""
    data = dict(data or {})
    hints = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(hints)}")
    kwargs = {}
    for name, f in hints.items():
        if name not in data:
            continue
        value = data[name]
        tp = _resolve_type(cls, f)
        kwargs[name] = _coerce(tp, value, name) if value is not None else None
    return cls(**kwargs)


_NESTED = {
    ("ModelConfig", "video"): VideoEncoderConfig,
    ("ModelConfig", "audio"): AudioEncoderConfig,
    ("ModelConfig", "fusion"): FusionConfig,
    ("ModelConfig", "serving"): ServingSpec,
}


def _resolve_type(cls: type, f: dataclasses.Field) -> Any:
    return _NESTED.get((cls.__name__, f.name), _EXTRA_NESTED.get((cls.__name__, f.name), object))


# Other modules (training, data) register their nested dataclass fields here.
_EXTRA_NESTED: dict[tuple[str, str], type] = {}


def register_nested(cls_name: str, field_name: str, tp: type) -> None:
    _EXTRA_NESTED[(cls_name, field_name)] = tp


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}:{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def yaml_line(path: str | Path, keys: list[str]) -> Optional[int]:
    """The line (1-based) of the YAML file ``path`` where the nested key ``keys`` is written (the
    deepest of them the file has), or None."""
    try:
        node = yaml.compose(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a mapping")
        node[parts[-1]] = value
    return data


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: ``update`` wins; returns a new dict."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------------
# Where named configs live: avfusion/configs/ (package data, installed with the wheel), so names
# resolve from any folder, the clone's root included.
# Extra folders come first: AVFUSION_CONFIGS (experiments) and AVFUSION_MODEL_CONFIGS (models),
# each os.pathsep-separated.

CONFIG_PACKAGE = "avfusion.configs"
_ENV = {"experiments": "AVFUSION_CONFIGS", "models": "AVFUSION_MODEL_CONFIGS"}


def builtin_config_dir() -> Path:
    """The folder of the shipped configs (``experiments`` at its top, ``models/`` below)."""
    return Path(str(resources.files(CONFIG_PACKAGE)))


def config_dirs(kind: str) -> list[Path]:
    """Search folders for named ``kind`` configs (``"experiments"`` or ``"models"``), in order."""
    if kind not in _ENV:
        raise ValueError(f"config kind must be one of {sorted(_ENV)}, got {kind!r}")
    extra = [Path(p) for p in os.environ.get(_ENV[kind], "").split(os.pathsep) if p]
    base = builtin_config_dir()
    return extra + [base / "models" if kind == "models" else base]


def list_configs(kind: str) -> list[str]:
    """Names of the ``kind`` configs found in :func:`config_dirs`."""
    names = set()
    for d in config_dirs(kind):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def find_config(name: str, kind: str) -> Path | None:
    """The YAML file of a named ``kind`` config, or None."""
    for d in config_dirs(kind):
        f = d / f"{name}.yaml"
        if f.is_file():
            return f
    return None


def resolve_experiment_file(name_or_path: str | Path) -> Path:
    """An experiment YAML from a path or a name (``tiny_synthetic``); a clear error otherwise."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        raise FileNotFoundError(f"config file not found: {path} (a shipped experiment is named "
                                f"without a folder: {list_configs('experiments')})")
    named = find_config(str(name_or_path), "experiments")
    if named is None:
        raise ValueError(f"unknown experiment {str(name_or_path)!r}: known experiments are "
                         f"{list_configs('experiments')}, or pass a YAML file")
    return named
