"""`llavakit merge ADAPTER_DIR --out DIR`: a LoRA adapter folder merged into a plain checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge a LoRA adapter folder (from llavakit train) into a plain llavakit checkpoint",
        description="Read a LoRA adapter folder written by `llavakit train` (peft's adapter files, the "
        "non-LoRA trainables and llavakit_adapter.json naming the base model), merge the adapters into "
        "the base weights and write a llavakit checkpoint.",
    )
    p.add_argument("adapter", help="the adapter folder")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--dtype", default="fp32", help="weights dtype of the result: fp32, bf16, fp16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llavakit.api import load_tokenizer
    from llavakit.checkpoints import build_model, save_checkpoint
    from llavakit.cli import UserError
    from llavakit.devices import resolve_dtype
    from llavakit.train.lora import is_adapter_dir, read_adapter_checkpoint

    if not is_adapter_dir(args.adapter):
        raise UserError(f"{args.adapter} is not a llavakit LoRA adapter folder (adapter_config.json and "
                        "llavakit_adapter.json expected)")
    checkpoint = read_adapter_checkpoint(args.adapter)
    model = build_model(checkpoint, resolve_dtype(args.dtype), "cpu")
    out = save_checkpoint(model, load_tokenizer(checkpoint.tokenizer_dir), args.out)
    print(f"merged {args.adapter} into {out}")
    return 0
