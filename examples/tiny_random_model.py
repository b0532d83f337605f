"""Build a tiny random LLaVA (with a tokenizer trained in a second), save it, load it, ask it.

The answer is gibberish: the weights are random. This shows the whole path (checkpoint format,
loading, image preprocessing, prompt template, generation) without any download.
Usage: python examples/tiny_random_model.py [OUTPUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

import llavakit
from llavakit.checkpoints import save_checkpoint
from llavakit.model import LlavaModel

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()) / "tiny-llava"

# A byte-level BPE tokenizer with Llama's special tokens, trained on a few sentences.
backend = Tokenizer(models.BPE())
backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
backend.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
backend.train_from_iterator(["a red circle left of a blue square", "what is in the image?"] * 50, trainer)
backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")

torch.manual_seed(0)
config = llavakit.LlavaConfig(
    vision=llavakit.VisionConfig(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
                                 num_layers=2, num_heads=4),
    language=llavakit.LanguageConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                     num_layers=2, num_heads=4),
)
save_checkpoint(LlavaModel(config), tokenizer, out)
print(f"saved a random tiny model to {out}")

llava = llavakit.load(out)
image = Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8"))
print("answer:", repr(llava.ask(image, "What is in the image?", max_new_tokens=12)))
