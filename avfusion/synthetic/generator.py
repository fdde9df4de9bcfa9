"""Synthetic audio-visual emotion data: drawn talking faces with a voice, in three label layouts.

Each clip follows a smooth random valence/arousal trajectory, quantised to multiples of 0.1 (AFEW-VA
stores integers in [-10, 10], so every layout can carry the exact same labels).

What carries the labels (and what is deliberately noise):
- video: mouth-corner curvature and brow tilt follow valence strongly; eye opening, head motion and
  mouth opening follow arousal only weakly (small effects beside blinks, per-clip eye baselines and
  scales, and the syllable rhythm), so a face alone under-determines arousal;
- audio: pitch (+-6 semitones), loudness (24 dB) and syllable rate (2.5-6 Hz) follow arousal
  strongly; spectral tilt and formant positions follow valence weakly (smaller than the differences
  between speakers and vowels);
- nuisance per actor: skin, hair and shirt colours, face size, speaker pitch, formant scale, tilt
  and level; per clip: background, position, lighting, resting mouth shape, background noise.

With ``hard=True`` (``avfusion synth --hard``) part of the clips meet the conditions of real footage
(:data:`HARD`): a hand or a microphone over the mouth for stretches, pauses in the speech over a
louder room, no audio track at all; the eyes follow arousal more strongly, so that the face can
cover a pause. ``metadata.json`` records
per clip what was done (``hard``: ``occluded`` and ``speaking`` frame runs, ``has_audio``).

Everything is drawn with OpenCV on numpy and written as real files (H.264 + AAC mp4 via PyAV, PNG,
JPEG, json, csv, txt). The layouts are those of docs/FORMATS.md:

```
OUT/videos/<stem>.mp4                     raw videos (yuv420p H.264, AAC audio)
OUT/AFEW-VA/<NNN>/00000.png, <NNN>.json   AFEW-VA, flattened (or AFEW-VA/01/<NNN>/ with "official")
OUT/annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<name>.txt
OUT/cropped_aligned/<name>/00001.jpg      Aff-Wild2 112x112 face crops, 1-based, gaps where -5
OUT/manifest.csv, OUT/labels/<id>.csv     manifest layout (paths relative to OUT)
OUT/metadata.json                         per clip: ids, actor, fps, frames, seed, paths, labels
```

Frames of an Aff-Wild2 label gap (``-5,-5``, no crop) have no label in the manifest either; the
AFEW-VA json has no way to say "no label" (a missing key is a format error), so there those frames
keep their true trajectory values. ``metadata.json`` lists the gaps.

Deterministic: clip ``i`` draws its labels from ``SeedSequence([seed, i, 0])`` and its drawing and
voice from ``SeedSequence([seed, i, 1])``, actor ``k`` from ``SeedSequence([seed, 2**31 - 1, k])``; actors
are dealt to clips round-robin (``ceil(clips / clips_per_actor)`` of them). Nothing depends on which
worker makes a clip: the same arguments give byte-identical label files, PNG/JPEG frames and mp4s
(single-threaded x264 without macroblock-tree, see ``_write_mp4``).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..data.speech import frame_runs
from ..files import atomic_path, write_text_atomic

PathLike = Union[str, Path]

AFEW_DIR = "AFEW-VA"
AFFWILD_ANN = Path("annotations") / "VA_Estimation_Challenge"
AFFWILD_SETS = ("Train_Set", "Validation_Set")
CROP_SIZE = 112  # Aff-Wild2 cropped_aligned images are 112x112
MIXED_FPS = (Fraction(25), Fraction(30000, 1001), Fraction(30))  # "mixed": clip i gets [i % 3]
_NTSC = Fraction(30000, 1001)  # "29.97 fps"
_FPS_NAMES = {"25": Fraction(25), "29.97": _NTSC, "30000/1001": _NTSC, "30": Fraction(30)}
_SHIFT = 4  # OpenCV fixed-point drawing: coordinates in 1/16 pixel, for smooth sub-pixel motion


@dataclass
class SyntheticConfig:
    # Number of labelled clips (video ids). With `pair`, the last two share one two-face video.
    clips: int = 8
    # Frames per clip; 64 frames at 25 fps is 2.56 s.
    frames: int = 64
    # "25", "30", "29.97" (= 30000/1001), any "num/den" or number, or "mixed" (25, 29.97, 30 in turn).
    fps: str = "25"
    # Frame height and width (a pair video is twice as wide); even, as yuv420p needs.
    size: int = 128
    seed: int = 0
    # Clips per actor, so that actor-level splits have several clips per side.
    clips_per_actor: int = 4
    # Sample rate of the AAC track; 16 kHz is what the models read (48000 exercises resampling).
    audio_rate: int = 16000
    # AFEW-VA folder layout: "flat" (AFEW-VA/001/) or "official" (AFEW-VA/01/001/, 50 per group).
    afew_layout: str = "flat"
    # Make the last two clips one `_left`/`_right` video (two faces side by side), when clips >= 4.
    pair: bool = True
    # Give every third clip a short run of frames without label/crop (Aff-Wild2 `-5`).
    gaps: bool = True
    # Fraction of actors whose clips go to the Aff-Wild2 Validation_Set.
    val_fraction: float = 0.25
    # Worker processes (clips are independent); 1 = in process.
    workers: int = 1
    # The hard conditions of real footage (see HARD below): the lower face covered for stretches in
    # part of the clips, pauses in the speech over a louder room, some clips without an audio track;
    # the eyes say more of arousal. Labels are drawn exactly as without it.
    hard: bool = False


@dataclass
class Actor:
    index: int
    name: str
    skin: tuple  # RGB
    hair: tuple
    shirt: tuple
    face_scale: float  # face half-width as a fraction of the frame size
    f0: float  # speaking pitch in Hz at neutral arousal
    formant_scale: float  # vocal-tract length: scales all formants
    tilt: float  # speaker's spectral tilt offset
    gain_db: float


# What ``hard=True`` changes. Occlusion: every other clip has 1-2 stretches (each 15-30 % of the clip)
# in which a hand or a microphone covers the mouth and the chin (the brows still show). Pauses: the
# voice is silent for about a third of the time (stretches of 0.3-0.8 s) while the room noise goes
# on, a little louder than in the normal data. No audio: clips with index % 12 == 3 (one in twelve,
# never a two-face video) have no audio track. Cues: the eyes open and the brows rise with arousal
# 2.5 times as much as in the normal data, a weak cue but one a model of the face can learn (in the
# normal data the face says next to nothing about arousal), so that the face can cover a pause.
HARD = {"occluded_every": 2, "occlusions": (1, 2), "occlusion_len": (0.15, 0.30), "pause_fraction": 1 / 3,
        "pause_len": (0.3, 0.8), "noise_db": (-48.0, -36.0), "no_audio_every": 12, "no_audio_at": 3,
        "brow_scale": 1.0, "arousal_scale": 2.5}


def parse_fps(value: Union[str, float, Fraction]) -> Optional[Fraction]:
    """``"25"``, ``"29.97"``, ``"30000/1001"``, 30 ... -> Fraction; ``"mixed"`` -> None."""
    if isinstance(value, Fraction):
        return value
    text = str(value).strip().lower()
    if text == "mixed":
        return None
    if text in _FPS_NAMES:
        return _FPS_NAMES[text]
    try:
        fps = Fraction(text).limit_denominator(1001)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"fps {value!r}: expected a number, 'num/den', '29.97' or 'mixed'") from None
    if fps <= 0:
        raise ValueError(f"fps {value!r} must be positive")
    return fps


# Seed-sequence key of actors: no clip index reaches it, so actor and clip streams never coincide.
_ACTOR_KEY = 2**31 - 1


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def make_actor(seed: int, index: int) -> Actor:
    rng = _rng(seed, _ACTOR_KEY, index)
    # Skin tones from dark to light, hair dark to blond: appearance must not predict labels.
    tone = rng.uniform(0.0, 1.0)
    skin = np.array([95, 60, 40]) * (1 - tone) + np.array([245, 205, 180]) * tone
    hair = rng.choice(np.array([[30, 20, 15], [70, 45, 25], [120, 80, 40], [200, 170, 110], [90, 90, 90]]))
    shirt = rng.integers(30, 220, size=3)
    female = rng.random() < 0.5
    return Actor(
        index=index,
        name=f"actor{index:03d}",
        skin=tuple(int(c) for c in skin),
        hair=tuple(int(c) for c in hair),
        shirt=tuple(int(c) for c in shirt),
        face_scale=float(rng.uniform(0.24, 0.30)),
        f0=float(rng.uniform(180, 250) if female else rng.uniform(95, 140)),
        formant_scale=float(rng.uniform(1.05, 1.18) if female else rng.uniform(0.9, 1.02)),
        tilt=float(rng.uniform(-0.25, 0.25)),
        gain_db=float(rng.uniform(-2, 2)),
    )


def smooth_noise(
    rng: np.random.Generator, t: np.ndarray, fmin: float = 0.1, fmax: float = 0.6, n: int = 3
) -> np.ndarray:
    """A sum of ``n`` random slow sinusoids, scaled to about [-1, 1]."""
    out = np.zeros_like(t, dtype=np.float64)
    for _ in range(n):
        f = rng.uniform(fmin, fmax)
        out += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out / n * 1.6


def va_trajectory(rng: np.random.Generator, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth valence/arousal, ``(T,)`` each, in [-1, 1] and quantised to multiples of 0.1."""
    t = np.arange(n_frames) / float(fps)
    out = []
    for _ in range(2):
        mean = rng.uniform(-0.65, 0.65)
        x = np.clip(mean + 0.4 * smooth_noise(rng, t, 0.15, 0.8), -1.0, 1.0)
        out.append(np.rint(x * 10).astype(np.int64) / 10.0)
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------
# Face geometry: 68 iBUG points in face units (half-width 1, y down), then placed in the frame.
# ----------------------------------------------------------------------------------------------
def face_landmarks(
    valence: float,
    arousal: float,
    mouth_open: float,
    eye_open: float,
    rest_curve: float = 0.0,
    brow_scale: float = 1.0,
    arousal_scale: float = 1.0,
) -> np.ndarray:
    """68 landmarks ``(68, 2)`` of the drawn face in face units (half-width 1, centre 0, y down).

    ``mouth_open`` and ``eye_open`` in [0, 1]; ``rest_curve`` is a per-clip resting mouth shape.
    """
    pts = np.zeros((68, 2))
    # Jaw 0-16: from the image-left ear, under the chin (8), to the image-right ear.
    phi = math.pi + 0.12 - np.arange(17) * (math.pi + 0.24) / 16
    pts[0:17, 0] = np.cos(phi)
    pts[0:17, 1] = -1.25 * np.sin(phi)
    # Brows 17-21 (image left, outer -> inner) and 22-26 (inner -> outer). Valence tilts them
    # (inner ends down when negative: a frown); arousal raises them a little.
    raise_ = -0.02 * arousal_scale * arousal
    tilt = -0.14 * brow_scale * valence
    xs = np.linspace(-0.78, -0.18, 5)
    u = (xs - xs[0]) / (xs[-1] - xs[0])  # 0 outer .. 1 inner
    arch = -0.05 * np.sin(np.pi * u)
    pts[17:22, 0] = xs
    pts[17:22, 1] = -0.56 + raise_ + arch + tilt * u
    pts[22:27, 0] = -xs[::-1]
    pts[22:27, 1] = pts[17:22, 1][::-1]
    # Nose: bridge 27-30, nostrils 31-35.
    pts[27:31, 0] = 0.0
    pts[27:31, 1] = np.linspace(-0.40, 0.06, 4)
    pts[31:36, 0] = np.linspace(-0.17, 0.17, 5)
    pts[31:36, 1] = 0.16 + 0.04 * np.cos(np.linspace(-np.pi / 2, np.pi / 2, 5))
    # Eyes 36-41 and 42-47: corner, two upper-lid points, corner, two lower-lid points.
    half_h = 0.02 + 0.085 * float(np.clip(eye_open, 0.0, 1.0))
    for start, cx, order in ((36, -0.38, 1), (42, 0.38, 1)):
        ex = np.array([-0.17, -0.06, 0.06, 0.17, 0.06, -0.06])
        ey = np.array([0.0, -half_h, -half_h, 0.0, half_h * 0.9, half_h * 0.9])
        pts[start : start + 6, 0] = cx + order * ex
        pts[start : start + 6, 1] = -0.28 + ey
    # Mouth: outer 48-59 (48 left corner, 51 top, 54 right corner, 57 bottom), inner 60-67.
    w = 0.30 + 0.03 * valence
    curve = -0.13 * valence + rest_curve  # corner height relative to the centre (y down)
    o = 0.02 + 0.16 * float(np.clip(mouth_open, 0.0, 1.0))
    lip = 0.055
    cy = 0.58

    def centre(x: np.ndarray) -> np.ndarray:
        return cy + curve * (x / w) ** 2

    def bulge(x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(1 - (x / w) ** 2, 0, 1))

    xu = np.array([-w, -0.66 * w, -0.3 * w, 0.0, 0.3 * w, 0.66 * w, w])  # 48..54
    pts[48:55, 0] = xu
    pts[48:55, 1] = centre(xu) - (o / 2 + lip) * bulge(xu)
    xl = xu[::-1][1:-1]  # 55..59, right to left
    pts[55:60, 0] = xl
    pts[55:60, 1] = centre(xl) + (o / 2 + lip) * bulge(xl)
    wi = 0.8 * w
    xi = np.array([-wi, -0.45 * wi, 0.0, 0.45 * wi, wi])  # 60..64
    pts[60:65, 0] = xi
    pts[60:65, 1] = centre(xi) - (o / 2) * bulge(xi * w / wi * 0.98)
    xil = xi[::-1][1:-1]  # 65..67
    pts[65:68, 0] = xil
    pts[65:68, 1] = centre(xil) + (o / 2) * bulge(xil * w / wi * 0.98)
    return pts


def place(pts: np.ndarray, centre: tuple[float, float], radius: float, roll: float) -> np.ndarray:
    """Face units -> pixels: scale by ``radius``, rotate by ``roll`` radians, move to ``centre``."""
    c, s = math.cos(roll), math.sin(roll)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T * radius + np.asarray(centre)


def _fx(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _smooth_closed(pts: np.ndarray, n: int = 8) -> np.ndarray:
    """A closed polygon through ``pts`` rounded with Catmull-Rom segments (looks less polygonal)."""
    p1 = np.asarray(pts, dtype=np.float64)[:, None, :]
    p0, p2, p3 = np.roll(p1, 1, axis=0), np.roll(p1, -1, axis=0), np.roll(p1, -2, axis=0)
    t = np.linspace(0, 1, n, endpoint=False)[None, :, None]
    c2, c3 = 2 * p0 - 5 * p1 + 4 * p2 - p3, 3 * p1 - p0 - 3 * p2 + p3
    out = 0.5 * (2 * p1 + (p2 - p0) * t + c2 * t**2 + c3 * t**3)
    return out.reshape(-1, 2)


def _bgr(rgb: Sequence[float], light: float = 1.0) -> tuple:
    r, g, b = (float(np.clip(c * light, 0, 255)) for c in rgb)
    return (b, g, r)


def draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A per-clip background: a colour gradient and a few soft shapes (BGR uint8)."""
    import cv2

    c0, c1 = rng.integers(20, 235, size=(2, 3))
    ramp = np.linspace(0, 1, height)[:, None, None]
    img = (c0 * (1 - ramp) + c1 * ramp) * np.ones((1, width, 1))
    img = img.astype(np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        colour = tuple(int(c) for c in rng.integers(0, 255, size=3))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.5:
            w, h = rng.uniform(0.1, 0.4) * width, rng.uniform(0.1, 0.4) * height
            cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), colour, -1)
        else:
            cv2.circle(img, (int(x), int(y)), int(rng.uniform(0.05, 0.2) * width), colour, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


# Outlines in face units (see face_landmarks): shoulders, neck and the fringe of hair.
_SHOULDERS = np.array([[-2.2, 2.9], [-1.6, 1.75], [1.6, 1.75], [2.2, 2.9], [2.2, 4], [-2.2, 4]])
_NECK = np.array([[-0.45, 0.8], [0.45, 0.8], [0.5, 1.95], [-0.5, 1.95]])
_FRINGE = np.array(
    [[-0.97, -0.5], [-0.75, -1.02], [0.0, -1.32], [0.75, -1.02], [0.97, -0.5],
     [0.5, -0.76], [0.0, -0.84], [-0.5, -0.76]]
)


def _pt(xy: Sequence[float]) -> tuple[int, int]:
    """A point in OpenCV's fixed-point coordinates (``_SHIFT`` fractional bits)."""
    return int(round(float(xy[0]) * (1 << _SHIFT))), int(round(float(xy[1]) * (1 << _SHIFT)))


def _axes(a: float, b: float) -> tuple[int, int]:
    return int(a * (1 << _SHIFT)), int(b * (1 << _SHIFT))


def draw_face(
    img: np.ndarray,
    lm: np.ndarray,
    actor: Actor,
    centre: tuple[float, float],
    radius: float,
    roll: float,
    light: float,
) -> None:
    """Draw onto BGR ``img`` (in place) the face whose landmarks, in pixels, are ``lm (68, 2)``."""
    import cv2

    aa = cv2.LINE_AA
    skin = _bgr(actor.skin, light)
    dark_skin = _bgr(actor.skin, 0.72 * light)
    hair = _bgr(actor.hair, light)
    deg = math.degrees(roll)
    # Shoulders and neck (they turn less than the head), then hair behind the head.
    shirt = _bgr(actor.shirt, light)
    cv2.fillPoly(img, [_fx(place(_SHOULDERS, centre, radius, roll * 0.3))], shirt, aa, _SHIFT)
    cv2.fillPoly(img, [_fx(place(_NECK, centre, radius, roll * 0.5))], dark_skin, aa, _SHIFT)
    hair_centre = place(np.array([[0.0, -0.22]]), centre, radius, roll)[0]
    hair_axes = _axes(1.12 * radius, 1.4 * radius)
    cv2.ellipse(img, _pt(hair_centre), hair_axes, deg, 180, 360, hair, -1, aa, _SHIFT)
    # Face: an ellipse of half-width 1 and half-height 1.25 face units, as the jaw points.
    cv2.ellipse(img, _pt(centre), _axes(radius, 1.25 * radius), deg, 0, 360, skin, -1, aa, _SHIFT)
    fringe = _smooth_closed(place(_FRINGE, centre, radius, roll), 4)
    cv2.fillPoly(img, [_fx(fringe)], hair, aa, _SHIFT)
    # Eyes: white, iris clipped to the lids (blended inside the eye's bounding box), lid outline.
    for a in (36, 42):
        eye = _smooth_closed(lm[a : a + 6], 6)
        x0, y0 = np.floor(eye.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(eye.max(axis=0)).astype(int) + 2
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, img.shape[1]), min(y1, img.shape[0])
        if x1 > x0 and y1 > y0:
            off = np.array([x0, y0])
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(mask, [_fx(eye - off)], 255, aa, _SHIFT)
            patch = np.full((y1 - y0, x1 - x0, 3), 245, np.uint8)
            ec = _pt(lm[a : a + 6].mean(axis=0) - off)
            cv2.circle(patch, ec, _axes(0.075 * radius, 0)[0], (60, 50, 40), -1, aa, _SHIFT)
            cv2.circle(patch, ec, _axes(0.035 * radius, 0)[0], (10, 10, 10), -1, aa, _SHIFT)
            alpha = (mask.astype(np.float32) / 255.0)[..., None]
            roi = img[y0:y1, x0:x1]
            roi[:] = (roi * (1 - alpha) + patch * alpha + 0.5).astype(np.uint8)
        cv2.polylines(img, [_fx(eye)], True, (40, 30, 30), 1, aa, _SHIFT)
    # Brows.
    thick = max(1, int(round(0.07 * radius)))
    for a, b in ((17, 22), (22, 27)):
        cv2.polylines(img, [_fx(lm[a:b])], False, hair, thick, aa, _SHIFT)
    # Nose.
    cv2.polylines(img, [_fx(lm[27:31])], False, dark_skin, 1, aa, _SHIFT)
    cv2.polylines(img, [_fx(lm[31:36])], False, dark_skin, max(1, thick // 2 + 1), aa, _SHIFT)
    # Mouth: lips (outer contour), then the dark opening (inner contour).
    cv2.fillPoly(img, [_fx(_smooth_closed(lm[48:60], 4))], (60, 50, 170), aa, _SHIFT)
    inner = lm[60:68]
    if float(np.max(inner[5:8, 1] - inner[[3, 2, 1], 1])) > 0.6:
        cv2.fillPoly(img, [_fx(_smooth_closed(inner, 4))], (30, 20, 40), aa, _SHIFT)
    else:
        cv2.polylines(img, [_fx(inner[0:5])], False, (40, 25, 90), 1, aa, _SHIFT)


# ----------------------------------------------------------------------------------------------
# Voice
# ----------------------------------------------------------------------------------------------
# (F1, F2) in Hz of a few vowels of an adult male voice (Peterson & Barney 1952 averages).
_VOWELS = np.array(
    [[730, 1090], [530, 1840], [270, 2290], [570, 840], [300, 870], [660, 1720], [490, 1350]], dtype=np.float64
)


def synth_voice(
    rng: np.random.Generator,
    actor: Actor,
    valence: np.ndarray,
    arousal: np.ndarray,
    fps: float,
    sample_rate: int,
    n_samples: int,
    active: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A voice-like signal following per-frame ``valence``/``arousal`` ``(T,)``.

    Returns ``audio (n_samples,)`` float64 (peak below 1) and the syllable envelope ``(n_samples,)``
    in [0, 1] (the mouth opens with it). ``active (n_samples,)`` in [0, 1] gates turns of speech.
    """
    sr = float(sample_rate)
    t = np.arange(n_samples) / sr
    frame_t = np.arange(len(valence)) / float(fps)
    # Labels are per frame; interpolate between frame starts, so the voice has no steps.
    v = np.interp(t, frame_t, valence)
    a = np.interp(t, frame_t, arousal)
    a01 = (a + 1) / 2
    # Syllables: rate follows arousal; a slow gate makes pauses between phrases.
    rate = 2.5 + 3.5 * a01
    phase = 2 * np.pi * np.cumsum(rate) / sr + rng.uniform(0, 2 * np.pi)
    syll = (0.5 - 0.5 * np.cos(phase)) ** 1.5
    gate = np.clip(2.0 + 2.0 * smooth_noise(rng, t, 0.2, 0.7), 0.0, 1.0)
    env = syll * gate
    if active is not None:
        env = env * active
    # Pitch: speaker base, +-6 semitones with arousal, intonation per syllable, slight vibrato.
    n_syll = int(np.max(phase) // (2 * np.pi)) + 2
    syl_idx = (phase // (2 * np.pi)).astype(int) - int(phase[0] // (2 * np.pi))  # syllable of each sample
    intonation = rng.normal(0, 0.7, size=n_syll)[syl_idx]
    semis = 6.0 * a + intonation + 0.15 * np.sin(2 * np.pi * 5.5 * t)
    f0 = actor.f0 * 2.0 ** (semis / 12.0)
    theta = 2 * np.pi * np.cumsum(f0) / sr
    # Formants: a vowel per syllable, scaled by the speaker and raised slightly by valence
    # (spread lips shorten the vocal tract).
    vowel_idx = rng.integers(0, len(_VOWELS), size=n_syll)
    formants = _VOWELS[vowel_idx[syl_idx]] * actor.formant_scale * (1.0 + 0.05 * v)[:, None]
    tilt = 1.3 - 0.35 * v + actor.tilt
    voice = np.zeros(n_samples)
    n_harm = int(min(40, (0.45 * sr) // max(float(f0.min()), 50.0)))
    for k in range(1, n_harm + 1):
        fk = k * f0
        # Two resonances (bandwidths 90 and 130 Hz) over a floor.
        f1 = 1.0 / (1 + ((fk - formants[:, 0]) / 90.0) ** 2)
        f2 = 0.7 / (1 + ((fk - formants[:, 1]) / 130.0) ** 2)
        resonance = 0.08 + f1 + f2
        amp = k ** (-tilt) * resonance * (fk < 0.45 * sr)
        voice += amp * np.sin(k * theta)
    voice /= np.max(np.abs(voice)) + 1e-9
    gain = 10.0 ** ((-26.0 + 24.0 * a01 + actor.gain_db) / 20.0)
    breath = rng.normal(0, 1, n_samples) * 0.04
    signal = gain * env * (voice + breath)
    return signal, env


def _write_mp4(
    path: Path, frames_bgr: list[np.ndarray], fps: Fraction, audio: Optional[np.ndarray], sample_rate: int
) -> None:
    """H.264 (yuv420p) + AAC mp4 with PyAV (no audio track for ``audio=None``); frame ``k`` at
    ``k / fps`` exactly."""
    import av

    h, w = frames_bgr[0].shape[:2]
    with av.open(str(path), "w") as container:
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.gop_size = 32  # keyframes every 32 frames: random access needs seeking
        vs.codec_context.thread_count = 1  # single-threaded x264 output is reproducible
        # x264's macroblock-tree rate control made run-to-run differences on small frames (64-96 px)
        # here; without it the same frames always give the same bytes.
        vs.options = {"preset": "veryfast", "crf": "18", "x264-params": "mbtree=0"}
        ast = None
        if audio is not None:
            ast = container.add_stream("aac", rate=sample_rate)
            ast.layout = "mono"
            ast.codec_context.bit_rate = 64000
        for i, img in enumerate(frames_bgr):
            mux_video_frame(container, vs, img, i)
        for packet in vs.encode():
            container.mux(packet)
        if ast is not None:
            mux_audio(container, ast, audio, sample_rate)
            for packet in ast.encode():
                container.mux(packet)


def mux_video_frame(container: Any, stream: Any, img_bgr: np.ndarray, pts: int) -> None:
    """Encode one BGR uint8 frame at ``pts`` (in frames) into ``stream`` and mux its packets."""
    import av

    frame = av.VideoFrame.from_ndarray(img_bgr, format="bgr24")
    frame.pts = pts
    for packet in stream.encode(frame):
        container.mux(packet)


def mux_audio(container: Any, stream: Any, audio: np.ndarray, sample_rate: int, start: int = 0) -> None:
    """Encode mono ``audio`` (clipped to [-1, 1]) into ``stream`` in 1024-sample frames, the first
    at sample ``start`` of the track, and mux the packets (the caller flushes the encoder)."""
    import av

    pcm = np.clip(audio, -1, 1).astype(np.float32)
    for s in range(0, pcm.shape[0], 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[None, s : s + 1024]), format="flt", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start + s
        for packet in stream.encode(frame):
            container.mux(packet)


def _face_crop(img: np.ndarray, lm: np.ndarray, size: int = CROP_SIZE, margin: float = 0.25) -> np.ndarray:
    """A square crop around the landmarks, ``margin`` of the box side added on each side."""
    import cv2

    lo, hi = lm.min(axis=0), lm.max(axis=0)
    c = (lo + hi) / 2
    side = float(max(hi - lo)) * (1 + 2 * margin)
    scale = size / side
    m = np.array([[scale, 0, size / 2 - scale * c[0]], [0, scale, size / 2 - scale * c[1]]])
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


# ----------------------------------------------------------------------------------------------
# Clips
# ----------------------------------------------------------------------------------------------
@dataclass
class _Person:
    clip_id: str
    actor: Actor
    valence: np.ndarray
    arousal: np.ndarray
    gap: Optional[tuple[int, int]]
    side: Optional[str] = None
    affwild_name: str = ""
    params: dict = field(default_factory=dict)


def hard_conditions(seed: int, index: int, n_frames: int, fps: Fraction, audio_rate: int,
                    two_faces: bool = False) -> dict:
    """The hard conditions of clip ``index`` (:data:`HARD`), drawn from ``SeedSequence([seed, index,
    2])`` so that the labels, faces and voices are those of the normal data.

    Returns ``occluded (T,)`` bool, ``occluder`` ``(T,)`` int (0 none, 1 a hand, 2 a microphone),
    ``active (S,)`` in [0, 1] (the voice's on/off envelope, 20 ms ramps), ``has_audio`` and the
    room noise level ``noise_db``.
    """
    rng = _rng(seed, index, 2)
    T = n_frames
    n_samples = int(round(Fraction(n_frames) / fps * audio_rate))
    occluded = np.zeros(T, bool)
    occluder = np.zeros(T, np.int64)
    if index % HARD["occluded_every"] == 0 and T >= 8:
        for _ in range(int(rng.integers(HARD["occlusions"][0], HARD["occlusions"][1] + 1))):
            length = max(2, int(round(rng.uniform(*HARD["occlusion_len"]) * T)))
            start = int(rng.integers(0, max(1, T - length)))
            occluded[start : start + length] = True
            occluder[start : start + length] = int(rng.integers(1, 3))
    active = np.ones(n_samples)
    dur = n_samples / float(audio_rate)
    target = HARD["pause_fraction"] * dur
    for _ in range(64):
        missing = target - float((active < 0.5).sum()) / audio_rate
        if missing <= 0.1:
            break
        length = min(rng.uniform(*HARD["pause_len"]), max(HARD["pause_len"][0], missing))
        start = rng.uniform(-0.2, dur - 0.2)
        a, b = int(max(0.0, start) * audio_rate), int(min(dur, start + length) * audio_rate)
        active[a:b] = 0.0
    ramp = max(1, int(0.02 * audio_rate))
    active = np.convolve(np.pad(active, ramp, mode="edge"), np.ones(2 * ramp + 1) / (2 * ramp + 1), "same")[ramp:-ramp]
    has_audio = two_faces or index % HARD["no_audio_every"] != HARD["no_audio_at"]
    return {"occluded": occluded, "occluder": occluder, "active": np.clip(active, 0.0, 1.0),
            "has_audio": bool(has_audio), "noise_db": float(rng.uniform(*HARD["noise_db"]))}


def draw_occluder(img: np.ndarray, kind: int, actor: Actor, centre: tuple[float, float], radius: float,
                  roll: float, light: float) -> None:
    """Cover the mouth and chin of the face at ``centre`` (in place): 1 a hand, 2 a microphone."""
    import cv2

    aa = cv2.LINE_AA
    deg = math.degrees(roll)
    if kind == 1:  # a hand in front of the mouth: a palm and four finger creases, a little darker
        palm = place(np.array([[0.05, 0.78]]), centre, radius, roll)[0]
        cv2.ellipse(img, _pt(palm), _axes(0.85 * radius, 0.6 * radius), deg, 0, 360,
                    _bgr(actor.skin, 0.88 * light), -1, aa, _SHIFT)
        for y in (0.52, 0.68, 0.84, 1.0):
            line = place(np.array([[-0.7, y], [0.75, y + 0.03]]), centre, radius, roll)
            cv2.polylines(img, [_fx(line)], False, _bgr(actor.skin, 0.62 * light), 1, aa, _SHIFT)
    else:  # a hand-held microphone: the handle from below, a grille over the mouth
        handle = place(np.array([[-0.13, 0.8], [0.13, 0.8], [0.16, 3.0], [-0.16, 3.0]]), centre, radius, roll)
        cv2.fillPoly(img, [_fx(handle)], (35, 35, 38), aa, _SHIFT)
        head = place(np.array([[0.0, 0.62]]), centre, radius, roll)[0]
        cv2.circle(img, _pt(head), _axes(0.46 * radius, 0)[0], (90, 92, 96), -1, aa, _SHIFT)
        for y in (0.42, 0.56, 0.70, 0.84):
            line = place(np.array([[-0.4, y], [0.4, y]]), centre, radius, roll)
            cv2.polylines(img, [_fx(line)], False, (55, 55, 60), 1, aa, _SHIFT)


def render_clip(
    index: int,
    seed: int,
    persons: list[_Person],
    n_frames: int,
    fps: Fraction,
    size: int,
    audio_rate: int,
    hard: Optional[dict] = None,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Draw one video (one face, or two side by side), under the conditions ``hard`` of
    :func:`hard_conditions` if given.

    Returns BGR frames (each ``(H, W, 3)`` uint8), per person landmarks ``(T, 68, 2)`` in pixels,
    and the audio ``(S,)`` float64, ``S = round(T / fps * audio_rate)``.
    """
    rng = _rng(seed, index, 1)
    height, width = size, size * len(persons)
    n_samples = int(round(Fraction(n_frames) / fps * audio_rate))
    t_frames = np.arange(n_frames) / float(fps)
    t_audio = np.arange(n_samples) / float(audio_rate)
    background = draw_background(rng, height, width)
    light = float(rng.uniform(0.8, 1.15))

    # Voices (turn-taking when two people share the video).
    audio = np.zeros(n_samples)
    envs = []
    if len(persons) == 2:
        turn = 0.5 + 0.5 * np.tanh(4 * smooth_noise(rng, t_audio, 0.2, 0.5))
        actives = [turn, 1 - turn]
    else:
        actives = [None]
    if hard is not None:  # pauses in the speech: every voice stops with them
        actives = [hard["active"] if a is None else a * hard["active"] for a in actives]
    for person, act in zip(persons, actives):
        sig, env = synth_voice(
            rng, person.actor, person.valence, person.arousal, float(fps), audio_rate, n_samples, act
        )
        audio += sig
        envs.append(np.interp(t_frames, t_audio, env))
    noise_db = rng.uniform(-50, -34)
    if hard is not None:
        noise_db = hard["noise_db"]
    audio += rng.normal(0, 10 ** (noise_db / 20), n_samples)
    audio /= max(1.0, float(np.max(np.abs(audio))) / 0.9)  # limit peaks; keep loudness differences

    # Per-person pose and face parameters.
    poses = []
    for k, person in enumerate(persons):
        r = person.actor.face_scale * size * rng.uniform(0.93, 1.07)
        cx = size * (k + 0.5) + rng.uniform(-0.06, 0.06) * size
        cy = size * 0.46 + rng.uniform(-0.04, 0.04) * size
        a01 = (person.arousal + 1) / 2
        # Head motion grows with arousal: amplitude 1.5 % .. 5 % of the frame, roll up to ~7 degrees.
        amp = (0.015 + 0.035 * a01) * size
        mx = amp * smooth_noise(rng, t_frames, 0.3, 1.2)
        my = 0.6 * amp * smooth_noise(rng, t_frames, 0.3, 1.2)
        roll = (0.04 + 0.08 * a01) * smooth_noise(rng, t_frames, 0.2, 1.0)
        # Eyes: opening rises weakly with arousal, with per-frame jitter and blinks.
        eye_gain = 0.08 * (HARD["arousal_scale"] if hard is not None else 1.0)
        eye = np.clip(rng.uniform(0.45, 0.65) + eye_gain * person.arousal + rng.normal(0, 0.12, n_frames), 0.05, 1.0)
        for b in np.flatnonzero(rng.random(n_frames) < 0.04):
            eye[b : b + 3] = 0.0
        mouth_scale = rng.uniform(0.6, 1.0)
        mouth = np.clip(envs[k] * mouth_scale * (0.8 + 0.2 * a01), 0, 1)
        rest = rng.uniform(-0.03, 0.03)
        person.params = {
            "radius": round(float(r), 3),
            "centre": [round(float(cx), 3), round(float(cy), 3)],
            "rest_curve": round(float(rest), 4),
        }
        poses.append((r, cx + mx, cy + my, roll, eye, mouth, rest))

    frames, landmarks = [], [np.zeros((n_frames, 68, 2)) for _ in persons]
    for i in range(n_frames):
        img = background.copy()
        for k, person in enumerate(persons):
            r, xs, ys, roll, eye, mouth, rest = poses[k]
            local = face_landmarks(person.valence[i], person.arousal[i], mouth[i], eye[i], rest,
                                   *((HARD["brow_scale"], HARD["arousal_scale"]) if hard is not None else (1.0, 1.0)))
            lm = place(local, (xs[i], ys[i]), r, roll[i])
            draw_face(img, lm, person.actor, (xs[i], ys[i]), r, roll[i], light)
            if hard is not None and hard["occluded"][i]:
                draw_occluder(img, int(hard["occluder"][i]), person.actor, (xs[i], ys[i]), r, roll[i], light)
            landmarks[k][i] = lm
        frames.append(img)
    return frames, landmarks, audio


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _afew_dir(root: Path, clip_id: str, number: int, layout: str) -> Path:
    if layout == "official":
        return root / AFEW_DIR / f"{(number - 1) // 50 + 1:02d}" / clip_id
    if layout == "flat":
        return root / AFEW_DIR / clip_id
    raise ValueError(f"afew_layout {layout!r}: expected 'flat' or 'official'")


def _write_clip(
    out: Path,
    video_stem: str,
    index: int,
    persons: list[_Person],
    cfg: SyntheticConfig,
    fps: Fraction,
    numbers: list[int],
    val_set: bool,
) -> list[dict]:
    """Render one video and write it with its clip(s) in every layout; returns metadata records."""
    import cv2

    hard = (hard_conditions(cfg.seed, index, cfg.frames, fps, cfg.audio_rate, len(persons) > 1)
            if cfg.hard else None)
    frames, landmarks, audio = render_clip(index, cfg.seed, persons, cfg.frames, fps, cfg.size, cfg.audio_rate, hard)
    video_rel = Path("videos") / f"{video_stem}.mp4"
    has_audio = hard is None or hard["has_audio"]
    _write_mp4(out / video_rel, frames, fps, audio if has_audio else None, cfg.audio_rate)
    conditions = {}
    if hard is not None:  # what the hard conditions did to this clip, per frame
        t_audio = np.arange(len(audio)) / float(cfg.audio_rate)
        t_frames = np.arange(cfg.frames) / float(fps)
        voiced = np.interp(t_frames, t_audio, hard["active"]) >= 0.5 if has_audio else np.zeros(cfg.frames, bool)
        conditions = {"has_audio": has_audio, "noise_db": round(hard["noise_db"], 2),
                      "occluded": [list(r) for r in frame_runs(hard["occluded"])],
                      "speaking": [list(r) for r in frame_runs(voiced)]}
    records = []
    ann_set = AFFWILD_SETS[1] if val_set else AFFWILD_SETS[0]
    for person, lms, number in zip(persons, landmarks, numbers):
        vi = np.rint(person.valence * 10).astype(int)
        ai = np.rint(person.arousal * 10).astype(int)
        in_gap = np.zeros(cfg.frames, bool)
        if person.gap is not None:
            in_gap[person.gap[0] : person.gap[1]] = True
        # AFEW-VA: whole frames + json (true labels everywhere; see module docstring).
        afew = _afew_dir(out, person.clip_id, number, cfg.afew_layout)
        afew.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(frames):
            cv2.imwrite(str(afew / f"{i:05d}.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        doc = {
            "actor": person.actor.name,
            "video_id": person.clip_id,
            "frames": {
                f"{i:05d}": {
                    "valence": int(vi[i]),
                    "arousal": int(ai[i]),
                    "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in lms[i]],
                }
                for i in range(cfg.frames)
            },
        }
        write_text_atomic(afew / f"{person.clip_id}.json", json.dumps(doc))
        # Aff-Wild2: txt labels (-5 in the gap) + 1-based 112x112 crops, none in the gap.
        name = person.affwild_name
        txt = out / AFFWILD_ANN / ann_set / f"{name}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        lines = ["valence,arousal"]
        for i in range(cfg.frames):
            lines.append("-5,-5" if in_gap[i] else f"{_fmt(vi[i] / 10)},{_fmt(ai[i] / 10)}")
        write_text_atomic(txt, "\n".join(lines) + "\n")
        crops = out / "cropped_aligned" / name
        crops.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(frames):
            if not in_gap[i]:
                crop = _face_crop(img, lms[i])
                cv2.imwrite(str(crops / f"{i + 1:05d}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
        # Manifest: per-video label csv (empty = no label, as in the Aff-Wild2 gap).
        label_rel = Path("labels") / f"{person.clip_id}.csv"
        with atomic_path(out / label_rel) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["frame", "valence", "arousal"])
            for i in range(cfg.frames):
                w.writerow([i, "", ""] if in_gap[i] else [i, _fmt(vi[i] / 10), _fmt(ai[i] / 10)])
        records.append(
            {
                "id": person.clip_id,
                "actor": person.actor.name,
                "actor_index": person.actor.index,
                "fps": float(fps),
                "fps_fraction": f"{fps.numerator}/{fps.denominator}",
                "n_frames": cfg.frames,
                "width": frames[0].shape[1],
                "height": frames[0].shape[0],
                "audio_rate": cfg.audio_rate,
                "seed": [cfg.seed, index],
                "side": person.side,
                "video": video_rel.as_posix(),
                "afew_dir": afew.relative_to(out).as_posix(),
                "affwild2_name": name,
                "affwild2_set": ann_set,
                "affwild2_labels": txt.relative_to(out).as_posix(),
                "crops_dir": crops.relative_to(out).as_posix(),
                "labels_csv": label_rel.as_posix(),
                "label_gaps": [list(person.gap)] if person.gap is not None else [],
                "face": person.params,
                "voice": {
                    "f0": round(person.actor.f0, 2),
                    "formant_scale": round(person.actor.formant_scale, 4),
                },
                "valence": [float(x) / 10 for x in vi],
                "arousal": [float(x) / 10 for x in ai],
            }
            | ({"hard": conditions} if conditions else {})
        )
    return records



def _job(args: tuple) -> list[dict]:
    return _write_clip(*args)


def plan_clips(cfg: SyntheticConfig) -> list[tuple[str, int, list[_Person], Fraction, list[int], bool]]:
    """Which video holds which clip(s): ``(video_stem, index, persons, fps, numbers, val_set)``."""
    if cfg.clips < 1 or cfg.frames < 2:
        raise ValueError("need at least 1 clip and 2 frames per clip")
    if cfg.size % 2 or cfg.size < 32:
        raise ValueError(f"size {cfg.size}: must be even (yuv420p) and at least 32")
    if cfg.afew_layout not in ("flat", "official"):
        raise ValueError(f"afew_layout {cfg.afew_layout!r}: expected 'flat' or 'official'")
    fixed = parse_fps(cfg.fps)
    n_actors = max(1, math.ceil(cfg.clips / max(1, cfg.clips_per_actor)))
    n_val = min(n_actors - 1, max(1, int(round(cfg.val_fraction * n_actors)))) if n_actors > 1 else 0
    val_actors = set(range(n_actors - n_val, n_actors))
    actors = [make_actor(cfg.seed, k) for k in range(n_actors)]
    width = max(3, len(str(cfg.clips)))
    numbers = list(range(1, cfg.clips + 1))
    pair = cfg.pair and cfg.clips >= 4
    groups = [[n] for n in numbers[:-2]] + ([numbers[-2:]] if pair else [[n] for n in numbers[-2:]])
    plans = []
    for vi, group in enumerate(groups):
        index = group[0] - 1
        fps = fixed if fixed is not None else MIXED_FPS[index % len(MIXED_FPS)]
        persons = []
        for n in group:
            rng = _rng(cfg.seed, n - 1, 0)
            clip_id = f"{n:0{width}d}"
            actor = actors[(n - 1) % n_actors]
            v, a = va_trajectory(rng, cfg.frames, float(fps))
            gap = None
            if cfg.gaps and (n - 1) % 3 == 1 and cfg.frames >= 12:
                length = max(2, cfg.frames // 10)
                start = int(rng.integers(1, cfg.frames - length - 1))
                gap = (start, start + length)
            persons.append(_Person(clip_id, actor, v, a, gap))
        if len(group) == 2:
            stem = f"{persons[0].clip_id}-{persons[1].clip_id}"
            for p, side in zip(persons, ("left", "right")):
                p.side = side
                p.affwild_name = f"{stem}_{side}"
        else:
            stem = persons[0].clip_id
            persons[0].affwild_name = stem
        val = persons[0].actor.index in val_actors
        plans.append((stem, index, persons, fps, group, val))
    return plans


def generate_dataset(out: PathLike, cfg: Optional[SyntheticConfig] = None) -> dict:
    """Write a synthetic dataset under ``out`` in all three layouts; returns the metadata dict."""
    cfg = cfg or SyntheticConfig()
    out = Path(out)
    plans = plan_clips(cfg)
    for sub in ("videos", "labels", AFEW_DIR, "cropped_aligned"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for s in AFFWILD_SETS:
        (out / AFFWILD_ANN / s).mkdir(parents=True, exist_ok=True)
    jobs = [(out, stem, index, persons, cfg, fps, group, val) for stem, index, persons, fps, group, val in plans]
    if cfg.workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(cfg.workers, len(jobs))) as pool:
            results = pool.map(_job, jobs)
    else:
        results = [_job(j) for j in jobs]
    records = sorted((r for rs in results for r in rs), key=lambda r: r["id"])
    with atomic_path(out / "manifest.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["video_id", "video_path", "labels_path", "actor"])
        for r in records:
            w.writerow([r["id"], r["video"], r["labels_csv"], r["actor"]])
    meta = {
        "format": "avfusion-synthetic",
        "version": 1,
        "config": asdict(cfg) | {"workers": None},
        "paths_relative_to": "the folder holding this file",
        "afew_va_root": AFEW_DIR,
        "affwild2_annotations": AFFWILD_ANN.as_posix(),
        "affwild2_crops": "cropped_aligned",
        "affwild2_videos": "videos",
        "manifest": "manifest.csv",
        "actors": sorted({r["actor"] for r in records}),
        "clips": records,
    }
    write_text_atomic(out / "metadata.json", json.dumps(meta, indent=1))
    return meta


def load_metadata(root: PathLike) -> dict:
    """The ``metadata.json`` a :func:`generate_dataset` run wrote under ``root``."""
    path = Path(root) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {root} a synthetic dataset folder?")
    return json.loads(path.read_text())
