"""The overlay video (``avfusion predict --overlay``): every frame of the input with the face box,
the current valence and arousal, and a small circumplex in a corner where a dot moves with a short
trail; the input's frame count, frame rate and audio are kept.

Sizes are relative to the frame's height (a frame 360 pixels high gets text about 12 pixels
high), so the overlay stays readable at 640x360; smaller videos are enlarged by a whole factor
first. The video is H.264 (yuv420p; MPEG-4 part 2 where PyAV has no libx264) at the input
stream's average frame rate, one output frame per input frame; the first audio stream is
re-encoded to AAC and muxed along, interleaved with the pictures.
"""
from __future__ import annotations

import math
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import pandas as pd

PathLike = Union[str, Path]

# Frames of the dot's trail on the circumplex (about a second at 25 fps).
TRAIL = 25
# Overlay frames this many pixels high at least (smaller inputs are enlarged by a whole factor).
MIN_HEIGHT = 360
# BGR-free: frames are RGB, colours too.
_WHITE, _GREY, _DARK = (255, 255, 255), (150, 150, 150), (20, 20, 20)
_GREEN, _AMBER = (60, 220, 90), (255, 190, 40)
_VALENCE, _AROUSAL = (130, 200, 255), (255, 150, 130)


def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _blend_rect(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour: tuple, alpha: float) -> None:
    """A translucent filled rectangle, in place."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return
    part = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = (part * (1 - alpha) + np.asarray(colour, np.float32) * alpha).astype(np.uint8)


def draw_frame(frame: np.ndarray, row: Optional[pd.Series], trail: list[tuple[float, float]],
               zoom: int = 1) -> np.ndarray:
    """One RGB frame with ``row``'s face box, values and the circumplex drawn on it; ``trail`` is
    the recent (valence, arousal) points, oldest first, the last one current. ``zoom`` enlarges
    the frame first (the box is scaled with it). Returns a new array."""
    import cv2

    img = np.ascontiguousarray(frame)
    if zoom > 1:
        img = cv2.resize(img, (img.shape[1] * zoom, img.shape[0] * zoom), interpolation=cv2.INTER_NEAREST)
    else:
        img = img.copy()
    h, w = img.shape[:2]
    s = min(h, w * 9 / 16) / MIN_HEIGHT  # 1 at 640x360
    font, aa = cv2.FONT_HERSHEY_SIMPLEX, cv2.LINE_AA
    fs, th = 0.55 * s, max(1, int(round(1.4 * s)))

    def get(key: str) -> float:
        try:
            return float(row[key]) if row is not None and key in row and row[key] is not None else float("nan")
        except (TypeError, ValueError):
            return float("nan")

    face = bool(row is not None and row.get("face_found", False))
    valid = bool(row is not None and row.get("valid", False))
    v, a = get("valence"), get("arousal")
    box = [get(k) for k in ("face_x", "face_y", "face_w", "face_h")]
    if face and all(math.isfinite(x) for x in box):
        x, y, bw, bh = (int(round(c * zoom)) for c in box)
        colour = _GREEN if valid else _AMBER
        cv2.rectangle(img, (x, y), (x + bw, y + bh), colour, max(2, int(round(2 * s))), aa)
        if valid and math.isfinite(v):
            label = f"V {v:+.2f} A {a:+.2f}"
            (tw, tht), _ = cv2.getTextSize(label, font, fs * 0.9, th)
            ty = y - int(6 * s) if y - tht - int(10 * s) > 0 else min(h - 2, y + bh + tht + int(6 * s))
            _blend_rect(img, x, ty - tht - int(4 * s), x + tw + int(6 * s), ty + int(4 * s), _DARK, 0.6)
            cv2.putText(img, label, (x + int(3 * s), ty), font, fs * 0.9, _WHITE, th, aa)

    # Values, top left.
    pad, line = int(8 * s), int(22 * s)
    lines: list[tuple[str, tuple]] = []
    if valid and math.isfinite(v) and math.isfinite(a):
        quad = row.get("quadrant") if row is not None else None
        lines = [(f"valence {v:+.2f}", _VALENCE), (f"arousal {a:+.2f}", _AROUSAL)]
        if isinstance(quad, str):
            lines.append((quad, _WHITE))
    else:
        lines = [("no face" if not face else "no prediction", _AMBER)]
    if row is not None and "speech" in row and row["speech"] is not None and not pd.isna(row["speech"]):
        lines.append(("speech" if bool(row["speech"]) else "no speech", _GREY))
    width = max(cv2.getTextSize(t, font, fs, th)[0][0] for t, _ in lines) + 2 * pad
    _blend_rect(img, 0, 0, width + pad, pad + line * len(lines) + pad // 2, _DARK, 0.7)
    for k, (text, colour) in enumerate(lines):
        cv2.putText(img, text, (pad, pad + line * (k + 1) - int(6 * s)), font, fs, colour, th, aa)

    # The circumplex, bottom right.
    r = int(56 * s)
    cx, cy = w - r - int(14 * s), h - r - int(14 * s)
    _blend_rect(img, cx - r - int(10 * s), cy - r - int(10 * s), w, h, _DARK, 0.7)
    cv2.circle(img, (cx, cy), r, _GREY, max(1, int(round(s))), aa)
    cv2.line(img, (cx - r, cy), (cx + r, cy), _GREY, 1, aa)
    cv2.line(img, (cx, cy - r), (cx, cy + r), _GREY, 1, aa)
    small = 0.38 * s
    cv2.putText(img, "V", (cx + r - int(9 * s), cy - int(4 * s)), font, small, _GREY, 1, aa)
    cv2.putText(img, "A", (cx + int(4 * s), cy - r + int(10 * s)), font, small, _GREY, 1, aa)
    pts = [(cx + int(round(np.clip(pv, -1, 1) * r)), cy - int(round(np.clip(pa, -1, 1) * r))) for pv, pa in trail
           if math.isfinite(pv) and math.isfinite(pa)]
    for k in range(1, len(pts)):
        fade = k / len(pts)
        colour = tuple(int(60 + 195 * fade * c / 255) for c in _AMBER)
        cv2.line(img, pts[k - 1], pts[k], colour, max(1, int(round(1.5 * s))), aa)
    if valid and pts and trail and math.isfinite(trail[-1][0]):
        cv2.circle(img, pts[-1], max(3, int(round(6 * s))), _AMBER, -1, aa)
        cv2.circle(img, pts[-1], max(3, int(round(6 * s))), _WHITE, 1, aa)
    return img


def zoom_for(height: int, width: int) -> int:
    """The whole factor that makes a frame at least :data:`MIN_HEIGHT` pixels on its short side."""
    short = min(height, width)
    return int(math.ceil(MIN_HEIGHT / short)) if 0 < short < MIN_HEIGHT else 1


def _audio_frames(path: Path) -> Iterator[Any]:
    """The first audio stream's decoded frames (nothing when there is none or it cannot be read)."""
    import av

    try:
        container = av.open(str(path))
    except Exception:
        return
    with container:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        try:
            for packet in container.demux(stream):
                try:
                    yield from packet.decode()
                except av.error.InvalidDataError:  # a damaged packet: skip it
                    continue
        except av.error.FFmpegError:
            return


def _input_rate(path: Path, fallback: float) -> tuple[Fraction, Optional[tuple[int, str]]]:
    """The video stream's average frame rate, and (sample rate, layout) of the audio to keep."""
    import av

    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or None
        audio = None
        if c.streams.audio:
            a = c.streams.audio[0].codec_context
            channels = getattr(a.layout, "nb_channels", None) or len(a.layout.channels)
            audio = (int(a.sample_rate or 48000), "mono" if channels == 1 else "stereo")
    if rate is None or rate <= 0:
        rate = Fraction(fallback).limit_denominator(1001) if fallback > 0 else Fraction(25)
    return Fraction(rate), audio


def write_overlay(video_path: PathLike, table: pd.DataFrame, out_path: PathLike, chunk: int = 16,
                  trail: int = TRAIL) -> Path:
    """Write ``out_path`` (mp4): the video at ``video_path`` with ``table`` (one row per frame,
    :func:`~avfusion.predict.predictor.main_rows`) drawn on every frame; same frame count and
    frame rate, the audio re-encoded to AAC when the input has an audio stream."""
    import av

    from ..data.video import VideoFile

    video_path, out_path = Path(video_path), Path(out_path)
    video = VideoFile(video_path)
    try:
        n = len(video)
        video.close()  # decord is done (frame times are kept); the frames come from one PyAV pass
        if n != len(table):
            raise ValueError(f"{video_path}: {n} frames but {len(table)} predictions")
        rate, audio = _input_rate(video_path, video.fps)
        rows = table.reset_index(drop=True)
        recent: deque = deque(maxlen=max(1, trail))
        with av.open(str(out_path), mode="w", format="mp4") as container:
            vs = ast = None
            sound = _audio_frames(video_path) if audio is not None else iter(())
            pending: list = []  # an audio frame read past the current video time
            sound_done = audio is None

            def mux_audio_until(seconds: float) -> None:
                nonlocal sound_done
                while not sound_done:
                    if not pending:
                        try:
                            pending.append(next(sound))
                        except StopIteration:
                            sound_done = True
                            break
                    f = pending[0]
                    t = float(f.pts * f.time_base) if f.pts is not None and f.time_base else 0.0
                    if t > seconds:
                        return
                    pending.pop(0)
                    f.pts = None  # the encoder numbers its own samples
                    for packet in ast.encode(f):
                        container.mux(packet)

            k = 0
            for idx, frames, _ in video.iter_batches(np.arange(n), chunk):
                for i, frame in zip(idx, frames):
                    row = rows.iloc[int(i)]
                    ok = bool(row.get("valid", False))
                    recent.append((float(row["valence"]), float(row["arousal"])) if ok else (math.nan, math.nan))
                    img = draw_frame(frame, row, list(recent), zoom_for(*frame.shape[:2]))
                    img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]  # yuv420p: even sizes
                    if vs is None:
                        vs = container.add_stream(_codec(), rate=rate)
                        vs.width, vs.height, vs.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
                        if vs.codec_context.name == "libx264":
                            vs.options = {"preset": "veryfast", "crf": "22"}
                        if audio is not None:  # every stream before the first packet
                            ast = container.add_stream("aac", rate=audio[0])
                            ast.layout = audio[1]
                    vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                    vf.pts, vf.time_base = k, 1 / rate
                    k += 1
                    for packet in vs.encode(vf):
                        container.mux(packet)
                    mux_audio_until(k / float(rate))
            if vs is not None:
                for packet in vs.encode():
                    container.mux(packet)
            mux_audio_until(math.inf)
            if ast is not None:
                for packet in ast.encode():
                    container.mux(packet)
    finally:
        video.close()  # now, not at a garbage collection that Ctrl-C may interrupt
    return out_path


__all__ = ["write_overlay", "draw_frame", "zoom_for", "TRAIL", "MIN_HEIGHT"]
