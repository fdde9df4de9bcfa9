"""Any video -> per-frame valence/arousal with one model: :class:`Predictor`.

    from avfusion import Predictor
    p = Predictor.from_pretrained("emonet_8", checkpoint="pretrained/emonet_8.pth")
    table = p.predict_video("talk.mp4")   # one row per frame (COLUMNS), summary in table.attrs

Faces: a first pass finds every face in every frame (YuNet) and links them into tracks
(:mod:`avfusion.data.tracking`), so the person read never switches. ``faces="main"`` reads the
track seen in the most frames (one warning when several people appear); ``faces="all"`` reads
every track (one row per face per frame, ``track_id`` tells them apart; one model pass per
track). The ``full`` backend is one track: the whole frame.

Voice: for models that listen, Silero VAD marks the frames with speech (``speech``); a window of
a temporal model without any speech gets its audio masked like a video without a track, and a
track without speech (digital silence, music, noise) is masked entirely (one warning).

The frames go through :mod:`avfusion.inference`: decoded in chunks by a worker thread, the model's
per-frame network run once per frame with a face in the chosen precision, and, for temporal
models, the fusion model over half-overlapping windows of those per-frame features with the audio
each window spans. Memory does not grow with the video's length. Models of experts (``av_experts``)
run the voice expert over the track in a thread beside the face pass (the networks release the
GIL; the values are those of the two run one after the other) and mix the two per frame.

A row is ``valid`` when the model saw something at that frame: the face (video models) or speech
(audio models; with ``speech="off"``, any audio). Rows that are not valid have NaN values and are
left out of every mean; the per-video summary (:func:`summarize`) counts faces, speech and valid
frames, and gives the time spent in each quadrant of the valence/arousal circle.
"""
from __future__ import annotations

import json
import math
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..files import atomic_path, write_text_atomic
from ..inference.engine import (DEFAULT_CHUNK, VideoOutputs, combine_experts, predict_frame_by_frame, predict_temporal,
                                predict_voice, prefetch)
from ..inference.readers import ArrayFrames, read_chunks
from ..inference.runner import PRECISIONS, RUNTIMES, FrameRunner, resolve_device
from ..version import __version__
from .columns import EXPRESSIONS, QUADRANTS, expression_names, quadrant_names

PathLike = Union[str, Path]

FACE_BACKENDS = ("yunet", "full")
FORMATS = ("csv", "parquet", "json")
FACES = ("main", "all")
SPEECH = ("auto", "off")
# Every table's columns, in order; ``expr_<name>`` columns follow for models with expression
# probabilities (EmoNet). ``track_id`` -1 and NaN box: no face in this row.
COLUMNS = ("video", "frame", "timestamp", "track_id", "face_found", "face_x", "face_y", "face_w", "face_h",
           "face_score", "speech", "speech_prob", "valid", "valence", "arousal", "quadrant")
# A second face track shorter than this (seconds) is not worth a warning (a false detection).
MIN_TRACK_SECONDS = 0.5
# YuNet on one frame in this many of a file (a steady face interpolated between; see
# avfusion.data.faces.StreamingCropper): half the detection cost, the same faces.
DETECT_EVERY = 4


def check_options(stride: int = 1, smooth: int = 1, batch_size: int = 16, face_backend: str = "yunet",
                  precision: str = "auto", clip_len: Optional[int] = None, chunk: int = DEFAULT_CHUNK,
                  fmt: str = "csv", faces: str = "main", speech: str = "auto", runtime: str = "auto") -> None:
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
        (faces in FACES, f"faces must be one of {', '.join(FACES)}, got {faces!r}"),
        (speech in SPEECH, f"speech must be one of {', '.join(SPEECH)}, got {speech!r}"),
        (runtime in RUNTIMES, f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}"),
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


def _number(x: Any) -> Optional[float]:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def _stats(rows: pd.DataFrame) -> dict[str, Optional[float]]:
    """Mean and (population) standard deviation of valence and arousal over the valid rows; None
    without any."""
    ok = rows["valid"].to_numpy(bool)
    out: dict[str, Optional[float]] = {}
    for dim in ("valence", "arousal"):
        v = rows[dim].to_numpy(np.float64)[ok]
        out[f"{dim}_mean"] = _number(v.mean()) if len(v) else None
        out[f"{dim}_std"] = _number(v.std()) if len(v) else None
    return out


def main_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per frame: a ``faces="all"`` table reduced to its main face (``attrs["summary"]
    ["main_track"]``; frames without it get a row without values); any other table as it is.
    Plots and overlays draw these."""
    if not len(table) or not table["frame"].duplicated().any():
        return table
    main = table.attrs.get("summary", {}).get("main_track")
    base = table.drop_duplicates("frame").set_index("frame").copy()
    for c in base.columns:
        if c in ("face_x", "face_y", "face_w", "face_h", "face_score", "valence", "arousal") or c.startswith("expr_"):
            base[c] = np.nan
    base["quadrant"] = None
    base["face_found"], base["valid"], base["track_id"] = False, False, -1
    if main is not None:
        own = table[table["track_id"] == main].set_index("frame")
        base.loc[own.index, list(own.columns)] = own
    return base.reset_index()[list(table.columns)]


def summarize(table: pd.DataFrame, durations: np.ndarray, fps: float, duration: float, **info: Any) -> dict:
    """The per-video summary of a one-row-per-frame ``table`` (the main face): frame counts, mean and
    standard deviation of valence and arousal over valid frames only (None without any), seconds per
    quadrant; ``durations`` (N,) are the frames' lengths in seconds. ``info`` is added as is."""
    ok = table["valid"].to_numpy(bool)
    speech = table["speech"]
    quad = table["quadrant"].to_numpy(object)
    per_quadrant = {q: _number(durations[ok & (quad == q)].sum()) for q in QUADRANTS}
    return {
        **info,
        "frames": int(len(table)),
        "duration_s": _number(duration),
        "fps": _number(fps),
        "frames_with_face": int(table["face_found"].to_numpy(bool).sum()),
        "frames_with_speech": None if speech.isna().all() else int(speech.fillna(False).to_numpy(bool).sum()),
        "valid_frames": int(ok.sum()),
        **_stats(table),
        "seconds_per_quadrant": per_quadrant,
    }


def write_summary(summary: dict, path: PathLike) -> Path:
    """``summary`` as JSON (NaN written as null), whole or not at all."""
    return write_text_atomic(path, json.dumps(summary, indent=1, allow_nan=False) + "\n")


class Predictor:
    """Per-frame valence/arousal for videos (or frames in memory) with one model.

    Args:
        model_or_path: an :class:`~avfusion.model.AVModel`, a ``save_pretrained`` folder, or a model
            name (``emonet_8`` with ``checkpoint``).
        checkpoint: video-encoder weights for a named model.
        device: default: CUDA when available, else the CPU.
        clip_len: frames per window of a temporal model; default: its serving spec's (the window
            it was trained with; another value gives a warning).
        hop: frames between window starts of a temporal model; default: the serving spec's
            (``clip_len // 2``; ``clip_len``: each frame in one window, as ``avfusion evaluate``).
        precision: ``auto`` (bf16 + channels_last where the hardware computes bf16 natively, else
            fp32) | ``fp32`` | ``bf16``; applies to the per-frame network.
        runtime: ``auto`` (OpenVINO on CPUs where the bench measured it faster for this network,
            else torch) | ``torch`` | ``openvino``; default ``$AVFUSION_RUNTIME`` or ``auto``.
        compile: torch.compile the per-frame network (slow first batch, faster after).
        flip: average EmoNet with the mirrored face (the official evaluation does; 2x the work).
        stride: run a frame-by-frame model on every K-th frame and interpolate between.
        batch_size: face crops per network call.
        face_backend: ``yunet`` (detect the face) or ``full`` (the face fills the frame).
        yunet_model: the YuNet ONNX file (default: ``$AVFUSION_HOME`` or ``./pretrained``).
        detect_size: the longer side frames are shrunk to for YuNet (default 320; larger for
            faces under ~1/30 of the frame; 0: the frame as it is).
        detect_every: YuNet on one computed frame in K (default 4; 1: every frame); a steady
            single face is interpolated between, anything else is detected (live: every frame).
        face_margin, face_smoothing: crop margin (fraction of the face size per side) and box
            smoothing (frames, centred); default: the model's serving spec (another value gives a
            warning: the model was trained on other crops).
        smooth: centred moving average of the predictions over this many frames (odd; 1 = off).
        faces: ``main`` (one row per frame: the face seen in the most frames; a warning when
            several people appear) or ``all`` (one row per face per frame, ``track_id``; one model
            pass per face).
        speech: ``auto`` (Silero VAD marks the frames with speech; audio without speech is masked)
            or ``off`` (all of the track counts, ``speech`` left empty).
        overrides: nested model-config changes for a named model or folder.
    """

    def __init__(
        self,
        model_or_path: Union[nn.Module, PathLike],
        checkpoint: Optional[PathLike] = None,
        device: Optional[Union[str, torch.device]] = None,
        clip_len: Optional[int] = None,
        *,
        hop: Optional[int] = None,
        precision: str = "auto",
        runtime: Optional[str] = None,
        compile: bool = False,
        flip: bool = False,
        stride: int = 1,
        batch_size: int = 16,
        face_backend: str = "yunet",
        yunet_model: Optional[PathLike] = None,
        detect_size: Optional[int] = None,
        detect_every: int = DETECT_EVERY,
        face_margin: Optional[float] = None,
        face_smoothing: Optional[int] = None,
        smooth: int = 1,
        chunk: int = DEFAULT_CHUNK,
        faces: str = "main",
        speech: str = "auto",
        **overrides: Any,
    ) -> None:
        from ..factory import load_model

        runtime = default_runtime(runtime)
        check_options(stride, smooth, batch_size, face_backend, precision, clip_len, chunk, faces=faces,
                      speech=speech, runtime=runtime)
        self.device = resolve_device(device)
        if isinstance(model_or_path, nn.Module):
            self.model = model_or_path
            self.name = getattr(getattr(model_or_path, "cfg", None), "name", "") or "model"
        else:
            from ..factory import resolve_model

            self.model = load_model(model_or_path, checkpoint, **overrides)
            src = resolve_model(model_or_path)
            p = Path(model_or_path)
            self.name = "-".join(p.resolve().parts[-2:]) if src.kind == "exported" else src.name
        self.temporal = getattr(self.model, "fusion", None) is not None
        if stride > 1 and self.temporal:
            raise ValueError(f"stride {stride}: only frame-by-frame models (no fusion module) can skip "
                             "frames; a temporal model needs every frame (use stride 1)")
        self.model.to(self.device).eval()
        if hop is not None and hop < 1:
            raise ValueError(f"hop must be >= 1 frame, got {hop}")
        self.serving = _serving(self.model, self.name, clip_len, face_margin, face_smoothing, self.temporal)
        if hop is not None:
            if hop > self.serving.clip_len:
                raise ValueError(f"hop {hop} > clip_len {self.serving.clip_len} would skip frames")
            self.serving.hop = int(hop)
        self.clip_len = int(self.serving.clip_len)
        self.stride, self.smooth, self.chunk = int(stride), int(smooth), int(chunk)
        self.face_backend, self.faces, self.speech = face_backend, faces, speech
        self.speech_detector = None
        self.speech_rule = None
        if self.model.use_audio and speech == "auto":
            from ..data.speech import SpeechDetector, serving_rule

            # The model's own rule: the frames it was trained to hear (serving spec).
            self.speech_rule = serving_rule(self.serving)
            if self.speech_rule is not None:
                self.speech_detector = SpeechDetector()
        self.runner: Optional[FrameRunner] = None
        self.voice_runner = None
        if self.model.use_audio and not self.temporal:  # the voice expert, in the precision asked
            from ..inference.runner import UtteranceRunner

            self.voice_runner = UtteranceRunner(self.model.audio_encoder, precision, self.device, runtime=runtime,
                                                window=float(self.serving.audio_window),
                                                sample_rate=int(self.serving.sample_rate))
        self.cropper = self.transform = None
        if self.model.use_video:
            from ..data.faces import build_cropper
            from ..data.transforms import serving_transform

            self.runner = FrameRunner(self.model, precision, compile, self.device, flip, batch_size, runtime=runtime)
            sv = self.serving
            self.cropper = build_cropper(face_backend, margin=sv.face_margin, smoothing=sv.face_smoothing,
                                         output_size=int(sv.crop_size), yunet_model=yunet_model,
                                         detect_size=detect_size, detect_every=detect_every)
            self.transform = serving_transform(sv)
        self.settings = {
            "model": self.name, "precision": (self.runner or self.voice_runner).precision
            if (self.runner or self.voice_runner) else "fp32",
            "runtime": self.runner.runtime if self.runner else "torch",
            "compile": bool(compile), "flip": bool(self.runner.flip) if self.runner else False,
            "stride": self.stride, "clip_len": self.clip_len if self.temporal else None,
            "hop": self._hop if self.temporal else None, "colour": self.serving.colour if self.model.use_video else None,
            "face_backend": face_backend if self.model.use_video else None,
            "detect_size": getattr(getattr(self.cropper, "detector", None), "max_side", None),
            "detector_runtime": getattr(getattr(self.cropper, "detector", None), "runtime", None),
            "detect_every": getattr(self.cropper, "detect_every", None), "smooth": self.smooth,
            "faces": faces if self.model.use_video else None, "speech": speech if self.model.use_audio else None,
        }

    @classmethod
    def from_pretrained(cls, name_or_dir: PathLike, checkpoint: Optional[PathLike] = None,
                        precision: str = "auto", **kwargs: Any) -> "Predictor":
        """A predictor for a model name (``emonet_8``), YAML file or ``save_pretrained`` folder."""
        return cls(name_or_dir, checkpoint, precision=precision, **kwargs)

    # -- running ------------------------------------------------------------------------------
    def _track_faces(self, reader: Any, at: np.ndarray, progress: Optional[Callable[[int], None]]) -> list:
        """``faces="all"``'s first pass: every face of the frames ``at`` (decoded in a worker
        thread), linked into tracks."""
        tracker = self._tracker(reader)
        detector = self.cropper.detector

        def detect() -> Any:
            for idx, frames, ok in read_chunks(reader, at, self.chunk):
                found = detector.detect_batch(frames[ok]) if ok.any() else []
                dets: list[list] = [[] for _ in idx]
                for k, d in zip(np.flatnonzero(ok), found):
                    dets[k] = d
                yield idx, dets

        for idx, dets in prefetch(detect()):
            for i, d in zip(idx, dets):
                tracker.update(int(i), d)
            if progress is not None:
                progress(len(idx) * self.stride)
        return tracker.tracks

    def _tracker(self, reader: Any) -> Any:
        from ..data.tracking import FaceTracker

        fps = float(getattr(reader, "fps", 0) or 25.0)
        return FaceTracker(max_gap=max(1, int(round(fps))), min_score=self.cropper.min_score)  # 1 s

    def _one_pass(self, reader: Any, audio: Optional[np.ndarray], speech: Optional[np.ndarray],
                  tick: Optional[Callable[[int], None]], voice: Any) -> tuple[VideoOutputs, list, Callable]:
        """The model on the largest face of each frame with the face tracker fed the same
        detections; returns the outputs, the tracks and ``agrees(track)``: whether the largest
        face was that track's face on every computed frame (then the outputs are that track's)."""
        tracker = self._tracker(reader)
        chosen: dict[int, np.ndarray] = {}

        def listen(indices: np.ndarray, found: list, boxes: np.ndarray) -> None:
            for i, dets, box in zip(indices, found, boxes):
                tracker.update(int(i), dets)
                chosen[int(i)] = box

        out = self._pass(reader, audio, speech, self.cropper, None, tick, voice, listener=listen)
        n = len(reader)
        at = np.array(sorted(chosen), dtype=np.int64)
        got = np.stack([chosen[i] for i in at]) if len(at) else np.zeros((0, 4))

        def agrees(track: Any) -> bool:
            if track is None:
                return not np.isfinite(got).any()
            want = track.per_frame(n)[0][at]
            w, g = np.isfinite(want).all(axis=1), np.isfinite(got).all(axis=1)
            return bool((w == g).all() and np.allclose(want[w], got[g], rtol=0, atol=1e-6))

        return out, tracker.tracks, agrees

    def _pass(self, reader: Any, audio: Optional[np.ndarray], audio_frames: Optional[np.ndarray], cropper: Any,
              corners: Optional[np.ndarray], progress: Optional[Callable[[int], None]],
              voice: Any = None, listener: Any = None) -> VideoOutputs:
        """The model over the whole video, reading the face that ``corners`` (a track) locate;
        ``voice``: the voice expert's values over the track (models of experts); ``listener``
        sees every frame's detections (the face tracker of the one pass)."""
        if not self.temporal:
            face = None
            if self.model.use_video:
                face = predict_frame_by_frame(self.runner, reader, cropper, self.transform, self.stride,
                                              landmarks=corners, chunk=self.chunk, progress=progress,
                                              listener=listener)
            if not self.model.use_audio:
                return face
            if isinstance(voice, _Background):  # computed beside the face pass
                voice = voice.result()
            return combine_experts(face, voice, np.asarray(reader.timestamps, dtype=np.float64), self.model.experts_mix)
        return predict_temporal(self.model, self.runner, reader, cropper, self.transform, self.clip_len, audio,
                                self.serving.sample_rate, landmarks=corners, chunk=self.chunk, progress=progress,
                                audio_frames=audio_frames, hop=self._hop, listener=listener)

    def _voice(self, audio: Optional[np.ndarray], speech: Optional[np.ndarray], times: np.ndarray,
               stop: Optional[threading.Event] = None) -> Any:
        """The voice expert over the whole track (None without audio); ``stop`` set: it ends at the
        next batch of windows (the caller has stopped)."""
        if audio is None or self.temporal or not self.model.use_audio:
            return None
        sv = self.serving

        def check(_: int) -> None:
            if stop is not None and stop.is_set():
                raise _Stopped

        return predict_voice(self.voice_runner, audio, times, sv.sample_rate, sv.audio_window, sv.audio_hop,
                             speech, progress=check)

    @property
    def _hop(self) -> int:
        return int(self.serving.hop or max(1, self.clip_len // 2))

    def _speech(self, audio: Optional[np.ndarray], times: np.ndarray, where: str,
                fps: Optional[float] = None) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
        """Frames with speech (None: not looked for), the audio the model gets (None: masked) and the
        frames' speech probabilities (None: not looked for): the model's speech rule on Silero's
        per-frame probabilities, as ``avfusion cache`` stores them for training."""
        if self.speech_detector is None or audio is None:
            return None, audio, None
        from ..data.speech import speech_frames

        probs = self.speech_detector.frame_probabilities(audio, times, self.serving.sample_rate, fps or None)
        speech = speech_frames(probs, fps or 25.0, self.speech_rule)
        if not speech.any():
            if self.model.use_video:
                warnings.warn(f"{where}: no speech in the audio track; predicting from the face alone (audio masked)",
                              RuntimeWarning, stacklevel=4)
            else:
                warnings.warn(f"{where}: no speech in the audio track; the audio-only model ({self.name}) has "
                              "nothing to read (no valid frame)", RuntimeWarning, stacklevel=4)
            return speech, None, probs
        return speech, audio, probs

    def _frame_table(self, out: VideoOutputs, track: Any, heard: np.ndarray, speech: Optional[np.ndarray],
                     video: str, speech_prob: Optional[np.ndarray] = None) -> pd.DataFrame:
        """One pass's rows, one per frame (see :data:`COLUMNS`)."""
        from ..metrics import moving_average

        n = len(out.va)
        va = out.va.astype(np.float64)
        face = np.asarray(out.face_mask, dtype=bool) if self.model.use_video else np.zeros(n, dtype=bool)
        boxes, scores = np.full((n, 4), np.nan), np.full(n, np.nan)
        if track is not None:
            boxes, scores = track.per_frame(n)
            _fill_between(boxes, face)  # frames skipped by stride: interpolated like the values
            _fill_between(scores[:, None], face)
        elif self.face_backend == "full" and self.model.use_video:  # the whole frame: centre (w/2, h/2)
            c = np.asarray(out.boxes, dtype=np.float64)
            boxes = np.stack([np.zeros(n), np.zeros(n), 2 * c[:, 0], 2 * c[:, 1]], axis=1)
            scores = np.ones(n)
        boxes[~face], scores[~face] = np.nan, np.nan
        finite = np.isfinite(va).all(axis=1)
        if self.temporal:
            valid = finite & ((face & self.model.use_video) | (heard & self.model.use_audio))
        elif out.heard is not None:  # experts: a face found, or speech the voice expert heard
            valid = finite & (face | out.heard)
        else:
            valid = finite & face
        va[~valid] = np.nan
        if self.smooth > 1:
            va = np.where(valid[:, None], moving_average(np.nan_to_num(va), self.smooth, valid=valid), np.nan)
        track_id = np.where(face, track.id if track is not None else (0 if self.face_backend == "full" else -1), -1)
        table = pd.DataFrame({
            "video": video,
            "frame": np.arange(n),
            "timestamp": out.timestamps,
            "track_id": track_id.astype(np.int64),
            "face_found": face,
            "face_x": boxes[:, 0], "face_y": boxes[:, 1], "face_w": boxes[:, 2], "face_h": boxes[:, 3],
            "face_score": scores,
            "speech": pd.array(speech, dtype="boolean") if speech is not None else pd.array([pd.NA] * n, dtype="boolean"),
            "speech_prob": (np.asarray(speech_prob, dtype=np.float64) if speech_prob is not None
                            else np.full(n, np.nan)),
            "valid": valid,
            "valence": va[:, 0],
            "arousal": va[:, 1],
            "quadrant": quadrant_names(va[:, 0], va[:, 1]),
        })
        if out.expression is not None:
            e = np.asarray(out.expression, dtype=np.float64).copy()
            e[~face] = np.nan
            for k, name in enumerate(expression_names(e.shape[1])):
                table[name] = e[:, k]
        for name, values in (out.parts or {}).items():  # each expert's own values
            table[name] = np.asarray(values, dtype=np.float64)
        return table

    def _predict(self, reader: Any, audio: Optional[np.ndarray], where: str, video: str,
                 bar: Any = None) -> pd.DataFrame:
        """The table (one row per frame, or per face and frame) of any reader, its summary in ``attrs``."""
        from ..data.tracking import TrackBoxDetector, main_track
        from ..inference.engine import model_frames

        n = len(reader)
        times = np.asarray(reader.timestamps, dtype=np.float64)
        ends = np.asarray(reader.frame_end_times, dtype=np.float64)
        fps = float(getattr(reader, "fps", 0) or 0.0)
        speech, audio, speech_prob = self._speech(audio, times, where, fps)
        if audio is None:
            heard = np.zeros(n, dtype=bool)
        elif speech is not None:
            heard = speech
        else:  # speech detection off: every frame the track covers
            heard = times < len(audio) / self.serving.sample_rate
        tick = bar.update if bar is not None else None

        tracks: list = []
        passes: list[tuple[Any, Any, Optional[np.ndarray]]] = []  # (track, cropper, corners)
        main = None
        # The voice expert: once per video, whatever the faces; beside the face pass where there is
        # one (a thread: the networks release the GIL), joined where the pass combines the experts.
        if self.model.use_video and audio is not None and not self.temporal and self.model.use_audio:
            voice: Any = _Background(lambda stop: self._voice(audio, speech, times, stop))
        else:
            voice = self._voice(audio, speech, times)
        try:
            tables = []
            if not self.model.use_video:
                passes.append((None, None, None))
            elif self.face_backend == "full":
                passes.append((None, self.cropper, None))
            elif self.faces == "main":
                # One pass: the decoding thread detects each frame once, links the faces into tracks
                # and crops the largest face while the network runs on the previous frames. When that
                # face is the main track on every frame (one person in view, the usual case) the pass
                # is the answer; otherwise the main track is read once more from its boxes (no second
                # detection).
                out, tracks, agrees = self._one_pass(reader, audio, speech, tick, voice)
                main = main_track(tracks)
                if agrees(main):
                    passes.append((main, None, None))
                    tables.append(self._frame_table(out, main, heard, speech, video, speech_prob))
                else:
                    passes.append((main, self.cropper.with_detector(TrackBoxDetector()),
                                   main.corners(n) if main is not None else np.full((n, 2, 2), np.nan)))
                    if bar is not None:
                        bar.total = 2 * n
                        bar.refresh()
            else:
                tracks = self._track_faces(reader, model_frames(n, self.stride), tick)
                main = main_track(tracks)
                cropper = self.cropper.with_detector(TrackBoxDetector())
                chosen = [main] + [t for t in tracks if t is not main] if main is not None else [None]
                for t in chosen:
                    passes.append((t, cropper, t.corners(n) if t is not None else np.full((n, 2, 2), np.nan)))
                if bar is not None:
                    bar.total = n * (1 + len(passes))
                    bar.refresh()
            for t, cropper, corners in passes[len(tables):]:
                out = self._pass(reader, audio, speech, cropper, corners, tick, voice)
                tables.append(self._frame_table(out, t, heard, speech, video, speech_prob))
            main_table = tables[0]
        finally:
            if isinstance(voice, _Background):  # an error or Ctrl-C in the face pass: the voice stops too
                voice.stop()

        long_enough = max(3, int(math.ceil(MIN_TRACK_SECONDS * (fps or 25.0) / self.stride)))
        people = [t for t in tracks if t.n_frames >= long_enough]
        if self.faces == "main" and len(people) > 1 and main is not None:
            warnings.warn(f"{where}: {len(people)} faces appear (tracks {', '.join(str(t.id) for t in people)}); "
                          f"reading track {main.id}, seen in the most frames ({main.n_frames}); faces='all' "
                          "(--faces all) gives one row per face", RuntimeWarning, stacklevel=3)
        if self.model.use_video and not main_table["face_found"].any():
            warnings.warn(f"{where}: no face found in any frame (face_backend={self.face_backend!r})",
                          RuntimeWarning, stacklevel=3)

        if len(tables) > 1:  # faces="all": each face's rows, and one empty row where no face is
            parts = [tb[tb["face_found"]] for tb in tables]
            seen = np.zeros(n, dtype=bool)
            for tb in parts:
                seen[tb["frame"].to_numpy()] = True
            parts.append(main_table[~seen])
            table = pd.concat(parts, ignore_index=True).sort_values(["frame", "track_id"], kind="stable")
            table = table.reset_index(drop=True)
        else:
            table = main_table
        durations = np.clip(ends - times, 0.0, None)
        track_info = []
        for t, _, _ in passes:
            if t is None:
                continue
            rows = table[table["track_id"] == t.id] if len(tables) > 1 else main_table[main_table["track_id"] == t.id]
            track_info.append({"track_id": t.id, "frames": int(len(rows)),
                               "first_s": _number(times[t.frames[0]]), "last_s": _number(times[t.frames[-1]]),
                               "mean_box_area": _number(t.mean_area), "valid_frames": int(rows["valid"].sum()),
                               **_stats(rows)})
        if not self.model.use_video:
            main_id, n_tracks = None, None
        elif self.face_backend == "full":
            main_id, n_tracks = 0, int(main_table["face_found"].any())
        else:
            main_id, n_tracks = (main.id if main is not None else None), len(tracks)
        summary = summarize(main_table, durations, fps, float(ends[-1]) if n else 0.0, video=video or None,
                            model=self.name, avfusion_version=__version__, options=dict(self.settings),
                            main_track=main_id, faces_tracked=n_tracks, tracks=track_info)
        table.attrs["summary"] = summary
        return table

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
            return load_audio(path, self.serving.sample_rate)
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

        Returns a DataFrame with one row per frame (``faces="all"``: per face and frame) and the
        columns of :data:`COLUMNS` (then ``expr_*`` probabilities for EmoNet models); the per-video
        summary (:func:`summarize`) is in ``table.attrs["summary"]``. With ``out_dir``:
        ``<name>_va.png`` (``plot``), ``<name>_overlay.mp4`` (``overlay``), ``<name>_summary.json``
        and ``<name>_va.<fmt>``, each written whole or not at all, the table last (its presence
        means the video is done); ``name`` defaults to the file's stem and may contain folders.
        """
        from ..data.video import VideoFile, check_video_path

        check_options(fmt=fmt)
        path = check_video_path(path)  # a folder, a FIFO, a link loop: named for what it is
        reader = VideoFile(path)
        n = len(reader)  # opens the file: a bad file fails here with a message naming it
        reader.close()  # frame times are kept; the frames come from one sequential PyAV pass
        audio = self._audio(path)
        bar = _progress_bar(n, path.name) if progress else None
        try:
            table = self._predict(reader, audio, str(path), str(path), bar)
        finally:
            if bar is not None:
                bar.close()
            reader.close()
        if out_dir is not None:
            self.write_outputs(path, table, out_dir, name or path.stem, plot, overlay, fmt)
        return table

    def write_outputs(self, path: Path, table: pd.DataFrame, out_dir: PathLike, name: str, plot: bool = True,
                      overlay: bool = False, fmt: str = "csv") -> Path:
        """Write a video's plot, overlay, summary (``table.attrs["summary"]``) and table (in that
        order; each whole or not at all). Plot and overlay show the main face (:func:`main_rows`)."""
        from ..viz import plot_prediction
        from .overlay import write_overlay

        base = Path(out_dir) / name
        shown = main_rows(table)
        if plot:
            with atomic_path(base.parent / f"{base.name}_va.png") as tmp:
                plot_prediction(shown, tmp, video=path.name, model=self.name)
        if overlay:
            with atomic_path(base.parent / f"{base.name}_overlay.mp4") as tmp:
                write_overlay(path, shown, tmp)
        if "summary" in table.attrs:
            write_summary(table.attrs["summary"], base.parent / f"{base.name}_summary.json")
        return write_table(table, base.parent / f"{base.name}_va.{fmt}", fmt)

    def stream(self, source: PathLike, realtime: Optional[bool] = None, input_format: Optional[str] = None,
               options: Optional[dict] = None, name: Optional[str] = None) -> Any:
        """Rows as frames arrive: a generator of dicts with the columns of :meth:`predict_video`'s
        table, one per frame, from anything PyAV opens: a camera (``"/dev/video0"``,
        ``input_format="v4l2"``), an RTSP/HTTP stream, or a file (read at its own pace unless
        ``realtime=False``). Audio is not read live; see :mod:`avfusion.predict.live`."""
        from .live import stream_rows

        return stream_rows(self, source, realtime, input_format, options, name)

    def predict_frames(self, frames: np.ndarray, fps: float, audio: Optional[np.ndarray] = None,
                       timestamps: Optional[np.ndarray] = None) -> pd.DataFrame:
        """Predict frames already in memory: ``(T, H, W, 3)`` RGB uint8 at ``fps`` (or with their
        ``timestamps`` in seconds); ``audio`` a 16 kHz mono float track starting with the first
        frame (None: no audio). Returns the table of :meth:`predict_video` (``video`` empty)."""
        reader = ArrayFrames(frames, fps, timestamps)
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 1:
                raise ValueError(f"audio must be a mono 16 kHz track (S,), got shape {audio.shape}")
        elif self.model.use_audio and not self.model.use_video:
            raise ValueError(f"the model ({self.name}) uses audio only: pass audio")
        return self._predict(reader, audio if self.model.use_audio else None, "frames", "")


def default_runtime(runtime: Optional[str] = None) -> str:
    """``runtime``, else ``$AVFUSION_RUNTIME``, else ``auto``."""
    import os

    return runtime or os.environ.get("AVFUSION_RUNTIME") or "auto"


def _serving(model: nn.Module, name: str, clip_len: Optional[int], margin: Optional[float],
             smoothing: Optional[int], temporal: bool) -> Any:
    """The model's serving spec with what the caller asked for; a value other than the model's
    own gives one warning (the model was trained on other inputs)."""
    import dataclasses

    spec = model.serving
    asked = {"clip_len": clip_len if temporal else None, "face_margin": margin, "face_smoothing": smoothing}
    changes = {k: v for k, v in asked.items() if v is not None and v != getattr(spec, k)}
    if changes:
        said = ", ".join(f"{k} {v} (serving spec: {getattr(spec, k)})" for k, v in changes.items())
        warnings.warn(f"{name}: {said}: the model was trained on other inputs", RuntimeWarning, stacklevel=3)
        spec = dataclasses.replace(spec, **changes)
    limit = model.fusion.cfg.max_len if temporal else None
    if limit is not None and spec.clip_len > limit:
        if clip_len is not None:
            raise ValueError(f"clip_len {clip_len} exceeds the model's temporal range (fusion.max_len {limit})")
        spec = dataclasses.replace(spec, clip_len=int(limit))
    if spec.hop is not None and spec.hop > spec.clip_len:
        spec = dataclasses.replace(spec, hop=None)
    return spec


class _Stopped(Exception):
    """The background voice pass was told to stop."""


class _Background:
    """``work(stop)`` in a thread started now; :meth:`result` waits for its value (its error is
    raised in the caller), :meth:`stop` asks it to end and waits for it."""

    def __init__(self, work: Callable[[threading.Event], Any]) -> None:
        self._stop = threading.Event()
        self._value: Any = None
        self._error: Optional[BaseException] = None

        def run() -> None:
            try:
                self._value = work(self._stop)
            except _Stopped:
                pass
            except BaseException as e:  # raised in the caller by result()
                self._error = e

        self._thread = threading.Thread(target=run, name="avfusion-voice", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _fill_between(values: np.ndarray, where: np.ndarray) -> None:
    """In place: rows of ``values`` (N, D) that are NaN but ``where`` True get the linear
    interpolation between the nearest finite rows around them (frames skipped by ``stride``)."""
    have = np.isfinite(values).all(axis=1)
    need = where & ~have
    if not need.any() or have.sum() < 2:
        return
    x, xs = np.flatnonzero(have), np.flatnonzero(need)
    for d in range(values.shape[1]):
        values[xs, d] = np.interp(xs, x, values[x, d])


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs stay readable).
    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, leave=False, disable=None)


__all__ = ["Predictor", "check_options", "write_table", "read_table", "summarize",
           "write_summary", "main_rows", "quadrant_names", "expression_names", "COLUMNS", "FORMATS", "FACE_BACKENDS",
           "FACES", "SPEECH", "QUADRANTS", "EXPRESSIONS"]
