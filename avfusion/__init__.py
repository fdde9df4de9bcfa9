"""avfusion: per-frame valence and arousal from the face and the voice."""
__version__ = "0.1.0"

from .config import AudioEncoderConfig, FusionConfig, ModelConfig, VideoEncoderConfig
from .factory import create_model, from_pretrained, get_model_config, list_models, save_pretrained
from .model import AVModel

__all__ = [
    "__version__",
    "AVModel",
    "AudioEncoderConfig",
    "FusionConfig",
    "ModelConfig",
    "VideoEncoderConfig",
    "create_model",
    "from_pretrained",
    "get_model_config",
    "list_models",
    "save_pretrained",
]
