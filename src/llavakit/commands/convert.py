"""`llavakit convert`: any supported checkpoint to llavakit's format or to llava-hf."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a checkpoint (llavakit, llava-hf, original LLaVA, hub id) to llavakit or llava-hf format",
        description="Read a checkpoint in any supported format and write it as llavakit's format or as a "
        "transformers llava-hf folder (readable by transformers, vLLM and llama.cpp's converters).",
    )
    p.add_argument("source", help="checkpoint folder or hub id")
    p.add_argument("output", help="folder to write")
    p.add_argument("--to", choices=("llavakit", "llava-hf"), default="llavakit", help="output format")
    p.add_argument("--dtype", default="auto", help="weights dtype: auto (keep fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--vision-tower", help="override the original checkpoint's mm_vision_tower")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import llavakit

    model = llavakit.load(args.source, dtype=args.dtype, device="cpu", vision_tower=args.vision_tower)
    out = model.save(args.output) if args.to == "llavakit" else model.export_llava_hf(args.output)
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
