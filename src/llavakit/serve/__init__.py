"""Serving: an OpenAI-compatible HTTP API over the continuous-batching engine, and the web demo.

    from llavakit.engine import Engine
    from llavakit.serve import create_app, Limits
    app = create_app(Engine.load("model-folder"), "llava-1.5-7b", api_key="secret")

`llavakit serve` runs such an app with uvicorn; `llavakit web` starts the Gradio demo
(`llavakit.serve.web`), in process or against a running server.
"""

from llavakit.serve.app import create_app
from llavakit.serve.errors import APIError
from llavakit.serve.limits import Limits

__all__ = ["APIError", "Limits", "create_app"]
