"""A byte-level BPE tokenizer trained on the world's text, saved as a transformers tokenizer folder.

Conventions follow Llama where it matters to llavakit: `<unk>`=0, `<s>`=1 (BOS, added in front
of every encoded text), `</s>`=2 (EOS and vicuna_v1's end of turn, one token wherever it appears
in text), `<pad>`=3; `<image>`=4 is reserved so the model can be exported as llava-hf. Being a
`tokenizers` (fast) tokenizer it returns character offsets, which `llavakit.tokenize` needs for
exact labels. Byte-level BPE never produces `<unk>`: any text a user types is encodable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from llavakit.conversation import IMAGE_PLACEHOLDER, TEMPLATES

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER)
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


def world_texts(*json_files: str | Path) -> Iterator[str]:
    """Every human and gpt value of LLaVA JSON files, without image placeholders."""
    for path in json_files:
        for record in json.loads(Path(path).read_text()):
            for turn in record["conversations"]:
                yield turn["value"].replace(IMAGE_PLACEHOLDER, "").strip()


def template_texts() -> list[str]:
    """System prompts and role words of the registered chat templates, so they become few tokens."""
    texts = []
    for template in TEMPLATES.values():
        if template.system:
            texts.append(template.system)
    return [*texts, "USER: ASSISTANT:", "USER: hello ASSISTANT: hello</s>"]


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024,
                    model_max_length: int = 1024):
    """Train on `texts` and save to `out_dir`; returns the loaded `PreTrainedTokenizerFast`.

    Training is deterministic for the same texts in the same order.
    """
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    # No prefix space: like Llama-3/GPT-2, a word after a space is a different token from a word
    # at the start, and the space belongs to the token after it (so answer spans line up).
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, bos_id)]),
    ])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        model_max_length=model_max_length, padding_side="right",
    )
    save_tokenizer(tokenizer, out_dir)
    return load_world_tokenizer(out_dir)


def save_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    """save_pretrained, naming a class every transformers version knows (5.x writes "TokenizersBackend")."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def load_world_tokenizer(directory: str | Path):
    """The saved tokenizer, loaded the way llavakit loads any model's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def train_world_tokenizer(world_dir: str | Path, out_dir: str | Path, vocab_size: int = 1024):
    """Train on a written world's captions and instructions plus the chat templates' text."""
    world_dir = Path(world_dir)
    texts = [*template_texts(), *world_texts(world_dir / "captions.json", world_dir / "instruct.json")]
    return train_tokenizer(texts, out_dir, vocab_size)
