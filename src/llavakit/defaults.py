"""Defaults the command line falls back on. One place, so the lead can change them."""

from __future__ import annotations


def default_model_reference() -> str:
    """The model `llavakit chat`, `ask`, `serve` and `web` use without --model: the embedded one."""
    from llavakit.cli import UserError
    from llavakit.world.ship import package_model_dir, shipped_model_dir

    folder = shipped_model_dir()
    if folder is None:
        raise UserError(f"this installation has no embedded model (expected in {package_model_dir()}); pass "
                        "--model (a checkpoint folder or hub id), or build it: llavakit train tiny-world, then "
                        "python -m llavakit.world.ship runs/tiny-world")
    return str(folder)
