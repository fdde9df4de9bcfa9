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

import argparse
import math
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
        from .evaluation import load_model

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
        from .evaluation import predict_loader, smooth_predictions

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
            if plot:
                plot_prediction(table, out / f"{path.stem}_va.png", title=f"{path.name} ({self.name})")
            if overlay:
                write_overlay(path, table, out / f"{path.stem}_overlay.mp4")
        return table


# ------------------------------------------------------------------------------------------------
# Outputs


def plot_prediction(table: pd.DataFrame, path: PathLike, title: str = "") -> Path:
    """Valence and arousal over time, frames without a face shaded."""
    from .evaluation import _pyplot

    plt = _pyplot()
    t = table["timestamp"].to_numpy()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(t, table["valence"], label="valence", color="C0")
    ax.plot(t, table["arousal"], label="arousal", color="C3")
    no_face = ~table["face_found"].to_numpy(bool)
    if no_face.any():
        ax.fill_between(t, -1.05, 1.05, where=no_face, color="0.85", step="mid", label="no face")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylim=(-1.05, 1.05), xlabel="time (s)", ylabel="value", title=title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _draw(frame: np.ndarray, valence: float, arousal: float, face: bool) -> np.ndarray:
    """Bars and numbers for one RGB frame (drawn in place on a copy)."""
    import cv2

    img = np.ascontiguousarray(frame).copy()
    h, w = img.shape[:2]
    if min(h, w) < 360:  # text on a thumbnail is unreadable: enlarge small videos
        k = int(math.ceil(360 / min(h, w)))
        img = cv2.resize(img, (w * k, h * k), interpolation=cv2.INTER_NEAREST)
        h, w = img.shape[:2]
    scale = max(0.4, min(w, h) / 480)
    bar_w, bar_h, x0 = int(w * 0.3), max(4, int(10 * scale)), int(8 * scale)
    for k, (name, val, colour) in enumerate((("V", valence, (60, 120, 255)), ("A", arousal, (255, 80, 60)))):
        y = int((14 + 22 * k) * scale)
        cv2.rectangle(img, (x0 + int(20 * scale), y), (x0 + int(20 * scale) + bar_w, y + bar_h), (40, 40, 40), -1)
        mid = x0 + int(20 * scale) + bar_w // 2
        if np.isfinite(val):
            end = mid + int(round(val * bar_w / 2))
            cv2.rectangle(img, (min(mid, end), y), (max(mid, end), y + bar_h), colour, -1)
            text = f"{name} {val:+.2f}"
        else:
            text = f"{name}  n/a"
        cv2.putText(img, text, (x0 + int(26 * scale) + bar_w, y + bar_h), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45 * scale, (255, 255, 255), max(1, int(scale)), cv2.LINE_AA)
        cv2.putText(img, name, (x0, y + bar_h), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (255, 255, 255),
                    max(1, int(scale)), cv2.LINE_AA)
    if not face:
        cv2.putText(img, "no face", (x0, int(70 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale,
                    (255, 255, 0), max(1, int(scale)), cv2.LINE_AA)
    return img


def write_overlay(video_path: PathLike, table: pd.DataFrame, out_path: PathLike, chunk: int = 64) -> Path:
    """The video with each frame's valence/arousal drawn on it (H.264 mp4, no audio)."""
    import av

    from .data.video import VideoFile

    video = VideoFile(video_path)
    n = len(video)
    if n != len(table):
        raise ValueError(f"{video_path}: {n} frames but {len(table)} predictions")
    from fractions import Fraction

    rate = Fraction(video.fps).limit_denominator(1001) if video.fps > 0 else Fraction(25)
    out_path = Path(out_path)
    with av.open(str(out_path), mode="w") as container:
        stream = None
        for start in range(0, n, chunk):
            frames = video.get_batch(list(range(start, min(n, start + chunk))))
            for k, frame in enumerate(frames):
                row = table.iloc[start + k]
                img = _draw(frame, float(row["valence"]), float(row["arousal"]), bool(row["face_found"]))
                # yuv420p needs even sizes.
                img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
                if stream is None:
                    stream = container.add_stream(_codec(), rate=rate)
                    stream.width, stream.height = img.shape[1], img.shape[0]
                    stream.pix_fmt = "yuv420p"
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return out_path


def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


# ------------------------------------------------------------------------------------------------
# The `avfusion predict` command


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``predict VIDEO --model DIR|NAME [--out DIR]`` to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "predict", help="per-frame valence/arousal of a video file",
        description="Predict valence and arousal for every frame of a video: a CSV, a plot and "
                    "optionally an overlay video.")
    p.add_argument("video", nargs="+", help="video file(s)")
    p.add_argument("--model", required=True, help="a save_pretrained folder or a model name (e.g. emonet_8)")
    p.add_argument("--checkpoint", help="video-encoder weights for a named model (e.g. emonet_8.pth)")
    p.add_argument("--out", default=None, help="output folder (default: runs/predict)")
    p.add_argument("--face-backend", default="yunet", choices=("yunet", "full"),
                   help="yunet: detect the face (needs the YuNet model file); full: the face fills the frame")
    p.add_argument("--yunet-model", help="YuNet ONNX file (default: AVFUSION_HOME or pretrained/)")
    p.add_argument("--clip-len", type=int, help="frames per window (default: as in training)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--smooth", type=int, default=1, help="moving average over this many frames (odd)")
    p.add_argument("--overlay", action="store_true", help="also write the video with the values drawn on it")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.set_defaults(func=run_predict)
    return p


def run_predict(args: argparse.Namespace) -> int:
    """Entry point of ``avfusion predict`` (after :func:`add_predict_parser` parsed the arguments)."""
    predictor = Predictor(args.model, checkpoint=args.checkpoint, device=args.device, clip_len=args.clip_len)
    out = Path(args.out or "runs/predict")
    for video in args.video:
        table = predictor.predict_video(
            video, face_backend=args.face_backend, yunet_model=args.yunet_model, batch_size=args.batch_size,
            smooth_window=args.smooth, out_dir=out, plot=not args.no_plot, overlay=args.overlay)
        stem = Path(video).stem
        found = table["face_found"].mean() if len(table) else math.nan
        print(f"{video}: {len(table)} frames, face found in {100 * found:.0f} %; mean valence "
              f"{np.nanmean(table['valence']):+.2f}, arousal {np.nanmean(table['arousal']):+.2f} -> "
              f"{out / (stem + '_va.csv')}")
    return 0


__all__ = ["Predictor", "plot_prediction", "write_overlay", "add_predict_parser", "run_predict",
           "training_clip_len"]
