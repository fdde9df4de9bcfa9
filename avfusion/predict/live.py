"""Live prediction: rows as frames arrive, from anything PyAV opens (a camera device, an RTSP/HTTP
stream, or a file read at its own pace): :func:`stream_rows`, behind :meth:`Predictor.stream
<avfusion.predict.predictor.Predictor.stream>` and ``avfusion predict --live SOURCE``.

- A worker thread reads and decodes the source into a queue of about one second of frames. A file
  is read at its own pace by default (each frame no earlier than its timestamp after the start;
  ``realtime=False`` reads it as fast as it can be processed). When the model falls behind a live
  source (a camera, a stream, a paced file), the oldest waiting frames are dropped, so a row is
  never more than about a second (plus one batch) behind its frame; dropped frames get no row and
  their numbers are missing from ``frame``.
- The main thread takes whatever frames are waiting (at most ``batch_size``) and runs the engine's
  live mode on them (:func:`avfusion.inference.engine.stream_predictions`: the one face stage with
  the box smoothed over the previous frames only, the same network); this module turns its values
  into one row per frame with the columns of a :meth:`~avfusion.predict.predictor.Predictor.predict_video`
  table (``speech`` empty, ``track_id`` 0 with a face, -1 without).
- Frame-by-frame models (EmoNet, ``fusion: null``) give each frame its own value, as in a file.
  Temporal models run on a sliding window: the last ``clip_len`` frames, again after each batch,
  each new frame taking its value from the window that ends with it (no future frames, so values
  differ a little from a file's, where centred windows are averaged).
- Audio is not read live: audio-visual models see it masked (as for a video without a track), and
  audio-only models are refused. ``stride`` and ``smooth`` do not apply (no future frames).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from ..inference.engine import stream_predictions
from ..inference.readers import LiveSource, LiveSourceError

PathLike = Union[str, Path]


def stream_rows(predictor: Any, source: PathLike, realtime: Optional[bool] = None,
                input_format: Optional[str] = None, options: Optional[dict] = None, name: Optional[str] = None,
                live: Optional[LiveSource] = None) -> Iterator[dict]:
    """Yield one row (a dict with the table's columns) per frame of ``source`` as it is processed
    (see the module doc). ``live``: an already opened :class:`LiveSource` (tests read its
    counters)."""
    from .columns import expression_names, quadrant_names

    p = predictor
    if not p.model.use_video:
        raise ValueError(f"{source}: live prediction reads frames only, and the model ({p.name}) uses audio only")
    src = live or LiveSource(source, realtime, input_format, options)
    video = name if name is not None else str(source)
    expr_cols: Optional[tuple[str, ...]] = None
    try:
        for chunk in stream_predictions(p.model, p.runner, src, p.cropper, p.transform, p.clip_len,
                                        p.serving.sample_rate):
            fc, va = chunk.faces, chunk.va.copy()
            valid = fc.face_mask & np.isfinite(va).all(axis=1)
            va[~valid] = np.nan
            quads = quadrant_names(va[:, 0], va[:, 1])
            expression = chunk.expression
            if expression is not None and expr_cols is None:
                expr_cols = expression_names(expression.shape[1])
            for k in range(len(chunk.indices)):
                box = fc.detections[k]
                row = {"video": video, "frame": int(chunk.indices[k]), "timestamp": round(float(chunk.times[k]), 6),
                       "track_id": 0 if fc.face_mask[k] else -1, "face_found": bool(fc.face_mask[k]),
                       "face_x": float(box[0]), "face_y": float(box[1]), "face_w": float(box[2]),
                       "face_h": float(box[3]), "face_score": float(fc.scores[k]), "speech": None,
                       "speech_prob": float("nan"),
                       "valid": bool(valid[k]), "valence": float(va[k, 0]), "arousal": float(va[k, 1]),
                       "quadrant": quads[k]}
                if expr_cols is not None:
                    e = expression[k] if expression is not None else np.full(len(expr_cols), np.nan)
                    if not valid[k]:
                        e = np.full(len(expr_cols), np.nan)
                    row.update(zip(expr_cols, (float(x) for x in e)))
                yield row
    finally:
        src.close()


__all__ = ["LiveSource", "LiveSourceError", "stream_rows"]
