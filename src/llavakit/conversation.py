"""Chat templates: turn a list of messages into the exact prompt string a model was trained on.

Each template reproduces, character for character, the prompt format of the original implementation it
is named after (LLaVA's ``conv_vicuna_v1`` / ``conv_llava_v1`` / ``conv_llava_plain``, the chat template
shipped with ``llava-hf/llava-1.5-*-hf``, LLaVA-NeXT's Llama-3 style and Qwen's ChatML).

Besides the text, rendering returns *target spans*: the character ranges the model is trained to produce.
A span is exactly what the model has to generate after the generation prompt, up to and including the
end-of-turn marker, so ``render(history + [answer])`` always starts with ``render(history,
add_generation_prompt=True)`` and the first span begins right where that prompt ends.  For the
``USER: ... ASSISTANT:`` styles this means the span starts with the space after ``ASSISTANT:`` (the
generation prompt ends without it, so the model emits it); this is also what LLaVA's ``preprocess_v1``
trains on.  ``llavakit.tokenize`` maps the spans onto tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

IMAGE_PLACEHOLDER = "<image>"

ROLES = ("system", "user", "assistant")

# LLaVA's JSON uses "from": "human"/"gpt"; map it onto our role names.
_LLAVA_SPEAKERS = {"human": "user", "gpt": "assistant", "system": "system"}


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str  # may contain IMAGE_PLACEHOLDER

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be a str, got {type(self.content).__name__}")


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    # [start, end) character ranges of `text` that are training targets, in order, non-overlapping.
    target_spans: tuple[tuple[int, int], ...] = ()

    def target_texts(self) -> list[str]:
        """The substrings the spans pick out (handy for inspection and tests)."""
        return [self.text[s:e] for s, e in self.target_spans]


def normalise_image_placeholders(messages: Iterable[Message]) -> list[Message]:
    """Move image placeholders to the front of their message, LLaVA style.

    In a message with k placeholders they are removed, the rest is stripped and ``"<image>\\n" * k`` is
    put in front.  Like LLaVA's ``preprocess_multimodal`` the result is stripped once more, so a message
    that is only an image becomes ``"<image>"`` (no trailing newline).  Other messages are unchanged.
    """
    out = []
    for m in messages:
        if IMAGE_PLACEHOLDER in m.content:
            k, text = _split_images(m.content)
            m = Message(m.role, ((IMAGE_PLACEHOLDER + "\n") * k + text).strip())
        out.append(m)
    return out


def from_llava_conversations(turns: list[dict]) -> list[Message]:
    """Convert LLaVA JSON turns (``{"from": "human"|"gpt"|"system", "value": str}``) into Messages."""
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"turn {i} must be a dict with 'from' and 'value' keys, got {turn!r}")
        speaker = turn["from"]
        if speaker not in _LLAVA_SPEAKERS:
            known = ", ".join(repr(s) for s in _LLAVA_SPEAKERS)
            raise ValueError(f"turn {i}: unknown speaker {speaker!r}; expected one of {known}")
        messages.append(Message(_LLAVA_SPEAKERS[speaker], turn["value"]))
    return messages


def _split_images(content: str) -> tuple[int, str]:
    """Number of placeholders in `content`, and the stripped text without them."""
    return content.count(IMAGE_PLACEHOLDER), content.replace(IMAGE_PLACEHOLDER, "").strip()


class _Builder:
    """Accumulates the prompt text and remembers which pieces are targets."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._pos = 0
        self._spans: list[tuple[int, int]] = []

    def add(self, piece: str, *, target: bool = False) -> None:
        if target and piece:
            self._spans.append((self._pos, self._pos + len(piece)))
        self._parts.append(piece)
        self._pos += len(piece)

    def build(self) -> RenderedPrompt:
        return RenderedPrompt("".join(self._parts), tuple(self._spans))


def _check_turns(
    messages: Sequence[Message], add_generation_prompt: bool
) -> tuple[str | None, list[Message]]:
    """Validate the role order; return (system override or None, the user/assistant turns)."""
    for i, m in enumerate(messages):
        if not isinstance(m, Message):
            raise TypeError(f"message {i} is a {type(m).__name__}, expected Message")
    start = 1 if messages and messages[0].role == "system" else 0
    system = messages[0].content if start else None
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i].role != expected:
            raise ValueError(
                f"message {i} has role {messages[i].role!r} but {expected!r} was expected: roles must "
                "alternate user/assistant, starting with user, after an optional leading system message"
            )
    turns = list(messages[start:])
    if not turns:
        raise ValueError("a prompt needs at least one user message")
    if add_generation_prompt and turns[-1].role != "user":
        raise ValueError("add_generation_prompt=True needs the last message to be from the user")
    return system, turns


# --- one renderer per separator style -------------------------------------------------------------
# Each takes (system prompt, validated turns, add_generation_prompt, builder).

_Renderer = Callable[[str, list[Message], bool, _Builder], None]


def _render_vicuna(system: str, turns: list[Message], gen: bool, b: _Builder) -> None:
    # LLaVA SeparatorStyle.TWO with sep=" ", sep2="</s>": the system prompt is always followed by " ".
    b.add(system + " ")
    for m in normalise_image_placeholders(turns):
        if m.role == "user":
            b.add("USER: " + m.content + " ")
        else:
            b.add("ASSISTANT:")
            b.add(" " + m.content + "</s>", target=True)
    if gen:
        b.add("ASSISTANT:")


def _render_plain(system: str, turns: list[Message], gen: bool, b: _Builder) -> None:
    # Stage-1 alignment (LLaVA preprocess_plain): the user text is dropped, only its image(s) remain,
    # and the caption follows directly, ended by "\n".
    b.add(system)
    for i, m in enumerate(turns):
        if m.role == "user":
            k = m.content.count(IMAGE_PLACEHOLDER)
            if k == 0:
                raise ValueError(
                    f"the plain template needs an {IMAGE_PLACEHOLDER} in every user turn (turn {i})"
                )
            b.add(IMAGE_PLACEHOLDER * k)
        else:
            b.add(m.content + "\n", target=True)


def _render_llava_hf(system: str, turns: list[Message], gen: bool, b: _Builder) -> None:
    # transformers' llava-1.5-*-hf chat template: images first ("<image>\n" each), then text + " ";
    # answers end with " " (the template writes no "</s>"); a system text has no role prefix.
    if system:
        b.add(system + " ")
    for m in turns:
        k, text = _split_images(m.content) if IMAGE_PLACEHOLDER in m.content else (0, m.content)
        if m.role == "user":
            b.add("USER: " + (IMAGE_PLACEHOLDER + "\n") * k + (text + " " if text else ""))
        else:
            b.add("ASSISTANT:")
            b.add(" " + (IMAGE_PLACEHOLDER + "\n") * k + text + " ", target=True)
    if gen:
        b.add("ASSISTANT:")


def _llama3_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _render_llama_3(system: str, turns: list[Message], gen: bool, b: _Builder) -> None:
    # Meta's Llama-3 instruct format (as used by LLaVA-NeXT); contents are stripped like Meta's
    # template does.  "<|begin_of_text|>" is NOT written: the Llama-3 tokenizer adds it as its BOS.
    if system:
        b.add(_llama3_header("system") + system.strip() + "<|eot_id|>")
    for m in normalise_image_placeholders(turns):
        b.add(_llama3_header(m.role))
        b.add(m.content.strip() + "<|eot_id|>", target=m.role == "assistant")
    if gen:
        b.add(_llama3_header("assistant"))


def _render_chatml(system: str, turns: list[Message], gen: bool, b: _Builder) -> None:
    # Qwen ChatML; the "\n" after <|im_end|> is framing, not something the model must generate.
    if system:
        b.add("<|im_start|>system\n" + system + "<|im_end|>\n")
    for m in normalise_image_placeholders(turns):
        b.add(f"<|im_start|>{m.role}\n")
        b.add(m.content + "<|im_end|>", target=m.role == "assistant")
        b.add("\n")
    if gen:
        b.add("<|im_start|>assistant\n")


_RENDERERS: dict[str, _Renderer] = {
    "vicuna": _render_vicuna,
    "plain": _render_plain,
    "llava_hf": _render_llava_hf,
    "llama_3": _render_llama_3,
    "chatml": _render_chatml,
}


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    style: str  # a key of _RENDERERS
    system: str  # default system prompt; a leading system message overrides it
    stop_strings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.style not in _RENDERERS:
            raise ValueError(f"unknown template style {self.style!r}; known: {', '.join(_RENDERERS)}")

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> RenderedPrompt:
        """Render `messages`; with `add_generation_prompt` the text ends where the model should start."""
        system, turns = _check_turns(messages, add_generation_prompt)
        builder = _Builder()
        _RENDERERS[self.style](
            self.system if system is None else system, turns, add_generation_prompt, builder
        )
        return builder.build()


VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA_3_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
CHATML_SYSTEM = "You are a helpful assistant."

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("vicuna_v1", "vicuna", VICUNA_V1_SYSTEM, ("</s>",)),
        ChatTemplate("llava_v1", "vicuna", LLAVA_V1_SYSTEM, ("</s>",)),
        ChatTemplate("plain", "plain", "", ("\n",)),
        # The HF model emits "</s>" (its EOS) when done, although the template never renders it.
        ChatTemplate("llava_hf", "llava_hf", "", ("</s>",)),
        ChatTemplate("llama_3", "llama_3", LLAMA_3_SYSTEM, ("<|eot_id|>",)),
        ChatTemplate("chatml", "chatml", CHATML_SYSTEM, ("<|im_end|>",)),
    )
}


def get_template(name: str) -> ChatTemplate:
    """The registered template called exactly `name`."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known templates: {', '.join(TEMPLATES)}") from None
