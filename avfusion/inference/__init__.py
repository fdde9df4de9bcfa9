"""Fast, bounded-memory inference: the engine under ``avfusion predict`` and zero-shot evaluation.

- :mod:`.hardware`: the CPU's name and bf16 capability (figures are quoted with it).
- :mod:`.runner`: :class:`FrameRunner`, a model's per-frame network in the chosen precision.
- :mod:`.engine`: decoding and face detection in a worker thread, the runner on every frame once.
"""
from .engine import ArrayFrames, VideoOutputs, predict_frame_by_frame, run_frames
from .hardware import cpu_flags, cpu_has_fast_bf16, cpu_name, machine_info
from .runner import PRECISIONS, FrameRunner, resolve_precision

__all__ = ["ArrayFrames", "VideoOutputs", "predict_frame_by_frame", "run_frames",
           "cpu_flags", "cpu_has_fast_bf16", "cpu_name", "machine_info", "PRECISIONS", "FrameRunner",
           "resolve_precision"]
