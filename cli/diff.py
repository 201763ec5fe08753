"""`mow diff`: what fine-tuning changed, from an organism directory or a base/tuned pair of model specs.

The pipeline is imported when the command runs, not at parse time (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mow.cli.flags import add_run_flags
from mow.diffing.layout import DiffLayout


def cmd_diff(args: argparse.Namespace) -> None:
    from mow.diffing.config import load_diff_config
    from mow.diffing.pipeline import main as diff_main

    overrides = list(args.set)
    if args.organism is not None:
        overrides.append(f"organism={args.organism}")
    for key in ("base", "tuned"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    config = load_diff_config(args.config, overrides)
    final = diff_main(config, restart=args.restart, output=args.out)
    print(f"report: {DiffLayout(final).report}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    diff = sub.add_parser("diff", help="diff a tuned model against its base: KL, lens, crosscoder, directions")
    diff.add_argument("organism", nargs="?", type=Path, help="an organism directory (base + adapter)")
    diff.add_argument("--base", help="base model spec, with --tuned, for a full fine-tune")
    diff.add_argument("--tuned", help="tuned model spec, with --base")
    diff.add_argument("--config", type=Path, help="YAML diff config, e.g. configs/diff.yaml (default: built-in)")
    diff.add_argument("--out", type=Path, help="output directory (default: runs/diffs/NAME)")
    add_run_flags(diff)
    diff.set_defaults(func=cmd_diff)
