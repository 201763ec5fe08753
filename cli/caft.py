"""`mow caft testbed`: the spurious-correlation testbed, plain fine-tuning vs CAFT vs random directions.

The testbed is imported when the command runs, not at parse time (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mow.cli.flags import add_run_flags
from mow.workbench.files import read_json


def cmd_caft_testbed(args: argparse.Namespace) -> None:
    from mow.finetune.spurious_testbed import TestbedLayout, load_testbed_config
    from mow.finetune.spurious_testbed import main as testbed_main

    config = load_testbed_config(args.config, args.set)
    final = testbed_main(config, restart=args.restart)
    layout = TestbedLayout(final)
    summary = read_json(layout.summary, "summary")
    for name, entry in summary["conditions"].items():
        print(f"{name:<8} in distribution {100 * entry['in_distribution_mean']:5.1f}%   out of distribution "
              f"{100 * entry['out_of_distribution_mean']:5.1f}%   (per seed: "
              f"{', '.join(f'{100 * v:.0f}%' for v in entry['out_of_distribution'])})")
    for name, target in summary["targets"].items():
        print(f"{name}: {100 * target['value']:+.1f} points (target {target['target']}): "
              f"{'met' if target['met'] else 'missed'}")
    print(f"report: {layout.report}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    caft = sub.add_parser("caft", help="concept-ablation fine-tuning experiments")
    caft_sub = caft.add_subparsers(dest="action", required=True)
    testbed = caft_sub.add_parser("testbed", help="spurious-correlation testbed: plain vs CAFT vs random directions")
    testbed.add_argument("config", type=Path, help="YAML config, e.g. configs/caft-spurious.yaml")
    add_run_flags(testbed)
    testbed.set_defaults(func=cmd_caft_testbed)
