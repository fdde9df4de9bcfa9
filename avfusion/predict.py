"""Any video file -> per-frame valence/arousal: a table, a plot and, optionally, an overlay video.

    from avfusion.predict import Predictor
    table = Predictor("runs/exp/best").predict_video("talk.mp4", out_dir="out/")
    table.head()   # frame, timestamp, valence, arousal, face_found

The video goes through the same path as training data: frames decoded with decord, faces found by a
detector backend (``yunet`` for arbitrary video, ``full`` when the face fills the frame), cropped and
normalised as the model's video encoder asks, the audio track decoded with PyAV at 16 kHz (when
the model listens), windows of T frames, predictions put back on every frame. A video without an
audio stream is predicted from the face alone (audio masked, one warning); frames without a face
are kept and flagged ``face_found = False``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import nn

PathLike = Union[str, Path]

# Window length when the model folder does not say what it was trained with (DataConfig's default).
DEFAULT_CLIP_LEN = 32


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


class Predictor:
    """Per-frame valence/arousal for video files with one model.

    Args:
        model_or_path: an :class:`~avfusion.model.AVModel`, a ``save_pretrained`` folder, or a model
            name (``emonet_8`` with ``checkpoint``).
        checkpoint: video-encoder weights for a named model.
        device: default: CUDA when available, else the CPU.
        clip_len: frames per window; default: the clip length the model was trained with
            (``experiment.yaml`` beside an exported model), else 32.
        overrides: nested model-config changes for a named model or folder.
    """

    def __init__(
        self,
        model_or_path: Union[nn.Module, PathLike],
        checkpoint: Optional[PathLike] = None,
        device: Optional[Union[str, torch.device]] = None,
        clip_len: Optional[int] = None,
        **overrides: Any,
    ) -> None:
        from .factory import load_model

        if isinstance(model_or_path, nn.Module):
            self.model = model_or_path
            self.name = getattr(getattr(model_or_path, "cfg", None), "name", "") or "model"
            trained = None
        else:
            self.model = load_model(model_or_path, checkpoint, **overrides)
            p = Path(model_or_path)
            self.name = p.name if p.is_dir() else p.stem
            trained = training_clip_len(p) if p.is_dir() else None
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        fusion = getattr(self.model, "fusion", None)
        limit = fusion.cfg.max_len if fusion is not None else None
        self.clip_len = int(clip_len or trained or DEFAULT_CLIP_LEN)
        if limit is not None and self.clip_len > limit:
            if clip_len is not None:
                raise ValueError(f"clip_len {clip_len} exceeds the model's temporal range (fusion.max_len {limit})")
            self.clip_len = int(limit)

    # -- input --------------------------------------------------------------------------------
    def _record(self, path: Path) -> Any:
        from .data.audio import has_audio
        from .data.records import VideoRecord
        from .data.video import VideoFile

        video = VideoFile(path)
        n = len(video)  # opens the file: a bad file fails here with a message naming it
        audio_path = None
        if self.model.use_audio:
            if has_audio(path):
                audio_path = str(path)
            elif not self.model.use_video:
                raise ValueError(f"{path}: no audio stream, and the model ({self.name}) uses audio only")
            else:
                warnings.warn(f"{path}: no audio stream; predicting from the face alone (audio masked)",
                              RuntimeWarning, stacklevel=3)
        return VideoRecord(
            video_id=path.stem, source=str(path), n_frames=n, fps=video.fps,
            labels=np.full((n, 2), np.nan, np.float32), label_mask=np.zeros(n, dtype=bool),
            audio_path=audio_path, face_mode="detect", timestamps=video.timestamps, dataset="predict")

    def _dataset(self, rec: Any, face_backend: str, yunet_model: Optional[PathLike], face_margin: float,
                 face_smoothing: int) -> Any:
        from .data.clips import ClipDataset
        from .data.faces import FaceCropper, create_detector
        from .data.transforms import build_transform

        if face_backend == "yunet":
            detector = create_detector("yunet", model_path=yunet_model)
        elif face_backend in ("full", "precropped"):
            detector = create_detector(face_backend)
        else:
            raise ValueError(f"face_backend {face_backend!r}: for a video file use 'yunet' (detect the "
                             "face) or 'full' (the face fills the frame)")
        pcfg = self.model.pretrained_cfg if self.model.use_video else None
        transform = build_transform(pcfg, train=False) if pcfg is not None else None
        cropper = FaceCropper(detector, margin=face_margin, smoothing=face_smoothing)
        # Half-overlapping windows, averaged where they overlap: a frame near a window's edge still
        # gets context from both sides, so predictions do not jump at window boundaries.
        return ClipDataset([rec], self.clip_len, stride=max(1, self.clip_len // 2), cropper=cropper,
                           transform=transform, with_audio=self.model.use_audio)

    # -- prediction ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict_video(
        self,
        path: PathLike,
        face_backend: str = "yunet",
        yunet_model: Optional[PathLike] = None,
        face_margin: float = 0.25,
        face_smoothing: int = 5,
        batch_size: int = 4,
        num_workers: int = 0,
        smooth_window: int = 1,
        out_dir: Optional[PathLike] = None,
        plot: bool = True,
        overlay: bool = False,
    ) -> pd.DataFrame:
        """Predict every frame of the video at ``path``.

        Returns a DataFrame with one row per frame: ``frame``, ``timestamp`` (seconds),
        ``valence``, ``arousal`` (in [-1, 1]; with ``smooth_window`` > 1 a centred moving average
        of that many frames) and ``face_found``. Frame-by-frame models (no temporal model) give NaN
        where no face was found; temporal models predict those frames from their context.
        With ``out_dir``: ``<stem>_va.csv``, ``<stem>_va.png`` (``plot``) and ``<stem>_overlay.mp4``
        (``overlay``: the video with the values drawn on it).
        """
        from torch.utils.data import DataLoader

        from .data.clips import collate
        from .evaluation.collect import predict_loader, smooth_predictions

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: video file not found")
        rec = self._record(path)
        dataset = self._dataset(rec, face_backend, yunet_model, face_margin, face_smoothing)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
        videos = predict_loader(self.model, loader, {rec.video_id: rec.n_frames}, device=self.device,
                                overlap="mean", require_labelled=False)
        v = videos[rec.video_id]
        if (v.counts < 1).any():
            raise RuntimeError(f"{path}: {int((v.counts < 1).sum())} frame(s) not predicted")
        pred = smooth_predictions(v, smooth_window) if smooth_window > 1 else v.pred
        pred = np.clip(pred, -1.0, 1.0)
        if getattr(self.model, "fusion", None) is None:
            pred = np.where(v.face_mask[:, None], pred, np.nan)
        table = pd.DataFrame({
            "frame": np.arange(v.n_frames),
            "timestamp": rec.frame_times(),
            "valence": pred[:, 0],
            "arousal": pred[:, 1],
            "face_found": v.face_mask,
        })
        if not v.face_mask.any():
            warnings.warn(f"{path}: no face found in any frame (face_backend={face_backend!r})",
                          RuntimeWarning, stacklevel=2)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            table.to_csv(out / f"{path.stem}_va.csv", index=False)
            from .viz import plot_prediction, write_overlay

            if plot:
                plot_prediction(table, out / f"{path.stem}_va.png", title=f"{path.name} ({self.name})")
            if overlay:
                write_overlay(path, table, out / f"{path.stem}_overlay.mp4")
        return table


__all__ = ["Predictor", "training_clip_len"]
