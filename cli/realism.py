"""`mow realism`: one organism at several mix ratios of ordinary data, each built and diffed, the traces plotted.

The pipelines are imported when the command runs, not at parse time (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mow.cli.flags import add_run_flags, number_in
from mow.workbench.config import shipped_config


def cmd_realism(args: argparse.Namespace) -> None:
    from mow.elicitation.realism import main

    diff_config = args.diff_config or shipped_config("diff-quick.yaml")
    final = main(args.config, args.ratios, diff_config, Path(args.out), args.set, args.restart)
    print(f"traces by ratio: {final / 'realism.json'}\nplot: {final / 'realism.png'}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    realism = sub.add_parser("realism", help="build and diff an organism at several mix ratios of ordinary data and "
                                             "plot how strong its trace stays (reads the sealed word afterwards)")
    realism.add_argument("config", type=Path, help="an organism config of a kind with a mix ratio (taboo, sdf, em)")
    realism.add_argument("--ratios", nargs="+", type=number_in(float, 0, 1000), required=True,
                         help="values of the kind's mix ratio, e.g. 0 0.5 1 2")
    realism.add_argument("--diff-config", type=Path, help="diff config (default: the shipped diff-quick.yaml)")
    realism.add_argument("--out", default="runs",
                         help="root of the outputs: organisms/, diffs/, realism/ (default: runs)")
    add_run_flags(realism)
    realism.set_defaults(func=cmd_realism)
