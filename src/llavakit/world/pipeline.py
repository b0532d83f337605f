"""The embedded world model end to end (issue 5, part B): backbones, LLaVA stage 1, stage 2, bench.

`build_tiny_world_model(out_dir)` runs (or reuses) part A's `pretrain_backbones`, then the two
LLaVA-1.5 stages through `llavakit.train` with the packaged recipes `tiny-world-stage1` (plain
template, projector only, captions.json) and `tiny-world-stage2` (vicuna_v1, projector + LM,
instruct.json). `evaluate_on_bench(model_dir, bench_path, images_dir)` scores greedy answers on
the held-out `bench.jsonl`, per category.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llavakit.world.backbones import BackbonePaths, pretrain_backbones

# Per-budget step counts and overrides on top of the packaged recipes.
STAGE_OVERRIDES: dict[str, dict[str, list[str]]] = {
    "full": {"stage1": [], "stage2": []},
    "tiny": {
        "stage1": ["train.max_steps=40", "train.global_batch_size=16", "train.micro_batch_size=16",
                   "train.lr=5e-3"],
        "stage2": ["train.max_steps=60", "train.global_batch_size=16", "train.micro_batch_size=16",
                   "train.lr=2e-3"],
    },
}


@dataclass
class WorldModelPaths:
    backbones: BackbonePaths
    stage1: Path  # stage-1 output (mm_projector.safetensors)
    model: Path  # the final llavakit checkpoint (stage-2 output)
    report: Path  # pipeline.json: timings and training summaries


def _backbone_paths(root: Path) -> BackbonePaths:
    return BackbonePaths(root, root / "world", root / "tokenizer", root / "vision", root / "language",
                         root / "backbones.json")


def build_tiny_world_model(out_dir: str | Path, seed: int = 0, budget: str = "full",
                           backbones_dir: str | Path | None = None, *, progress: bool = False,
                           num_threads: int | None = None,
                           overrides: dict[str, list[str]] | None = None) -> WorldModelPaths:
    """Backbones (reused from `backbones_dir`, or `out_dir/backbones` when complete), then stages 1 and 2.

    `overrides` adds `key=value` recipe overrides per stage ({"stage1": [...], "stage2": [...]}).
    """
    from llavakit.train import load_recipe, train

    if budget not in STAGE_OVERRIDES:
        raise ValueError(f"unknown budget {budget!r}; expected one of {', '.join(STAGE_OVERRIDES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    root = Path(backbones_dir) if backbones_dir is not None else out / "backbones"
    if (root / "backbones.json").exists():
        paths = _backbone_paths(root)
    else:
        paths = pretrain_backbones(root, seed=seed, budget=budget, progress=progress,
                                   num_threads=num_threads)
    timings["backbones"] = round(time.perf_counter() - start, 2)

    extra = overrides or {}
    common = [f"model.language_model={paths.language}", f"model.vision_tower={paths.vision}",
              f"data.image_folder={paths.world / 'images'}", f"train.seed={seed}",
              f"output.progress={str(progress).lower()}"]
    stage1, stage2 = out / "stage1", out / "stage2"
    summaries: dict[str, Any] = {}
    for name, data, outdir, more in (
        ("stage1", paths.world / "captions.json", stage1, []),
        ("stage2", paths.world / "instruct.json", stage2, [f"model.projector_from={stage1}"]),
    ):
        recipe = load_recipe(f"tiny-world-{name}", [
            *common, f"data.path={data}", f"output.dir={outdir}", f"cache.dir={out / 'feature_cache'}",
            *more, *STAGE_OVERRIDES[budget][name], *extra.get(name, []),
        ])
        t0 = time.perf_counter()
        summaries[name] = train(recipe)
        timings[name] = round(time.perf_counter() - t0, 2)
    timings["total"] = round(time.perf_counter() - start, 2)
    report = out / "pipeline.json"
    summary = {"seed": seed, "budget": budget, "backbones": str(root), "timings_s": timings,
               "summaries": summaries, "torch_threads": torch.get_num_threads()}
    report.write_text(json.dumps(summary, indent=2, default=str))
    return WorldModelPaths(paths, stage1, stage2, report)


def normalise(text: str) -> str:
    """Lower-case, strip whitespace and one trailing period (the simple exact-match rule)."""
    text = text.strip().lower()
    return text[:-1].strip() if text.endswith(".") else text


def _f1(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """POPE metrics, "yes" being the positive class; an answer that is neither counts as wrong."""
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    fn = sum(p != "yes" and g == "yes" for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(p == g for p, g in pairs) / len(pairs)
    yes_ratio = sum(p == "yes" for p, _ in pairs) / len(pairs)
    return {"f1": f1, "accuracy": accuracy, "precision": precision, "recall": recall, "yes_ratio": yes_ratio,
            "n": len(pairs)}


def evaluate_on_bench(model_dir: str | Path, bench_path: str | Path, images_dir: str | Path,
                      limit: int | None = None, *, batch_size: int = 32, max_new_tokens: int = 8,
                      llava: Any = None, predictions_path: str | Path | None = None) -> dict[str, Any]:
    """Greedy answers to `bench.jsonl`, scored per category.

    Keys: `short/colour`, `short/shape`, `short/count`, `short/position`, `short/all` (exact match
    after `normalise`; this is stricter than VQA accuracy, which credits 3 of 10 annotators, but the
    world's 10 reference answers are identical anyway), `mc/<category>` and `mc/all` (the first
    letter of the answer against the option letter), `pope/<split>` and `pope/all` (yes/no F1 etc.).
    `limit` keeps the first `limit` questions. Pass `llava` to reuse a loaded model (then
    `model_dir` is only recorded).
    """
    from PIL import Image

    from llavakit.api import load
    from llavakit.world.dataset import read_bench

    questions = read_bench(bench_path)[:limit] if limit else read_bench(bench_path)
    model = llava if llava is not None else load(model_dir, dtype="fp32", device="cpu")
    images_dir = Path(images_dir)
    answers: list[str] = []
    with torch.inference_mode():
        for i in range(0, len(questions), batch_size):
            chunk = questions[i:i + batch_size]
            conversations = [[{"role": "user", "content": "<image>\n" + q["text"]}] for q in chunk]
            images = [[Image.open(images_dir / q["image"]).convert("RGB")] for q in chunk]
            answers += model.generate(conversations, images, max_new_tokens=max_new_tokens)

    # A positive presence question belongs to the POPE split (random / adversarial) of its image's negative.
    split_of = {q["image"]: q["pope_split"] for q in questions
                if q["type"] == "yesno" and q.get("pope_split", "positive") != "positive"}
    groups: dict[str, list[bool]] = defaultdict(list)
    pope: dict[str, list[tuple[str, str]]] = defaultdict(list)
    records = []
    for q, raw in zip(questions, answers):
        pred = normalise(raw)
        if q["type"] == "short":
            ok = pred == normalise(q["answer"])
            groups[f"short/{q['category']}"].append(ok)
            groups["short/all"].append(ok)
        elif q["type"] == "mc":
            ok = pred[:1].upper() == q["answer"].upper()
            groups[f"mc/{q['category']}"].append(ok)
            groups["mc/all"].append(ok)
        elif q["type"] == "yesno":
            pred = "yes" if pred.startswith("yes") else "no" if pred.startswith("no") else pred
            pope[f"pope/{split_of.get(q['image'], 'unknown')}"].append((pred, normalise(q["answer"])))
            pope["pope/all"].append((pred, normalise(q["answer"])))
            ok = pred == normalise(q["answer"])
        else:
            continue
        records.append({"question_id": q["question_id"], "answer": raw, "reference": q["answer"],
                        "correct": ok})
    result: dict[str, Any] = {k: {"accuracy": sum(v) / len(v), "n": len(v)}
                              for k, v in sorted(groups.items())}
    result.update({k: _f1(v) for k, v in sorted(pope.items())})
    result["model"] = str(model_dir)
    result["questions"] = len(questions)
    if predictions_path is not None:
        Path(predictions_path).write_text("".join(json.dumps(r) + "\n" for r in records))
    return result


def load_stage1(stage1_dir: str | Path, backbones: BackbonePaths, template: str = "vicuna_v1") -> Any:
    """The stage-1 projector on the base LM and tower, for a stage-1-only baseline."""
    from llavakit.api import load_projector_only

    return load_projector_only(Path(stage1_dir) / "mm_projector.safetensors",
                               language_model=backbones.language, vision_tower=backbones.vision,
                               dtype="fp32", device="cpu", template=template)
