"""Training-step speed with and without running the shared system prompt once per micro-batch.

Run: python bench/shared_prefix.py [--steps 40] [--threads 2]

The embedded model's stage 2 (llavakit.world): the `full` budget's tower and LM shapes
(`llavakit.world.backbones.BUDGETS`) with random weights, vicuna_v1 prompts of the world's instruction records, global batches of 32
sorted by length and cut into micro-batches of 8, as the recipe trains. Each step runs the same
batch through `LossModule` with `share_prefix` off and on, in alternating order, both from the same
weights (no update is applied), so only the step time differs. The frozen tower's features are
computed beforehand, as the recipe's feature cache does. Reported: the median of
the per-step time ratios, and the largest loss difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from llavakit.api import image_processor_for
from llavakit.config import LlavaConfig, ProjectorConfig
from llavakit.conversation import get_template
from llavakit.model import LlavaModel
from llavakit.train.data import Collator, LlavaDataset
from llavakit.train.sampler import plan_epoch, split_global_batch
from llavakit.train.step import LossModule, shared_prefix_length
from llavakit.world import train_world_tokenizer, write_world
from llavakit.world.backbones import BUDGETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        world = write_world(Path(tmp) / "world", seed=0, n_train_images=400, n_bench_images=4, progress=False)
        tokenizer = train_world_tokenizer(world.root, Path(tmp) / "tokenizer")
        budget = BUDGETS["full"]
        config = LlavaConfig(vision=budget.vision.tower_config(), projector=ProjectorConfig("mlp2x_gelu"),
                             language=budget.language.model_config(len(tokenizer)), template="vicuna_v1")
        dataset = LlavaDataset(world.instruct, config=config, template=get_template("vicuna_v1"), tokenizer=tokenizer,
                               image_processor=image_processor_for(config), image_folder=world.image_folder)
        plan = plan_epoch(len(dataset), 32, 0, 0, lengths=dataset.index.lengths, num_images=dataset.index.num_images,
                          group_by_modality_length=True)
        collate = Collator(config.language.pad_token_id)
        model = LlavaModel(config).train()
        trainable = [p for n, p in model.named_parameters() if not n.startswith("vision_tower")]
        for p in model.vision_tower.parameters():
            p.requires_grad_(False)
        # The recipe caches the frozen tower's features; so does the benchmark.
        modules = {share: LossModule(model, tower_trainable=False, features_cached=True, share_prefix=share)
                   for share in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        ratios, loss_gap, shared_tokens, all_tokens = [], 0.0, 0, 0
        for step in range(args.steps):
            micro = [collate([dataset[i] for i in mb]).batch
                     for mb in split_global_batch(plan[step], 8, 1, 4, 0)]
            with torch.no_grad():
                features = [model.vision_features(b.pixel_values) for b in micro]
            losses = {}
            for share in ((False, True) if step % 2 == 0 else (True, False)):
                start = time.perf_counter()
                total = 0.0
                for b, f in zip(micro, features):
                    loss = modules[share](b.input_ids, b.attention_mask, b.labels, f)
                    loss.backward()
                    total += float(loss.detach())
                times[share].append(time.perf_counter() - start)
                losses[share] = total
                for p in trainable:
                    p.grad = None
            ratios.append(times[False][-1] / times[True][-1])
            loss_gap = max(loss_gap, abs(losses[True] - losses[False]) / losses[False])
            for b in micro:
                shared_tokens += shared_prefix_length(b.input_ids, b.labels, b.attention_mask,
                                                      config.image_token_id) * b.input_ids.shape[0]
                all_tokens += b.input_ids.numel()
    result = {"steps": args.steps, "threads": args.threads,
              "seconds_per_step_plain": statistics.median(times[False]),
              "seconds_per_step_shared": statistics.median(times[True]),
              "speedup_median_of_paired_ratios": statistics.median(ratios),
              "prefix_share_of_positions": shared_tokens / all_tokens,
              "largest_relative_loss_difference": loss_gap}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
