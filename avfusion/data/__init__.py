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
from .afew_va import load_afew_va
from .affwild2 import load_affwild2
from .clips import ClipDataset, collate
from .faces import FaceCropper, create_detector
from .manifest import load_manifest
from .records import VideoRecord
from .splits import Split, check_split, kfold_split, load_split, save_split, split_records
from .transforms import build_transform
from .video import FrameFolder, NoVideoStreamError, VideoDecodeError, VideoFile, open_frames
