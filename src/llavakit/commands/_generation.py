"""Options and helpers shared by the generating commands (chat, ask, batch)."""

from __future__ import annotations

import argparse


def add_model_options(p: argparse.ArgumentParser, *, model_required: bool = False) -> None:
    p.add_argument("--model", required=model_required,
                   help="checkpoint folder or hub id (llavakit, llava-hf or original LLaVA format)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--quantize", choices=("int8", "nf4", "fp4"),
                   help="int8: weight int8 on CPU (fp32 activations) or bitsandbytes 8-bit on CUDA; "
                   "nf4/fp4: bitsandbytes 4-bit (CUDA)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default 0: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    p.add_argument("--seed", type=int, help="seed for sampling (reproducible answers)")


def sampling_options(args: argparse.Namespace) -> dict:
    """SamplingParams keyword arguments from the parsed options."""
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "repetition_penalty": args.repetition_penalty, "seed": args.seed}


def check_sampling_options(args: argparse.Namespace) -> None:
    """Fail before the (slow) model load on options SamplingParams would refuse."""
    from llavakit.cli import UserError
    from llavakit.engine import SamplingParams

    try:
        SamplingParams(**sampling_options(args))
    except ValueError as err:
        raise UserError(str(err)) from None


def load_engine(args: argparse.Namespace, **engine_options):
    """The engine for --model (or the default model) with the dtype/device/quantize options."""
    import torch

    from llavakit.cli import UserError
    from llavakit.defaults import default_model_reference
    from llavakit.engine import Engine, QuantizationError

    if args.threads:
        torch.set_num_threads(args.threads)
    reference = args.model or default_model_reference()
    try:
        return Engine.load(reference, dtype=args.dtype, device=args.device, quantize=args.quantize,
                           **engine_options)
    except (QuantizationError, ValueError) as err:
        raise UserError(str(err)) from None


def load_images(paths: list[str]) -> list:
    """Decoded images (PIL); raises ImageError naming the first bad path."""
    from llavakit.images import load_image

    return [load_image(p) for p in paths]
