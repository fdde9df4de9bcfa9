"""The published face expert ``enet_b0_8_va_mtl`` (EmotiEffLib, formerly HSEmotion; code Apache-2.0,
trained on AffectNet) as a frame-by-frame video encoder (``video.name: enet_b0_va``).

Architecture: timm ``tf_efficientnet_b0`` (the TensorFlow port: "same" padding, BatchNorm eps 1e-3;
plain ``efficientnet_b0`` has the same key names and different outputs) with
``classifier = Linear(1280, 10)``: outputs 0-7 are expression logits (:data:`EXPRESSIONS`), 8 valence,
9 arousal. Input: a tight face box (their examples crop MTCNN boxes with no margin), RGB, 224x224
bilinear, /255, ImageNet mean/std.

Weights come in three forms, all read by :func:`convert_face_expert` into timm's key names, without
executing code from the file:

- a state dict (``.safetensors``, or ``.pt``/``.pth``/``.bin`` holding only tensors): what
  ``avfusion download`` writes;
- the published ``enet_b0_8_va_mtl.pt``, a whole model pickled with ``torch.save(model)`` under
  timm 0.9.7. Loading it the usual way imports timm's classes and breaks across timm versions; here
  every class the pickle names is replaced by an inert stand-in that only keeps its state, read by
  ``torch.load(weights_only=True)``, and the parameter/buffer tree is walked into a state dict;
- the published ONNX export ``enet_b0_8_va_mtl.onnx`` (opset 11, the TorchScript exporter, which folds
  each BatchNorm into the convolution before it): the Conv / Gemm weights are matched in graph order
  against timm's convolutions / classifier, checked for shape, stride, groups and padding, and a
  folded BatchNorm becomes an identity BatchNorm carrying the folded bias (needs the ``onnx`` package).
"""
from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import timm
import torch
from torch import nn

from ..config import VideoEncoderConfig
from ..weights import key_problems, load_strict, read_weights
from .base import VideoEncoder
from .timm_cnn import timm_filter_state_dict

ARCH = "tf_efficientnet_b0"
N_OUTPUTS = 10  # 8 expression logits, valence, arousal
EXPRESSIONS = ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
# The class of the published pickle's top-level object (saved under timm 0.9.7; the same path from
# timm 0.4.5 to 1.x, whose EfficientNets also share the parameter names: the inner modules' classes
# moved between timm.models.layers and timm.layers, which the stand-ins do not care about).
PICKLED_ROOT = "timm.models.efficientnet.EfficientNet"
_FORMATS = ("a state dict (.safetensors / .pt / .pth / .bin), the published pickled model "
            "(enet_b0_8_va_mtl.pt) or its ONNX export (.onnx)")


def build_face_expert_net(device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """timm ``tf_efficientnet_b0`` with the 10-output classifier (random init; ``"meta"``: shapes only)."""
    if device is None:
        return timm.create_model(ARCH, pretrained=False, num_classes=N_OUTPUTS)
    with torch.device(device):
        return timm.create_model(ARCH, pretrained=False, num_classes=N_OUTPUTS)


class FaceExpertEncoder(VideoEncoder):
    """``enet_b0_8_va_mtl`` per frame: :meth:`forward` gives its valence/arousal/expression (the
    frame-by-frame contract of :class:`~avfusion.encoders.emonet.EmoNetEncoder`),
    :meth:`forward_features` the pooled 1280-wide feature (for a fusion model over the frozen expert).

    A frozen encoder has no trainable parameters and stays in eval() (BatchNorm statistics, dropout).
    """

    # Its own per-frame valence/arousal head: frame-by-frame models (`fusion: null`) serve it directly.
    has_va_head = True

    def __init__(self, frozen: bool = True) -> None:
        super().__init__()
        self.net = build_face_expert_net()
        self.num_features = int(self.net.num_features)  # 1280
        self.n_expression = len(EXPRESSIONS)
        self.pretrained_cfg = {
            "input_size": (3, 224, 224),
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            # EmotiEffLib resizes with PIL's / OpenCV's default (bilinear), not timm's bicubic.
            "interpolation": "bilinear",
            # Trained on tight face boxes: no margin around the detector's box.
            "crop_margin": 0.0,
        }
        self.frozen = frozen
        if frozen:
            self.net.requires_grad_(False)
            self.net.eval()

    @classmethod
    def from_config(cls, cfg: VideoEncoderConfig) -> "FaceExpertEncoder":
        """Build from ``cfg.frozen`` and load ``cfg.checkpoint`` (any of the three formats) if set."""
        enc = cls(frozen=cfg.frozen)
        if cfg.checkpoint:
            enc.load_checkpoint(cfg.checkpoint)
        return enc

    def load_checkpoint(self, source: Union[str, Path, Mapping[str, torch.Tensor]]) -> "FaceExpertEncoder":
        """Load a weight file (see :func:`convert_face_expert`) or a state dict with timm's names, strictly."""
        sd = convert_face_expert(source) if not isinstance(source, Mapping) else dict(source)
        name = str(source) if not isinstance(source, Mapping) else "face expert state dict"
        try:
            load_strict(self.net, sd, family="face expert weight")
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return self

    def train(self, mode: bool = True) -> "FaceExpertEncoder":
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"face expert expects normalised RGB crops (N, 3, 224, 224), got {tuple(x.shape)}")

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        # timm's own forward split at the pooled feature: net(x) == classifier(_pooled(x)).
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, 224, 224) normalised crops -> the pooled feature (N, 1280)."""
        self._check(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self._pooled(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, 224, 224) normalised crops.

        Returns ``valence`` and ``arousal`` (N,) clipped to [-1, 1] (the head is unbounded),
        ``expression`` (N, 8) logits in :data:`EXPRESSIONS` order and ``feature`` (N, 1280).
        """
        self._check(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feat = self._pooled(x)
            out = self.net.classifier(feat)
        return {
            "expression": out[:, : self.n_expression],
            "valence": out[:, self.n_expression].clamp(-1.0, 1.0),
            "arousal": out[:, self.n_expression + 1].clamp(-1.0, 1.0),
            "feature": feat,
        }


# --- weight files -------------------------------------------------------------------------------


def convert_face_expert(src: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The face expert's weights with timm ``tf_efficientnet_b0`` key names (360 tensors), from a
    state dict file, the published pickled whole model or its ONNX export (chosen by suffix and
    content). Raises FileNotFoundError, or a one-line ValueError naming the file when it is none of
    them or does not fit the architecture."""
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"face expert weight file not found: {path}")
    if path.suffix.lower() == ".onnx":
        sd = _onnx_state_dict(path)
    elif path.suffix.lower() == ".safetensors":
        sd = _state_dict_file(path)
    elif zipfile.is_zipfile(path):
        unsafe = _unsafe_globals(path)
        sd = _pickled_model_state_dict(path, unsafe) if unsafe else _state_dict_file(path)
    else:
        # Not a torch zip archive: a legacy torch.save state dict, or nothing we know.
        try:
            sd = _state_dict_file(path)
        except ValueError as e:
            why = _first_line(e).removeprefix(f"{path}: ")
            raise ValueError(f"{path}: not a face expert weight file ({why}); expected {_FORMATS}") from None
    _check_fits(sd, path)
    return sd


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@functools.lru_cache(maxsize=1)
def _meta_net() -> nn.Module:
    """The architecture on the meta device (shapes and layer settings; read-only), built once."""
    return build_face_expert_net("meta")


def _check_fits(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = _meta_net().state_dict()
    problems = key_problems(expected, sd)
    if problems:
        raise ValueError(f"{path}: does not fit {ARCH} with a {N_OUTPUTS}-output classifier: " + "; ".join(problems))


def _state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    raw = read_weights(path, "face expert weight")
    expected = set(_meta_net().state_dict())
    return timm_filter_state_dict(raw, str(path), expected)


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as e:  # a damaged archive: torch raises several types
        raise ValueError(f"{path}: not a readable torch file ({type(e).__name__}: {_first_line(e)}); "
                         f"expected {_FORMATS}") from None


class _PickledObject:
    """Stands in for a class a pickle names: keeps what the pickle hands it and runs nothing else.

    ``torch.load(weights_only=True)`` creates it (NEWOBJ: ``__new__``; REDUCE: ``__init__`` with the
    pickled arguments) and fills it (BUILD: ``__setstate__``); an ``nn.Module``'s state is its
    ``__dict__`` with ``_parameters``, ``_buffers`` and ``_modules``.
    """

    pickled_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_PickledObject":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pickled_args = args

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state


def _stand_in(full_name: str) -> type:
    return type(full_name.rsplit(".", 1)[-1], (_PickledObject,), {"pickled_name": full_name})


def _pickled_model_state_dict(path: Path, unsafe: list[str]) -> dict[str, torch.Tensor]:
    stand_ins = [(_stand_in(name), name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            root = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged pickles
        raise ValueError(f"{path}: cannot read the pickled model ({type(e).__name__}: {_first_line(e)}); "
                         f"expected {_FORMATS}") from None
    if isinstance(root, Mapping):  # a state dict saved with other objects (a training checkpoint)
        return timm_filter_state_dict(root, str(path), set(_meta_net().state_dict()))
    name = getattr(type(root), "pickled_name", type(root).__name__)
    if not (name == PICKLED_ROOT or (name.startswith("timm.") and name.endswith(".EfficientNet"))):
        raise ValueError(f"{path}: the pickled object is a {name}, not a timm EfficientNet ({PICKLED_ROOT}); "
                         f"expected {_FORMATS}")
    out: dict[str, torch.Tensor] = {}
    _collect_module(root, "", out, path)
    return out


def _collect_module(obj: Any, prefix: str, out: dict[str, torch.Tensor], path: Path) -> None:
    """Walk a pickled module tree as ``nn.Module.state_dict`` does: parameters, persistent buffers,
    then the submodules, with dotted names."""
    state = getattr(obj, "pickled_state", None)
    if not isinstance(state, dict) or not isinstance(state.get("_modules"), dict):
        raise ValueError(f"{path}: pickled entry {prefix.rstrip('.') or '<root>'!r} is not a module "
                         f"({getattr(type(obj), 'pickled_name', type(obj).__name__)})")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (state.get(kind) or {}).items():
            if tensor is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not torch.is_tensor(tensor):
                raise ValueError(f"{path}: pickled {prefix}{name} is not a tensor ({type(tensor).__name__})")
            out[prefix + name] = tensor.detach().contiguous()  # safetensors writes contiguous tensors only
    for name, child in state["_modules"].items():
        if child is not None:
            _collect_module(child, f"{prefix}{name}.", out, path)


# --- ONNX ---------------------------------------------------------------------------------------


def _onnx_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ValueError(f"{path}: reading an ONNX face expert needs the onnx package (pip install onnx)") from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends for damaged files
        raise ValueError(f"{path}: not a readable ONNX file ({type(e).__name__}: {_first_line(e)})") from None
    graph = model.graph
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for o in node.output:
            producer[o] = node
        for i in node.input:
            consumers.setdefault(i, []).append(node)
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)

    def const(name: str) -> Optional[np.ndarray]:
        # The exporter deduplicates equal initializers behind Identity nodes.
        seen = 0
        while name not in values and name in producer and producer[name].op_type == "Identity" and seen < 100:
            name, seen = producer[name].input[0], seen + 1
        return values.get(name)

    def attrs(node: Any) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    net = _meta_net()
    # (conv name, conv module, BatchNorm name or None, BatchNorm module or None), in forward order.
    pairs: list[list[Any]] = []
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            pairs.append([name, module, None, None])
        elif isinstance(module, nn.BatchNorm2d):
            if not pairs or pairs[-1][2] is not None or pairs[-1][1].bias is not None:
                raise RuntimeError(f"{ARCH}: BatchNorm {name} does not follow a bias-free convolution")
            pairs[-1][2:] = [name, module]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    if len(convs) != len(pairs) or len(gemms) != 1:
        raise ValueError(f"{path}: the graph has {len(convs)} Conv and {len(gemms)} Gemm nodes; {ARCH} has "
                         f"{len(pairs)} convolutions and 1 classifier: not an ONNX export of enet_b0_8_va_mtl")

    sd: dict[str, torch.Tensor] = {}
    for node, (cname, conv, bname, bn) in zip(convs, pairs):
        where = f"{path}: Conv node {node.name or node.output[0]!r} (for {cname})"
        weight = const(node.input[1])
        bias = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None:
            raise ValueError(f"{where}: its weight is not a constant of the graph")
        _check_conv(node, attrs(node), conv, weight, producer, where)
        sd[f"{cname}.weight"] = torch.from_numpy(np.array(weight, dtype=np.float32))
        if bn is None:
            if bias is None:
                raise ValueError(f"{where}: has no bias; {ARCH} has one there")
            sd[f"{cname}.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))
            continue
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "BatchNormalization":
            sd.update(_onnx_batch_norm(after[0], attrs(after[0]), const, bname, bn, bias, where))
        else:  # folded into the convolution: an identity BatchNorm that adds the folded bias
            sd.update(_identity_batch_norm(bname, bn, bias))
    sd.update(_onnx_classifier(gemms[0], attrs(gemms[0]), const, net.classifier, path))
    return sd


def _check_conv(node: Any, at: dict[str, Any], conv: nn.Conv2d, weight: np.ndarray, producer: dict[str, Any],
                where: str) -> None:
    if tuple(weight.shape) != tuple(conv.weight.shape):
        raise ValueError(f"{where}: weight {tuple(weight.shape)} vs {tuple(conv.weight.shape)} in {ARCH}")
    strides = tuple(at.get("strides", (1, 1)))
    if strides != tuple(conv.stride) or int(at.get("group", 1)) != conv.groups:
        raise ValueError(f"{where}: strides {strides} / groups {at.get('group', 1)} vs {tuple(conv.stride)} / "
                         f"{conv.groups} in {ARCH}")
    pads = [int(p) for p in at.get("pads", (0, 0, 0, 0))]
    if type(conv).__name__ == "Conv2dSame":
        # TF "same" padding of a strided conv is asymmetric: a Pad node before it (the exporter's form
        # of timm's dynamic padding) or asymmetric pads. Symmetric padding is plain efficientnet_b0.
        padded = node.input[0] in producer and producer[node.input[0]].op_type == "Pad"
        if not padded and pads[:2] == pads[2:]:
            raise ValueError(f"{where}: symmetric padding {pads}; {ARCH} pads asymmetrically (TF 'same'): "
                             f"this looks like efficientnet_b0, whose outputs differ")
    elif pads != [conv.padding[0], conv.padding[1]] * 2:
        raise ValueError(f"{where}: pads {pads} vs {list(conv.padding) * 2} in {ARCH}")


def _identity_var(eps: float) -> torch.Tensor:
    """A float32 variance ``v`` with ``v + eps == 1`` exactly in float32: the BatchNorm then scales by 1."""
    e = np.float32(eps)
    v = np.float32(1.0) - e
    for _ in range(8):
        total = np.float32(v + e)
        if total == np.float32(1.0):
            break
        v = np.nextafter(v, np.float32(2.0) if total < 1.0 else np.float32(0.0))
    return torch.tensor(float(v), dtype=torch.float32)


def _identity_batch_norm(bname: str, bn: nn.BatchNorm2d, bias: Optional[np.ndarray]) -> dict[str, torch.Tensor]:
    c = bn.num_features
    shift = torch.from_numpy(np.array(bias, dtype=np.float32)) if bias is not None else torch.zeros(c)
    return {
        f"{bname}.weight": torch.ones(c),
        f"{bname}.bias": shift,
        f"{bname}.running_mean": torch.zeros(c),
        f"{bname}.running_var": _identity_var(bn.eps).expand(c).clone(),
        f"{bname}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


def _onnx_batch_norm(node: Any, at: dict[str, Any], const: Any, bname: str, bn: nn.BatchNorm2d,
                     conv_bias: Optional[np.ndarray], where: str) -> dict[str, torch.Tensor]:
    arrays = [const(i) for i in node.input[1:5]]
    if any(a is None for a in arrays):
        raise ValueError(f"{where}: its BatchNormalization parameters are not constants of the graph")
    eps = float(at.get("epsilon", 1e-5))
    if abs(eps - bn.eps) > 1e-6:
        raise ValueError(f"{where}: BatchNorm epsilon {eps:g} vs {bn.eps:g} in {ARCH} "
                         f"(plain efficientnet_b0 uses 1e-5)")
    scale, shift, mean, var = (torch.from_numpy(np.array(a, dtype=np.float32)) for a in arrays)
    if conv_bias is not None:  # BN(x + b) == BN'(x) with the mean moved by b
        mean = mean - torch.from_numpy(np.array(conv_bias, dtype=np.float32))
    return {f"{bname}.weight": scale, f"{bname}.bias": shift, f"{bname}.running_mean": mean,
            f"{bname}.running_var": var, f"{bname}.num_batches_tracked": torch.tensor(0, dtype=torch.long)}


def _onnx_classifier(node: Any, at: dict[str, Any], const: Any, linear: nn.Linear,
                     path: Path) -> dict[str, torch.Tensor]:
    weight = const(node.input[1])
    bias = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if weight is None or bias is None:
        raise ValueError(f"{path}: the classifier's Gemm weights are not constants of the graph")
    if int(at.get("transA", 0)):
        raise ValueError(f"{path}: the classifier's Gemm transposes its input (transA); not an export of {ARCH}")
    w = np.array(weight, dtype=np.float32) * np.float32(at.get("alpha", 1.0))
    if not int(at.get("transB", 0)):
        w = w.T
    b = np.array(bias, dtype=np.float32).reshape(-1) * np.float32(at.get("beta", 1.0))
    if w.shape != tuple(linear.weight.shape) or b.shape != tuple(linear.bias.shape):
        raise ValueError(f"{path}: classifier {w.shape} + {b.shape} vs {tuple(linear.weight.shape)} in {ARCH} "
                         f"({N_OUTPUTS} outputs: 8 expressions, valence, arousal)")
    return {"classifier.weight": torch.from_numpy(np.ascontiguousarray(w)), "classifier.bias": torch.from_numpy(b)}


__all__ = ["FaceExpertEncoder", "convert_face_expert", "build_face_expert_net", "EXPRESSIONS", "ARCH", "N_OUTPUTS"]
