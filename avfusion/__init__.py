"""avfusion: per-frame valence and arousal from the face and the voice."""
from .config import AudioEncoderConfig, FusionConfig, ModelConfig, VideoEncoderConfig
from .factory import create_model, from_pretrained, get_model_config, list_models, load_model, save_pretrained
from .losses import CCCLoss, EmoNetLoss, build_loss
from .metrics import ccc, format_clip_summary, pcc, per_clip_summary, rmse, sagr, smooth_clips, va_metrics
from .model import AVModel
from .predict import Predictor
from .version import __version__

__all__ = [
    "__version__",
    "AVModel",
    "Predictor",
    "CCCLoss",
    "EmoNetLoss",
    "build_loss",
    "ccc",
    "pcc",
    "rmse",
    "sagr",
    "va_metrics",
    "per_clip_summary",
    "format_clip_summary",
    "smooth_clips",
    "AudioEncoderConfig",
    "FusionConfig",
    "ModelConfig",
    "VideoEncoderConfig",
    "create_model",
    "from_pretrained",
    "get_model_config",
    "list_models",
    "load_model",
    "save_pretrained",
]
