"""OpenAI chat messages -> a prepared LLaVA prompt (token ids + pixels) and the sampling options.

Content lists become text with an `<image>` placeholder where each image part is; the chat
template then places images the LLaVA way. Consecutive turns of one role are merged, and system
(or "developer") messages are joined into the one system prompt LLaVA's templates have, so the
strict user/assistant alternation of the templates never trips up an ordinary client.
"""

from __future__ import annotations

from dataclasses import dataclass

from llavakit.conversation import IMAGE_PLACEHOLDER
from llavakit.engine import SamplingParams
from llavakit.inputs import Sample, prepare_sample
from llavakit.serve.errors import APIError
from llavakit.serve.limits import Limits
from llavakit.serve.schema import ChatCompletionRequest, ImagePart


@dataclass
class ImageRef:
    url: str  # a data: URL or (when allowed) http(s)
    where: str  # e.g. "messages.0.content.1", for error messages


def to_conversation(request: ChatCompletionRequest, limits: Limits) -> tuple[list[dict], list[ImageRef]]:
    """LLaVA {"role", "content"} turns (with placeholders) and the images in placeholder order."""
    system: list[str] = []
    turns: list[dict] = []
    images: list[ImageRef] = []
    for i, message in enumerate(request.messages):
        role = "system" if message.role == "developer" else message.role
        text = _content_text(message.content, f"messages.{i}.content", role, images)
        if role == "system":
            system.append(text)
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    if len(images) > limits.max_images:
        raise APIError(400, f"the request has {len(images)} images; the limit is {limits.max_images}",
                       param="messages", code="too_many_images")
    if not turns or turns[0]["role"] != "user":
        raise APIError(400, "the conversation must start with a user message (after any system messages)",
                       param="messages")
    if turns[-1]["role"] != "user":
        raise APIError(400, "the last message must be from the user", param="messages")
    if system:
        turns.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return turns, images


def _content_text(content, where: str, role: str, images: list[ImageRef]) -> str:
    if content is None:
        return ""
    parts = [content] if isinstance(content, str) else content
    pieces = []
    for j, part in enumerate(parts):
        at = where if isinstance(content, str) else f"{where}.{j}"
        if isinstance(part, ImagePart):
            if role != "user":
                raise APIError(400, f"{at}: images are only accepted in user messages", param=at)
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            images.append(ImageRef(url, at))
            pieces.append(IMAGE_PLACEHOLDER)
            continue
        text = part if isinstance(part, str) else part.text
        if IMAGE_PLACEHOLDER in text:
            # It would silently take an image slot; images are sent as image_url parts.
            raise APIError(400, f"{at}: text may not contain the literal {IMAGE_PLACEHOLDER!r}; send images "
                           "as image_url content parts", param=at)
        pieces.append(text)
    return "\n".join(pieces)


def check_text_size(turns: list[dict], context: int) -> None:
    """Refuse text that cannot fit before spending time tokenizing it (a token spans few chars)."""
    chars = sum(len(t["content"]) for t in turns)
    if chars > 64 * context:
        raise APIError(400, f"the messages have {chars} characters, far more than this model's context of "
                       f"{context} tokens can hold", param="messages", code="context_length_exceeded")


def prepare(llava, turns: list[dict], images: list, context: int) -> Sample:
    """Tokenize and preprocess (slow: run in a worker thread); 400 for what the model refuses."""
    try:
        return prepare_sample(turns, images, config=llava.config, template=llava.template,
                              tokenizer=llava.tokenizer, image_processor=llava.image_processor)
    except (ValueError, TypeError) as err:
        raise APIError(400, str(err)[:500], param="messages") from None


def completion_budget(request: ChatCompletionRequest, prompt_tokens: int, context: int, limits: Limits) -> int:
    """max_tokens for this request, or 400 (with the numbers) when the context cannot hold it."""
    if prompt_tokens >= context:
        raise APIError(400, f"This model's maximum context length is {context} tokens, but the messages use "
                       f"{prompt_tokens} tokens (images included). Shorten the messages or send fewer images.",
                       param="messages", code="context_length_exceeded")
    room = context - prompt_tokens
    asked = request.max_completion_tokens or request.max_tokens
    if asked is None:
        return min(room, limits.default_max_tokens or room)
    if asked > room:
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{prompt_tokens + asked} tokens ({prompt_tokens} in the messages, {asked} in the "
                       "completion). Reduce the length of the messages or the completion.",
                       param=param, code="context_length_exceeded")
    return asked


def sampling_params(request: ChatCompletionRequest, max_new_tokens: int, limits: Limits) -> list[SamplingParams]:
    """One SamplingParams per choice (n); seeded choices get seed, seed+1, ... so they differ."""
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stop) > limits.max_stop:
        raise APIError(400, f"{len(stop)} stop sequences; the limit is {limits.max_stop}", param="stop")
    if any(not s for s in stop):
        raise APIError(400, "stop sequences must be non-empty strings", param="stop")
    n = request.n or 1
    if n > limits.max_n:
        raise APIError(400, f"n={n}; this server allows at most {limits.max_n} choices", param="n")
    temperature = 1.0 if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    if top_p == 0:  # OpenAI's top_p 0 means "only the likeliest token": greedy
        temperature, top_p = 0.0, 1.0
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                   top_k=request.top_k or 0, repetition_penalty=request.repetition_penalty or 1.0,
                   stop=tuple(stop))
    try:
        return [SamplingParams(**options, seed=None if request.seed is None else _wrap(request.seed + i))
                for i in range(n)]
    except ValueError as err:
        raise APIError(400, str(err)[:300]) from None


def _wrap(seed: int) -> int:
    """Keep seed + i inside the signed 64-bit range torch generators accept."""
    return (seed + 2**63) % 2**64 - 2**63
