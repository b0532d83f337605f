"""Tiny tokenizers trained on the fly, so tokenisation tests need no downloads.

* ``build_llama_sp_tokenizer``: a sentencepiece BPE model with Llama's conventions (``<unk>``=0, ``<s>``=1,
  ``</s>``=2, byte fallback, a dummy-prefix "▁"), wrapped as transformers' ``LlamaTokenizer``.
* ``build_bpe_tokenizer``: a GPT-2 / Llama-3 style byte-level BPE with the Llama-3 and ChatML special
  tokens and a post-processor that prepends ``<|begin_of_text|>`` like Meta's Llama-3 tokenizer does.
"""

from __future__ import annotations

import random
from pathlib import Path

import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaTokenizer, PreTrainedTokenizerFast

BPE_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
)

_SUBJECTS = [
    "the dog",
    "a cat",
    "the man",
    "a woman",
    "the red car",
    "two birds",
    "a small boat",
    "the old house",
    "three people",
    "a green tree",
    "the picture",
    "this image",
]
_VERBS = [
    "is sitting on",
    "is standing near",
    "is looking at",
    "runs past",
    "is next to",
    "is parked by",
    "flies over",
    "is holding",
    "shows",
    "contains",
]
_OBJECTS = [
    "the table",
    "a bench",
    "the river",
    "a large window",
    "the street",
    "some flowers",
    "the white wall",
    "a wooden fence",
    "the sky",
    "a blue sign",
]
_ENDINGS = [".", "!", "?", ", and it is sunny.", " in the morning.", "; it looks calm."]


def english_lines(n: int = 400, seed: int = 0) -> list[str]:
    """Simple generated English with punctuation and numbers (deliberately no chat-template words)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        line = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_ENDINGS)}"
        if i % 3 == 0:
            line = line[0].upper() + line[1:]
        if i % 5 == 0:
            line += f" There are {rng.randint(0, 99)} of them."
        lines.append(line)
    return lines


def build_llama_sp_tokenizer(tmp_dir: str | Path, *, legacy: bool = True) -> LlamaTokenizer:
    """Train (once per directory) a ~400-piece sentencepiece BPE and load it as a Llama tokenizer.

    ``legacy`` is explicit because it changes tokenisation right after special tokens: with
    ``legacy=True`` the text after ``</s>`` gets its own "▁" prefix (the original slow Llama behaviour),
    with ``legacy=False`` it does not.  LLaVA's ``preprocess_v1`` corrects its counts for the latter.
    """
    tmp_dir = Path(tmp_dir)
    model_file = tmp_dir / "tokenizer.model"
    if not model_file.exists():
        tmp_dir.mkdir(parents=True, exist_ok=True)
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(english_lines()),
            model_prefix=str(tmp_dir / "tokenizer"),
            model_type="bpe",
            vocab_size=400,
            byte_fallback=True,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            add_dummy_prefix=True,
            num_threads=1,
            minloglevel=2,
        )
    # from_pretrained on the folder converts tokenizer.model to a `tokenizers` backend (fast, with offsets).
    return LlamaTokenizer.from_pretrained(
        str(tmp_dir), legacy=legacy, add_bos_token=True, add_eos_token=False
    )


def build_bpe_tokenizer(tmp_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train a ~500-token byte-level BPE (GPT-2 / Llama-3 style) and wrap it for transformers."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=list(BPE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(english_lines(), trainer)
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", special_tokens=[(bos, backend.token_to_id(bos))]
            ),
        ]
    )
    path = Path(tmp_dir) / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=bos, eos_token="<|eot_id|>")
