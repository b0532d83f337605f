"""`llavakit chat`: an interactive multi-turn chat in the terminal, with streamed answers."""

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

HELP = """commands:
  /image PATH   attach an image to your next message
  /reset        forget the conversation and its images
  /help         show this help
  /quit         leave (or press Ctrl-D)"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chat", help="chat with the model in the terminal",
        description="Interactive chat. Type a message and press Enter; " + HELP.replace("\n", " "),
    )
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="image to start the conversation with (repeatable)")
    add_model_options(p)
    add_sampling_options(p)
    p.set_defaults(func=run)


class ChatSession:
    """The conversation so far, plus images waiting to be attached to the next user message."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = []
        self.images: list = []  # every image of the conversation, in placeholder order
        self.waiting = 0  # images added since the last user message

    def add_image(self, image) -> None:
        self.images.append(image)
        self.waiting += 1

    def user(self, text: str) -> None:
        # One placeholder per new image, so each image stays attached to the turn it came with.
        self.messages.append({"role": "user", "content": "<image>\n" * self.waiting + text})
        self.waiting = 0

    def assistant(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})


def run(args: argparse.Namespace) -> int:
    from llavakit.engine import SamplingParams
    from llavakit.images import ImageError

    check_sampling_options(args)
    session = ChatSession()
    for image in load_images(args.image):
        session.add_image(image)
    engine = load_engine(args, max_batch_size=1)
    params = SamplingParams(**sampling_options(args))
    interactive = sys.stdin.isatty()
    say = lambda text: print(text, flush=True)  # noqa: E731
    if interactive:
        say("llavakit chat: type /help for commands, /quit to leave")
    try:
        while True:
            if interactive:
                sys.stdout.write("you> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:  # EOF
                break
            line = line.strip()
            if not line:
                continue
            command, _, rest = line.partition(" ")
            if command in ("/quit", "/exit"):
                break
            if command == "/help":
                say(HELP)
            elif command == "/reset":
                session.reset()
                say("[conversation reset]")
            elif command == "/image":
                if not rest.strip():
                    say("error: /image needs a path, e.g. /image photo.jpg")
                    continue
                try:
                    session.add_image(load_images([rest.strip()])[0])
                except ImageError as err:
                    say(f"error: {err}")
                    continue
                say(f"[image added: {rest.strip()}]")
            elif command.startswith("/"):
                say(f"error: unknown command {command}; type /help")
            else:
                session.user(line)
                answer = _answer(engine, session, params, interactive)
                if answer is None:
                    session.messages.pop()  # the failed turn is not part of the conversation
                else:
                    session.assistant(answer)
    finally:
        engine.close()
    return 0


def _answer(engine, session: ChatSession, params, interactive: bool) -> str | None:
    """Stream the answer to the conversation; print errors (and return None) without ending the chat."""
    from llavakit.engine import Request

    request = Request(messages=list(session.messages), images=list(session.images), params=params)
    if interactive:
        sys.stdout.write("assistant> ")
    parts: list[str] = []
    try:
        for delta in engine.stream(request):
            parts.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
    except ValueError as err:  # e.g. the conversation grew past the model's context
        print(f"\nerror: {err}", flush=True)
        return None
    print(flush=True)
    return "".join(parts)
