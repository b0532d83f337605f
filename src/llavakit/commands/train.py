"""`llavakit train RECIPE [key=value ...]`: run (or --dry-run) a training recipe."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a LLaVA model from a recipe (stage 1, stage 2, LoRA); works under torchrun",
        description="Train from a recipe: a packaged name (llava-v1.5-7b-pretrain, llava-v1.5-7b-finetune, "
        "llava-v1.5-7b-lora, and the 13b ones) or a YAML file. key=value pairs override recipe fields "
        "(dotted keys for nesting, e.g. train.lr=2e-5 data.path=data.json output.dir=runs/x). "
        "For many processes run it under torchrun: torchrun --nproc_per_node 8 -m llavakit.cli train ...",
    )
    p.add_argument("recipe", nargs="?", help="packaged recipe name or YAML path")
    # REMAINDER so that flags may follow the overrides; run() separates them again.
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value", help="recipe fields to override")
    _add_flags(p)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in output.dir (or from the one given)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model on the meta device and print parameters, memory, steps and batch")
    p.add_argument("--world-size", type=int, default=None,
                   help="with --dry-run: plan for this many processes (default: $WORLD_SIZE or 1)")
    p.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    p.add_argument("--list", action="store_true", help="list the packaged recipes and exit")


def _split_remainder(args: argparse.Namespace) -> None:
    """Flags given after the overrides (e.g. `RECIPE a=b --dry-run`) are parsed here."""
    inner = argparse.ArgumentParser(prog="llavakit train", add_help=False)
    inner.add_argument("overrides", nargs="*")
    _add_flags(inner)
    late = inner.parse_intermixed_args(args.overrides)
    for key, value in vars(late).items():
        if key != "overrides" and value not in (None, False):
            setattr(args, key, value)
    args.overrides = late.overrides
    if isinstance(args.resume, str) and "=" in args.resume and not os.path.exists(args.resume):
        args.overrides.append(args.resume)  # `--resume key=value`: the pair is an override, not a path
        args.resume = True


def run(args: argparse.Namespace) -> int:
    import logging

    from llavakit.cli import UserError
    from llavakit.train.recipe import RecipeError, load_recipe, packaged_recipes

    _split_remainder(args)
    if args.list:
        print("\n".join(packaged_recipes()))
        return 0
    if not args.recipe:
        raise UserError("give a recipe: a packaged name (see --list) or a YAML path")
    from llavakit.world.pipeline import is_world_recipe

    if is_world_recipe(args.recipe):
        return _run_world(args)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        raise UserError(str(err)) from err
    if args.dry_run:
        from llavakit.train.plan import dry_run, dry_run_json, format_dry_run

        world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
        try:
            report = dry_run(recipe, world)
        except RecipeError as err:
            raise UserError(str(err)) from err
        print(dry_run_json(report) if args.json else format_dry_run(report, recipe))
        return 0
    from llavakit.train.loop import train
    from llavakit.train.report import format_report

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(message)s" if "RANK" in os.environ else "%(message)s")
    try:
        summary = train(recipe, resume=args.resume)
    except RecipeError as err:
        raise UserError(str(err)) from err
    if rank == 0:
        print(format_report(summary))
    return 0


def _run_world(args: argparse.Namespace) -> int:
    """A world recipe (tiny-world): the whole embedded-model pipeline, not one training stage."""
    import json
    import logging

    from llavakit.cli import UserError
    from llavakit.train.recipe import RecipeError
    from llavakit.world.pipeline import load_world_recipe, run_world_recipe

    if args.dry_run:
        raise UserError(f"{args.recipe} is a whole pipeline; --dry-run plans one training stage "
                        "(try tiny-world-stage1 or tiny-world-stage2)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        recipe = load_world_recipe(args.recipe, args.overrides)
        run = run_world_recipe(recipe)
    except RecipeError as err:
        raise UserError(str(err)) from err
    summary = json.loads(run.summary.read_text())
    final, baseline = summary["scores"]["final"], summary["scores"]["stage1_only"]
    print(f"model: {run.model}")
    print(f"tiny-world benchmark: short colour {final['short'].get('colour', 0):.1f}, shape "
          f"{final['short'].get('shape', 0):.1f}, count {final['short'].get('count', 0):.1f}, position "
          f"{final['short'].get('position', 0):.1f}; multiple choice {final['mc_accuracy']:.1f}; "
          f"POPE F1 {final['pope_f1']:.1f}")
    print(f"short answers: {final['short_accuracy']:.1f} (stage 1 only: {baseline['short_accuracy']:.1f})")
    print(f"time: {summary['timings_s']['total'] / 60:.1f} min; summary: {run.summary}")
    return 0
