"""The embedded default model: where it ships, and how a `tiny-world` run becomes it.

`ship_model(run_dir)` copies a finished `llavakit train tiny-world` run's final checkpoint into
the package (`llavakit/assets/tiny-world/`), with `scores.json` (the recipe, its seed, the
benchmark scores and timings), the run's pretrained tower and base LM (`backbones/`, where the
reduced recipe starts), example images with questions whose answers come from the scenes'
annotations (not from the model), and the model card `README.md`.
`shipped_model_dir()` is what `llavakit chat`, `ask`, `serve` and `web` load without --model.
"""

from __future__ import annotations

import json
import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llavakit.world.questions import SHORT_SUFFIX
from llavakit.world.scenes import Scene, render, sample_scene

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def package_model_dir() -> Path:
    """The shipped model's folder inside the installed package (it may not exist yet)."""
    return Path(str(resources.files("llavakit") / "assets" / "tiny-world"))


def shipped_model_dir() -> Path | None:
    """The embedded default model, or None when this installation has none."""
    folder = package_model_dir()
    return folder if all((folder / name).is_file() for name in MODEL_FILES) else None


def shipped_backbones_dir() -> Path | None:
    """The shipped model's pretrained tower and base LM (before LLaVA), or None when not installed.

    The reduced recipe (`budget=small`) starts from them, as LLaVA starts from CLIP and Vicuna.
    """
    folder = package_model_dir() / "backbones"
    parts = ("backbones.json", "vision/model.safetensors", "language/model.safetensors", "language/tokenizer.json")
    return folder if all((folder / name).is_file() for name in parts) else None


# Example scenes: (file name, rng seed, number of objects).
EXAMPLE_SCENES = (("three-shapes", 3, 3), ("one-shape", 11, 1), ("four-shapes", 5, 4))


def example_scene(seed: int, n_objects: int) -> Scene:
    return sample_scene(np.random.default_rng([20261125, seed]), n_objects=n_objects)


def example_questions(scene: Scene) -> list[dict[str, str]]:
    """Short questions whose answers the scene's annotations give, in the benchmark's format.

    They cover what the shipped model does reliably (its card has the numbers): how many objects
    an image of up to three holds, and the colour or shape of an object named by its other
    attribute ("the circle", "the red object", where that names one object). Questions that
    name an object by its place are left out: the model answers them only in part (72-88 % for
    the shipped model). So are counts of four or five objects (84 % and 80 %) and where an
    object is (99 %, but 78 % for the model shipped before it), so that the examples stay the
    same from one shipped model to the next.
    """
    questions = []
    if len(scene.objects) <= 3:
        questions.append(("How many objects are there in the image?", str(len(scene.objects))))
    for obj in scene.objects:
        if sum(o.shape == obj.shape for o in scene.objects) == 1:
            questions.append((f"What colour is the {obj.shape}?", obj.colour))
        if sum(o.colour == obj.colour for o in scene.objects) == 1:
            questions.append((f"What shape is the {obj.colour} object?", obj.shape))
    return [{"question": q + SHORT_SUFFIX, "answer": a} for q, a in questions]


def write_examples(folder: Path) -> list[dict[str, Any]]:
    """The example images (PNG) and `examples.json`: [{"image", "question", "answer"}, ...]."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for name, seed, n in EXAMPLE_SCENES:
        scene = example_scene(seed, n)
        Image.fromarray(render(scene)).save(folder / f"{name}.png")
        examples += [{"image": f"{name}.png", **q} for q in example_questions(scene)]
    (folder / "examples.json").write_text(json.dumps(examples, indent=2) + "\n")
    return examples


def ship_model(run_dir: str | Path, dest: str | Path | None = None) -> Path:
    """Copy a finished tiny-world run into `dest` (default: the package) with its card and scores."""
    from llavakit.world.card import model_card

    run = Path(run_dir)
    summary_path = run / "tiny_world.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run} has no tiny_world.json; run `llavakit train tiny-world output={run}` first")
    summary = json.loads(summary_path.read_text())
    if "final" not in summary.get("scores", {}):
        raise ValueError(f"the run in {run} has not been scored yet; rerun the same command to finish it")
    out = Path(dest) if dest is not None else package_model_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(run / "stage2" / name, out / name)
    for name in ("vision", "language"):
        shutil.copytree(run / "backbones" / name, out / "backbones" / name, dirs_exist_ok=True)
    report = json.loads((run / "backbones" / "backbones.json").read_text())
    report.pop("losses", None)  # per-step curves: in the run folder, not the package
    (out / "backbones" / "backbones.json").write_text(json.dumps(report, indent=2) + "\n")
    write_examples(out / "examples")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        summary["parameters"] = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 - not a dict
    (out / "scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "README.md").write_text(model_card(summary))
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m llavakit.world.ship RUN_DIR [DEST]`: put a finished run in the package."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llavakit.world.ship", description=main.__doc__)
    parser.add_argument("run_dir", help="the output folder of `llavakit train tiny-world`")
    parser.add_argument("dest", nargs="?", help="where to write it (default: the package's assets/tiny-world)")
    args = parser.parse_args(argv)
    print(ship_model(args.run_dir, args.dest))


if __name__ == "__main__":
    main()
