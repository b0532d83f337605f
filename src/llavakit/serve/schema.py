"""The request body of `POST /v1/chat/completions`: parsed strictly, refused with a precise 400.

Validation is strict (no "0.5" for a number, no 1 for a bool) and bounded (no NaN, no 10**100
tokens), so nothing odd reaches the engine. Unknown fields are ignored, as OpenAI-compatible
servers do, because clients send fields such as `user` or `frequency_penalty` by default.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llavakit.serve.errors import APIError, clip

_INT64 = 2**63


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageURL(_Model):
    url: str
    detail: str | None = None


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL | str  # some clients send the URL itself


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    model: str | None = None  # optional: one model is served
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=2**31)  # not OpenAI; vLLM and others accept it
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)  # likewise; bounded so logits stay finite
    max_tokens: int | None = Field(None, ge=1, le=2**31)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    n: int | None = Field(1, ge=1, le=128)
    logprobs: bool | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Body bytes -> request, or APIError(400) saying what is wrong and where."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise APIError(400, "the request body nests too deeply", code="invalid_json") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, over-long integer literals
        raise APIError(400, f"the request body is not valid JSON: {clip(err, 200)}", code="invalid_json") from None
    try:
        payload = _clean(payload)
    except RecursionError:
        raise APIError(400, "the request body nests too deeply", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(payload).__name__}",
                       code="invalid_request")
    try:
        request = ChatCompletionRequest.model_validate(payload)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        where = _where(payload, first["loc"])
        raise APIError(400, f"{clip(first['msg'], 200)} (at '{clip(where, 100)}')", param=clip(where, 100),
                       code="invalid_request") from None
    _check_unsupported(request)
    return request


def _where(payload: Any, loc: tuple) -> str:
    """The error's place in the body: pydantic's location without its union-member labels."""
    parts, node = [], payload
    for i, item in enumerate(loc):
        if isinstance(node, dict) and item in node or isinstance(node, list) and isinstance(item, int) \
                and 0 <= item < len(node):
            node = node[item]
            parts.append(str(item))
        elif isinstance(node, dict) and i == len(loc) - 1:  # a missing field
            parts.append(str(item))
    return ".".join(parts)


def _check_unsupported(request: ChatCompletionRequest) -> None:
    """Refuse features a client would otherwise silently not get."""
    if request.logprobs:
        raise APIError(400, "logprobs are not supported", param="logprobs")
    if request.tools:
        raise APIError(400, "tools (function calling) are not supported", param="tools")
    kind = (request.response_format or {}).get("type", "text")
    if kind != "text":
        raise APIError(400, f"response_format {clip(kind)!r} is not supported (only 'text')",
                       param="response_format")


def _clean(value: Any) -> Any:
    """Replace lone surrogates (valid in JSON escapes, not in UTF-8) in every string, iteratively
    so a deep but legal body cannot exhaust the stack; tokenizers and encoders choke on them."""
    fix = lambda s: s.encode("utf-8", "replace").decode("utf-8") if isinstance(s, str) else s  # noqa: E731
    root = [fix(value)]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, dict):
            fixed = {fix(k): v for k, v in item.items()}
            container[key] = fixed
            stack.extend((fixed, k) for k in fixed)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
        elif isinstance(item, str):
            container[key] = fix(item)
    return root[0]
