"""`llavakit serve`: an OpenAI-compatible HTTP API (chat completions, streaming, images)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llavakit.commands._generation import add_model_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the model over an OpenAI-compatible HTTP API",
        description="POST /v1/chat/completions (OpenAI's format: text and image_url parts, stream, n, stop, "
        "seed, ...), GET /v1/models, GET /health. All requests share one continuously batched engine. "
        "SIGTERM finishes the requests in flight, then exits.",
    )
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                   "0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("LLAVAKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $LLAVAKIT_API_KEY; unset: open)")
    p.add_argument("--model-name", help="the model id clients send and /v1/models lists "
                   "(default: the --model folder or hub id's last part)")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests decoded together (default 16)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a slot before the server answers 429 (default 64)")
    p.add_argument("--max-seq-len", type=int, help="prompt + answer tokens per request (default: the model's "
                   "context length)")
    p.add_argument("--default-max-tokens", type=int,
                   help="answer length when a request sets no max_tokens (default: up to the context end)")
    p.add_argument("--max-images", type=int, default=8, help="images per request (default 8)")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="size of one encoded image (default 20)")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000,
                   help="width x height of one image, checked before decoding (default 40,000,000)")
    p.add_argument("--max-body-mb", type=float, default=48.0, help="size of one request body (default 48)")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="also accept http(s) image URLs (public addresses only, with size and time limits)")
    p.add_argument("--remote-timeout", type=float, default=10.0, help="seconds to fetch a remote image")
    p.add_argument("--graceful-timeout", type=float, default=60.0,
                   help="seconds a stop waits for requests in flight before cancelling them (default 60)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def model_name_for(reference: str) -> str:
    """What clients call the model: a hub id as is, a folder by its name."""
    path = Path(reference)
    return path.resolve().name if path.exists() else reference


def run(args: argparse.Namespace) -> int:
    from llavakit.cli import UserError
    from llavakit.commands._generation import load_engine
    from llavakit.defaults import default_model_reference
    from llavakit.serve import Limits, create_app
    from llavakit.serve.server import run_server

    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be 0-65535, got {args.port}")
    try:
        limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_image_bytes=int(args.max_image_mb * 2**20),
                        max_image_pixels=args.max_image_pixels, max_images=args.max_images,
                        default_max_tokens=args.default_max_tokens, allow_remote_images=args.allow_remote_images,
                        remote_timeout=args.remote_timeout)
        options = {"max_batch_size": args.max_batch_size, "max_queue": args.max_queue}
        if args.max_seq_len:
            options["max_seq_len"] = args.max_seq_len
        reference = args.model or default_model_reference()
        args.model = reference
        engine = load_engine(args, **options)
    except ValueError as err:
        raise UserError(str(err)) from None
    name = args.model_name or model_name_for(reference)
    app = create_app(engine, name, api_key=args.api_key or None, limits=limits,
                     drain_timeout=args.graceful_timeout)
    print(f"llavakit serve: {name} on http://{args.host}:{args.port}/v1 "
          f"(batch {args.max_batch_size}, queue {args.max_queue}, auth {'on' if args.api_key else 'off'})",
          flush=True)
    return run_server(app, args.host, args.port, graceful_timeout=args.graceful_timeout, log_level=args.log_level)
