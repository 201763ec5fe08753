"""`mow elicit`: the elicitation challenge against an organism's sealed secret.

The harness is imported when the command runs, not at parse time (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mow.cli.flags import add_run_flags
from mow.elicitation.layout import ChallengeLayout
from mow.workbench.errors import UserError


def cmd_elicit(args: argparse.Namespace) -> None:
    from mow.elicitation.config import load_challenge_config
    from mow.elicitation.harness import main as elicit_main
    from mow.elicitation.leaderboard import build, load_challenge, short_answer

    overrides = list(args.set)
    if args.methods is not None:
        names = [name.strip() for name in args.methods.split(",")]
        if not all(names):
            raise UserError(f"--methods {args.methods!r}: expected comma-separated method names, e.g. direct,prefill")
        overrides.append(f"methods={json.dumps(names)}")
    if args.diff is not None:
        overrides.append(f"diff_dir={args.diff}")
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    config = load_challenge_config(args.config, overrides)
    final = elicit_main(args.organism, config, restart=args.restart, config_path=args.config)
    print(short_answer(build([load_challenge(final)])))
    print(f"report: {ChallengeLayout(final).report}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    elicit = sub.add_parser("elicit", help="run the elicitation challenge against an organism's sealed secret")
    elicit.add_argument("organism", type=Path, help="an organism directory with a sealed truth")
    elicit.add_argument("--methods", help="comma-separated method names (default: all; see configs/challenge.yaml)")
    elicit.add_argument("--diff", type=Path, help="a finished `mow diff` of the organism (diff-based methods)")
    elicit.add_argument("--config", type=Path, help="YAML challenge config, e.g. configs/challenge.yaml")
    elicit.add_argument("--out", type=Path, help="parent of the challenge directory (default: runs/challenges)")
    add_run_flags(elicit)
    elicit.set_defaults(func=cmd_elicit)
