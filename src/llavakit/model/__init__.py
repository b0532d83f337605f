"""The LLaVA model: vision tower, projector, language model and their composition."""

from llavakit.model.language import KVCache, LanguageModel
from llavakit.model.llava import LlavaModel
from llavakit.model.projector import build_projector
from llavakit.model.vision import VisionTower

__all__ = ["KVCache", "LanguageModel", "LlavaModel", "VisionTower", "build_projector"]
