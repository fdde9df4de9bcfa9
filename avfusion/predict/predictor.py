"""Any video -> per-frame valence/arousal with one model: :class:`Predictor`.

    from avfusion import Predictor
    p = Predictor.from_pretrained("emonet_8", checkpoint="pretrained/emonet_8.pth")
    table = p.predict_video("talk.mp4")   # frame, timestamp, valence, arousal, face_found

The frames go through :mod:`avfusion.inference`: decoded in chunks by a worker thread that also
finds the face in each frame once (YuNet, or ``full`` when the face fills the frame), the model's
per-frame network run once per frame in the chosen precision, and, for temporal models, the fusion
model over half-overlapping windows of those per-frame features with the audio each window spans.
Memory does not grow with the video's length. A video without an audio stream is predicted from
the face alone (audio masked, one warning); frames without a face are kept and flagged
``face_found = False`` (frame-by-frame models give NaN there; temporal models predict them from
their context).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..files import atomic_path
from ..inference.engine import DEFAULT_CHUNK, ArrayFrames, VideoOutputs, predict_frame_by_frame
from ..inference.runner import PRECISIONS, FrameRunner, resolve_device
from ..timing import SAMPLE_RATE
from .temporal import predict_temporal

PathLike = Union[str, Path]

# Window length when the model folder does not say what it was trained with (DataConfig's default).
DEFAULT_CLIP_LEN = 32
FACE_BACKENDS = ("yunet", "full")
FORMATS = ("csv", "parquet", "json")
COLUMNS = ("frame", "timestamp", "valence", "arousal", "face_found")


def training_clip_len(path: PathLike) -> Optional[int]:
    """``data.clip_len`` of the experiment an exported model was trained in (experiment.yaml
    beside it), or None. Windows longer than in training would use temporal positions the model
    never saw."""
    exp = Path(path) / "experiment.yaml"
    if not exp.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(exp.read_text()) or {}
        value = (data.get("data") or {}).get("clip_len")
    except (yaml.YAMLError, AttributeError):
        return None
    return int(value) if value else None


def check_options(stride: int = 1, smooth: int = 1, batch_size: int = 16, face_backend: str = "yunet",
                  precision: str = "auto", clip_len: Optional[int] = None, chunk: int = DEFAULT_CHUNK,
                  fmt: str = "csv") -> None:
    """Raise a ValueError naming the option when a prediction setting is invalid (before any work)."""
    checks = [
        (stride >= 1, f"stride must be >= 1 (run the model on every K-th frame), got {stride}"),
        (smooth >= 1 and smooth % 2 == 1, f"smooth must be a positive odd number of frames, got {smooth}"),
        (batch_size >= 1, f"batch size must be >= 1, got {batch_size}"),
        (chunk >= 1, f"chunk must be >= 1 frame, got {chunk}"),
        (face_backend in FACE_BACKENDS, f"face backend must be one of {', '.join(FACE_BACKENDS)}, got {face_backend!r}"),
        (precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"),
        (clip_len is None or clip_len >= 1, f"clip length must be >= 1 frame, got {clip_len}"),
        (fmt in FORMATS, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def write_table(table: pd.DataFrame, path: PathLike, fmt: Optional[str] = None) -> Path:
    """Write ``table`` as csv, parquet or json (records), whole or not at all."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    with atomic_path(path) as tmp:
        if fmt == "csv":
            table.to_csv(tmp, index=False)
        elif fmt == "parquet":
            table.to_parquet(tmp, index=False)
        elif fmt == "json":
            table.to_json(tmp, orient="records", indent=1)
        else:
            raise ValueError(f"{path}: unknown table format {fmt!r} (one of {', '.join(FORMATS)})")
    return path


def read_table(path: PathLike) -> pd.DataFrame:
    """Read a table :func:`write_table` wrote (format from the suffix)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt == "csv":
        return pd.read_csv(path)
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "json":
        return pd.read_json(path, orient="records")
    raise ValueError(f"{path}: unknown table format {fmt!r}")


class Predictor:
    """Per-frame valence/arousal for videos (or frames in memory) with one model.

    Args:
        model_or_path: an :class:`~avfusion.model.AVModel`, a ``save_pretrained`` folder, or a model
            name (``emonet_8`` with ``checkpoint``).
        checkpoint: video-encoder weights for a named model.
        device: default: CUDA when available, else the CPU.
        clip_len: frames per window of a temporal model; default: the clip length it was trained
            with (``experiment.yaml`` beside an exported model), else 32.
        precision: ``auto`` (bf16 + channels_last where the hardware computes bf16 natively, else
            fp32) | ``fp32`` | ``bf16``; applies to the per-frame network.
        compile: torch.compile the per-frame network (slow first batch, faster after).
        flip: average EmoNet with the mirrored face (the official evaluation does; 2x the work).
        stride: run a frame-by-frame model on every K-th frame and interpolate between.
        batch_size: face crops per network call.
        face_backend: ``yunet`` (detect the face) or ``full`` (the face fills the frame).
        yunet_model: the YuNet ONNX file (default: ``$AVFUSION_HOME`` or ``./pretrained``).
        face_margin, face_smoothing: crop margin (fraction of the face size per side) and box
            smoothing (frames, centred).
        smooth: centred moving average of the predictions over this many frames (odd; 1 = off).
        overrides: nested model-config changes for a named model or folder.
    """

    def __init__(
        self,
        model_or_path: Union[nn.Module, PathLike],
        checkpoint: Optional[PathLike] = None,
        device: Optional[Union[str, torch.device]] = None,
        clip_len: Optional[int] = None,
        *,
        precision: str = "auto",
        compile: bool = False,
        flip: bool = False,
        stride: int = 1,
        batch_size: int = 16,
        face_backend: str = "yunet",
        yunet_model: Optional[PathLike] = None,
        face_margin: float = 0.25,
        face_smoothing: int = 5,
        smooth: int = 1,
        chunk: int = DEFAULT_CHUNK,
        **overrides: Any,
    ) -> None:
        from ..factory import load_model

        check_options(stride, smooth, batch_size, face_backend, precision, clip_len, chunk)
        self.device = resolve_device(device)
        if isinstance(model_or_path, nn.Module):
            self.model = model_or_path
            self.name = getattr(getattr(model_or_path, "cfg", None), "name", "") or "model"
            trained = None
        else:
            self.model = load_model(model_or_path, checkpoint, **overrides)
            p = Path(model_or_path)
            self.name = "-".join(p.resolve().parts[-2:]) if p.is_dir() else p.stem
            trained = training_clip_len(p) if p.is_dir() else None
        self.temporal = getattr(self.model, "fusion", None) is not None
        if stride > 1 and self.temporal:
            raise ValueError(f"stride {stride}: only frame-by-frame models (no fusion module) can skip "
                             "frames; a temporal model needs every frame (use stride 1)")
        self.model.to(self.device).eval()
        limit = self.model.fusion.cfg.max_len if self.temporal else None
        self.clip_len = int(clip_len or trained or DEFAULT_CLIP_LEN)
        if limit is not None and self.clip_len > limit:
            if clip_len is not None:
                raise ValueError(f"clip_len {clip_len} exceeds the model's temporal range (fusion.max_len {limit})")
            self.clip_len = int(limit)
        self.stride, self.smooth, self.chunk = int(stride), int(smooth), int(chunk)
        self.face_backend = face_backend
        self.runner: Optional[FrameRunner] = None
        self.cropper = self.transform = None
        if self.model.use_video:
            from ..data.faces import FaceCropper, create_detector
            from ..data.transforms import build_transform

            self.runner = FrameRunner(self.model, precision, compile, self.device, flip, batch_size)
            detector = (create_detector("yunet", model_path=yunet_model) if face_backend == "yunet"
                        else create_detector(face_backend))
            self.cropper = FaceCropper(detector, margin=face_margin, smoothing=face_smoothing)
            self.transform = build_transform(self.model.pretrained_cfg, train=False)
        self.settings = {
            "model": self.name, "precision": self.runner.precision if self.runner else "fp32",
            "compile": bool(compile), "flip": bool(self.runner.flip) if self.runner else False,
            "stride": self.stride, "clip_len": self.clip_len if self.temporal else None,
            "face_backend": face_backend if self.model.use_video else None, "smooth": self.smooth,
        }

    @classmethod
    def from_pretrained(cls, name_or_dir: PathLike, checkpoint: Optional[PathLike] = None,
                        precision: str = "auto", **kwargs: Any) -> "Predictor":
        """A predictor for a model name (``emonet_8``), YAML file or ``save_pretrained`` folder."""
        return cls(name_or_dir, checkpoint, precision=precision, **kwargs)

    # -- running ------------------------------------------------------------------------------
    def _outputs(self, reader: Any, audio: Optional[np.ndarray], progress: Optional[Callable[[int], None]]) -> VideoOutputs:
        if not self.temporal:
            return predict_frame_by_frame(self.runner, reader, self.cropper, self.transform, self.stride,
                                          chunk=self.chunk, progress=progress)
        return predict_temporal(self.model, self.runner, reader, self.cropper, self.transform, self.clip_len,
                                audio, SAMPLE_RATE, chunk=self.chunk, progress=progress)

    def _table(self, out: VideoOutputs) -> pd.DataFrame:
        from ..metrics import moving_average

        va = out.va.astype(np.float64)
        valid = np.isfinite(va).all(axis=1)
        if self.smooth > 1:
            va = np.where(valid[:, None], moving_average(np.nan_to_num(va), self.smooth, valid=valid), np.nan)
        return pd.DataFrame({
            "frame": np.arange(len(va)),
            "timestamp": out.timestamps,
            "valence": va[:, 0],
            "arousal": va[:, 1],
            "face_found": out.face_mask,
        })

    def _audio(self, path: Path) -> Optional[np.ndarray]:
        """The 16 kHz track when the model listens; None (masked, one warning) when there is none."""
        if not self.model.use_audio:
            return None
        from ..data.audio import AudioDecodeError, has_audio, load_audio

        if not has_audio(path):
            if not self.model.use_video:
                raise ValueError(f"{path}: no audio stream, and the model ({self.name}) uses audio only")
            warnings.warn(f"{path}: no audio stream; predicting from the face alone (audio masked)",
                          RuntimeWarning, stacklevel=3)
            return None
        try:
            return load_audio(path, SAMPLE_RATE)
        except AudioDecodeError as e:
            if not self.model.use_video:
                raise
            warnings.warn(f"{e}; predicting from the face alone (audio masked)", RuntimeWarning, stacklevel=3)
            return None

    def predict_video(
        self,
        path: PathLike,
        out_dir: Optional[PathLike] = None,
        plot: bool = True,
        overlay: bool = False,
        fmt: str = "csv",
        name: Optional[str] = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """Predict every frame of the video at ``path``.

        Returns a DataFrame with one row per frame: ``frame``, ``timestamp`` (seconds, from the
        container), ``valence``, ``arousal`` (in [-1, 1]) and ``face_found``. With ``out_dir``:
        ``<name>_va.<fmt>``, ``<name>_va.png`` (``plot``) and ``<name>_overlay.mp4`` (``overlay``),
        each written whole or not at all, the table last (its presence means the video is done);
        ``name`` defaults to the file's stem and may contain folders.
        """
        from ..data.video import VideoFile

        check_options(fmt=fmt)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: video file not found" if not path.is_dir() else
                                    f"{path}: is a folder (predict_video takes one file)")
        reader = VideoFile(path)
        n = len(reader)  # opens the file: a bad file fails here with a message naming it
        reader.close()  # frame times are kept; the frames come from one sequential PyAV pass
        audio = self._audio(path)
        bar = _progress_bar(n, path.name) if progress else None
        try:
            out = self._outputs(reader, audio, bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
            reader.close()
        table = self._table(out)
        if self.model.use_video and not out.face_mask.any():
            warnings.warn(f"{path}: no face found in any frame (face_backend={self.face_backend!r})",
                          RuntimeWarning, stacklevel=2)
        if out_dir is not None:
            self.write_outputs(path, table, out_dir, name or path.stem, plot, overlay, fmt)
        return table

    def write_outputs(self, path: Path, table: pd.DataFrame, out_dir: PathLike, name: str, plot: bool = True,
                      overlay: bool = False, fmt: str = "csv") -> Path:
        """Write a video's plot, overlay and table (in that order; each whole or not at all)."""
        from ..viz import plot_prediction, write_overlay

        base = Path(out_dir) / name
        if plot:
            with atomic_path(base.parent / f"{base.name}_va.png") as tmp:
                plot_prediction(table, tmp, title=f"{path.name} ({self.name})")
        if overlay:
            with atomic_path(base.parent / f"{base.name}_overlay.mp4") as tmp:
                write_overlay(path, table, tmp)
        return write_table(table, base.parent / f"{base.name}_va.{fmt}", fmt)

    def predict_frames(self, frames: np.ndarray, fps: float, audio: Optional[np.ndarray] = None,
                       timestamps: Optional[np.ndarray] = None) -> pd.DataFrame:
        """Predict frames already in memory: ``(T, H, W, 3)`` RGB uint8 at ``fps`` (or with their
        ``timestamps`` in seconds); ``audio`` a 16 kHz mono float track starting with the first
        frame (None: no audio). Returns the table of :meth:`predict_video`."""
        reader = ArrayFrames(frames, fps, timestamps)
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 1:
                raise ValueError(f"audio must be a mono 16 kHz track (S,), got shape {audio.shape}")
        elif self.model.use_audio and not self.model.use_video:
            raise ValueError(f"the model ({self.name}) uses audio only: pass audio")
        return self._table(self._outputs(reader, audio, None))


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs stay readable).
    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, leave=False, disable=None)


__all__ = ["Predictor", "training_clip_len", "check_options", "write_table", "read_table", "COLUMNS", "FORMATS",
           "FACE_BACKENDS"]
