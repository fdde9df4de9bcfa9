"""The one inference engine under ``avfusion predict``, ``evaluate``, ``cache``, live mode and
:class:`~avfusion.predict.Predictor`.

- :mod:`.readers`: the reader protocol (video file, frame folder, frames in memory, live source).
- :mod:`.engine`: file, temporal, voice and live prediction as modes of one loop (the face stage and
  the window planner of :mod:`avfusion.data` inside it).
- :mod:`.aggregate`: window predictions back onto frames (the one stitcher).
- :mod:`.runner`: the per-frame network (:class:`FrameRunner`: precision, runtime torch | OpenVINO,
  compile) and the voice expert (:class:`UtteranceRunner`).
- :mod:`.hardware`: the CPU's name, flags and kind (figures are quoted with them).
"""
from .aggregate import PredictionCollector, VideoPrediction
from .engine import VideoOutputs, predict_frame_by_frame, predict_temporal, predict_voice, run_frames
from .hardware import cpu_flags, cpu_has_fast_bf16, cpu_name, machine_info
from .readers import ArrayFrames, LiveSource
from .runner import PRECISIONS, RUNTIMES, FrameRunner, UtteranceRunner, resolve_precision, resolve_runtime

__all__ = ["ArrayFrames", "LiveSource", "VideoOutputs", "PredictionCollector", "VideoPrediction", "predict_frame_by_frame",
           "predict_temporal", "predict_voice", "run_frames", "cpu_flags", "cpu_has_fast_bf16", "cpu_name",
           "machine_info", "PRECISIONS", "RUNTIMES", "FrameRunner", "UtteranceRunner", "resolve_precision",
           "resolve_runtime"]
