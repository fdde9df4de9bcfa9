"""Data: decoding (video, audio), datasets, clips and synthetic data."""
from .audio import (
    SAMPLE_RATE,
    AudioDecodeError,
    NoAudioStreamError,
    audio_span,
    frame_sample_offsets,
    has_audio,
    load_audio,
    probe_audio,
    slice_audio,
)
from .synthetic import SyntheticConfig, generate_dataset, load_metadata
from .video import FrameFolder, NoVideoStreamError, VideoDecodeError, VideoFile, open_frames
