"""`mow leaderboard`: methods x organisms from finished challenges and audits, with controls and intervals.

The leaderboard (matplotlib) is imported when the command runs, not at parse time (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from mow.elicitation.leaderboard import SHORT_ANSWER
    from mow.elicitation.leaderboard import main as leaderboard_main

    out = leaderboard_main(args.challenges, args.out)
    print((out / SHORT_ANSWER).read_text(), end="")
    print(f"leaderboard: {out / 'leaderboard.html'} and {out / 'leaderboard.csv'}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    board = sub.add_parser("leaderboard",
                           help="tabulate finished challenges and audits: methods x organisms, with controls")
    board.add_argument("challenges", nargs="+", type=Path,
                       help="challenge directories from `mow elicit` and audit directories from `mow audit`")
    board.add_argument("--out", type=Path, default=Path("runs/leaderboard"))
    board.set_defaults(func=cmd_leaderboard)
