"""A network under OpenVINO: converted once, kept on disk, compiled for the CPU.

Converting a PyTorch module (``openvino.convert_model``: a trace to OpenVINO's graph) takes 15-30 s
for EmoNet-8 on a 2-core CPU, so the converted graph (float32 IR: ``model.xml`` + ``model.bin``)
is saved under the cache folder, one sub-folder per :func:`cache_key`: a hash of the openvino and
torch versions, the module's architecture and weights, the input shape and a variant (the
settings that change the traced graph: flip averaging, outputs, a quantization). A second run
reads it and only compiles (0.3 s for EmoNet-8). OpenVINO's own compiled-blob cache
(``CACHE_DIR``) is not used: it would save 0.2 s of that at the cost of a second copy of the
weights on disk. The default folder is ``$AVFUSION_HOME/cache/openvino``
(``~/.cache/avfusion/cache/openvino``); nothing is evicted (EmoNet-8: 54 MB per set of weights,
tf_efficientnet_b0 16 MB, ViT-B/16 330 MB).

The graph takes any batch (``(-1, C, H, W)``): measured on a 2-core Xeon with AMX, a graph fixed at
batch 16 (the last batch padded) was no faster than the dynamic one at batch 16 (10.8 and 11.0
frames/s, bf16), and padding would cost a short last batch the whole batch's time.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from ..sources import avfusion_home

INSTALL_HINT = 'pip install "avfusion[openvino]"'
# OpenVINO's names for the precisions of avfusion.inference.runner.PRECISIONS. An int8 graph runs
# its quantized operations in int8 and the rest in f32: with the bf16 hint, openvino 2026.4's CPU
# plugin fails to compile NNCF's int8 EmoNet ("No suitable implementations") on a Xeon with AMX.
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def import_openvino() -> Any:
    """The ``openvino`` module, or a ValueError in one line saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ValueError(f"runtime 'openvino' needs the openvino package, which is not installed: "
                         f"{INSTALL_HINT}") from None
    return openvino


def openvino_version() -> str:
    """The installed openvino's version (it must be importable)."""
    return str(import_openvino().__version__).split("-")[0]


def openvino_available() -> bool:
    """Whether ``openvino`` imports (the import is what is tried: a broken install counts as absent)."""
    try:
        import_openvino()
    except ValueError:
        return False
    return True


def default_cache_dir() -> Path:
    """``$AVFUSION_HOME/cache/openvino``."""
    return avfusion_home() / "cache" / "openvino"


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's architecture (its repr) and every parameter and buffer (names, dtypes,
    shapes, bytes): ~0.1 s for EmoNet's 50 MB of float32 weights."""
    h = hashlib.sha256(repr(module).encode())
    for name, t in list(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def cache_key(module: nn.Module, input_shape: tuple[int, ...], variant: str = "float") -> str:
    """The cache sub-folder's name for ``module`` converted for inputs ``(-1, *input_shape)``."""
    import openvino

    h = hashlib.sha256()
    for part in (openvino.__version__, torch.__version__, weights_digest(module), "x".join(map(str, input_shape)),
                 variant):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]


def _save_atomically(model: Any, folder: Path) -> None:
    """Write ``model``'s IR into ``folder`` whole or not at all (concurrent runs each write their
    own temporary folder; the first rename wins)."""
    import openvino

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    try:
        # Weights stay float32 (the default would store float16 and change fp32 results).
        openvino.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not a secret
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: its copy is the same graph
            if not (folder / "model.xml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def int8_quantizer(calibration: np.ndarray, subset_size: int = 300) -> Callable[[Any], Any]:
    """NNCF post-training quantization of a converted graph (int8 weights and activations, NNCF's
    default symmetric preset), calibrated on ``calibration``: (N, C, H, W) float32 inputs
    normalised as the network expects, fed one at a time. For :class:`OpenVINONet`'s ``quantize``."""

    def quantize(model: Any) -> Any:
        try:
            import nncf
        except ImportError:
            raise ValueError("int8 needs NNCF, which is not installed: pip install nncf") from None
        data = nncf.Dataset([np.ascontiguousarray(calibration[i : i + 1], dtype=np.float32)
                             for i in range(len(calibration))])
        return nncf.quantize(model, data, subset_size=min(len(calibration), subset_size))

    return quantize


class OpenVINONet:
    """``module`` (outputs: a dict of tensors) compiled by OpenVINO for the CPU.

    Args:
        module: the network, in float32 eval() mode; it is traced (``convert_model``) when the cache
            lacks it, and not kept.
        input_shape: one input without the batch, ``(C, H, W)``.
        precision: ``fp32`` (OpenVINO ``f32``) or ``bf16`` (its ``bf16`` inference precision:
            AMX or AVX512-BF16 CPUs).
        threads: CPU threads (``INFERENCE_NUM_THREADS``); default torch's.
        cache_dir: where converted graphs are kept (default :func:`default_cache_dir`); False: none.
        quantize: turns the converted float graph into another one (int8) before it is saved.
        variant: whatever changes the traced graph beside the architecture's repr, the weights and
            the shape (settings read in ``forward``: flip averaging, which outputs; a quantization):
            part of the cache key.
        example_shape: the input (without the batch) traced when ``input_shape`` has dynamic
            dimensions (-1: an audio network over waves of any length); default ``input_shape``.

    Calling it on a ``(N, C, H, W)`` float32 array returns a dict of float32 arrays. ``converted``
    tells whether this construction converted the module (False: read from the cache).
    """

    def __init__(
        self,
        module: nn.Module,
        input_shape: tuple[int, ...],
        precision: str = "fp32",
        threads: Optional[int] = None,
        cache_dir: Union[str, Path, None, bool] = None,
        quantize: Optional[Callable[[Any], Any]] = None,
        variant: str = "float",
        example_shape: Optional[tuple[int, ...]] = None,
    ) -> None:
        ov = import_openvino()
        if precision not in _OV_PRECISION:
            raise ValueError(f"openvino precision must be one of {', '.join(_OV_PRECISION)}; got {precision!r}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.example_shape = tuple(int(s) for s in (example_shape or input_shape))
        if any(d < 0 for d in self.example_shape):
            raise ValueError(f"example_shape {self.example_shape} needs a size for each dynamic dimension")
        self.precision = precision
        self.converted = False
        folder, self.key = None, None
        if cache_dir is not False:
            self.key = cache_key(module, self.input_shape, variant)
            folder = Path(cache_dir or default_cache_dir()) / self.key
        self.cache_folder = folder
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
            # One request at a time with all threads on it: what a synchronous batch loop wants.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        }
        source: Any
        if folder is not None and (folder / "model.xml").is_file():
            source = str(folder / "model.xml")
        else:
            source = self._convert(ov, module, quantize)
            self.converted = True
            if folder is not None:
                try:
                    _save_atomically(source, folder)
                except OSError as e:
                    warnings.warn(f"openvino cache {folder} cannot be written ({e}); the network is converted "
                                  "again next time", RuntimeWarning, stacklevel=3)
                    self.cache_folder = None
        self.compiled = core.compile_model(source, "CPU", config)
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._request = self.compiled.create_infer_request()
        self._outputs = [(o.get_any_name(), o) for o in self.compiled.outputs]

    def _convert(self, ov: Any, module: nn.Module, quantize: Optional[Callable[[Any], Any]]) -> Any:
        example = torch.zeros(2, *self.example_shape)  # batch 2: nothing may fold the batch away
        if len(self.example_shape) == 1:  # a wave: noise, since silence may take other paths (0/0)
            example = torch.randn(2, *self.example_shape, generator=torch.Generator().manual_seed(0)) * 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python-level shape checks
            model = ov.convert_model(module.eval(), example_input=example)
        model.reshape([-1, *self.input_shape])
        return quantize(model) if quantize is not None else model

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x: (N, C, H, W) (or the input_shape given) float32 -> {output name: (N, ...) float32}."""
        if len(x.shape) != len(self.input_shape) + 1 or any(
                d >= 0 and d != g for d, g in zip(self.input_shape, x.shape[1:])):
            shape = ", ".join(map(str, self.input_shape))
            raise ValueError(f"the openvino network was converted for inputs (N, {shape}) "
                             f"(the encoder's input_size); got {tuple(x.shape)}")
        res = self._request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return {name: np.array(res[port], dtype=np.float32) for name, port in self._outputs}


__all__ = ["OpenVINONet", "int8_quantizer", "INSTALL_HINT", "import_openvino", "openvino_available", "openvino_version",
           "default_cache_dir", "cache_key", "weights_digest"]
