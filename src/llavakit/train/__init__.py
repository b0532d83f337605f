"""Training: LLaVA-1.5's two-stage recipe, LoRA/QLoRA, resumable, on one or many processes.

Entry points: `load_recipe` (YAML + overrides), `train` (run it), `dry_run` (describe it).
Heavy modules are imported lazily so `import llavakit.train` stays cheap.
"""

from __future__ import annotations

from typing import Any

from llavakit.train.recipe import Recipe, RecipeError, load_recipe, packaged_recipes

__all__ = ["Recipe", "RecipeError", "dry_run", "load_recipe", "packaged_recipes", "train"]


def train(recipe: Recipe, *, resume: bool | str = False) -> dict[str, Any]:
    from llavakit.train.loop import train as _train

    return _train(recipe, resume=resume)


def dry_run(recipe: Recipe, world_size: int = 1) -> dict[str, Any]:
    from llavakit.train.plan import dry_run as _dry_run

    return _dry_run(recipe, world_size)
