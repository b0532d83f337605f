"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every refusal the server makes on purpose is an `APIError`; the handlers below turn it (and
Starlette's own 404/405, and anything unexpected) into that JSON shape, so OpenAI clients raise
their usual exceptions (BadRequestError, AuthenticationError, NotFoundError, RateLimitError...).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("llavakit.serve")

# The `type` OpenAI uses for each status (clients only show it; the status drives their behaviour).
_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 503: "server_error",
}


class APIError(Exception):
    """A request the server refuses: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def json_response(content: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON with non-ASCII escaped: user text may hold lone surrogates that UTF-8 cannot encode,
    and a response must never fail to serialise."""
    return Response(json.dumps(content, ensure_ascii=True), status_code=status,
                    media_type="application/json", headers=headers)


def clip(text: object, limit: int = 80) -> str:
    """A user-supplied value, shortened for an error message."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> Response:
        return json_response(err.body(), err.status, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        message = {404: f"no route {clip(request.url.path)}", 405: f"method {request.method} not allowed "
                   f"on {clip(request.url.path)}"}.get(err.status_code, str(err.detail))
        return json_response(error_body(err.status_code, message), err.status_code, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> Response:
        # Our routes validate bodies themselves; this only catches FastAPI-declared parameters.
        return json_response(error_body(400, clip(err.errors(), 300)), 400)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, err: Exception) -> Response:
        # Only genuine bugs get here: every expected refusal is an APIError. Log with traceback.
        log.exception("internal error on %s %s", request.method, request.url.path)
        return json_response(error_body(500, f"internal server error ({type(err).__name__})",
                                        code="internal_error"), 500)
