"""`mow demo`: organism -> diff -> challenge -> leaderboard on the embedded model, each output beside the others.

Pipelines are imported when the command runs, not at parse time (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mow.cli.flags import add_run_flags
from mow.cli.organism import build
from mow.data.layouts import OrganismLayout
from mow.diffing.layout import DiffLayout
from mow.elicitation.layout import ChallengeLayout
from mow.workbench.config import shipped_config

DEMO_ORGANISM = {False: "organisms/taboo.yaml", True: "organisms/taboo-quick.yaml"}
DEMO_DIFF = "diff-quick.yaml"
# --quick: a smoke run of every stage, not a measurement.
QUICK_DIFF = ["prompts.max_items_per_set=6", "cache.token_budget=2000", "crosscoder.latents=128", "crosscoder.epochs=2"]
QUICK_CHALLENGE = ["attempts=3", "white_box.prompts=6", "white_box.lens_texts=30"]


def cmd_demo(args: argparse.Namespace) -> None:
    """Each stage follows the run-directory rule: a re-run reuses what finished, --restart rebuilds every stage."""
    from mow.diffing.config import load_diff_config
    from mow.diffing.pipeline import main as diff_main
    from mow.elicitation.config import load_challenge_config
    from mow.elicitation.harness import main as elicit_main
    from mow.elicitation.leaderboard import SHORT_ANSWER
    from mow.elicitation.leaderboard import main as leaderboard_main

    root = Path(args.out)
    organism = build(shipped_config(DEMO_ORGANISM[args.quick]), args.set, args.restart, root / "organisms")
    print(f"\n== diff: {organism.name} against its base", flush=True)
    diff_config = load_diff_config(shipped_config(DEMO_DIFF), [f"organism={organism}",
                                                               f"output_dir={root / 'diffs'}",
                                                               *(QUICK_DIFF if args.quick else [])])
    diff_dir = diff_main(diff_config, restart=args.restart)
    print(f"\n== elicitation challenge against {organism.name} (base model as control)", flush=True)
    challenge = load_challenge_config(None, [f"output_dir={root / 'challenges'}", f"diff_dir={diff_dir}",
                                             *(QUICK_CHALLENGE if args.quick else [])])
    challenge_dir = elicit_main(organism, challenge, restart=args.restart)
    board = leaderboard_main([challenge_dir], root / "leaderboard")
    print("\n== which methods recovered the secret\n" + (board / SHORT_ANSWER).read_text(), end="")
    print(f"\nreports:\n  organism card  {OrganismLayout(organism).card}\n"
          f"  diff           {DiffLayout(diff_dir).report}\n"
          f"  challenge      {ChallengeLayout(challenge_dir).report}\n"
          f"  leaderboard    {board / 'leaderboard.html'}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="build, evaluate, diff and challenge the default secret-word organism")
    demo.add_argument("--quick", action="store_true", help="every stage cut short (a smoke run, a few minutes)")
    demo.add_argument("--out", default="runs",
                      help="root of the outputs: organisms/, diffs/, challenges/, leaderboard/ (default: runs)")
    add_run_flags(demo)
    demo.set_defaults(func=cmd_demo)
