"""`llavakit web`: the Gradio demo (image upload, multi-turn chat with streamed answers)."""

from __future__ import annotations

import argparse
import os

from llavakit.commands._generation import add_model_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "web", help="start the web demo (Gradio) on the model or on a running `llavakit serve`",
        description="A LLaVA-style demo: upload or paste an image, chat about it with streamed answers. "
        "Runs the model in process (--model, or the default model) or talks to a running `llavakit serve` "
        "through the OpenAI protocol (--server URL). Listens on 127.0.0.1 unless --host says otherwise.",
    )
    add_model_options(p)
    p.add_argument("--server", metavar="URL", help="use a running server, e.g. http://127.0.0.1:8000 "
                   "(instead of loading --model here)")
    p.add_argument("--api-key", default=os.environ.get("LLAVAKIT_API_KEY"),
                   help="API key for --server (default: $LLAVAKIT_API_KEY)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", choices=("false",), default="false",
                   help="Gradio share links are never created: they tunnel the demo through a third party")
    p.add_argument("--max-batch-size", type=int, default=8, help="in-process engine: requests decoded together")
    p.add_argument("--concurrency", type=int, default=16, help="answers generated at once (default 16)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llavakit.cli import UserError

    if args.server and args.model:
        raise UserError("give --model or --server, not both")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from llavakit.serve.web import EngineBackend, ServerBackend, launch_demo

    engine = None
    if args.server:
        try:
            backend = ServerBackend(args.server, args.api_key)
        except Exception as err:  # openai's connection/auth errors: a message, not a traceback
            raise UserError(f"cannot use the server at {args.server}: {type(err).__name__}: {err}") from None
    else:
        from llavakit.commands._generation import load_engine
        from llavakit.commands.serve import model_name_for
        from llavakit.defaults import default_model_reference

        args.model = args.model or default_model_reference()
        engine = load_engine(args, max_batch_size=args.max_batch_size, max_queue=4 * args.concurrency)
        backend = EngineBackend(engine, model_name_for(args.model))
    try:
        launch_demo(backend, host=args.host, port=args.port, concurrency=args.concurrency)
    finally:
        if engine is not None:
            engine.close()
    return 0
