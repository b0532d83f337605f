"""Token ids, image slots and labels, checked against an independent restatement of LLaVA's preprocessing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tokenizers_for_tests import build_bpe_tokenizer, build_llama_sp_tokenizer

from llavakit.conversation import Message, RenderedPrompt, get_template
from llavakit.tokenize import IGNORE_INDEX, Encoded, encode, image_slot_counts

LLAVA_IMAGE_MARKER = -200  # LLaVA's single stand-in id for an image
IMAGE_ID = 10_000  # our slot id; outside the tiny vocabularies so it cannot be confused with text


@pytest.fixture(scope="session")
def sp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llama_sp")


@pytest.fixture(scope="session")
def llama_toks(sp_dir: Path) -> dict[bool, object]:
    """The same sentencepiece model loaded with legacy=True and legacy=False."""
    return {legacy: build_llama_sp_tokenizer(sp_dir, legacy=legacy) for legacy in (True, False)}


@pytest.fixture(scope="session")
def bpe_tok(tmp_path_factory: pytest.TempPathFactory) -> object:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


# --- an independent restatement of the original LLaVA preprocessing (llava/mm_utils.py, train.py) -------


def llava_tokenizer_image_token(prompt: str, tok) -> list[int]:
    """Tokenise each "<image>"-separated piece alone, keep one leading BOS, put -200 between pieces."""
    pieces = [tok(p).input_ids for p in prompt.split("<image>")]
    strip = 1 if pieces[0] and pieces[0][0] == tok.bos_token_id else 0
    ids = pieces[0][:strip]
    for i, piece in enumerate(pieces):
        if i:
            ids.append(LLAVA_IMAGE_MARKER)
        ids.extend(piece[strip:])
    return ids


def llava_preprocess_v1(prompt: str, tok, has_image: bool) -> tuple[list[int], list[int]]:
    """LLaVA's preprocess_v1 masking for one vicuna_v1 conversation, by counting tokens per round."""

    def count(text: str) -> int:
        return len(llava_tokenizer_image_token(text, tok) if has_image else tok(text).input_ids)

    ids = llava_tokenizer_image_token(prompt, tok) if has_image else tok(prompt).input_ids
    labels = list(ids)
    sep = " ASSISTANT: "
    cur = 1
    labels[0] = IGNORE_INDEX  # the BOS
    for i, rnd in enumerate(prompt.split("</s>")):
        if rnd == "":
            break
        parts = rnd.split(sep)
        if len(parts) != 2:
            break
        round_len = count(rnd)
        instruction_len = count(parts[0] + sep) - 2
        if i != 0 and not tok.legacy:  # the original's correction for non-legacy Llama tokenizers
            round_len -= 1
            instruction_len -= 1
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur : cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    # The original masks the whole sample on a mismatch; make sure the comparison is never against that.
    assert cur == len(ids), f"LLaVA-style tokenization mismatch: {cur} vs {len(ids)}"
    return ids, labels


def llava_preprocess_plain(caption: str, tok) -> tuple[list[int], list[int]]:
    """LLaVA's preprocess_plain: "<image>" + caption + "\\n"; only the "<image>" prefix is masked."""
    ids = llava_tokenizer_image_token("<image>" + caption + "\n", tok)
    n_prefix = len(llava_tokenizer_image_token("<image>", tok))
    return ids, [IGNORE_INDEX] * n_prefix + ids[n_prefix:]


def collapse_image_runs(enc: Encoded) -> tuple[list[int], list[int]]:
    """Replace each image's run of slots by LLaVA's single -200 (and a single ignored label)."""
    ids, labels = list(enc.input_ids), list(enc.labels)
    for start, length in reversed(enc.image_positions):
        ids[start : start + length] = [LLAVA_IMAGE_MARKER]
        labels[start : start + length] = [IGNORE_INDEX]
    return ids, labels


def target_runs(enc: Encoded) -> list[list[int]]:
    """The label ids grouped into maximal runs of consecutive targets."""
    runs: list[list[int]] = []
    prev = False
    for label in enc.labels:
        is_target = label != IGNORE_INDEX
        if is_target:
            if not prev:
                runs.append([])
            runs[-1].append(label)
        prev = is_target
    return runs


def U(text: str) -> Message:
    return Message("user", text)


def A(text: str) -> Message:
    return Message("assistant", text)


V1_CONVERSATIONS = {
    "1 round, image at the end": [
        U("What is in the picture?\n<image>"),
        A("The dog is sitting on the table."),
    ],
    "1 round, no image, digits first": [U("How many birds fly over the river?"), A("12 birds, maybe 13!")],
    "3 rounds, image": [
        U("<image>\nWhat is the man holding?"),
        A("A blue sign; it says 42."),
        U("Is it sunny?"),
        A("Yes."),
        U("Describe the street, please."),
        A("2 cars are parked by the white wall (in the morning)."),
    ],
    "3 rounds, no image": [
        U("Hello there!"),
        A("Hi: how can I help?"),
        U("Count to three."),
        A("1, 2, 3."),
        U("Thanks"),
        A("You're welcome..."),
    ],
    "system override": [Message("system", "Be brief."), U("<image> What shows?"), A("3 people, 1 boat.")],
}


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "non-legacy"])
@pytest.mark.parametrize("template", ["vicuna_v1", "llava_v1"])
@pytest.mark.parametrize("conv", sorted(V1_CONVERSATIONS))
def test_labels_match_llava_preprocess_v1(llama_toks, legacy: bool, template: str, conv: str) -> None:
    tok = llama_toks[legacy]
    assert tok.legacy is legacy
    rendered = get_template(template).render(V1_CONVERSATIONS[conv], add_generation_prompt=False)
    has_image = "<image>" in rendered.text
    enc = encode(rendered, tok, image_token_id=IMAGE_ID, tokens_per_image=5, with_labels=True)

    ids, labels = collapse_image_runs(enc)
    ref_ids, ref_labels = llava_preprocess_v1(rendered.text, tok, has_image)
    assert ids == ref_ids
    assert labels == ref_labels
    assert len(enc.input_ids) == len(enc.labels) == len(ref_ids) + 4 * len(enc.image_positions)
    # And the targets are exactly the answers with their "</s>", nothing else.
    answers = [m.content for m in V1_CONVERSATIONS[conv] if m.role == "assistant"]
    assert [tok.decode(run).strip() for run in target_runs(enc)] == [a + "</s>" for a in answers]


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "non-legacy"])
@pytest.mark.parametrize(
    "caption", ["The red car is parked by the street.", "3 birds fly over the river!", "Café, 中文 😀"]
)
def test_plain_matches_llava_preprocess_plain(llama_toks, legacy: bool, caption: str) -> None:
    tok = llama_toks[legacy]
    rendered = get_template("plain").render(
        [U("Describe the picture.\n<image>"), A(caption)], add_generation_prompt=False
    )
    assert rendered.text == "<image>" + caption + "\n"
    enc = encode(rendered, tok, image_token_id=IMAGE_ID, tokens_per_image=7, with_labels=True)
    assert enc.image_positions == [(1, 7)]
    assert collapse_image_runs(enc) == llava_preprocess_plain(caption, tok)
    targets = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tok.decode(targets) == caption + "\n"


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "non-legacy"])
def test_answer_with_special_looking_text_and_unicode(llama_toks, legacy: bool) -> None:
    tok = llama_toks[legacy]
    answer = 'Café, 中文 and 😀; the tag "</s>" ends a turn, <s> starts one.'
    msgs = [U("<image>\nWhat does the sign say?"), A(answer), U("And in 2 words?"), A("Über 中文!")]
    rendered = get_template("vicuna_v1").render(msgs, add_generation_prompt=False)
    enc = encode(rendered, tok, image_token_id=IMAGE_ID, tokens_per_image=3, with_labels=True)
    decoded = [tok.decode(r) for r in target_runs(enc)]
    expected = [answer + "</s>", "Über 中文!</s>"]
    if legacy:  # legacy Llama puts a "▁" after every special token, so '</s>"' decodes as '</s> "'
        decoded, expected = ([d.replace(" ", "") for d in x] for x in (decoded, expected))
    assert decoded == expected
    # Every non-target token is prompt text: together they decode to the prompt with the answers cut out.
    non_targets = [
        t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE_INDEX and t != IMAGE_ID
    ]
    assert tok.decode(non_targets, skip_special_tokens=True).endswith("USER: And in 2 words? ASSISTANT:")


@pytest.mark.parametrize("template", ["llama_3", "chatml"])
def test_bpe_templates_target_exact_answers(bpe_tok, template: str) -> None:
    eot = {"llama_3": "<|eot_id|>", "chatml": "<|im_end|>"}[template]
    answers = ["A dog sits on the bench.", "12 of them, é 中文 😀!"]
    msgs = [U("What is this?<image>"), A(answers[0]), U("<image>\nHow many?"), A(answers[1])]
    rendered = get_template(template).render(msgs, add_generation_prompt=False)
    enc = encode(rendered, bpe_tok, image_token_id=IMAGE_ID, tokens_per_image=[2, 4], with_labels=True)
    assert [bpe_tok.decode(r) for r in target_runs(enc)] == [a + eot for a in answers]
    assert enc.input_ids[0] == bpe_tok.bos_token_id and enc.labels[0] == IGNORE_INDEX
    assert [length for _, length in enc.image_positions] == [2, 4]
    # The text is the tokenizer's BOS plus the rendered prompt, images aside.
    text_ids = [t for t in enc.input_ids if t != IMAGE_ID]
    assert bpe_tok.decode(text_ids) == "<|begin_of_text|>" + rendered.text.replace("<image>", "")


def test_add_bos_false_drops_the_bos(bpe_tok, llama_toks) -> None:
    rendered = get_template("chatml").render([U("<image>\nHi")], add_generation_prompt=True)
    with_bos = encode(rendered, bpe_tok, image_token_id=IMAGE_ID, tokens_per_image=2)
    without = encode(rendered, bpe_tok, image_token_id=IMAGE_ID, tokens_per_image=2, add_bos=False)
    assert with_bos.input_ids[0] == bpe_tok.bos_token_id
    assert without.input_ids == with_bos.input_ids[1:]
    assert without.image_positions == [(p - 1, n) for p, n in with_bos.image_positions]
    # The BOS only ever appears once, even though every chunk was tokenised separately.
    llama = llama_toks[True]
    enc = encode("<image> a <image> b <image>", llama, image_token_id=IMAGE_ID, tokens_per_image=1)
    assert enc.input_ids.count(llama.bos_token_id) == 1 and enc.input_ids[0] == llama.bos_token_id


def test_multi_image_slots_and_positions(llama_toks) -> None:
    tok = llama_toks[True]
    text = "USER: <image>\n<image>\nCompare the two. ASSISTANT:"
    enc = encode(text, tok, image_token_id=IMAGE_ID, tokens_per_image=[3, 5])
    assert enc.labels is None
    assert len(enc.image_positions) == 2
    (s1, n1), (s2, n2) = enc.image_positions
    assert (n1, n2) == (3, 5)
    assert enc.input_ids[s1 : s1 + 3] == [IMAGE_ID] * 3 and enc.input_ids[s2 : s2 + 5] == [IMAGE_ID] * 5
    assert enc.input_ids.count(IMAGE_ID) == 8
    assert s1 > 0 and enc.input_ids[s1 - 1] != IMAGE_ID and enc.input_ids[s1 + 3] != IMAGE_ID
    assert s2 > s1 + 3 and enc.input_ids[s2 - 1] != IMAGE_ID  # "\n" tokens sit between the images
    ids, _ = collapse_image_runs(Encoded(enc.input_ids, [0] * len(enc.input_ids), enc.image_positions))
    assert ids == llava_tokenizer_image_token(text, tok)
    # An int count applies to every image.
    assert [n for _, n in encode(text, tok, image_token_id=IMAGE_ID, tokens_per_image=4).image_positions] == [
        4,
        4,
    ]


def test_image_count_mismatch_is_an_error(llama_toks) -> None:
    tok = llama_toks[True]
    text = "<image> and <image>"
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but 3"):
        encode(text, tok, image_token_id=IMAGE_ID, tokens_per_image=[1, 2, 3])
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but 1"):
        encode(text, tok, image_token_id=IMAGE_ID, tokens_per_image=[1])
    with pytest.raises(ValueError, match="positive"):
        encode(text, tok, image_token_id=IMAGE_ID, tokens_per_image=[1, 0])
    assert image_slot_counts(576, 0) == []


def test_labels_need_a_rendered_prompt_and_a_fast_tokenizer(llama_toks) -> None:
    with pytest.raises(ValueError, match="RenderedPrompt"):
        encode("USER: hi", llama_toks[True], image_token_id=IMAGE_ID, tokens_per_image=1, with_labels=True)

    class SlowTokenizer:  # stands in for a Python (offset-less) tokenizer
        is_fast = False
        bos_token_id = 1

    with pytest.raises(TypeError, match="fast"):
        encode(
            RenderedPrompt("hi", ((0, 2),)),
            SlowTokenizer(),
            image_token_id=IMAGE_ID,
            tokens_per_image=1,
            with_labels=True,
        )


@pytest.mark.parametrize("include_space", [True, False])
def test_token_overlapping_a_span_boundary_is_a_target(llama_toks, include_space: bool) -> None:
    """ "▁river" covers " river": it is a target whether or not the span includes that space."""
    tok = llama_toks[True]
    text = "the dog runs past the river."
    start = text.index("river") - include_space
    spans = ((start, len(text)),)
    enc = encode(
        RenderedPrompt(text, spans), tok, image_token_id=IMAGE_ID, tokens_per_image=1, with_labels=True
    )
    assert tok.decode([t for t in enc.labels if t != IGNORE_INDEX]) == "river."
    prompt_ids = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE_INDEX]
    assert tok.decode(prompt_ids, skip_special_tokens=True) == "the dog runs past the"


def test_test_tokenizers_train_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    sp = build_llama_sp_tokenizer(tmp_path / "sp")
    bpe = build_bpe_tokenizer(tmp_path / "bpe")
    assert time.perf_counter() - t0 < 2.0
    assert (sp.unk_token_id, sp.bos_token_id, sp.eos_token_id) == (0, 1, 2)
    assert sp.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert sp.is_fast and bpe.is_fast
    assert sp("</s>", add_special_tokens=False).input_ids == [2]  # "</s>" in text is the EOS token
