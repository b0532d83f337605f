"""`python -m llavakit.world OUT_DIR [--budget full|tiny] [--seed N]`: pretrain the backbones."""

from __future__ import annotations

import argparse
import json

from llavakit.world.backbones import BUDGETS, pretrain_backbones


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llavakit.world", description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    paths = pretrain_backbones(args.out_dir, args.seed, args.budget, progress=not args.quiet,
                               num_threads=args.threads)
    report = json.loads(paths.report.read_text())
    summary = {k: report[k] for k in ("timings_s", "tokenizer")}
    summary["vision"] = {k: v for k, v in report["vision"].items() if k != "config"}
    summary["language"] = {k: v for k, v in report["language"].items() if k != "config"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
