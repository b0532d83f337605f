"""From a seed to the two pretrained backbones: world -> tokenizer -> vision tower -> language model.

`pretrain_backbones(out_dir, seed, budget)` writes

    out_dir/world/       the synthetic world (images, captions.json, instruct.json, bench.jsonl, ...)
    out_dir/tokenizer/   the byte-level BPE tokenizer (transformers folder)
    out_dir/vision/      the CLIP-style tower (transformers CLIPVisionModel folder)
    out_dir/language/    the Llama-style LM (transformers LlamaForCausalLM folder, with tokenizer)
    out_dir/backbones.json   budget, timings and measurements (retrieval accuracy, perplexity)

Budgets: "tiny" for tests (well under a minute), "small" for the reduced recipe the suite
retrains (only the world is generated; the tower and LM are the ones shipped in the package),
and "full" for the shipped model (about ten minutes on two CPU cores, leaving the rest of the
twenty-minute recipe to LLaVA's two stages and the benchmark).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llavakit.world.dataset import write_world
from llavakit.world.pretrain_lm import LMPretrainConfig, pretrain_lm
from llavakit.world.pretrain_vision import VisionPretrainConfig, pretrain_vision
from llavakit.world.tokenizer import train_world_tokenizer


@dataclass
class Budget:
    name: str
    n_train_images: int
    n_bench_images: int
    vocab_size: int = 1024
    vision: VisionPretrainConfig = field(default_factory=VisionPretrainConfig)
    language: LMPretrainConfig = field(default_factory=LMPretrainConfig)
    # Optional stops per backbone (seconds). Runs are defined by their step counts, which keeps
    # them deterministic; a stop trades that for a bounded time on a slow or busy machine.
    vision_max_seconds: float | None = None
    language_max_seconds: float | None = None
    # LLaVA stages 1 and 2 (llavakit.world.pipeline): `key=value` overrides on the packaged
    # recipes tiny-world-stage1 / tiny-world-stage2.
    stage1: tuple[str, ...] = ()
    stage2: tuple[str, ...] = ()
    # Between the stages: fit the projector so that each image token is its cell's scene slot, on
    # this many training images (llavakit.world.align; 0: stage 2 starts from stage 1's projector).
    align_images: int = 0
    align_steps: int = 1500
    # Stage 2 trains on lookups.json's drills (lookups by place and description, presence) as well
    # as on instruct.json.
    lookup_records: bool = False
    # Start LLaVA from the tower and LM shipped with the package (as LLaVA itself starts from CLIP
    # and Vicuna) instead of pretraining them: only the world is generated.
    shipped_backbones: bool = False


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        "tiny", n_train_images=256, n_bench_images=64,
        vision=VisionPretrainConfig(patch_size=32, hidden_size=64, intermediate_size=128, num_layers=2,
                                    num_heads=2, text_width=64, text_layers=1, embed_dim=64, steps=40, batch_size=32,
                                    lr=2e-3, warmup_steps=5, eval_images=64),
        language=LMPretrainConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                                  block_size=64, batch_size=8, steps=40, lr=3e-3, warmup_steps=5,
                                  eval_images=16, reading_per_image=1, scene_slots=True, copy_init=0.05,
                                  slot_word_loss=1.0, answer_weight=4.0),
        stage1=("train.max_steps=40", "train.global_batch_size=16", "train.micro_batch_size=16", "train.lr=5e-3"),
        # The projector aligned to the slots, then frozen, with the lookup drills: as in the
        # experiments of docs/embedded-model.md, "Lookups by place, learnt" (the tests run this path).
        align_images=200, align_steps=100, lookup_records=True,
        stage2=("train.max_steps=60", "train.global_batch_size=16", "train.micro_batch_size=16", "train.lr=2e-3",
                "train.trainable=[language_model]"),
    ),
    # The reduced recipe the test suite retrains: a smaller world and short LLaVA stages on the
    # shipped tower and LM (under 2 minutes on one core; docs/embedded-model.md, "Budgets").
    "small": Budget(
        "small", n_train_images=3000, n_bench_images=100, shipped_backbones=True,
        stage1=("train.max_steps=60", "train.global_batch_size=32", "train.micro_batch_size=32", "train.lr=3e-3"),
        stage2=("train.max_steps=300", "train.global_batch_size=16", "train.micro_batch_size=8", "train.lr=1e-3",
                "data.group_by_modality_length=true"),
    ),
    "full": Budget(
        "full", n_train_images=20000, n_bench_images=500,
        # 32 px patches: one image token per grid cell (9 per image), which trains as well as
        # 16 px patches (36 tokens) and makes every LLaVA step cheaper.
        vision=VisionPretrainConfig(patch_size=32, hidden_size=128, intermediate_size=512, num_layers=4,
                                    num_heads=4, steps=250, batch_size=128, lr=1e-3, warmup_steps=25,
                                    eval_images=500),
        # Width 128 trains 2.5x faster per step than 256 at the same perplexity. An LM that reads
        # its context before LLaVA starts is what stage 2 builds on: after 1 200 steps it answers
        # questions about a caption at chance, after 2 400 steps on text dense in such questions
        # (three reading documents per image, mostly short answers) it reads shapes
        # (docs/embedded-model.md, "Can the base LM read?"). Captions and instruction chats keep
        # their image as scene slots, so that it also reads several facts from one position, as
        # it must from an image token ("Stage 1 aligned nothing; scene slots").
        # A path that copies context words to the output from the start, and a loss that makes
        # each slot name its words where it stands, end the reading plateau in a few hundred steps
        # instead of 1 300, and with every reading document asking about slots the LM reads
        # colours and shapes on both seeds tried ("A copy path from the start").
        # Six reading documents per image, with the answers' tokens weighing four times as much as
        # other text: a head at the answer position then learns to look the asked object up by
        # its other attribute in both directions on three draws of four (seed 0 still misses
        # "What colour is the circle?"), where with three documents and no weight one draw in
        # five learnt it ("Answers that weigh more").
        language=LMPretrainConfig(hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                                  block_size=256, batch_size=8, steps=2400, lr=2e-3, warmup_steps=50,
                                  eval_images=300, facts_documents=30000, reading_per_image=6,
                                  reading_short_share=0.8, instruct_share=1.0, scene_slots=True,
                                  reading_slot_share=1.0, copy_init=0.05, slot_word_loss=1.0,
                                  answer_weight=4.0),
        # Stage 2 is what the time goes to: the lookup of the asked object sharpens with updates
        # (docs/embedded-model-history.md, "Binding"), and batches of 8 beat batches of 32 for
        # the same records ("Smaller batches, more updates"). Sorting 256 records by length
        # before cutting them into batches keeps the padding near zero.
        stage1=("train.max_steps=150", "train.lr=2e-3"),
        # Then the projector fitted to the slots and frozen, and stage 2 drilled on lookups and
        # presence (lookups.json): every lookup by place is learnt ("Lookups by place, learnt").
        align_images=8000, lookup_records=True,
        # Batches of 16 (session 17) see the same 51 200 records as 6 400 batches of 8 in 28 %
        # less time on two threads (larger products use the cores better), and on seed 1 met
        # the same targets with more margin; fewer records leave presence half learnt
        # ("Fewer stage-2 steps, batches of 16").
        stage2=("train.max_steps=3200", "train.lr=1e-3", "train.global_batch_size=16",
                "train.micro_batch_size=16", "data.group_by_modality_length=true",
                "data.length_group_size=256", "train.trainable=[language_model]",
                # A checkpoint every 400 steps (about a minute of work) rather than 100: saving took 10 s of
                # the run, and the weights are the same.
                "output.save_every=400"),
    ),
}


@dataclass
class BackbonePaths:
    root: Path
    world: Path
    tokenizer: Path
    vision: Path
    language: Path
    report: Path

    @classmethod
    def at(cls, root: Path) -> BackbonePaths:
        """Where `pretrain_backbones(root, ...)` writes (or wrote) each part."""
        return cls(root, root / "world", root / "tokenizer", root / "vision", root / "language",
                   root / "backbones.json")


def _params(state_file: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(state_file)).values())


def pretrain_backbones(out_dir: str | Path, seed: int = 0, budget: str | Budget = "full",
                       progress: bool = True, num_threads: int | None = None) -> BackbonePaths:
    """Run the whole backbone recipe from `seed`; returns where everything was written.

    `num_threads` sets torch's CPU threads for the run (on a machine whose cores are busy with
    other work, one thread can be faster than two: spinning threads wait on each other).
    """
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run(Path(out_dir), seed, budget, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _copy_shipped(paths: BackbonePaths) -> dict[str, Any]:
    """The package's pretrained tower and LM (and the LM's tokenizer) into `paths`."""
    from llavakit.world.ship import shipped_backbones_dir

    source = shipped_backbones_dir()
    if source is None:
        raise FileNotFoundError("this installation has no shipped backbones (llavakit/assets/tiny-world/"
                                "backbones); choose a budget that pretrains them, e.g. budget=full")
    for name, dest in (("vision", paths.vision), ("language", paths.language)):
        shutil.copytree(source / name, dest, dirs_exist_ok=True)
    paths.tokenizer.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(paths.language / name, paths.tokenizer / name)
    shipped = json.loads((source / "backbones.json").read_text())
    return {"from": str(source), "seed": shipped["seed"], "budget": shipped["budget"]["name"]}


def _run(root: Path, seed: int, budget: Budget, progress: bool) -> BackbonePaths:
    paths = BackbonePaths.at(root)
    timings: dict[str, float] = {}
    clock = time.time()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.time() - clock, 2)
        clock = time.time()

    write_world(paths.world, seed, budget.n_train_images, budget.n_bench_images,
                image_size=budget.vision.image_size, progress=progress)
    lap("world")
    report: dict[str, Any] = {"seed": seed, "budget": asdict(budget), "timings_s": timings,
                              "torch_threads": torch.get_num_threads()}
    if budget.shipped_backbones:
        report["shipped_backbones"] = _copy_shipped(paths)
        lap("shipped_backbones")
    else:
        tokenizer = train_world_tokenizer(paths.world, paths.tokenizer, budget.vocab_size)
        lap("tokenizer")
        vision = pretrain_vision(paths.world, tokenizer, paths.vision, budget.vision, seed=seed, progress=progress,
                                 max_seconds=budget.vision_max_seconds)
        lap("vision")
        language = pretrain_lm(paths.world, tokenizer, paths.language, budget.language, seed=seed,
                               progress=progress, max_seconds=budget.language_max_seconds)
        lap("language")
        report.update({
            "tokenizer": {"vocab_size": len(tokenizer)},
            "vision": {"params": _params(paths.vision / "model.safetensors"), **vision.metrics},
            "language": {"params": _params(paths.language / "model.safetensors"), **language.metrics},
            "losses": {"vision": vision.losses, "language": language.losses},
        })
    timings["total"] = round(sum(timings.values()), 2)
    paths.report.write_text(json.dumps(report, indent=2) + "\n")
    return paths
