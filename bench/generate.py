"""Generation speed: llavakit's engine against transformers' LlavaForConditionalGeneration.

Both run the same random weights in one process: a LLaVA-shaped model of about 110M parameters
(by default a ViT-S/16 at 224 px and a 10-layer, 640-wide Llama with a 32000 vocabulary) is built
in transformers, saved with save_pretrained and loaded by llavakit from that folder. Decoding is
greedy with a fixed number of new tokens (no EOS), and the token ids of both are compared.

Measured per dtype: time to first token with one image, decode tokens/s at batch 1, and total
tokens/s for R requests (llavakit batched and continuous, transformers one after another); plus
the memory-bandwidth bound for decode: weight bytes read per token against the machine's copy
bandwidth (a large tensor copy, counting the bytes read and written).

    python bench/generate.py                 # fp32, bf16 and int8 at the sizes of docs/benchmarks.md
    python bench/generate.py --dtypes fp32 --new-tokens 16 --requests 8 --reps 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", default="fp32,bf16,int8",
                   help="comma-separated: fp32, bf16, int8 (llavakit int8 against transformers fp32)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per request")
    p.add_argument("--requests", type=int, default=16, help="requests in the throughput test")
    p.add_argument("--reps", type=int, default=3, help="rounds of the batch-1 tests (best of)")
    p.add_argument("--many-reps", type=int, default=2, help="rounds of the many-requests test (best of)")
    p.add_argument("--prompt-text", type=int, default=48, help="text tokens around the image in a prompt")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--vision-width", type=int, default=384)
    p.add_argument("--vision-layers", type=int, default=12)
    p.add_argument("--vision-heads", type=int, default=6)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--text-width", type=int, default=640)
    p.add_argument("--text-layers", type=int, default=10)
    p.add_argument("--text-heads", type=int, default=10)
    p.add_argument("--text-ffn", type=int, default=1728)
    p.add_argument("--vocab", type=int, default=32000)
    return p.parse_args(argv)


def build_hf_model(args: argparse.Namespace, directory: Path):
    """Random transformers LLaVA saved (with a word-level tokenizer) to `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    image_token = args.vocab - 1  # a real vocabulary entry, as in llava-hf
    vision = CLIPVisionConfig(hidden_size=args.vision_width, intermediate_size=4 * args.vision_width,
                              num_hidden_layers=args.vision_layers, num_attention_heads=args.vision_heads,
                              image_size=args.image_size, patch_size=args.patch)
    text = LlamaConfig(vocab_size=args.vocab, hidden_size=args.text_width, intermediate_size=args.text_ffn,
                       num_hidden_layers=args.text_layers, num_attention_heads=args.text_heads,
                       num_key_value_heads=args.text_heads, max_position_embeddings=2048,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                         image_seq_length=(args.image_size // args.patch) ** 2)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, image_token)}, "<image>": image_token}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<unk>").save_pretrained(directory)
    return model


def copy_bandwidth(megabytes: int = 512) -> float:
    """Bytes moved per second (read + written) by a large tensor copy."""
    a = torch.ones(megabytes * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t)
    return 2 * a.numel() * 4 / min(times)


def decode_weight_bytes(llava, int8: bool = False) -> int:
    """Bytes of the weights one decode step reads: the decoder layers, final norm and head
    (call before quantizing; with `int8` the linear weights count one byte each)."""
    lm = llava.model.language_model
    linears = {id(m.weight) for m in lm.modules() if isinstance(m, torch.nn.Linear)}
    tensors = [*lm.model.layers.parameters(), *lm.model.norm.parameters(), lm.lm_head.weight]
    return sum(t.numel() * (1 if int8 and id(t) in linears else t.element_size()) for t in tensors)


def prompts(args, count: int, image_token: int, tokens_per_image: int) -> list[torch.Tensor]:
    """Prompts of slightly different lengths: BOS, text, one image, text."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(count):
        before = torch.randint(3, image_token, (args.prompt_text // 2 + i % 5,), generator=g)
        after = torch.randint(3, image_token, (args.prompt_text // 2 + (3 * i) % 7,), generator=g)
        out.append(torch.cat([torch.tensor([1]), before, torch.full((tokens_per_image,), image_token), after]))
    return out


def best_of(fns: dict, reps: int, warm_up: bool = True) -> tuple[dict, dict]:
    """Best (minimum) time of each function over `reps` rounds, run interleaved after a warm-up,
    so that a burst of load from elsewhere on the machine hits all of them alike."""
    for fn in fns.values() if warm_up else ():
        fn()
    times = {name: float("inf") for name in fns}
    results = {}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            results[name] = fn()
            times[name] = min(times[name], time.perf_counter() - t)
    return times, results


def run_dtype(args, name: str, hf_fp32, directory: Path) -> dict:
    import llavakit
    from llavakit.engine import Engine, Request, SamplingParams, quantize_model

    # int8: llavakit's weight-int8 option against transformers in fp32 (its usual CPU setting).
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}[name]
    hf = hf_fp32.to(dtype)
    hf.generation_config.eos_token_id = None  # a fixed number of new tokens
    hf.generation_config.pad_token_id = 0
    ours = llavakit.load(directory, dtype="fp32" if name == "int8" else name, device="cpu")
    weight_bytes = decode_weight_bytes(ours, int8=name == "int8")
    if name == "int8":
        quantize_model(ours.model, "int8")
    engine = Engine(ours, max_batch_size=args.requests, max_queue=4 * args.requests, feature_cache_size=0)
    cfg = ours.config
    ids = prompts(args, args.requests, cfg.image_token_id, cfg.tokens_per_image)
    g = torch.Generator().manual_seed(2)
    pixels = [torch.randn(1, 3, args.image_size, args.image_size, generator=g) for _ in ids]
    n = args.new_tokens

    def hf_run(i: int, new: int) -> list[int]:
        out = hf.generate(input_ids=ids[i][None], pixel_values=pixels[i].to(dtype),
                          attention_mask=torch.ones(1, len(ids[i]), dtype=torch.long),
                          max_new_tokens=new, do_sample=False)
        return out[0, len(ids[i]):].tolist()

    def req(i: int, new: int) -> Request:
        return Request(input_ids=ids[i].tolist(), pixel_values=pixels[i],
                       params=SamplingParams(max_new_tokens=new, ignore_eos=True))

    def ours_run(i: int, new: int) -> list[int]:
        return engine.generate([req(i, new)])[0].token_ids

    row: dict = {"dtype": name}
    with torch.inference_mode():
        times, out = best_of({
            "hf_ttft": lambda: hf_run(0, 1), "ours_ttft": lambda: ours_run(0, 1),
            "hf_full": lambda: hf_run(0, n), "ours_full": lambda: ours_run(0, n),
        }, args.reps)
        row.update(times)
        row["hf_decode"] = (n - 1) / (times["hf_full"] - times["hf_ttft"])
        row["ours_decode"] = (n - 1) / (times["ours_full"] - times["ours_ttft"])
        row["agree_b1"] = _agreement(out["hf_full"], out["ours_full"])
        times, out = best_of({
            "hf_many": lambda: [hf_run(i, n) for i in range(len(ids))],
            "ours_many": lambda: [r.token_ids for r in engine.generate([req(i, n) for i in range(len(ids))])],
        }, args.many_reps, warm_up=False)  # warm from the batch-1 tests
        row["hf_many"] = len(ids) * n / times["hf_many"]
        row["ours_many"] = len(ids) * n / times["ours_many"]
        row["agree_many"] = statistics.mean(_agreement(a, b) for a, b in zip(out["hf_many"], out["ours_many"]))
    engine.close()
    row["weight_mb"] = weight_bytes / 1e6
    return row


def _agreement(a: list[int], b: list[int]) -> float:
    """Fraction of tokens equal up to the first difference (greedy outputs diverge after one)."""
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b), 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    bandwidth = copy_bandwidth()
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_hf_model(args, Path(tmp))
        params = sum(p.numel() for p in hf.parameters())
        print(f"model: {params / 1e6:.1f}M parameters; torch {torch.__version__}, {args.threads} threads; "
              f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read+write)", flush=True)
        rows = [run_dtype(args, name, hf, Path(tmp)) for name in args.dtypes.split(",")]
    print()
    print(f"| dtype | TTFT ms (llavakit / transformers, ratio) | decode tok/s b=1 (llavakit / transformers, ratio) "
          f"| bandwidth bound tok/s (llavakit share) | {args.requests} requests tok/s (llavakit batched / "
          "transformers sequential, ratio) | tokens agreeing (b=1, many) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        bound = bandwidth / (r["weight_mb"] * 1e6)
        print(f"| {r['dtype']} | {r['ours_ttft'] * 1e3:.0f} / {r['hf_ttft'] * 1e3:.0f} "
              f"({r['hf_ttft'] / r['ours_ttft']:.2f}x) "
              f"| {r['ours_decode']:.1f} / {r['hf_decode']:.1f} ({r['ours_decode'] / r['hf_decode']:.2f}x) "
              f"| {bound:.1f} ({100 * r['ours_decode'] / bound:.0f} %) "
              f"| {r['ours_many']:.1f} / {r['hf_many']:.1f} ({r['ours_many'] / r['hf_many']:.2f}x) "
              f"| {100 * r['agree_b1']:.0f} %, {100 * r['agree_many']:.0f} % |")
    print("\nweights read per decode token: " + ", ".join(f"{r['dtype']} {r['weight_mb']:.0f} MB" for r in rows))
    print(f"total time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
