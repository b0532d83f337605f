"""Pretrain a small Llama-style language model on the world's text and save it as a Llama folder.

The documents are the world's captions (plain sentences), its instruction records rendered with
the vicuna_v1 template, images left out (the base LLM of a LLaVA is itself a chat model, Vicuna,
so ours learns the world's vocabulary, its question forms and where a turn ends, "</s>"), and
"reading" chats whose questions are answered from a description in the same chat. Held-out
perplexity is measured on documents of the benchmark scenes, which it never trains on, and
`echo_accuracy` checks whether greedy answers repeat what was asked.

With `scene_slots`, captions and instruction chats keep their image, as nine "scene slots", one
per grid cell, each the sum of the input embeddings of the words that name the cell's content
(" large red circle top left"; an empty cell: " top left"). Text alone never asks the LM to read
several facts from one position, which is what an image token is; with the slots it learns to
before LLaVA starts, and LLaVA's stage 1 then has something to align the image tokens to
(docs/embedded-model.md, "Stage 1 aligned nothing; scene slots"). The saved model is a plain Llama: slots are only inputs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llavakit.checkpoints.hf_configs import language_to_hf
from llavakit.checkpoints.io import atomic_save_safetensors, without_tied_head
from llavakit.config import LanguageConfig
from llavakit.conversation import IMAGE_PLACEHOLDER, RenderedPrompt, from_llava_conversations, get_template
from llavakit.model.language import KVCache, LanguageModel
from llavakit.tokenize import plain_backend
from llavakit.world.dataset import (
    BENCH,
    TRAIN,
    WorldFiles,
    caption_record,
    instruct_records,
    load_scenes,
    text_rng,
)
from llavakit.world.facts import fact_document
from llavakit.world.language import caption, detailed_description, shape_first_listing
from llavakit.world.pretrain_vision import PretrainResult, lr_at, param_groups
from llavakit.world.questions import SIMPLE, ask_presence, sample_question
from llavakit.world.scenes import POSITIONS, Scene
from llavakit.world.tokenizer import save_tokenizer


@dataclass
class LMPretrainConfig:
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 1024
    block_size: int = 256
    batch_size: int = 8
    steps: int = 400
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    reading_per_image: int = 1  # reading documents (questions answered from a description) per image
    reading_short_share: float = 0.4  # share of reading answers in the short form ("Red.")
    answer_weight: float = 1.0  # next-token loss weight of the assistant's answers in chats (others: 1)
    instruct_share: float = 1.0  # share of the image-free instruction chats kept
    facts_documents: int = 0  # general-knowledge paragraphs about the attribute words (world.facts)
    scene_slots: bool = False  # captions and instruction chats keep their image as scene slots
    reading_slot_share: float = 0.0  # share of reading documents that describe the scene by its slots
    tie_embeddings: bool = False  # the output head is the input embedding (a copy is then the identity)
    # Two ways out of the reading plateau (docs/embedded-model.md, "A copy path from the start"):
    # start with a path that copies a context word to the output (`copy_init` is the scale of
    # each layer's identity output projection; 0: none), and ask every slot to name its own words
    # through the output head (`slot_word_loss` is that loss's weight; 0: none).
    copy_init: float = 0.0
    slot_word_loss: float = 0.0
    # RoPE base (Llama's 10 000). A larger one leaves more of each head's dimensions nearly
    # unrotated over a prompt; 1e6 ended the reading probe's plateau sooner but made the whole
    # recipe worse on two seeds (docs/embedded-model.md, "Lookups by place").
    rope_theta: float = 10000.0
    eval_images: int = 300  # benchmark scenes whose documents measure held-out perplexity

    def model_config(self, vocab_size: int) -> LanguageConfig:
        return LanguageConfig(
            vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_layers=self.num_layers, num_heads=self.num_heads, num_kv_heads=self.num_heads,
            max_position_embeddings=self.max_position_embeddings, rms_norm_eps=1e-5, rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        )


@dataclass(frozen=True)
class SceneDocument(RenderedPrompt):
    """A document whose image placeholder stands for `scene`'s slots."""

    scene: Scene | None = None


def chat_document(record: dict[str, Any], scene: Scene | None = None) -> RenderedPrompt:
    """An instruction record as vicuna_v1 chat text with its answers' spans: with a `scene`, its
    image placeholder stays (the scene's slots); without, it is left out."""
    turns = [dict(t) for t in record["conversations"]]
    if scene is None:
        turns[0]["value"] = turns[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
    rendered = get_template("vicuna_v1").render(from_llava_conversations(turns), add_generation_prompt=False)
    return rendered if scene is None else SceneDocument(rendered.text, rendered.target_spans, scene)


def slot_texts(scene: Scene) -> list[str]:
    """What each scene slot sums, cell by cell in the tower's patch order (row-major)."""
    cells = [f" {position}" for position in POSITIONS]
    for o in scene.objects:
        cells[o.cell] = f" {o.size} {o.colour} {o.shape} {o.position}"
    return cells


def reading_document(scene: Scene, rng: np.random.Generator, short_share: float,
                     slots: bool = False) -> RenderedPrompt:
    """A chat whose answers follow from the text: a description, then 2-4 questions about it.

    Image-free LLaVA text cannot teach the LM to look things up in its context (the answers
    depend on an image it never sees); these documents do, and stage 2 needs exactly that skill,
    with image features in place of the description.
    """
    describe = (caption, detailed_description, shape_first_listing)[int(rng.integers(3))]
    description = describe(scene, rng)  # drawn even with slots: the questions use the same draws
    if slots:  # the questions are about the scene's slots, as stage 2 asks about image tokens
        description = IMAGE_PLACEHOLDER
    pairs = []
    for qa in [sample_question(list(SIMPLE.values()), scene, rng) for _ in range(int(rng.integers(2, 5)))]:
        if qa is not None:
            pairs.append(qa.turn(short=bool(rng.random() < short_share)))
    turns = []
    for k, (q, a) in enumerate(pairs):
        turns += [{"from": "human", "value": f"{description}\n{q}" if k == 0 else q}, {"from": "gpt", "value": a}]
    rendered = get_template("vicuna_v1").render(from_llava_conversations(turns), add_generation_prompt=False)
    return SceneDocument(rendered.text, rendered.target_spans, scene) if slots else rendered


def train_documents(world: WorldFiles, reading_per_image: int = 1, facts_documents: int = 0,
                    reading_short_share: float = 0.4, instruct_share: float = 1.0,
                    scene_slots: bool = False, reading_slot_share: float = 0.0) -> list[RenderedPrompt]:
    """Captions as plain sentences, the instruction records as chats (a random `instruct_share` of
    them), reading documents and general-knowledge paragraphs about the attribute words
    (`llavakit.world.facts`). With `scene_slots` the captions and chats are `SceneDocument`s that
    keep their image placeholder."""
    seed = json.loads(world.meta.read_text())["seed"]
    annotations = json.loads(world.scenes("train").read_text())
    scenes = [Scene.from_dict(r) for r in annotations]  # load_scenes, without reading the file twice
    scene_of = {r["image"]: scene for r, scene in zip(annotations, scenes)}
    captions: list[RenderedPrompt] = []
    for r in json.loads(world.captions.read_text()):
        text = r["conversations"][1]["value"]
        captions.append(SceneDocument(IMAGE_PLACEHOLDER + text, scene=scene_of[r["image"]]) if scene_slots
                        else RenderedPrompt(text))
    instruct = json.loads(world.instruct.read_text())
    if instruct_share < 1.0:
        keep = np.random.default_rng([seed, TRAIN, 31]).random(len(instruct)) < instruct_share
        instruct = [r for r, k in zip(instruct, keep) if k]
    docs = captions + [chat_document(r, scene_of[r["image"]] if scene_slots else None) for r in instruct]
    for i, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, TRAIN, i, 0, 2])
        for _ in range(reading_per_image):  # no draw at share 0: the documents stay as they were
            by_slots = reading_slot_share > 0 and bool(rng.random() < reading_slot_share)
            docs.append(reading_document(scene, rng, reading_short_share, slots=by_slots))
    facts_rng = np.random.default_rng([seed, TRAIN, 29])
    docs += [RenderedPrompt(fact_document(facts_rng)) for _ in range(facts_documents)]
    return docs


def heldout_documents(world: WorldFiles, n_images: int) -> list[RenderedPrompt]:
    """Captions and instruction records generated for benchmark scenes exactly as for training ones."""
    seed = json.loads(world.meta.read_text())["seed"]
    docs = []
    for i, scene in enumerate(load_scenes(world.scenes("bench"))[:n_images]):
        rng, image, rid = text_rng(seed, BENCH, i), f"bench/{i:06d}.png", f"world-bench-{i:06d}"
        docs.append(RenderedPrompt(caption_record(scene, rng, image, rid)["conversations"][1]["value"]))
        docs += [chat_document(r) for r in instruct_records(scene, rng, image, rid)]
    return docs


@dataclass
class Packed:
    """Documents cut into training rows.

    rows: [blocks, block_size + 1] token ids (inputs and next-token targets overlap by one);
    answers: [blocks, block_size] whether a target is a token of an assistant's answer;
    slot_index: [blocks, block_size + 1] the scene slot at each position (into `slot_words`), -1
    for a word; slot_words: [distinct slots, most words in a slot] the word ids each slot sums,
    -1 padded.
    """

    rows: torch.Tensor
    answers: torch.Tensor
    slot_index: torch.Tensor
    slot_words: torch.Tensor


def pack(tokenizer, documents: list[RenderedPrompt], block_size: int, max_tokens: int | None = None) -> Packed:
    """BOS + document + EOS, concatenated and cut into rows of `block_size + 1`. The image
    placeholder of a `SceneDocument` becomes its scene's slots. Stops once `max_tokens` are
    collected."""
    eos = tokenizer.eos_token_id
    slot_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    slot_row: dict[str, int] = {}  # each distinct slot text is tokenised and stored once
    slot_words: list[list[int]] = []
    backend = plain_backend(tokenizer)
    if backend is None:
        raise TypeError("packing needs a fast (Rust tokenizers) tokenizer, such as the world's")
    # Per document, arrays of its tokens, answer flags and slot rows (-1: a word); numpy rather
    # than a Python loop over tokens, as millions of tokens are packed.
    streams: list[np.ndarray] = []
    answers: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    collected = 0

    def slot_rows(scene: Scene) -> list[int]:
        rows = []
        for text in slot_texts(scene):
            if text not in slot_row:
                slot_row[text] = len(slot_words)
                slot_words.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            rows.append(slot_row[text])
        return rows

    for start in range(0, len(documents), 2048):
        chunk = documents[start : start + 2048]
        # The tokenizer's Rust backend: what the transformers call returns, without converting
        # every encoding to Python dicts (a third of the time here).
        for doc, encoding in zip(chunk, backend.encode_batch([d.text for d in chunk])):
            ids, offsets = encoding.ids, encoding.offsets
            tokens = np.asarray(ids, dtype=np.int64)
            begins = np.asarray([a for a, _ in offsets], dtype=np.int64)
            spans = np.asarray(doc.target_spans, dtype=np.int64).reshape(-1, 2)
            is_answer = ((begins[:, None] >= spans[None, :, 0]) & (begins[:, None] < spans[None, :, 1])).any(1)
            is_answer[:1] = False  # the BOS
            word_slot = np.full(len(tokens), -1, dtype=np.int64)
            scene = getattr(doc, "scene", None)
            placeholders = np.flatnonzero(tokens == slot_id) if scene is not None else np.empty(0, dtype=np.int64)
            if len(placeholders):  # each placeholder becomes the scene's slots
                rows = np.asarray(slot_rows(scene), dtype=np.int64)
                repeats = np.ones(len(tokens), dtype=np.int64)
                repeats[placeholders] = len(rows)
                is_answer[placeholders] = False
                tokens, is_answer, word_slot = (np.repeat(a, repeats) for a in (tokens, is_answer, word_slot))
                word_slot[tokens == slot_id] = np.tile(rows, len(placeholders))
            if ids[-1] != eos:  # chat documents already end with </s>
                tokens = np.append(tokens, eos)
                is_answer = np.append(is_answer, False)
                word_slot = np.append(word_slot, -1)
            streams.append(tokens)
            answers.append(is_answer)
            slots.append(word_slot)
            collected += len(tokens)
            if max_tokens is not None and collected >= max_tokens:
                break
        if max_tokens is not None and collected >= max_tokens:
            break
    n = (collected - 1) // block_size
    if n < 1:
        raise ValueError(f"{collected} tokens are not enough for one block of {block_size}")
    stream, answer, slot = (np.concatenate(streams), np.concatenate(answers), np.concatenate(slots))
    at = np.arange(n)[:, None] * block_size + np.arange(block_size + 1)[None, :]  # rows overlap by one
    width = max((len(w) for w in slot_words), default=1)  # a smaller vocabulary splits words
    words = torch.full((len(slot_words), width), -1, dtype=torch.long)
    for i, w in enumerate(slot_words):
        words[i, : len(w)] = torch.tensor(w)
    return Packed(torch.from_numpy(stream[at]), torch.from_numpy(answer[at[:, 1:]]),
                  torch.from_numpy(slot[at].astype(np.int32)), words)


def slot_embeddings(model: LanguageModel, rows: torch.Tensor, slot_index: torch.Tensor,
                    slot_words: torch.Tensor) -> torch.Tensor:
    """Input embeddings of `rows`, with each scene slot the sum of its words' embeddings."""
    embed = model.model.embed_tokens
    x = embed(rows)
    where = slot_index >= 0
    if bool(where.any()):
        words = slot_words[slot_index[where].long()]
        summed = (embed(words.clamp(min=0)) * (words >= 0)[..., None]).sum(1)
        x = x.masked_scatter(where[..., None], summed.to(x.dtype))
    return x


def init_weights(model: LanguageModel, std: float = 0.02) -> None:
    """GPT-2 style: N(0, std) everywhere, residual output projections scaled by 1/sqrt(2 * layers)."""
    scaled = std / math.sqrt(2 * model.config.num_layers)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, 0.0, scaled if name.endswith(("o_proj.weight", "down_proj.weight")) else std)


def init_copy_path(model: LanguageModel, scale: float) -> None:
    """A path that copies context words to the output from step 0: the output head starts as the
    input embeddings (still a separate matrix), each value projection as the identity and each
    output projection as `scale` times it, so attention to a word raises that word's logit."""
    config = model.config
    width = config.hidden_size
    if config.num_heads * config.head_dim != width or config.num_kv_heads != config.num_heads:
        raise ValueError("copy_init needs num_heads * head_dim == hidden_size and no grouped keys")
    with torch.no_grad():
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight.copy_(torch.eye(width))
            layer.self_attn.o_proj.weight.copy_(scale * torch.eye(width))


def slot_word_nll(logits: torch.Tensor, slot_index: torch.Tensor, slot_words: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of each slot's own words under the logits at its position:
    the slot must be readable by the output head where it stands."""
    where = slot_index >= 0
    words = slot_words[slot_index[where].long()]
    valid = words >= 0
    log_probs = torch.log_softmax(logits[where].float(), -1).gather(1, words.clamp(min=0))
    return -(log_probs * valid).sum() / valid.sum().clamp(min=1)


def target_weights(answers: torch.Tensor, slot_index: torch.Tensor | None,
                   answer_weight: float = 1.0) -> torch.Tensor | None:
    """Next-token loss weights for rows' targets, [rows, block_size]: 0 where the target is a
    scene slot (an input only; `slot_index` as in `Packed`, None without slots), `answer_weight`
    where it is a token of an assistant's answer (`answers`), 1 elsewhere; None when all are 1."""
    weights = None
    if answer_weight != 1.0:
        weights = 1 + (answer_weight - 1) * answers.float()
    if slot_index is not None:
        is_word = (slot_index[:, 1:] < 0).float()
        weights = is_word if weights is None else is_word * weights
    return weights


def next_token_nll(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Each target's next-token loss, [rows, targets], for `logits` of `rows[:, :-1]`."""
    targets = rows[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def next_token_loss(logits: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token loss of `logits` (for `rows[:, :-1]`), weighted per target when `weights` is given."""
    nll = next_token_nll(logits, rows).flatten()
    if weights is None:
        return nll.mean()
    weights = weights.flatten()
    return (nll * weights).sum() / weights.sum()


@torch.no_grad()
def perplexities(model: LanguageModel, blocks: torch.Tensor, masks: dict[str, torch.Tensor | None],
                 batch_size: int = 32) -> dict[str, float]:
    """exp(mean next-token loss) over the targets each mask selects (None: all), in one pass."""
    model.eval()
    totals, counts = dict.fromkeys(masks, 0.0), dict.fromkeys(masks, 0.0)
    for i in range(0, len(blocks), batch_size):
        rows = blocks[i : i + batch_size]
        nll = next_token_nll(model(rows[:, :-1]), rows)
        for name, mask in masks.items():
            keep = torch.ones_like(nll) if mask is None else mask[i : i + batch_size].float()
            totals[name] += float((nll * keep).sum())
            counts[name] += float(keep.sum())
    return {name: math.exp(totals[name] / counts[name]) for name in masks}


@torch.no_grad()
def echo_accuracy(model: LanguageModel, tokenizer, world: WorldFiles, n_questions: int = 40,
                  max_new_tokens: int = 16) -> float:
    """How often the greedy answer to "Is there a red circle in the image?" names the red circle.

    Without the image the LM cannot know the answer, but it can repeat what was asked, and must
    learn to: every sentence answer refers back to the question. A measure of in-context copying.
    """
    model.eval()
    seed = json.loads(world.meta.read_text())["seed"]
    template = get_template("vicuna_v1")
    hits = 0
    scenes = load_scenes(world.scenes("bench"))
    for i in range(n_questions):
        rng = text_rng(seed, BENCH, 10_000 + i)
        qa = ask_presence(scenes[i % len(scenes)], rng)
        noun = qa.question.split(" in the ")[0].split(" ", 3)[-1].removeprefix("a ").removeprefix("an ")
        prompt = template.render(from_llava_conversations([{"from": "human", "value": qa.question}]),
                                 add_generation_prompt=True).text
        ids = torch.tensor([tokenizer(prompt).input_ids])
        cache, answer = KVCache(model.config, 1), []
        for _ in range(max_new_tokens):
            token = int(model(ids, cache=cache, logits_positions=slice(-1, None))[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            answer.append(token)
            ids = torch.tensor([[token]])
        hits += noun in tokenizer.decode(answer)
    return hits / n_questions


def save_language_model(model: LanguageModel, tokenizer, out_dir: str | Path) -> Path:
    """A transformers LlamaForCausalLM folder: config.json, model.safetensors, tokenizer files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = without_tied_head({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                              model.config.tie_word_embeddings, head_key="lm_head.weight")
    atomic_save_safetensors(state, out_dir / "model.safetensors")
    save_tokenizer(tokenizer, out_dir)
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    hf = {"architectures": ["LlamaForCausalLM"], **language_to_hf(model.config), "dtype": "float32",
          "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.02, "use_cache": True}
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n")  # last: the folder is complete
    return out_dir


def pretrain_lm(world_dir: str | Path, tokenizer, out_dir: str | Path, config: LMPretrainConfig,
                seed: int = 0, progress: bool = True, max_seconds: float | None = None) -> PretrainResult:
    """Next-token pretraining on packed world documents; saves the model and measures perplexity."""
    start = time.time()
    world = WorldFiles(Path(world_dir))
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 23])
    documents = train_documents(world, config.reading_per_image, config.facts_documents,
                                config.reading_short_share, config.instruct_share, config.scene_slots,
                                config.reading_slot_share)
    documents = [documents[i] for i in rng.permutation(len(documents))]
    needed = config.steps * config.batch_size * config.block_size
    packed = pack(tokenizer, documents, config.block_size, max_tokens=int(needed * 1.1))
    blocks, with_slots = packed.rows, len(packed.slot_words) > 0

    model = LanguageModel(config.model_config(len(tokenizer)))
    init_weights(model)
    if config.copy_init:
        init_copy_path(model, config.copy_init)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    losses: list[float] = []
    order, cursor = rng.permutation(len(blocks)), 0
    bar = tqdm(range(config.steps), desc="language", disable=not progress, leave=False)
    for step in bar:
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(len(blocks)), 0
        picked = torch.from_numpy(order[cursor : cursor + config.batch_size])
        rows = blocks[picked]
        cursor += config.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup_steps)
        model.train()
        slot_index = packed.slot_index[picked] if with_slots else None
        weights = target_weights(packed.answers[picked], slot_index, config.answer_weight)
        if slot_index is not None:
            embeds = slot_embeddings(model, rows[:, :-1], slot_index[:, :-1], packed.slot_words)
            logits = model(inputs_embeds=embeds)  # kept for the slot-word loss as well
            loss = next_token_loss(logits, rows, weights)
            if config.slot_word_loss:
                loss = loss + config.slot_word_loss * slot_word_nll(logits, slot_index[:, :-1], packed.slot_words)
        else:
            loss = next_token_loss(model(rows[:, :-1]), rows, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if max_seconds is not None and time.time() - start > max_seconds:
            break
    bar.close()

    path = save_language_model(model, tokenizer, out_dir)
    metrics: dict[str, Any] = {"steps": len(losses), "stopped_early": len(losses) < config.steps,
                               "train_tokens": len(losses) * config.batch_size * config.block_size,
                               "first_loss": losses[0], "final_loss": float(np.mean(losses[-20:])),
                               "config": asdict(config)}
    if config.eval_images:
        held = pack(tokenizer, heldout_documents(world, config.eval_images), config.block_size)
        heldout, heldout_answers = held.rows, held.answers
        measured = perplexities(model, heldout, {"heldout_perplexity": None,
                                                 "heldout_answer_perplexity": heldout_answers})
        metrics.update(heldout_tokens=int(heldout[:, 1:].numel()), **measured,
                       echo_accuracy=echo_accuracy(model, tokenizer, world))
    return PretrainResult(path, losses, metrics, time.time() - start)
