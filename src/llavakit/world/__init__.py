"""llavakit's own small world, for the embedded default model (issue 5).

A synthetic visual world generated from a seed (scenes.py, language.py, questions.py,
dataset.py), a byte-level BPE tokenizer trained on its text (tokenizer.py), and the two
backbones a LLaVA needs, pretrained on it: a CLIP-style vision tower (pretrain_vision.py,
contrastive.py, probe.py) and a Llama-style language model (pretrain_lm.py).
`pretrain_backbones` (backbones.py) runs it all; `python -m llavakit.world OUT` does the same.
"""

from llavakit.world.backbones import BUDGETS, BackbonePaths, Budget, pretrain_backbones
from llavakit.world.dataset import WorldFiles, load_images, load_scenes, read_bench, write_world
from llavakit.world.pretrain_lm import LMPretrainConfig, pretrain_lm
from llavakit.world.pretrain_vision import VisionPretrainConfig, pretrain_vision
from llavakit.world.tokenizer import load_world_tokenizer, train_world_tokenizer

__all__ = [
    "BUDGETS", "BackbonePaths", "Budget", "LMPretrainConfig", "VisionPretrainConfig", "WorldFiles",
    "load_images", "load_scenes", "load_world_tokenizer", "pretrain_backbones", "pretrain_lm",
    "pretrain_vision", "read_bench", "train_world_tokenizer", "write_world",
]
