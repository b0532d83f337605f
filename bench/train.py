"""Training benchmark: llavakit vs transformers, the length-grouped sampler, the feature cache.

Run: python bench/train.py [--steps 3] [--threads 2]

1. Training-step tokens/s of a ~110M LLaVA-shaped model (ViT-S/16 at 224 px: width 384, 12
   layers, 6 heads; Llama: 10 layers, width 640, vocab 32000), tower frozen, projector + LLM
   training, fp32 on the CPU: llavakit's loss module + AdamW against transformers'
   `LlavaForConditionalGeneration` (same weights, exported with llavakit's llava-hf writer)
   in a plain loop with the same AdamW, on the same collated micro-batches, interleaved.
2. Padded-token fraction of a LLaVA-mix-like dataset, with and without
   group_by_modality_length (global batch 128, micro-batch 16, as in the finetune recipe).
3. Stage 1 (projector only) end to end through `llavakit.train.train`, with the tower's
   features computed live and read from the feature cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tokenizers_for_tests import build_llama_sp_tokenizer, english_lines  # noqa: E402

from llavakit.api import image_processor_for  # noqa: E402
from llavakit.checkpoints import build_model, export_llava_hf, read_checkpoint, save_checkpoint  # noqa: E402
from llavakit.config import LanguageConfig, LlavaConfig, ProjectorConfig, VisionConfig  # noqa: E402
from llavakit.conversation import get_template  # noqa: E402
from llavakit.model import LlavaModel  # noqa: E402
from llavakit.train import load_recipe, train  # noqa: E402
from llavakit.train.data import Collator, LlavaDataset  # noqa: E402
from llavakit.train.sampler import padding_fraction, plan_epoch, split_global_batch  # noqa: E402
from llavakit.train.step import LossModule, target_count  # noqa: E402

IMAGE_TOKEN = 31999  # inside the vocabulary, as llava-hf needs


def bench_config() -> LlavaConfig:
    vision = VisionConfig(image_size=224, patch_size=16, hidden_size=384, intermediate_size=1536,
                          num_layers=12, num_heads=6)
    language = LanguageConfig(vocab_size=32000, hidden_size=640, intermediate_size=1728, num_layers=10,
                              num_heads=10, max_position_embeddings=4096, pad_token_id=0)
    return LlavaConfig(vision=vision, projector=ProjectorConfig("mlp2x_gelu"), language=language,
                       image_token_id=IMAGE_TOKEN, template="vicuna_v1")


def write_data(root: Path, n_images: int, n_records: int, seed: int = 0) -> dict[str, Path]:
    """Random photos-ish PNGs; captions; and a mix of image chats and text-only chats of varied length."""
    rng = np.random.default_rng(seed)
    r = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(n_images):
        w, h = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR).save(images / f"{i}.jpg", quality=90)
    lines = english_lines(4000, seed=seed)
    captions = [{"id": i, "image": f"{i}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nDescribe this."}, {"from": "gpt", "value": lines[i % len(lines)]}]}
        for i in range(n_images)]
    chats = []
    for i in range(n_records):
        image = r.random() < 0.7
        turns = []
        for t in range(r.choice([1, 1, 2, 3, 5]) if image else 1):
            q = ("<image>\n" if image and t == 0 else "") + r.choice(lines)
            words = r.randint(5, 40) if image else r.randint(20, 400)
            a = " ".join(r.choice(lines) for _ in range(max(1, words // 8)))
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        record = {"id": i, "conversations": turns}
        if image:
            record["image"] = f"{i % n_images}.jpg"
        chats.append(record)
    paths = {"images": images, "captions": root / "captions.json", "chats": root / "chats.json"}
    paths["captions"].write_text(json.dumps(captions))
    paths["chats"].write_text(json.dumps(chats))
    return paths


def step_speed(model_dir: Path, hf_dir: Path, data: dict[str, Path], tokenizer, steps: int) -> dict:
    from transformers import LlavaForConditionalGeneration

    ours = build_model(read_checkpoint(model_dir)).train()
    ours.vision_tower.requires_grad_(False)
    hf = LlavaForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                       attn_implementation="sdpa").train()
    hf.model.vision_tower.requires_grad_(False)
    config = ours.config
    ds = LlavaDataset(data["chats"], config=config, template=get_template("vicuna_v1"), tokenizer=tokenizer,
                      image_processor=image_processor_for(config), image_folder=data["images"])
    image_rows = [i for i in range(len(ds)) if ds.index.num_images[i] and ds.index.lengths[i] < 420]
    collate = Collator(0)
    batches = [collate([ds[i] for i in image_rows[k * 2:(k + 1) * 2]]).batch for k in range(steps + 1)]
    module = LossModule(ours, tower_trainable=False, features_cached=False)
    # Both get the fused AdamW (llavakit's trainer uses it; so does transformers' Trainer by default).
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5, fused=True)
    opt_hf = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-5, fused=True)

    def run_ours(b):
        loss = module(b.input_ids, b.attention_mask, b.labels, b.pixel_values)
        (loss / target_count(b.labels)).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss.item() / target_count(b.labels)

    def run_hf(b):
        loss = hf(input_ids=b.input_ids, pixel_values=b.pixel_values, attention_mask=b.attention_mask,
                  labels=b.labels).loss
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        return loss.item()

    first = (run_ours(batches[0]), run_hf(batches[0]))  # warm-up, and the same loss on the same weights
    times = {"llavakit": [], "transformers": []}
    tokens, ratios = [], []
    for k, b in enumerate(batches[1:]):
        tokens.append(int(b.attention_mask.sum()))
        order = [("llavakit", run_ours), ("transformers", run_hf)]
        for name, fn in order if k % 2 == 0 else order[::-1]:  # alternate who goes first
            t0 = time.perf_counter()
            fn(b)
            times[name].append(time.perf_counter() - t0)
        ratios.append(times["transformers"][-1] / times["llavakit"][-1])
    # Medians: other jobs share the machine; a paired ratio (same batch, back to back) is the robust figure.
    out = {name: statistics.mean(tokens) / statistics.median(ts) for name, ts in times.items()}
    out.update(first_loss_llavakit=first[0], first_loss_transformers=first[1], tokens_per_step=statistics.mean(tokens),
               seconds_per_step={k: [round(t, 2) for t in v] for k, v in times.items()},
               paired_speedup_median=statistics.median(ratios))
    return out


def padding(data: dict[str, Path], tokenizer) -> dict:
    config = bench_config()
    ds = LlavaDataset(data["chats"], config=config, template=get_template("vicuna_v1"), tokenizer=tokenizer,
                      image_processor=image_processor_for(config), image_folder=data["images"])
    real = np.array([len(ds[i].sample.input_ids) for i in range(len(ds))])  # true lengths, to measure with
    out = {}
    for grouped in (False, True):
        plan = plan_epoch(len(ds), 128, 0, 0, lengths=ds.index.lengths, num_images=ds.index.num_images,
                          group_by_modality_length=grouped)
        micro = [mb for b in plan for mb in split_global_batch(b, 16, 1, 8, 0)]
        out["grouped" if grouped else "random"] = padding_fraction(micro, real)
    return out


def stage1(model_dir: Path, data: dict[str, Path], root: Path, records: int) -> dict:
    common = [f"model.init={model_dir}", f"data.path={data['captions']}", f"data.image_folder={data['images']}",
              "data.num_workers=0", "train.precision=fp32", "train.device=cpu", "train.gradient_checkpointing=false",
              "train.global_batch_size=16", "train.micro_batch_size=8", "output.progress=false",
              f"train.max_steps={records // 16}", "cache.dtype=float32", f"cache.dir={root / 'cache'}"]
    out = {}
    for name, extra in (("live", []), ("cache (first run: fills it)", ["cache.features=true"]),
                        ("cache (reused)", ["cache.features=true"])):
        t0 = time.perf_counter()
        summary = train(load_recipe("llava-v1.5-7b-pretrain", [*common, *extra, f"output.dir={root / str(len(out))}"]))
        out[name] = {"tokens_per_s": summary["tokens_per_second"], "loop_seconds": summary["seconds"],
                     "wall_seconds": time.perf_counter() - t0, "final_loss": summary["final_loss"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed training steps per implementation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stage1-records", type=int, default=48)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = build_llama_sp_tokenizer(root / "tok")
        data = write_data(root / "data", n_images=max(64, args.stage1_records), n_records=2000)
        model = LlavaModel(bench_config()).eval()
        n_params = sum(p.numel() for p in model.parameters())
        save_checkpoint(model, tokenizer, root / "model")
        export_llava_hf(model, None, root / "hf")
        del model
        results = {"parameters": n_params, "threads": args.threads, "load_average_before": os.getloadavg()}
        results["padding"] = padding(data, tokenizer)
        print("padding:", results["padding"], flush=True)
        results["step"] = step_speed(root / "model", root / "hf", data, tokenizer, args.steps)
        print("step:", results["step"], flush=True)
        results["stage1"] = stage1(root / "model", data, root / "runs", args.stage1_records)
        print("stage1:", results["stage1"], flush=True)
    results["load_average_after"] = os.getloadavg()
    s, st = results["step"], results["stage1"]
    print(f"\nmodel: {n_params / 1e6:.1f}M parameters, {args.threads} threads; load average "
          f"{results['load_average_before'][0]:.1f} before, {results['load_average_after'][0]:.1f} after")
    print(f"training step tokens/s: llavakit {s['llavakit']:.0f}, transformers {s['transformers']:.0f} "
          f"({s['llavakit'] / s['transformers']:.2f}x, paired median {s['paired_speedup_median']:.2f}x); first-step loss {s['first_loss_llavakit']:.5f} vs "
          f"{s['first_loss_transformers']:.5f}")
    print(f"padded tokens: random {100 * results['padding']['random']:.1f} %, grouped "
          f"{100 * results['padding']['grouped']:.1f} %")
    live, reused = st["live"]["tokens_per_s"], st["cache (reused)"]["tokens_per_s"]
    print(f"stage 1 tokens/s: live tower {live:.0f}, cached features {reused:.0f} ({reused / live:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
