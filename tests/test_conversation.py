"""Golden-string tests for the chat templates (strings checked against the original implementations)."""

from __future__ import annotations

import pytest

from llavakit.conversation import (
    IMAGE_PLACEHOLDER,
    TEMPLATES,
    ChatTemplate,
    Message,
    RenderedPrompt,
    from_llava_conversations,
    get_template,
    normalise_image_placeholders,
)

# Written out literally (not imported) so a typo in the module cannot hide here.
VICUNA_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYS = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)
LLAMA3_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)


def U(text: str) -> Message:
    return Message("user", text)


def A(text: str) -> Message:
    return Message("assistant", text)


def S(text: str) -> Message:
    return Message("system", text)


# The image is given at the END of the first user text; every template must move it to the front.
SINGLE = [U("What is this?\n<image>")]
SINGLE_ANSWERED = [*SINGLE, A("A dog.")]
MULTI = [U("What is this? <image>"), A("A dog."), U("What colour is it?"), A("Brown, mostly.")]


def render(name: str, messages: list[Message], gen: bool) -> RenderedPrompt:
    return get_template(name).render(messages, add_generation_prompt=gen)


# name -> (single turn + generation prompt, single turn answered, multi-turn answered,
#          multi-turn with the last answer left to generate, target texts of the multi-turn)
GOLDEN = {
    "vicuna_v1": (
        VICUNA_SYS + " USER: <image>\nWhat is this? ASSISTANT:",
        VICUNA_SYS + " USER: <image>\nWhat is this? ASSISTANT: A dog.</s>",
        VICUNA_SYS + " USER: <image>\nWhat is this? ASSISTANT: A dog.</s>USER: What colour is it? "
        "ASSISTANT: Brown, mostly.</s>",
        VICUNA_SYS + " USER: <image>\nWhat is this? ASSISTANT: A dog.</s>USER: What colour is it? ASSISTANT:",
        [" A dog.</s>", " Brown, mostly.</s>"],
    ),
    "llava_v1": (
        LLAVA_V1_SYS + " USER: <image>\nWhat is this? ASSISTANT:",
        LLAVA_V1_SYS + " USER: <image>\nWhat is this? ASSISTANT: A dog.</s>",
        LLAVA_V1_SYS + " USER: <image>\nWhat is this? ASSISTANT: A dog.</s>USER: What colour is it? "
        "ASSISTANT: Brown, mostly.</s>",
        LLAVA_V1_SYS
        + " USER: <image>\nWhat is this? ASSISTANT: A dog.</s>USER: What colour is it? ASSISTANT:",
        [" A dog.</s>", " Brown, mostly.</s>"],
    ),
    # plain has no multi-turn golden here: it needs an image in every user turn (tested separately).
    "plain": ("<image>", "<image>A dog.\n", None, None, None),
    "llava_hf": (
        "USER: <image>\nWhat is this? ASSISTANT:",
        "USER: <image>\nWhat is this? ASSISTANT: A dog. ",
        "USER: <image>\nWhat is this? ASSISTANT: A dog. USER: What colour is it? ASSISTANT: Brown, mostly. ",
        "USER: <image>\nWhat is this? ASSISTANT: A dog. USER: What colour is it? ASSISTANT:",
        [" A dog. ", " Brown, mostly. "],
    ),
    "llama_3": (
        "<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYS + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYS + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA dog.<|eot_id|>",
        "<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYS + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA dog.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat colour is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBrown, mostly.<|eot_id|>",
        "<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYS + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA dog.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat colour is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["A dog.<|eot_id|>", "Brown, mostly.<|eot_id|>"],
    ),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\nA dog.<|im_end|>\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\nA dog.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is it?<|im_end|>\n<|im_start|>assistant\nBrown, mostly.<|im_end|>\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\nA dog.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is it?<|im_end|>\n<|im_start|>assistant\n",
        ["A dog.<|im_end|>", "Brown, mostly.<|im_end|>"],
    ),
}


def test_registry_names_and_stop_strings() -> None:
    assert set(TEMPLATES) == {"vicuna_v1", "llava_v1", "plain", "llava_hf", "llama_3", "chatml"}
    assert all(isinstance(t, ChatTemplate) and t.name == n for n, t in TEMPLATES.items())
    stops = {n: t.stop_strings for n, t in TEMPLATES.items()}
    assert stops == {
        "vicuna_v1": ("</s>",),
        "llava_v1": ("</s>",),
        "plain": ("\n",),
        "llava_hf": ("</s>",),
        "llama_3": ("<|eot_id|>",),
        "chatml": ("<|im_end|>",),
    }
    assert get_template("vicuna_v1").system == VICUNA_SYS
    assert get_template("llava_v1").system == LLAVA_V1_SYS


def test_unknown_template_lists_known_names() -> None:
    with pytest.raises(ValueError, match="vicuna_v1.*llava_v1.*plain.*llava_hf.*llama_3.*chatml"):
        get_template("vicuna")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_single_turn_golden(name: str) -> None:
    gen, answered = GOLDEN[name][:2]
    assert render(name, SINGLE, True).text == gen
    assert render(name, SINGLE, True).target_spans == ()
    out = render(name, SINGLE_ANSWERED, False)
    assert out.text == answered
    assert len(out.target_spans) == 1


@pytest.mark.parametrize("name", sorted(n for n in GOLDEN if GOLDEN[n][2] is not None))
def test_multi_turn_golden_and_targets(name: str) -> None:
    _, _, full, gen, targets = GOLDEN[name]
    out = render(name, MULTI, False)
    assert out.text == full
    assert out.target_texts() == targets
    assert [out.text[s:e] for s, e in out.target_spans] == targets
    assert render(name, MULTI[:3], True).text == gen


def test_single_turn_target_texts() -> None:
    expected = {
        "vicuna_v1": " A dog.</s>",
        "llava_v1": " A dog.</s>",
        "plain": "A dog.\n",
        "llava_hf": " A dog. ",
        "llama_3": "A dog.<|eot_id|>",
        "chatml": "A dog.<|im_end|>",
    }
    for name, target in expected.items():
        out = render(name, SINGLE_ANSWERED, False)
        ((start, end),) = out.target_spans
        assert out.text[start:end] == target, name


def test_system_override() -> None:
    msgs = [S("Answer briefly."), U("<image>\nWhat is this?"), A("A dog.")]
    assert (
        render("vicuna_v1", msgs, False).text
        == "Answer briefly. USER: <image>\nWhat is this? ASSISTANT: A dog.</s>"
    )
    assert (
        render("llava_v1", msgs[:2], True).text == "Answer briefly. USER: <image>\nWhat is this? ASSISTANT:"
    )
    assert (
        render("llava_hf", msgs[:2], True).text == "Answer briefly. USER: <image>\nWhat is this? ASSISTANT:"
    )
    assert render("llama_3", msgs[:2], True).text == (
        "<|start_header_id|>system<|end_header_id|>\n\nAnswer briefly.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render("chatml", msgs[:2], True).text == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # An empty system message removes the system block (vicuna keeps its " " separator, like the original).
    assert (
        render("chatml", [S(""), U("Hi")], True).text
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render("vicuna_v1", [S(""), U("Hi")], True).text == " USER: Hi ASSISTANT:"


def test_plain_drops_user_text_and_keeps_images() -> None:
    out = render("plain", [U("Describe the image briefly.\n<image>"), A("A red car on a street.")], False)
    assert out.text == "<image>A red car on a street.\n"
    assert out.target_texts() == ["A red car on a street.\n"]
    assert render("plain", [U("<image> and <image>")], True).text == "<image><image>"
    multi = [U("<image>"), A("One."), U("<image>\nAgain"), A("Two.")]
    assert render("plain", multi, False).text == "<image>One.\n<image>Two.\n"
    with pytest.raises(ValueError, match="turn 0"):
        render("plain", [U("no image here")], True)


def test_llava_hf_image_only_and_text_only() -> None:
    assert render("llava_hf", [U("<image>")], True).text == "USER: <image>\nASSISTANT:"
    assert render("llava_hf", [U("Hello")], True).text == "USER: Hello ASSISTANT:"
    assert render("vicuna_v1", [U("<image>")], True).text == VICUNA_SYS + " USER: <image> ASSISTANT:"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_generation_prompt_is_prefix_and_span_continues_it(name: str) -> None:
    """What the model is trained to produce is exactly what follows the generation prompt."""
    msgs = [U("<image>\nWhat is this?"), A("A dog."), U("<image> And this one?"), A("12 cats!")]
    full = render(name, msgs, False)
    for turn, (start, end) in zip((0, 2), full.target_spans, strict=True):
        prompt = render(name, msgs[: turn + 1], True).text
        assert full.text.startswith(prompt)
        assert start == len(prompt)
        assert full.text[start:end].strip().startswith(msgs[turn + 1].content)


def test_role_order_is_validated() -> None:
    vicuna = get_template("vicuna_v1")
    with pytest.raises(ValueError, match="message 0"):
        vicuna.render([A("hi")], add_generation_prompt=False)
    with pytest.raises(ValueError, match="message 1"):
        vicuna.render([U("a"), U("b")], add_generation_prompt=True)
    with pytest.raises(ValueError, match="message 3"):
        vicuna.render([S("s"), U("a"), A("b"), S("again")], add_generation_prompt=False)
    with pytest.raises(ValueError, match="message 2"):
        vicuna.render([S("s"), U("a"), U("b")], add_generation_prompt=False)
    with pytest.raises(ValueError, match="last message"):
        vicuna.render([U("a"), A("b")], add_generation_prompt=True)
    with pytest.raises(ValueError, match="at least one user"):
        vicuna.render([S("s")], add_generation_prompt=True)
    with pytest.raises(ValueError, match="unknown role"):
        Message("bot", "hi")


def test_normalise_image_placeholders() -> None:
    msgs = [U("What is this?\n<image>"), A("A dog."), U("<image> left, <image> right.  "), U("<image>")]
    out = normalise_image_placeholders(msgs)
    assert [m.content for m in out] == [
        "<image>\nWhat is this?",
        "A dog.",
        "<image>\n<image>\nleft,  right.",
        "<image>",
    ]
    assert [m.role for m in out] == [m.role for m in msgs]
    assert IMAGE_PLACEHOLDER == "<image>"


def test_from_llava_conversations() -> None:
    turns = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "A cat."},
    ]
    assert from_llava_conversations(turns) == [S("Be brief."), U("<image>\nWhat is it?"), A("A cat.")]
    with pytest.raises(ValueError, match="'bot'"):
        from_llava_conversations([{"from": "bot", "value": "x"}])
    with pytest.raises(ValueError, match="turn 0"):
        from_llava_conversations([{"value": "x"}])


def _llava_two_style(system: str, turns: list[tuple[str, str | None]]) -> str:
    """Independent restatement of LLaVA's SeparatorStyle.TWO prompt (sep " ", sep2 "</s>")."""
    seps = (" ", "</s>")
    out = system + seps[0]
    for i, (role, text) in enumerate(turns):
        out += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
    return out


def test_vicuna_matches_llava_two_style() -> None:
    qa = [("<image>\nq1?", "a1."), ("q2, with 3 numbers 42?", "Yes: 12!"), ("q3", "é 中文 😀")]
    msgs: list[Message] = []
    turns: list[tuple[str, str | None]] = []
    for q, a in qa:
        msgs += [U(q), A(a)]
        turns += [("USER", q), ("ASSISTANT", a)]
        assert render("vicuna_v1", msgs, False).text == _llava_two_style(VICUNA_SYS, turns)
        gen_msgs = [*msgs, U("next?")]
        assert render("vicuna_v1", gen_msgs, True).text == _llava_two_style(
            VICUNA_SYS, [*turns, ("USER", "next?"), ("ASSISTANT", None)]
        )
