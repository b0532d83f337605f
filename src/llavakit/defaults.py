"""Defaults the command line falls back on. One place, so the lead can change them."""

from __future__ import annotations


def default_model_reference() -> str:
    """The model `llavakit chat` / `ask` use without --model (a folder or hub id)."""
    from llavakit.cli import UserError

    # No model is embedded yet; once one is, return its folder or hub id here.
    raise UserError("no default model yet; pass --model (a checkpoint folder or hub id)")
