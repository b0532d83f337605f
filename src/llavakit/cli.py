"""The `llavakit` command. Each subcommand lives in its own module under `llavakit.commands`.

A command module defines `register(subparsers)`, which adds its parser and sets `func` to a
function taking the parsed arguments and returning an exit code. Heavy imports (torch,
transformers) happen inside those functions so that `llavakit --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules under llavakit.commands, in the order their commands appear in --help.
COMMAND_MODULES = ("convert", "ask", "chat", "batch", "serve", "web", "eval", "train", "merge", "data")


class UserError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llavakit", description="LLaVA-1.5 end to end: chat, serve, train, evaluate.")
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"llavakit.commands.{name}").register(subparsers)
    return parser


def _version() -> str:
    from llavakit import __version__

    return f"llavakit {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if is_user_error(err):
            print(f"llavakit {args.command}: error: {err}", file=sys.stderr)
            return 1
        raise


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is one we raise on purpose, whose message is meant for the user: such errors
    are printed without a traceback."""
    from llavakit.checkpoints import CheckpointError
    from llavakit.images import ImageError

    return isinstance(err, UserError | CheckpointError | ImageError | FileNotFoundError)


if __name__ == "__main__":
    # `python -m llavakit.cli` runs this file as __main__; take main() from the imported module so
    # the error classes it catches are the same objects the commands raise.
    from llavakit.cli import main as package_main

    sys.exit(package_main())
