"""`llavakit train RECIPE --dry-run`: the run described without loading weights.

Parameters come from building the model on the meta device (config.json files or the built-in
LLaVA-1.5 configs); memory per device is weights + gradients + AdamW states + a rough activation
figure; steps come from the data file when present, else from `data.num_records`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llavakit.train.build import count_parameters, plan_config
from llavakit.train.recipe import Recipe
from llavakit.train.sampler import steps_per_epoch


def count_records(path: str | Path) -> int:
    """Records in a LLaVA JSON / JSONL file (one streaming pass, no tokenizer)."""
    from llavakit.train.data import index_records

    return len(index_records(path, estimate="words"))


def memory_estimate(recipe: Recipe, config, counts: dict[str, int], world_size: int, strategy: str) -> dict[str, float]:
    """Bytes per device, by kind. Activations are a rough figure for one micro-batch of max_length."""
    t = recipe.train
    compute = 2 if t.precision == "bf16" else 4
    trainable = counts["trainable"]
    frozen = counts["total"] - (trainable - counts.get("lora", 0) if recipe.lora.enabled else trainable)
    if recipe.lora.enabled and recipe.lora.quantize == "4bit":
        llm = counts["language_model"]
        frozen_bytes = (frozen - llm) * compute + llm * 0.55  # NF4 + its scales
    else:
        frozen_bytes = frozen * (compute if strategy != "fsdp" else 4)
    shard = world_size if strategy == "fsdp" else 1
    lang = config.language
    b, length = t.micro_batch_size, recipe.data.max_length
    per_layer = b * length * (10 * lang.hidden_size + 3 * lang.intermediate_size) * compute
    if t.gradient_checkpointing:
        activations = b * length * lang.hidden_size * compute * lang.num_layers + per_layer
    else:
        activations = per_layer * lang.num_layers
    activations += b * length // 2 * lang.vocab_size * (4 + compute)  # logits at target positions
    return {
        "weights": (frozen_bytes + trainable * 4) / shard,
        "gradients": trainable * 4 / shard,
        "optimizer": trainable * 8 / shard,
        "activations": activations,
    }


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def dry_run(recipe: Recipe, world_size: int = 1) -> dict[str, Any]:
    config = plan_config(recipe.model)
    counts = count_parameters(config, recipe)
    if recipe.lora.enabled:
        counts["total"] += counts["lora"]
    strategy = recipe.distributed.strategy
    if strategy == "auto":
        strategy = "single" if world_size == 1 else ("fsdp" if counts["total"] >= 1e9 else "ddp")
    accumulation = recipe.accumulation(world_size)
    records = None
    if recipe.data.path and Path(recipe.data.path).is_file():
        records = count_records(recipe.data.path)
    elif recipe.data.num_records:
        records = recipe.data.num_records
    steps = None
    if records is not None:
        steps = steps_per_epoch(records, recipe.train.global_batch_size) * recipe.train.epochs
        if recipe.train.max_steps:
            steps = min(steps, recipe.train.max_steps)
    memory = memory_estimate(recipe, config, counts, world_size, strategy)
    return {
        "recipe": recipe.name, "config": config.to_dict(), "parameters": counts, "world_size": world_size,
        "strategy": strategy, "micro_batch_size": recipe.train.micro_batch_size, "accumulation": accumulation,
        "global_batch_size": recipe.train.micro_batch_size * accumulation * world_size, "records": records,
        "steps": steps, "warmup_steps": math.ceil((steps or 0) * recipe.train.warmup_ratio),
        "memory_bytes": memory, "memory_total_bytes": sum(memory.values()),
    }


def format_dry_run(d: dict[str, Any], recipe: Recipe) -> str:
    p, m, c = d["parameters"], d["memory_bytes"], d["config"]
    lines = [
        f"recipe {d['recipe']}: {recipe.description}".rstrip(": "),
        f"model: {c['language']['num_layers']}-layer LLM (width {c['language']['hidden_size']}), "
        f"{c['vision']['kind']} tower {c['vision']['image_size']}px/{c['vision']['patch_size']}, "
        f"projector {c['projector']['type']}, template {c['template']}",
        f"parameters: total {_count(p['total'])}, trainable {_count(p['trainable'])} "
        f"({100 * p['trainable'] / max(p['total'], 1):.2f} %)",
        "  " + ", ".join(f"{part} {_count(p[part])} (trainable {_count(p['trainable_' + part])})"
                         for part in ("vision_tower", "projector", "language_model"))
        + (f", LoRA {_count(p['lora'])}" if "lora" in p else ""),
        f"processes: {d['world_size']} ({d['strategy']}); batch: {d['micro_batch_size']} per device x "
        f"{d['accumulation']} accumulation x {d['world_size']} = {d['global_batch_size']} global",
        f"records: {d['records'] if d['records'] is not None else 'unknown (set data.path or data.num_records)'}; "
        f"steps: {d['steps'] if d['steps'] is not None else '?'} (warm-up {d['warmup_steps']}), "
        f"lr {recipe.train.lr:g} {recipe.train.schedule}",
        "memory per device (rough): " + ", ".join(f"{k} {_gib(v)}" for k, v in m.items())
        + f"; total {_gib(d['memory_total_bytes'])}",
    ]
    return "\n".join(lines)


def dry_run_json(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2)
