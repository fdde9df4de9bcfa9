"""The per-frame part of a model, prepared for fast inference: precision, layout, compilation.

A frame-by-frame model (EmoNet, ``fusion: null``) is its video encoder: each face crop gives
valence, arousal and expression logits. A temporal model's video encoder gives one feature per
frame, and the fusion model runs over windows of those features afterwards. Either way the
expensive part is the per-frame network, and that is what :class:`FrameRunner` runs:

- ``precision="auto"`` picks bfloat16 + channels_last where the hardware computes bf16 natively
  (CUDA; CPUs with AVX512-BF16 or AMX), float32 elsewhere; ``"fp32"`` / ``"bf16"`` force one.
  bf16 keeps 8 bits of mantissa: on the parity face EmoNet's valence/arousal/logits move by about
  2 % of their largest magnitude (see the README's performance section for measured figures).
- ``compile=True``: ``torch.compile`` (inductor; on the CPU with freezing). The first batch pays
  the compilation (tens of seconds on a 2-core CPU); batches keep one shape (the last is padded).
- ``flip``: average with the mirrored crop (the official EmoNet evaluation does): twice the work.
- Everything runs in batches of ``batch_size`` crops (torch: under ``torch.inference_mode``).
- ``runtime``: ``torch`` (eager or compiled PyTorch), ``openvino`` (the network converted once by
  ``openvino.convert_model``, cached on disk, compiled for the CPU in bf16 where the CPU computes
  bf16 natively, else f32; see :mod:`.openvino_net`), or ``auto``: OpenVINO on a CPU where the
  bench measured it faster than torch at that precision (:data:`OPENVINO_SPEEDUP`) and the package
  is installed, torch elsewhere (always on CUDA). Both give the same outputs: valence/arousal
  clipped, expression probabilities, features.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..encoders.base import has_float_weights, inference_copy
from .hardware import cpu_class, cpu_has_fast_bf16

PRECISIONS = ("auto", "fp32", "bf16")
RUNTIMES = ("auto", "torch", "openvino")

# runtime="auto" on the CPU picks OpenVINO where `avfusion bench` (its "frames" stage: both
# runtimes through this runner, taking turns call by call) measured OpenVINO's frames/s at least
# AUTO_MIN_SPEEDUP times torch's at the same precision, at predict's batch (16), per kind of CPU
# (hardware.cpu_class), precision and network (network_kind). What is absent here was not
# measured, or OpenVINO lost, and gets torch: AMD EPYC / Zen 4 (AVX512-BF16 without AMX) among
# them (measure there before adding it), and the MAE ViT (OpenVINO f32 0.98x torch's; bf16 gave
# NaN in openvino 2026.4.1, as it did for wav2vec2-base).
OPENVINO_SPEEDUP: dict[tuple[str, str, str], float] = {
    # Intel Xeon, GenuineIntel family 6 model 207 (Emerald Rapids: AMX-BF16/INT8, AVX512-BF16), 2
    # cores shared with other jobs, openvino 2026.4.1, torch 2.14.1, `avfusion bench --quick` of
    # 2026-12-01 (benchmarks/bench.json). EmoNet-8 bf16: 18.2 vs 8.7 frames/s (2.08x; 1.26x at
    # batch 1); fp32: 3.9 vs 2.2 (1.82x; 1.69x at batch 1); tf_efficientnet_b0 bf16 10.9x, fp32
    # 11.9x. Deviation from torch fp32 on two faces: OpenVINO f32 2e-6, bf16 2e-2 (torch bf16 1e-2).
    ("amx", "bf16", "emonet"): 2.08,
    ("amx", "fp32", "emonet"): 1.82,
    ("amx", "bf16", "timm"): 10.9,
    ("amx", "fp32", "timm"): 11.9,
    # The voice expert (wav2vec2-large-robust, 12 layers + head) through UtteranceRunner, 4 s
    # windows, batch 4, same machine, 2026-12-01: OpenVINO bf16 25.1 s of audio per s against torch
    # bf16's 12.2 (2.06x); deviation of the head's outputs from torch fp32 3e-3.
    ("amx", "bf16", "voice_expert"): 2.06,
}
AUTO_MIN_SPEEDUP = 1.2  # below this, torch: one runtime fewer to go wrong for a small gain


def resolve_precision(precision: str, device: Union[torch.device, str]) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def network_kind(encoder: nn.Module) -> str:
    """The family a network's measured figures hold for: ``emonet``, ``timm`` (a timm CNN), ``vit``
    (MAE ViT), ``voice_expert``, else the encoder's class name."""
    name = type(encoder).__name__
    return {"EmoNetEncoder": "emonet", "TimmEncoder": "timm", "MAEViTEncoder": "vit",
            "VoiceExpertEncoder": "voice_expert"}.get(name, name)


def resolve_runtime(runtime: str, device: Union[torch.device, str], precision: str = "fp32",
                    convertible: bool = True, compile: bool = False, network: str = "") -> str:
    """``"torch"`` or ``"openvino"`` for ``runtime`` (one of :data:`RUNTIMES`) on ``device`` at
    ``precision`` (resolved: fp32 | bf16) for a ``network`` (:func:`network_kind`). ``convertible``:
    the network has weights (weight-free HOG features stay in torch). An explicit ``openvino`` that
    cannot run raises a ValueError in one line (not installed: the command that installs it)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    dev = torch.device(device)
    if runtime == "openvino":
        if dev.type != "cpu":
            raise ValueError(f"runtime 'openvino' runs on the CPU; device {str(dev)!r} needs runtime torch")
        if compile:
            raise ValueError("compile is torch.compile: with runtime 'openvino' the network is compiled by OpenVINO")
        if not convertible:
            raise ValueError("runtime 'openvino' runs networks with weights; this encoder has none (use torch)")
        from .openvino_net import import_openvino

        import_openvino()
        return "openvino"
    if runtime == "torch" or dev.type != "cpu" or compile or not convertible:
        return "torch"
    if OPENVINO_SPEEDUP.get((cpu_class(), precision, network), 0.0) < AUTO_MIN_SPEEDUP:
        return "torch"
    from .openvino_net import openvino_available

    return "openvino" if openvino_available() else "torch"


def resolve_device(device: Optional[Union[torch.device, str]] = None) -> torch.device:
    """``device`` checked against the machine (default: CUDA when available, else the CPU); a
    ValueError in one line when it names hardware this machine lacks."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, ...): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available on this machine; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {device!r}: use cpu or cuda")
    return dev


class _FrameNet(nn.Module):
    """A video encoder as one module: crops -> ``va`` (N, 2) [+ ``expression``] or ``feature``."""

    def __init__(self, encoder: nn.Module, frame_by_frame: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.frame_by_frame = frame_by_frame

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.frame_by_frame:
            return {"feature": self.encoder.forward_features(x)}
        out = self.encoder(x)
        res = {"va": torch.stack([out["valence"], out["arousal"]], dim=-1)}
        if "expression" in out:
            res["expression"] = out["expression"]
        return res


def frame_network(model: nn.Module, flip: Optional[bool] = None) -> nn.Module:
    """A float32 eval() copy of ``model``'s per-frame network (crops -> a dict of ``va`` and
    ``expression`` logits, or ``feature``): what the runtimes run and convert. ``flip`` sets
    EmoNet's flip averaging (None: the model's own)."""
    encoder = getattr(model, "video_encoder", None)
    if encoder is None:
        raise ValueError("this model has no video encoder: nothing runs per frame")
    net, _ = inference_copy(_FrameNet(encoder, getattr(model, "fusion", None) is None))
    if flip is not None and hasattr(net.encoder, "flip_average"):
        net.encoder.flip_average = bool(flip)
    return net


class FrameRunner:
    """Runs a model's per-frame network on batches of normalised crops.

    Args:
        model: an :class:`~avfusion.model.AVModel` with a video encoder (not changed).
        precision: ``auto`` | ``fp32`` | ``bf16`` (see the module docstring).
        compile: torch.compile the network (runtime torch).
        device: where it runs (default: CUDA when available, else the CPU).
        flip: average with mirrored crops (EmoNet only); None keeps the model's own setting.
        batch_size: crops per call.
        runtime: ``torch`` | ``openvino`` | ``auto`` (see the module docstring).
        cache_dir: the openvino runtime's converted networks (default ``$AVFUSION_HOME/cache/
            openvino``; False: convert every time).

    Calling it on ``(N, 3, H, W)`` float crops returns numpy float32 arrays: ``va`` (N, 2) clipped
    to [-1, 1] and ``expression`` (N, K) probabilities for a frame-by-frame model, ``feature``
    (N, C) for a temporal model. ``runtime`` is the one chosen; ``module`` is the torch network
    that runs (None under openvino, whose network is ``openvino``, an
    :class:`~.openvino_net.OpenVINONet`).
    """

    def __init__(
        self,
        model: nn.Module,
        precision: str = "auto",
        compile: bool = False,
        device: Optional[Union[torch.device, str]] = None,
        flip: Optional[bool] = None,
        batch_size: int = 16,
        *,
        runtime: str = "torch",
        cache_dir: Union[str, Path, None, bool] = None,
    ) -> None:
        encoder = getattr(model, "video_encoder", None)
        if encoder is None:
            raise ValueError("this model has no video encoder: nothing runs per frame")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.frame_by_frame = getattr(model, "fusion", None) is None
        self.precision = resolve_precision(precision, self.device)
        convertible = has_float_weights(encoder) and getattr(encoder, "supports_bf16", True)
        if not convertible:
            self.precision = "fp32"  # weight-free features (HOG) are computed in float32
        if flip and not hasattr(encoder, "flip_average"):
            raise ValueError(f"flip averaging is available for EmoNet encoders only, not {type(encoder).__name__}")
        self.runtime_requested = runtime
        self.runtime = resolve_runtime(runtime, self.device, self.precision, convertible, bool(compile),
                                       network_kind(encoder))
        self.batch_size = int(batch_size)
        self.num_features = int(getattr(encoder, "num_features", 0))
        self.compiled = bool(compile)
        self.openvino = None
        self.module: Optional[nn.Module]
        if self.runtime == "openvino":
            from .openvino_net import OpenVINONet, openvino_version

            self.dtype, self.channels_last = torch.float32, False
            fp32 = frame_network(model, flip)  # the float32 graph OpenVINO converts (then let go)
            self.flip = bool(getattr(fp32.encoder, "flip_average", False))
            shape = tuple(encoder.pretrained_cfg["input_size"])
            # What changes the traced graph beside the weights and the shape: the cache key's variant.
            variant = f"frame_by_frame={self.frame_by_frame} flip={self.flip}"
            self.openvino = OpenVINONet(fp32, shape, self.precision, cache_dir=cache_dir, variant=variant)
            del fp32
            # A mid-grey crop must give finite outputs: openvino 2026.4.1 in bf16 gives NaN for the
            # MAE ViT (and wav2vec2) while its CNNs are fine; a silent NaN table would be worse.
            probe = self.openvino(np.full((1, *shape), 0.5, dtype=np.float32))
            if not all(np.isfinite(v).all() for v in probe.values()):
                raise ValueError(f"OpenVINO {openvino_version()} in {self.precision} gives non-finite outputs for "
                                 f"{type(encoder).__name__}; use precision fp32 or runtime torch")
            self.module, self._run = None, None
        else:
            self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            self.channels_last = self.precision == "bf16"
            net = _FrameNet(encoder, self.frame_by_frame)
            self.module, self._run = inference_copy(net, self.dtype if self.precision == "bf16" else None,
                                                    self.channels_last, compile, self.device)
            if flip is not None and hasattr(self.module.encoder, "flip_average"):
                self.module.encoder.flip_average = bool(flip)
            self.flip = bool(getattr(self.module.encoder, "flip_average", False))

    @property
    def description(self) -> str:
        runtime = self.runtime + (" (auto)" if self.runtime_requested == "auto" else "")
        precision = self.precision + (" + channels_last" if self.channels_last else "")
        parts = [runtime, precision, str(self.device)]
        if self.compiled:
            parts.append("compiled")
        if self.flip:
            parts.append("flip-averaged")
        return ", ".join(parts)

    def _batches(self, crops: torch.Tensor) -> dict[str, list[np.ndarray]]:
        outs: dict[str, list[np.ndarray]] = {}
        # Flip averaging doubles what the network sees: half as many crops per call keeps its
        # batch (and the activation memory) at batch_size images.
        step = max(1, self.batch_size // 2) if self.flip else self.batch_size
        if self.openvino is not None:  # any batch: no padding
            x_all = crops.detach().cpu().float().numpy() if isinstance(crops, torch.Tensor) else crops
            for s in range(0, x_all.shape[0], step):
                for k, v in self.openvino(x_all[s : s + step]).items():
                    outs.setdefault(k, []).append(v)
            return outs
        with torch.inference_mode():
            for s in range(0, crops.shape[0], step):
                x = crops[s : s + step]
                m = x.shape[0]
                if self.compiled and m < step:  # one shape: no recompilation
                    x = torch.cat([x, x[-1:].expand(step - m, *x.shape[1:])])
                x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = self._run(x)
                for k, v in out.items():
                    outs.setdefault(k, []).append(v[:m].float().cpu().numpy())
        return outs

    def raw(self, crops: torch.Tensor) -> dict[str, np.ndarray]:
        """The network's outputs before clipping and softmax (``va`` unclipped, ``expression``
        logits): what parity checks and benchmarks compare across runtimes and precisions."""
        return {k: np.concatenate(v) for k, v in self._batches(crops).items()}

    def __call__(self, crops: torch.Tensor) -> dict[str, np.ndarray]:
        res = self.raw(crops)
        if "va" in res:
            res["va"] = np.clip(res["va"], -1.0, 1.0)
        if "expression" in res:
            logits = res["expression"] - res["expression"].max(axis=1, keepdims=True)
            e = np.exp(logits)
            res["expression"] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return res


class _Utterance(nn.Module):
    """The voice model's utterance outputs as a dict of (B,) tensors (what OpenVINO converts)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.encoder.utterance(wave)
        return {k: out[k] for k in ("arousal", "dominance", "valence")}


class UtteranceRunner:
    """An utterance-level voice model (``encoder.utterance(wave (B, S))``: the voice expert) prepared
    for inference: a frozen eval() copy in the precision asked (``auto``: bf16 where the hardware
    computes it natively, as for the per-frame networks), on ``device``, under ``runtime`` (as
    :class:`FrameRunner`: ``auto`` takes OpenVINO where the bench measured it faster for this
    network on this kind of CPU; the converted graph takes waves of any length and is cached on
    disk). Calling :meth:`utterance` returns float32 outputs. bf16 keeps 8 bits of mantissa: the
    head's outputs move by ~1e-2 (the bench's audio stage gives the deviation of the same layers).
    ``window``: seconds of the waves the network is traced on (the voice window)."""

    def __init__(self, encoder: nn.Module, precision: str = "auto",
                 device: Optional[Union[torch.device, str]] = None, runtime: str = "torch",
                 cache_dir: Union[str, Path, None, bool] = None, window: float = 4.0,
                 sample_rate: int = 16000) -> None:
        if not hasattr(encoder, "utterance"):
            raise ValueError(f"{type(encoder).__name__} has no utterance-level head")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.runtime = resolve_runtime(runtime, self.device, self.precision, network=network_kind(encoder))
        self.openvino = None
        if self.runtime == "openvino":
            from .openvino_net import OpenVINONet, openvino_version

            fp32, _ = inference_copy(_Utterance(encoder), None, False, False, torch.device("cpu"))
            samples = max(1, int(round(window * sample_rate)))
            self.openvino = OpenVINONet(fp32, (-1,), self.precision, cache_dir=cache_dir, variant="utterance",
                                        example_shape=(samples,))
            del fp32
            g = torch.Generator().manual_seed(0)
            probe = self.openvino((torch.randn(1, samples, generator=g) * 0.1).numpy())
            if not all(np.isfinite(v).all() for v in probe.values()):
                raise ValueError(f"OpenVINO {openvino_version()} in {self.precision} gives non-finite outputs for "
                                 f"{type(encoder).__name__}; use precision fp32 or runtime torch")
            self.module = None
        else:
            self.module, _ = inference_copy(encoder, torch.bfloat16 if self.precision == "bf16" else None,
                                            False, False, self.device)

    @property
    def description(self) -> str:
        return f"{self.runtime}, {self.precision}, {self.device}"

    def utterance(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.openvino is not None:
            out = self.openvino(wave.detach().cpu().float().numpy())
            return {k: torch.from_numpy(v) for k, v in out.items()}
        with torch.inference_mode():
            out = self.module.utterance(wave.to(self.device, torch.float32))
        return {k: v.float() for k, v in out.items()}


__all__ = ["FrameRunner", "UtteranceRunner", "frame_network", "network_kind", "resolve_precision", "resolve_runtime", "resolve_device",
           "PRECISIONS", "RUNTIMES",
           "OPENVINO_SPEEDUP"]
