"""One long synthetic talking-face video at any size, written frame by frame (for benchmarks and
memory tests: a 10-minute 720p file never sits in memory).

The face, voice and labels come from the same generator as the datasets (:mod:`.generator`); the
face sits in the middle of a ``width`` x ``height`` frame, about 40 % of its height, moving with
arousal. The voice is an AAC track at 16 kHz, synthesised in 10-second pieces.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Union

import numpy as np

from .generator import (_rng, draw_background, draw_face, face_landmarks, make_actor, mux_audio, mux_video_frame,
                        place, smooth_noise, synth_voice, va_trajectory)

PathLike = Union[str, Path]


def write_talking_video(
    path: PathLike,
    seconds: float = 10.0,
    width: int = 1280,
    height: int = 720,
    fps: int = 25,
    seed: int = 0,
    audio: bool = True,
    audio_rate: int = 16000,
) -> dict:
    """Write ``path`` (H.264 + AAC mp4); returns ``{"frames", "fps", "valence", "arousal"}``
    (per-frame labels the face and voice follow)."""
    import av

    if width % 2 or height % 2 or seconds <= 0 or fps <= 0:
        raise ValueError("width and height must be even; seconds and fps positive")
    n = int(round(seconds * fps))
    rng = _rng(seed, 7, 0)
    actor = make_actor(seed, 0)
    valence, arousal = va_trajectory(rng, n, fps)
    t = np.arange(n) / fps
    background = draw_background(rng, height, width)
    r = 0.2 * height
    a01 = (arousal + 1) / 2
    amp = (0.015 + 0.035 * a01) * height
    xs = width / 2 + amp * smooth_noise(rng, t, 0.3, 1.2)
    ys = height * 0.46 + 0.6 * amp * smooth_noise(rng, t, 0.3, 1.2)
    roll = (0.04 + 0.08 * a01) * smooth_noise(rng, t, 0.2, 1.0)
    eye = np.clip(0.55 + 0.08 * arousal + rng.normal(0, 0.1, n), 0.05, 1.0)
    rate = Fraction(fps)
    with av.open(str(path), "w") as container:
        vs = container.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        ast = None
        if audio:
            ast = container.add_stream("aac", rate=audio_rate)
            ast.layout = "mono"
        piece = 10 * fps  # frames per audio piece
        for s in range(0, n, piece):
            e = min(n, s + piece)
            mouth = np.zeros(e - s)
            if ast is not None:
                n_samples = int(round((e - s) / fps * audio_rate))
                sig, env = synth_voice(rng, actor, valence[s:e], arousal[s:e], fps, audio_rate, n_samples)
                mouth = np.interp(np.arange(e - s) / fps, np.arange(n_samples) / audio_rate, env)
                mux_audio(container, ast, sig, audio_rate, start=int(round(s / fps * audio_rate)))
            for i in range(s, e):
                img = background.copy()
                lm = place(face_landmarks(valence[i], arousal[i], float(mouth[i - s]), eye[i], 0.0),
                           (xs[i], ys[i]), r, roll[i])
                draw_face(img, lm, actor, (xs[i], ys[i]), r, roll[i], 1.0)
                mux_video_frame(container, vs, img, i)
        for packet in vs.encode():
            container.mux(packet)
        if ast is not None:
            for packet in ast.encode():
                container.mux(packet)
    return {"frames": n, "fps": fps, "valence": valence, "arousal": arousal}


__all__ = ["write_talking_video"]
