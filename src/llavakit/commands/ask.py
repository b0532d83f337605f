"""`llavakit ask`: one answer to one question (about zero or more images), for scripts."""

from __future__ import annotations

import argparse
import sys

from llavakit.commands._generation import (
    add_model_options,
    add_sampling_options,
    check_sampling_options,
    load_engine,
    load_images,
    sampling_options,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ask", help="answer one question about an image and exit",
        description="Print the model's answer to QUESTION (streamed) and exit; errors go to stderr with "
        "exit status 1.",
    )
    p.add_argument("question", help="the question")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="image file (repeat for several images; omit for a text-only question)")
    add_model_options(p)
    add_sampling_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llavakit.engine import Request

    check_sampling_options(args)
    images = load_images(args.image)  # bad paths fail before the model is loaded
    engine = load_engine(args, max_batch_size=1)
    try:
        for delta in engine.stream(Request.question(args.question, images, **sampling_options(args))):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        engine.close()
    return 0
