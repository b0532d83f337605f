"""The embedded world model end to end (issue 5): one recipe from a seed to a scored LLaVA.

`llavakit train tiny-world [seed=N] [budget=full|tiny] [output=DIR]` runs `run_world_recipe`:

1. the backbones (world, tokenizer, CLIP-style tower, Llama-style LM: `world.backbones`);
2. LLaVA stage 1, the packaged recipe `tiny-world-stage1` (projector only, captions, plain template);
   then, where the budget says so, the projector aligned to the LM's scene slots (`world.align`);
3. LLaVA stage 2, `tiny-world-stage2` (projector + LM, or the LM alone where the budget freezes the
   aligned projector; instructions, with the drills of `lookups.json` where the budget says so;
   vicuna_v1);
4. the held-out benchmark (`llavakit eval`'s `tiny-world`) for the final model and for the
   stage-1-only baseline (the stage-1 projector on the base LM).

Every step writes its own folder under the output and is skipped when that folder is complete,
so rerunning the same command after an interruption continues where it stopped.

With `portable_numerics=true` (off by default: it is slower, see below) the recipe runs in a
child process whose torch CPU kernels are pinned to AVX2, so that every x86-64 machine with AVX2
should compute the same bits and the run reproduce across machines, not only on the one that
made it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from llavakit.world.align import align_projector
from llavakit.world.backbones import BUDGETS, BackbonePaths, pretrain_backbones
from llavakit.world.dataset import WorldFiles

PIPELINE_KEY = "tiny-world"  # the `pipeline:` value that marks a world recipe file

# The environment that pins torch's CPU kernels to AVX2: ATen's vectorised ops, MKL's BLAS (its
# conditional numerical reproducibility mode) and oneDNN's convolutions. Without it each picks
# the widest instructions of the CPU (AVX-512 here), and another CPU rounds differently; with it
# a simulated AVX2-only CPU gives the same bits (docs/embedded-model.md, "Reproducibility").
# It costs time: about 9 % on the backbones and half again on the benchmark runs here.
PORTABLE_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

log = logging.getLogger(__name__)


@dataclass
class WorldRecipe:
    """What `llavakit train tiny-world` runs; the step counts live in the budget."""

    name: str = "tiny-world"
    description: str = ""
    pipeline: str = PIPELINE_KEY
    seed: int = 0
    budget: str = "full"  # a key of llavakit.world.backbones.BUDGETS
    output: str = "runs/tiny-world"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    eval_images: int | None = None  # benchmark images to score (None: all)
    eval_batch_size: int = 32
    progress: bool = True
    portable_numerics: bool = False  # run with PORTABLE_NUMERICS (x86-64 CPUs with AVX2)

    def validate(self) -> None:
        from llavakit.train.recipe import RecipeError

        if self.budget not in BUDGETS:
            raise RecipeError(f"budget {self.budget!r} is not one of {', '.join(BUDGETS)}")
        if self.threads is not None and self.threads < 1:
            raise RecipeError("threads must be at least 1 (or null for torch's default)")
        if self.eval_images is not None and self.eval_images < 1:
            raise RecipeError("eval_images must be at least 1 (or null for the whole benchmark)")


def is_world_recipe(reference: str) -> bool:
    """Whether a recipe name or file is a world pipeline (rather than one training stage)."""
    from llavakit.train.recipe import RecipeError, _read_yaml

    try:
        return _read_yaml(reference).get("pipeline") == PIPELINE_KEY
    except RecipeError:
        return False


def load_world_recipe(reference: str, overrides: list[str] | None = None) -> WorldRecipe:
    from llavakit.train.recipe import RecipeError, _read_yaml, apply_overrides

    raw = apply_overrides(_read_yaml(reference), list(overrides or []))
    known = {f.name for f in fields(WorldRecipe)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RecipeError(f"{reference}: unknown field(s) {', '.join(unknown)}; a world recipe has "
                          + ", ".join(sorted(known)))
    recipe = WorldRecipe(**raw)
    recipe.validate()
    return recipe


@dataclass
class WorldRun:
    backbones: BackbonePaths
    stage1: Path  # stage-1 output (mm_projector.safetensors)
    model: Path  # the final llavakit checkpoint (stage-2 output)
    summary: Path  # tiny_world.json: seed, timings, training summaries, scores


def numerics_pinned() -> bool:
    """Whether this process runs with PORTABLE_NUMERICS."""
    return all(os.environ.get(k) == v for k, v in PORTABLE_NUMERICS.items())


def _can_pin_numerics() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and \
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _run_with_pinned_numerics(recipe: WorldRecipe) -> WorldRun:
    """The recipe in a child process started with PORTABLE_NUMERICS (torch reads them at start)."""
    from llavakit.train.recipe import RecipeError

    command = [sys.executable, "-m", "llavakit.world.pipeline", json.dumps(asdict(recipe))]
    code = subprocess.run(command, env={**os.environ, **PORTABLE_NUMERICS}, check=False).returncode
    if code != 0:
        raise RecipeError(f"the recipe stopped (exit code {code}; the lines above say why); the same "
                          "command continues it")
    return _world_run(recipe)


def _world_run(recipe: WorldRecipe) -> WorldRun:
    out = Path(recipe.output).expanduser()
    return WorldRun(BackbonePaths.at(out / "backbones"), out / "stage1", out / "stage2", out / "tiny_world.json")


def run_world_recipe(recipe: WorldRecipe) -> WorldRun:
    """Run (or finish) every step of the recipe; returns where the results are."""
    from llavakit.train import load_recipe, train
    from llavakit.train.state import checkpoints

    if recipe.portable_numerics and not numerics_pinned():
        if _can_pin_numerics():
            return _run_with_pinned_numerics(recipe)
        log.warning("portable_numerics needs an x86-64 CPU with AVX2; this run uses this CPU's own "
                    "kernels and reproduces only on such a CPU")
    out = Path(recipe.output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    budget = BUDGETS[recipe.budget]
    summary_path = out / "tiny_world.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("recipe", {}).get("seed", recipe.seed) != recipe.seed or \
            summary.get("recipe", {}).get("budget", recipe.budget) != recipe.budget:
        from llavakit.train.recipe import RecipeError

        raise RecipeError(f"{out} holds a run with another seed or budget; choose another output folder")
    summary["recipe"] = asdict(recipe)
    timings = summary.setdefault("timings_s", {})

    machine = machine_description()
    numerics = {"portable": numerics_pinned(), **{k: os.environ.get(k) for k in PORTABLE_NUMERICS}}

    def save() -> None:
        summary["torch_threads"] = torch.get_num_threads()
        summary["machine"], summary["numerics"] = machine, numerics
        timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 2)
        summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")

    try:
        paths = BackbonePaths.at(out / "backbones")
        if not paths.report.exists():
            t0 = time.perf_counter()
            paths = pretrain_backbones(paths.root, seed=recipe.seed, budget=budget, progress=recipe.progress)
            timings["backbones"] = round(time.perf_counter() - t0, 2)
            save()

        common = [f"model.language_model={paths.language}", f"model.vision_tower={paths.vision}",
                  f"data.image_folder={paths.world / 'images'}", f"train.seed={recipe.seed}",
                  f"output.progress={str(recipe.progress).lower()}", f"cache.dir={out / 'feature_cache'}"]
        world = WorldFiles(paths.world)
        stage1, aligned, stage2 = out / "stage1", out / "align", out / "stage2"
        summaries = summary.setdefault("training", {})

        def run_stage(name: str, data: Path, folder: Path, more: tuple[str, ...]) -> None:
            if (folder / "train_summary.json").exists() and name in summaries:
                return
            stage_recipe = load_recipe(f"tiny-world-{name}", [
                *common, f"data.path={data}", f"output.dir={folder}", *more])
            t0 = time.perf_counter()
            result = train(stage_recipe, resume=bool(checkpoints(folder)))  # an interrupted stage continues
            timings[name] = round(time.perf_counter() - t0, 2)
            summaries[name] = {k: result.get(k) for k in ("steps", "final_loss", "seconds", "records",
                                                          "tokens_per_second", "skipped_total")}
            save()

        run_stage("stage1", world.captions, stage1, budget.stage1)
        start = stage1
        if budget.align_images:
            if not (aligned / "align_summary.json").exists() or "align" not in summaries:
                t0 = time.perf_counter()
                summaries["align"] = align_projector(stage1, paths, aligned, images=budget.align_images,
                                                     steps=budget.align_steps, seed=recipe.seed,
                                                     feature_cache=out / "feature_cache", progress=recipe.progress)
                timings["align"] = round(time.perf_counter() - t0, 2)
                save()
            start = aligned
        stage2_data = world.instruct
        if budget.lookup_records:  # instruct.json and lookups.json in one file, as data.path takes one
            stage2_data = out / "stage2_data.json"
            if not stage2_data.exists():
                records = json.loads(world.instruct.read_text()) + json.loads(world.lookups.read_text())
                partial = stage2_data.with_suffix(".partial")  # whole or absent, for a rerun
                partial.write_text(json.dumps(records, ensure_ascii=False) + "\n")
                partial.replace(stage2_data)
        run_stage("stage2", stage2_data, stage2, (f"model.projector_from={start}", *budget.stage2))

        scores = summary.setdefault("scores", {})
        for name, make in (("final", lambda: _load(stage2)), ("stage1_only", lambda: load_stage1(stage1, paths))):
            t0 = time.perf_counter()
            scores[name] = score_on_bench(make(), paths.world, out / "eval" / name, limit=recipe.eval_images,
                                          batch_size=recipe.eval_batch_size, progress=recipe.progress)
            timings.setdefault(f"eval_{name}", round(time.perf_counter() - t0, 2))  # a rerun only rescores
            save()
    finally:
        torch.set_num_threads(previous_threads)
    return _world_run(recipe)


def machine_description() -> dict[str, Any]:
    """What decides a run's float rounding: the CPU, the kernels torch picks for it, torch's version.

    Runs are bit-identical only where these (and the thread count) agree.
    """
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def _load(folder: Path):
    from llavakit.api import load

    return load(folder, dtype="fp32", device="cpu")


def score_on_bench(llava, world_dir: str | Path, output: str | Path, *, limit: int | None = None,
                   batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """The `tiny-world` benchmark's scores for a loaded model (greedy, through the engine).

    Predictions are stored under `output` like `llavakit eval` stores them, so this is resumable
    and `llavakit eval --score-only` can rescore them. `limit` counts benchmark images.
    """
    from llavakit.engine import Engine
    from llavakit.eval.benchmarks.tiny_world import TinyWorld
    from llavakit.eval.runner import answer_fn_from_engine, run_benchmark

    engine = Engine(llava, max_batch_size=batch_size, max_queue=max(64, batch_size))
    try:
        result = run_benchmark(TinyWorld(world_dir), answer_fn_from_engine(engine), output, limit=limit,
                               batch_size=batch_size, progress=progress)
    finally:
        engine.close()
    return result.record["scores"]


def load_stage1(stage1_dir: str | Path, backbones: BackbonePaths, template: str = "vicuna_v1") -> Any:
    """The stage-1 projector on the base LM and tower, for the stage-1-only baseline."""
    from llavakit.api import load_projector_only

    return load_projector_only(Path(stage1_dir) / "mm_projector.safetensors",
                               language_model=backbones.language, vision_tower=backbones.vision,
                               dtype="fp32", device="cpu", template=template)


def _child_main(argv: list[str]) -> int:
    """`python -m llavakit.world.pipeline RECIPE_JSON`: how `_run_with_pinned_numerics` runs it.

    Errors are reported as the `llavakit` command reports them (`llavakit train` shows a
    RecipeError as a user error too)."""
    from llavakit.cli import is_user_error
    from llavakit.train.recipe import RecipeError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = WorldRecipe(**json.loads(argv[0]))
    try:
        run_world_recipe(recipe)
    except KeyboardInterrupt:
        print("interrupted; the same command continues the run", file=sys.stderr)
        return 130
    except Exception as err:
        if not (isinstance(err, RecipeError) or is_user_error(err)):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
