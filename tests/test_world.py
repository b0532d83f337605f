"""The synthetic world, its tokenizer and the backbone pretraining (llavakit.world)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from llavakit.conversation import IMAGE_PLACEHOLDER, from_llava_conversations, get_template
from llavakit.tokenize import IGNORE_INDEX, encode
from llavakit.world.dataset import STYLE_SHARE, load_scenes, read_bench, write_world
from llavakit.world.language import plural, where
from llavakit.world.questions import MC_SUFFIX, SHORT_SUFFIX
from llavakit.world.scenes import COLOURS, POSITIONS, SHAPES, SIZES, Scene, WorldObject
from llavakit.world.tokenizer import load_world_tokenizer, train_world_tokenizer

SEED = 7


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_world(root, SEED, n_train_images=120, n_bench_images=80, progress=False)
    return root


@pytest.fixture(scope="module")
def tokenizer(world, tmp_path_factory):
    return train_world_tokenizer(world, tmp_path_factory.mktemp("tok"))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_world_is_deterministic_from_its_seed(world, tmp_path) -> None:
    again = write_world(tmp_path / "again", SEED, 120, 80, progress=False).root
    assert _digest(again) == _digest(world)
    other = write_world(tmp_path / "other", SEED + 1, 20, 5, progress=False).root
    assert (other / "captions.json").read_text() != (world / "captions.json").read_text()
    # Image i depends on (seed, i) only, not on how many images were made.
    fewer = _digest(write_world(tmp_path / "fewer", SEED, 20, 5, progress=False).root)
    assert all(fewer[k] == _digest(world)[k] for k in fewer if k.startswith("images/"))


def test_a_world_made_in_processes_is_the_same(world, tmp_path, monkeypatch) -> None:
    # Large worlds are made in forked workers; every file must be what one process makes.
    import llavakit.world.dataset as dataset

    monkeypatch.setattr(dataset, "PARALLEL_MIN_IMAGES", 1)
    assert _digest(write_world(tmp_path / "forked", SEED, 120, 80, progress=False).root) == _digest(world)


def _check_record(record: dict, image_folder: Path) -> None:
    assert set(record) == {"id", "image", "conversations"}
    assert (image_folder / record["image"]).is_file()
    turns = record["conversations"]
    assert len(turns) >= 2 and len(turns) % 2 == 0
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert all(isinstance(t["value"], str) and t["value"].strip() for t in turns)
    # One image per record, so exactly one placeholder, in the first human turn.
    assert sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns) == 1
    assert IMAGE_PLACEHOLDER in turns[0]["value"]
    get_template("vicuna_v1").render(from_llava_conversations(turns), add_generation_prompt=False)


def _check_listing(record: dict, scenes: dict[str, Scene]) -> None:
    """The grounding answer names every object once, each attribute in the order asked for."""
    request = record["conversations"][0]["value"]
    answer = record["conversations"][1]["value"]
    assert answer.endswith(".")
    colour_first = "colour, then shape" in request
    assert colour_first or "shape, then colour" in request
    pairs = [item.split() for item in answer[:-1].split(", ")]
    named = sorted((p[1], p[0]) if colour_first else (p[0], p[1]) for p in pairs)
    scene = scenes[record["image"]]
    assert named == sorted((o.shape, o.colour) for o in scene.objects)


def test_files_are_valid_llava_json(world) -> None:
    scenes = {r["image"]: Scene.from_dict(r) for r in json.loads((world / "scenes_train.json").read_text())}
    captions = json.loads((world / "captions.json").read_text())
    instruct = json.loads((world / "instruct.json").read_text())
    assert len(captions) == 120
    for record in captions + instruct:
        _check_record(record, world / "images")
    assert len({r["id"] for r in captions}) == len(captions)
    assert len({r["id"] for r in instruct}) == len(instruct)
    per_style = Counter(r["id"].rsplit("-", 1)[1] for r in instruct)
    assert set(per_style) == {"conv", "detail", "reason", "short", "mc", "yesno", "list"}
    # Every image has the short-answer, presence and listing records; the long-answer styles
    # and multiple choice only a share of them (STYLE_SHARE).
    assert per_style["short"] == per_style["yesno"] == per_style["list"] == 120
    for style, share in STYLE_SHARE.items():
        expected = 120 * share * (0.5 if style in ("detail", "reason") else 1.0)
        assert abs(per_style[style] - expected) < 4 * expected ** 0.5 + 2, (style, per_style[style], expected)
    for r in instruct:
        questions = [t["value"] for t in r["conversations"][::2]]
        answers = [t["value"] for t in r["conversations"][1::2]]
        if r["id"].endswith("-short"):
            assert all(q.endswith(SHORT_SUFFIX) for q in questions)
        if r["id"].endswith("-mc"):
            assert all(q.endswith(MC_SUFFIX) and "\nA. " in q for q in questions)
            assert all(a in "ABCD" and len(a) == 1 for a in answers)
        if r["id"].endswith("-yesno"):
            assert sorted(answers) == ["No", "Yes"]
        if r["id"].endswith("-list"):
            _check_listing(r, scenes)


def test_lookup_records_ask_colours_shapes_and_presence(world) -> None:
    """lookups.json: per image of 2+ objects, chats that ask the colour or shape of objects named
    by their cell alone or by a description without the asked attribute, and one presence
    question each; every answer follows from the annotations."""
    from llavakit.world.dataset import LOOKUP_RECORDS_PER_IMAGE

    annotations = json.loads((world / "scenes_train.json").read_text())
    scenes = {r["image"]: Scene.from_dict(r) for r in annotations}
    lookups = json.loads((world / "lookups.json").read_text())
    several = sum(len(s.objects) > 1 for s in scenes.values())
    assert len(lookups) == LOOKUP_RECORDS_PER_IMAGE * several > 0
    assert json.loads((world / "meta.json").read_text())["n_lookups"] == len(lookups)
    assert len({r["id"] for r in lookups}) == len(lookups)
    short = by_place = by_description = 0
    presence = Counter()
    for record in lookups:
        _check_record(record, world / "images")
        scene = scenes[record["image"]]
        assert len(scene.objects) > 1
        turns = record["conversations"]
        asked_presence = 0
        for question, answer in zip([t["value"] for t in turns[::2]], [t["value"] for t in turns[1::2]]):
            question = question.replace(IMAGE_PLACEHOLDER + "\n", "")
            text = question.removesuffix(SHORT_SUFFIX)
            is_short = question.endswith(SHORT_SUFFIX)
            short += is_short
            if text.startswith(("Is there", "Can you see")):
                asked_presence += 1
                there = bool(_select(scene, text))
                presence[there] += 1
                assert (answer == ("Yes" if there else "No")) if is_short else answer.startswith("Yes" if there else "No")
                continue
            asked = "colour" if "colour" in text else "shape"
            assert _mentioned(text, COLOURS if asked == "colour" else SHAPES) == []  # never the asked attribute
            (obj,) = _select(scene, text)  # the description picks out one object
            if _position_in(text) is not None and not _mentioned(text, COLOURS) and not _mentioned(text, SIZES):
                by_place += 1  # "the circle at the top left", "the object in the centre"
            else:
                by_description += 1
            if is_short:
                assert answer == getattr(obj, asked)
            else:
                assert getattr(obj, asked) in answer
        assert asked_presence == 1
    assert presence[True] > 0.4 * len(lookups) and presence[False] > 0.4 * len(lookups)
    assert by_place > 0.3 * (by_place + by_description) and by_description > 0.3 * (by_place + by_description)
    assert 0.3 < short / sum(len(r["conversations"]) // 2 for r in lookups) < 0.7


# ---- an independent reading of the questions, checked against the annotations -------------------

def _mentioned(text: str, words) -> list[str]:
    padded = f" {text.lower().rstrip('?')} "
    return [w for w in words if f" {w} " in padded or f" {plural(w)} " in padded]


def _position_in(text: str) -> str | None:
    for p in sorted(POSITIONS, key=len, reverse=True):
        if where(p) in text:
            return p
    return None


def _select(scene: Scene, text: str) -> list[WorldObject]:
    """Objects matching every attribute the question mentions."""
    colours, shapes, sizes = _mentioned(text, COLOURS), _mentioned(text, SHAPES), _mentioned(text, SIZES)
    position = _position_in(text)
    return [o for o in scene.objects
            if (not colours or o.colour in colours) and (not shapes or o.shape in shapes)
            and (not sizes or o.size in sizes) and (position is None or o.position == position)]


def test_benchmark_answers_follow_from_the_annotations(world) -> None:
    scenes = load_scenes(world / "scenes_bench.json")
    train = {s.signature for s in load_scenes(world / "scenes_train.json")}
    questions = read_bench(world / "bench.jsonl")
    assert {q["category"] for q in questions} == {"colour", "shape", "count", "position", "presence"}
    for q in questions:
        scene = scenes[int(q["image"].split("/")[1].split(".")[0])]
        assert (world / "images" / q["image"]).is_file()
        truth = q["answer"] if q["type"] != "mc" else q["answer_text"]
        if q["type"] == "mc":
            assert q["options"][ord(q["answer"]) - ord("A")] == truth and q["text"].endswith(MC_SUFFIX)
        elif q["type"] == "short":
            assert q["text"].endswith(SHORT_SUFFIX) and q["answers"] == [truth] * 10
        question = q["question"]
        if q["category"] == "count":
            assert int(truth) == len(_select(scene, question)) and 1 <= int(truth) <= 5
        elif q["category"] == "presence":
            assert truth == ("yes" if _select(scene, question) else "no") == q["label"]
        else:
            (obj,) = _select(scene, question)  # the reference picks out exactly one object
            assert getattr(obj, q["category"]) == truth
    presence = [q for q in questions if q["category"] == "presence"]
    assert sum(q["label"] == "yes" for q in presence) == sum(q["label"] == "no" for q in presence)
    assert {q["pope_split"] for q in presence} == {"positive", "random", "adversarial"}
    assert all(s.signature not in train for s in scenes if len(s.objects) > 1)


def test_training_pixels_match_the_image_processor(world) -> None:
    from llavakit.images import ImageProcessor
    from llavakit.world.dataset import WorldFiles, load_images, normalise

    pixels, scenes = load_images(WorldFiles(world), "bench")
    processor = ImageProcessor(image_size=96, patch_size=16, aspect="pad")
    expected = processor.preprocess(world / "images" / "bench" / "000003.png")
    torch.testing.assert_close(normalise(pixels[3:4])[0], expected, atol=1e-6, rtol=0)
    assert len(scenes) == len(pixels) == 80


# ---- tokenizer ------------------------------------------------------------------------------------

def _target_runs(enc) -> list[list[int]]:
    runs, current = [], []
    for label in enc.labels:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_tokenizer_conventions(tokenizer) -> None:
    reloaded = load_world_tokenizer(tokenizer.name_or_path)
    assert reloaded.is_fast and len(reloaded) == len(tokenizer)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2, 3)
    ids = tokenizer("The star is red.</s>USER: hi").input_ids
    assert ids[0] == 1 and ids.count(2) == 1 and tokenizer.convert_ids_to_tokens(2) == "</s>"
    assert tokenizer("</s>", add_special_tokens=False).input_ids == [2]
    assert tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) == 4
    assert tokenizer.decode(tokenizer("Is there a 🟥 circle?").input_ids, skip_special_tokens=True) == "Is there a 🟥 circle?"


@pytest.mark.parametrize("template", ["vicuna_v1", "plain"])
def test_tokenizer_gives_exact_labels(tokenizer, world, template: str) -> None:
    source = "instruct.json" if template == "vicuna_v1" else "captions.json"
    records = json.loads((world / source).read_text())[:40]
    for record in records:
        messages = from_llava_conversations(record["conversations"])
        rendered = get_template(template).render(messages, add_generation_prompt=False)
        enc = encode(rendered, tokenizer, image_token_id=-200, tokens_per_image=36, with_labels=True)
        assert [tokenizer.decode(run) for run in _target_runs(enc)] == rendered.target_texts()
        assert enc.input_ids.count(-200) == 36 and enc.input_ids[0] == tokenizer.bos_token_id


def test_fact_documents_tell_each_attribute_word_apart(world) -> None:
    """Pretraining text in which every colour, shape and size word has contexts of its own."""
    from llavakit.world.dataset import WorldFiles
    from llavakit.world.pretrain_lm import train_documents

    world = WorldFiles(world)
    plain = train_documents(world)
    docs = train_documents(world, facts_documents=300)
    assert [d.text for d in docs[: len(plain)]] == [d.text for d in plain]  # the world's text is unchanged
    facts = [d.text for d in docs[len(plain):]]
    assert len(facts) == 300 and all(not d.target_spans for d in docs[len(plain):])
    assert facts == [d.text for d in train_documents(world, facts_documents=300)[len(plain):]]
    sentences = [s.strip() for text in facts for s in text.replace("?", "?|").replace(".", ".|").split("|") if s.strip()]
    contexts: dict[str, set[str]] = {}
    for sentence in sentences:
        words = sentence.lower().rstrip(".?").replace(",", "").replace(":", "").split()
        for word in set(words) & {*COLOURS, *SHAPES, *SIZES}:
            contexts.setdefault(word, set()).add(" ".join(w for w in words if w != word))
    assert set(contexts) == {*COLOURS, *SHAPES, *SIZES}
    for group in (list(COLOURS), list(SHAPES)):
        for a in group:
            for b in group:
                if a != b:  # some sentence about `a` would be false about `b`
                    assert contexts[a] - contexts[b], (a, b)


def test_shape_first_listing_puts_each_colour_right_after_its_shape() -> None:
    from llavakit.world.language import shape_first_listing

    scene = Scene((WorldObject("circle", "red", "small", 1, 0, (0.0, 0.33, 0.3, 0.66)),
                   WorldObject("star", "yellow", "large", 2, 2, (0.66, 0.66, 1.0, 1.0))))
    text = shape_first_listing(scene, np.random.default_rng(0))
    assert text.startswith("The objects, shape first: ") and text.endswith(".")
    items = sorted(text.removeprefix("The objects, shape first: ").rstrip(".").split("; "))
    assert items == ["circle red small on the left", "star yellow large at the bottom right"]


def test_reading_documents_and_the_instruction_share(world) -> None:
    from llavakit.world.dataset import WorldFiles
    from llavakit.world.pretrain_lm import train_documents

    world = WorldFiles(world)
    n_records = len(json.loads(world.instruct.read_text()))
    n_captions = len(json.loads(world.captions.read_text()))
    n_scenes = len(load_scenes(world.scenes("train")))
    dense = train_documents(world, reading_per_image=3, reading_short_share=0.8, instruct_share=0.2)
    n_instruct = len(dense) - n_captions - 3 * n_scenes
    assert 0.1 * n_records < n_instruct < 0.3 * n_records
    assert [d.text for d in dense] == [d.text for d in train_documents(world, 3, 0, 0.8, 0.2)]
    reading = dense[-3 * n_scenes:]
    assert any("The objects, shape first: " in d.text for d in reading)
    # Every reading document answers from its own first turn; most answers are the short form.
    answers = [a for d in reading for a in d.target_texts()]
    short = sum(len(a.rstrip("</s>").split()) <= 2 for a in answers) / len(answers)
    assert 0.65 < short < 0.95, short
    # With reading_slot_share the description is the scene's slots; a zero share changes nothing.
    assert [d.text for d in train_documents(world, 3, 0, 0.8, 0.2, reading_slot_share=0.0)] == \
        [d.text for d in dense]
    by_slots = train_documents(world, 3, 0, 0.8, 0.2, reading_slot_share=1.0)[-3 * n_scenes:]
    scenes = load_scenes(world.scenes("train"))
    assert [d.scene for d in by_slots] == [s for s in scenes for _ in range(3)]
    assert all(d.text.count(IMAGE_PLACEHOLDER) == 1 and "USER: " + IMAGE_PLACEHOLDER + "\n" in d.text
               and d.target_texts() for d in by_slots)


def test_scene_slots_carry_each_cell_into_the_lm(world, tokenizer) -> None:
    """Captions and chats keep their image as nine slots, each the sum of its cell's words."""
    from llavakit.model.language import LanguageModel
    from llavakit.world.dataset import WorldFiles
    from llavakit.world.pretrain_lm import (
        LMPretrainConfig,
        SceneDocument,
        pack,
        slot_embeddings,
        train_documents,
    )

    files = WorldFiles(world)
    scenes = load_scenes(files.scenes("train"))
    plain = train_documents(files, reading_per_image=1)
    slotted = train_documents(files, reading_per_image=1, scene_slots=True)
    n_captions = len(json.loads(files.captions.read_text()))
    n_chats = len(json.loads(files.instruct.read_text()))
    assert len(slotted) == len(plain)
    assert all(isinstance(d, SceneDocument) and d.text.count(IMAGE_PLACEHOLDER) == 1
               for d in slotted[: n_captions + n_chats])
    assert slotted[0].text == IMAGE_PLACEHOLDER + plain[0].text and slotted[0].scene == scenes[0]
    # Removing the placeholder from a slotted chat gives the image-free one, answers included.
    chat, free = slotted[n_captions], plain[n_captions]
    assert chat.text.replace(IMAGE_PLACEHOLDER + "\n", "") == free.text
    assert chat.target_texts() == free.target_texts()
    assert all(IMAGE_PLACEHOLDER not in d.text for d in slotted[n_captions + n_chats:])

    caption = slotted[0]
    packed = pack(tokenizer, [caption], block_size=8)
    stream = packed.rows[:, :-1].flatten().tolist() + packed.rows[-1:, -1].tolist()
    index = packed.slot_index[:, :-1].flatten().tolist() + packed.slot_index[-1:, -1].tolist()
    slot_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    assert stream[1:10] == [slot_id] * 9 and slot_id not in stream[10:]  # after BOS, then the caption
    assert [i >= 0 for i in index[:11]] == [False] + [True] * 9 + [False]
    said = [tokenizer.decode([w for w in packed.slot_words[i].tolist() if w >= 0]) for i in index[1:10]]
    objects = {o.cell: o for o in caption.scene.objects}
    for cell, text in enumerate(said):
        o = objects.get(cell)
        expected = POSITIONS[cell] if o is None else f"{o.size} {o.colour} {o.shape} {o.position}"
        assert text.strip() == expected
    assert not packed.answers.any()  # a caption has no assistant answer; slots never are one
    # A slot's input is the sum of its words' embeddings; every other position is its token's.
    model = LanguageModel(LMPretrainConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
                          .model_config(len(tokenizer)))
    rows, where = packed.rows[:2, :-1], packed.slot_index[:2, :-1]
    embeds = slot_embeddings(model, rows, where, packed.slot_words)
    table = model.model.embed_tokens.weight
    for b in range(rows.shape[0]):
        for t in range(rows.shape[1]):
            if where[b, t] >= 0:
                words = [w for w in packed.slot_words[where[b, t]].tolist() if w >= 0]
                torch.testing.assert_close(embeds[b, t], table[words].sum(0))
            else:
                torch.testing.assert_close(embeds[b, t], table[rows[b, t]])



def test_packing_tokenises_like_the_tokenizer_whatever_its_last_call(world, tokenizer) -> None:
    """`pack` encodes through the tokenizer's Rust backend, which keeps the truncation and padding
    of the last call that asked for them (the vision pretraining's); packing must not."""
    from llavakit.world.dataset import WorldFiles
    from llavakit.world.pretrain_lm import pack, train_documents

    documents = train_documents(WorldFiles(world), reading_per_image=1, scene_slots=True)[::7][:40]
    before = pack(tokenizer, documents, block_size=32)
    tokenizer(["a red circle at the top left", "two"], padding=True, truncation=True, max_length=4)
    after = pack(tokenizer, documents, block_size=32)
    for name in ("rows", "answers", "slot_index", "slot_words"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    # The stream is the tokenizer's own ids (a slot placeholder becomes nine slots).
    slot_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    expected = []
    for doc in documents:
        for token in tokenizer(doc.text).input_ids:
            expected += [slot_id] * 9 if token == slot_id else [token]
        if expected[-1] != tokenizer.eos_token_id:
            expected.append(tokenizer.eos_token_id)
    stream = after.rows[:, :-1].flatten().tolist() + after.rows[-1:, -1].tolist()
    assert stream == expected[: len(stream)]


def test_the_copy_path_and_the_slot_word_loss(world, tokenizer) -> None:
    """`copy_init` starts the LM with a path that raises the logits of the words in its context;
    `slot_word_nll` is low exactly when each slot's position names its own words."""
    from llavakit.model.language import LanguageModel
    from llavakit.world.dataset import WorldFiles
    from llavakit.world.pretrain_lm import (
        LMPretrainConfig,
        init_copy_path,
        init_weights,
        pack,
        slot_embeddings,
        slot_word_nll,
        train_documents,
    )

    config = LMPretrainConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    ids = tokenizer(" red circle top left", add_special_tokens=False).input_ids
    context = torch.tensor([[1, *ids, *tokenizer(" and then", add_special_tokens=False).input_ids]])
    rank_of_context_words = {}
    for copy in (0.0, 0.05):
        torch.manual_seed(0)
        model = LanguageModel(config.model_config(len(tokenizer))).eval()
        init_weights(model)
        if copy:
            init_copy_path(model, copy)
            assert model.lm_head.weight is not model.model.embed_tokens.weight  # a copy, not tied
        with torch.no_grad():
            last = model(context)[0, -1]
        ranks = (last[None, :] > last[ids][:, None]).sum(1)  # 0: the top logit
        rank_of_context_words[copy] = float(ranks.float().mean())
    # Among about 800 words: near the top with the copy path, around the middle without it.
    vocab = len(tokenizer)
    assert rank_of_context_words[0.05] < vocab / 20 < vocab / 4 < rank_of_context_words[0.0], rank_of_context_words
    with pytest.raises(ValueError, match="head_dim"):
        init_copy_path(LanguageModel(LMPretrainConfig(hidden_size=32, num_heads=3).model_config(len(tokenizer))), 0.1)

    packed = pack(tokenizer, train_documents(WorldFiles(world), scene_slots=True)[:4], block_size=64)
    rows, where = packed.rows[:1, :-1], packed.slot_index[:1, :-1]
    assert (where >= 0).sum() >= 9  # the first caption's nine slots at least
    knowing = torch.full((1, rows.shape[1], vocab), -20.0)  # each slot's logits favour its own words
    for t in range(rows.shape[1]):
        if where[0, t] >= 0:
            words = [w for w in packed.slot_words[where[0, t]].tolist() if w >= 0]
            knowing[0, t, words] = 0.0
    ignorant = torch.zeros(1, rows.shape[1], vocab)
    assert float(slot_word_nll(knowing, where, packed.slot_words)) < 2.0
    assert float(slot_word_nll(ignorant, where, packed.slot_words)) == pytest.approx(math.log(vocab), rel=1e-4)
    # Through a model the loss reaches the embeddings that the slots sum.
    model = LanguageModel(config.model_config(vocab))
    logits = model(inputs_embeds=slot_embeddings(model, rows, where, packed.slot_words))
    slot_word_nll(logits, where, packed.slot_words).backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_answer_weight_raises_the_loss_weight_of_answers_only(world, tokenizer) -> None:
    """`answer_weight` weighs the tokens of the assistant's answers; slots stay out of the loss."""
    from llavakit.world.dataset import WorldFiles
    from llavakit.world.pretrain_lm import next_token_loss, pack, target_weights, train_documents

    docs = train_documents(WorldFiles(world), reading_per_image=1, scene_slots=True, reading_slot_share=1.0)
    packed = pack(tokenizer, docs[-40:], block_size=64)  # reading documents: chats with short answers
    answers, slots = packed.answers, packed.slot_index
    plain, weighted = target_weights(answers, slots), target_weights(answers, slots, answer_weight=4.0)
    is_slot, is_answer = slots[:, 1:] >= 0, answers
    assert is_slot.any() and is_answer.any()
    assert torch.equal(plain, (~is_slot).float())
    assert set(weighted[is_answer].tolist()) == {4.0}
    assert set(weighted[~is_answer & ~is_slot].tolist()) == {1.0} and set(weighted[is_slot].tolist()) == {0.0}
    # The weighted targets are the answers' words: "Yes", colours, shapes, "</s>" ...
    answer_text = tokenizer.decode(packed.rows[:, 1:][weighted == 4.0].tolist())
    assert "ASSISTANT" not in answer_text and "USER" not in answer_text and "</s>" in answer_text
    # With logits that get the answers wrong and everything else right, the weight raises the loss.
    rows = packed.rows
    logits = torch.full((*rows[:, 1:].shape, len(tokenizer)), -10.0)
    logits.scatter_(2, rows[:, 1:, None], 10.0)
    logits[is_answer] = 0.0
    assert float(next_token_loss(logits, rows, weighted)) > 2 * float(next_token_loss(logits, rows, plain))
    # Without slots or answer weight there is nothing to weigh.
    bare = pack(tokenizer, train_documents(WorldFiles(world))[:20], block_size=64)
    assert len(bare.slot_words) == 0 and target_weights(bare.answers, None) is None


# ---- backbones ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    from llavakit.world.backbones import pretrain_backbones

    # One thread: on cores shared with other work two threads spin on each other and run slower.
    return pretrain_backbones(tmp_path_factory.mktemp("backbones"), seed=0, budget="tiny", progress=False,
                              num_threads=1)


def _early_late(losses: list[float], k: int = 5) -> tuple[float, float]:
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


def test_tiny_pretraining_lowers_both_losses(backbones) -> None:
    report = json.loads(backbones.report.read_text())
    for name in ("vision", "language"):
        early, late = _early_late(report["losses"][name])
        assert late < early * 0.9, (name, early, late)
    assert 0 <= report["vision"]["retrieval_top1"] <= 1
    assert report["language"]["heldout_perplexity"] < report["tokenizer"]["vocab_size"]


def test_tiny_pretraining_is_deterministic(backbones, tmp_path) -> None:
    from llavakit.world.backbones import pretrain_backbones

    again = pretrain_backbones(tmp_path, seed=0, budget="tiny", progress=False, num_threads=1)
    for part in ("vision", "language"):
        first = (getattr(backbones, part) / "model.safetensors").read_bytes()
        assert (getattr(again, part) / "model.safetensors").read_bytes() == first, part


def test_vision_folder_loads_with_llavakit_and_transformers(backbones) -> None:
    from transformers import CLIPVisionModel

    from llavakit.checkpoints.io import load_into
    from llavakit.checkpoints.original import read_vision_tower
    from llavakit.model.vision import VisionTower

    config, state = read_vision_tower(backbones.vision)
    assert config.kind == "clip" and config.image_size == 96 and config.patch_size == 32
    tower = VisionTower(config).eval()
    load_into(tower, {k.removeprefix("vision_tower."): v for k, v in state.items()}, str(backbones.vision))
    hf = CLIPVisionModel.from_pretrained(str(backbones.vision)).eval()
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ours = tower(pixels, layer=-2)
        theirs = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_language_folder_loads_with_llavakit_and_transformers(backbones) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from llavakit.checkpoints.hf_configs import language_from_hf
    from llavakit.checkpoints.io import load_into, read_state_dict, weight_files
    from llavakit.model.language import LanguageModel

    d = json.loads((backbones.language / "config.json").read_text())
    config = language_from_hf(d, "config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(backbones.language))
    assert config.vocab_size == len(tokenizer) and (config.bos_token_id, config.eos_token_id) == (1, 2)
    model = LanguageModel(config).eval()
    load_into(model, read_state_dict(weight_files(backbones.language)), str(backbones.language))
    hf = LlamaForCausalLM.from_pretrained(str(backbones.language)).eval()
    ids = torch.tensor([tokenizer("USER: What colour is the star? ASSISTANT: The star is red.</s>").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_a_tied_language_model_saves_and_loads(tokenizer, tmp_path) -> None:
    """With tie_embeddings the head is the embedding table, stored once, as transformers does; a
    RoPE base other than Llama's reaches config.json, so llavakit and transformers rotate alike."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from llavakit.checkpoints.hf_configs import language_from_hf
    from llavakit.checkpoints.io import load_into, read_state_dict, weight_files
    from llavakit.model.language import LanguageModel
    from llavakit.world.pretrain_lm import LMPretrainConfig, init_weights, save_language_model

    config = LMPretrainConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, tie_embeddings=True,
                              rope_theta=1e6)
    torch.manual_seed(0)
    model = LanguageModel(config.model_config(len(tokenizer))).eval()
    init_weights(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    folder = save_language_model(model, tokenizer, tmp_path / "tied")
    assert "lm_head.weight" not in load_file(str(folder / "model.safetensors"))
    hf_config = json.loads((folder / "config.json").read_text())
    assert hf_config["rope_theta"] == 1e6
    loaded = LanguageModel(language_from_hf(hf_config, "config.json"))
    load_into(loaded, read_state_dict(weight_files(folder)), str(folder), optional=["lm_head.weight"])
    hf = LlamaForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([tokenizer("USER: What colour is the star? ASSISTANT: Red.</s>").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids), model(ids))
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_the_projector_aligns_to_the_scene_slots(backbones, tmp_path) -> None:
    """Stage 1 on the tiny backbones, then `align_projector`: its image tokens are the slots."""
    from llavakit.train import load_recipe, train
    from llavakit.world.align import align_projector, slot_targets
    from llavakit.world.backbones import BUDGETS
    from llavakit.world.pipeline import load_stage1

    stage1 = tmp_path / "stage1"
    train(load_recipe("tiny-world-stage1", [
        f"model.language_model={backbones.language}", f"model.vision_tower={backbones.vision}",
        f"data.image_folder={backbones.world / 'images'}", f"data.path={backbones.world / 'captions.json'}",
        f"output.dir={stage1}", "output.progress=false", *BUDGETS["tiny"].stage1, "train.max_steps=5"]))
    metrics = align_projector(stage1, backbones, tmp_path / "align", images=200, steps=300, lr=1e-2, progress=False)
    assert metrics["held_out_unexplained"] < 0.3 and metrics["final_loss"] < metrics["first_loss"] / 10

    annotations = json.loads((backbones.world / "scenes_train.json").read_text())[200:232]  # not fitted on
    scenes = [Scene.from_dict(a) for a in annotations]
    pixels = None
    errors = {}
    for name in ("stage1", "align"):
        llava = load_stage1(tmp_path / name, backbones)
        if pixels is None:
            pixels = torch.stack(llava.image_processor([str(backbones.world / "images" / a["image"])
                                                        for a in annotations]))
            slots = slot_targets(scenes, llava.tokenizer, llava.model.language_model.model.embed_tokens.weight.detach())
        with torch.no_grad():
            tokens = llava.model.projector(llava.model.vision_features(pixels))
        errors[name] = float(((tokens - slots) ** 2).sum() / ((slots - slots.mean((0, 1))) ** 2).sum())
    assert errors["align"] < 0.3 and errors["stage1"] > 1.0, errors
    summary = json.loads((tmp_path / "align" / "align_summary.json").read_text())
    assert summary["images"] == 200 and summary["steps"] == 300
    # Stage 1 cached the tower's features of every training image: alignment reads them back,
    # and they are the tower's own; images the cache lacks are computed.
    from llavakit.world.align import tower_features

    files = [str(backbones.world / "images" / a["image"]) for a in annotations]
    with torch.no_grad():
        computed = llava.model.vision_features(pixels)
    tower = llava.model.vision_features
    llava.model.vision_features = None  # the tower must not run: every image is cached
    cached = tower_features(llava, files, stage1 / "feature_cache")
    llava.model.vision_features = tower
    torch.testing.assert_close(cached, computed, atol=1e-5, rtol=1e-4)
    elsewhere = tower_features(llava, files, tmp_path / "no-cache-here")
    torch.testing.assert_close(elsewhere, cached, atol=1e-5, rtol=1e-4)


def test_backbones_assemble_into_a_llava_model(backbones, tmp_path) -> None:
    """A stage-1 style projector file on top of the two folders builds, loads and answers."""
    from llavakit.api import load_projector_only
    from llavakit.config import ProjectorConfig
    from llavakit.model.projector import build_projector

    vision_width = json.loads((backbones.vision / "config.json").read_text())["hidden_size"]
    text_width = json.loads((backbones.language / "config.json").read_text())["hidden_size"]
    projector = build_projector(ProjectorConfig("mlp2x_gelu"), vision_width, text_width)
    state = {f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()}
    torch.save(state, tmp_path / "mm_projector.bin")
    (tmp_path / "config.json").write_text(json.dumps({"mm_projector_type": "mlp2x_gelu"}))
    llava = load_projector_only(tmp_path / "mm_projector.bin", language_model=backbones.language,
                                vision_tower=backbones.vision, device="cpu", dtype="fp32")
    assert llava.config.tokens_per_image == 9 and llava.template.name == "plain"
    image = backbones.world / "images" / "bench" / "000000.png"
    assert isinstance(llava.ask(str(image), "What colour is the star?", max_new_tokens=4), str)
