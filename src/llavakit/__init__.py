"""llavakit: LLaVA-1.5 end to end in plain PyTorch."""

from llavakit.api import Llava, load, load_projector_only
from llavakit.checkpoints import CheckpointError
from llavakit.config import LanguageConfig, LlavaConfig, ProjectorConfig, VisionConfig
from llavakit.conversation import Message
from llavakit.images import ImageError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ImageError", "LanguageConfig", "Llava", "LlavaConfig", "Message", "ProjectorConfig",
    "VisionConfig", "load", "load_projector_only",
]
