"""`mow`: the command line of the model-organism workbench.

  mow demo [--quick]                 build the default secret-word organism on the embedded model, evaluate it,
                                       diff it against its base, play the elicitation challenge, tabulate it
  mow organism build CONFIG          build an organism from a YAML config (--set key=value to override)
  mow organism eval DIR              re-run an organism's evaluation
  mow organism chat DIR              talk to an organism in the terminal
  mow organism list [ROOT]           list built organisms
  mow diff ORGANISM_DIR              what did fine-tuning change: per-token KL, activation-difference lens,
  mow diff --base SPEC --tuned SPEC    crosscoder, concept directions, in one HTML report (+ the arrays)
  mow diff-score DIFF_DIR... --organisms DIR...   ranks of each organism's sealed word in each diff's readouts
  mow realism CONFIG --ratios R...   the organism at several mix ratios of ordinary data, each built and diffed,
                                       with its trace (KL, steering, the word's ranks) plotted against the ratio
  mow elicit ORGANISM_DIR            play the elicitation challenge: black-box and white-box methods against the
                                       sealed secret, with the base model as control; scored, with an HTML report
  mow leaderboard CHALLENGE_DIR...   methods (and audit agents) x organisms with controls and confidence intervals
  mow audit ORGANISM_DIR             an investigator agent (an OpenAI-compatible endpoint with tool calling)
                                       questions the organism within budgets, then is scored against the secret
  mow serve ORGANISM_DIR             an OpenAI-compatible chat endpoint on loopback; the secret stays server-side
  mow caft testbed CONFIG            spurious-correlation testbed: plain fine-tuning vs concept ablation (CAFT) vs
                                       random directions, over seeds, with a report

Re-running a command resumes its unfinished output, reports a finished one as done, and rebuilds it with --restart.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from mow.cli import audit, caft, demo, diff, diff_score, elicit, leaderboard, organism, realism, serve
from mow.workbench.errors import EndpointError, RunFailed, UserError

COMMANDS = (demo, organism, diff, diff_score, realism, elicit, leaderboard, audit, serve, caft)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported the way every other bad input is: one line, exit status 2 (argparse
    prints the whole usage first). Sub-command parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mow: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(prog="mow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad flag (already reported in one line): its status, returned
        return exc.code if isinstance(exc.code, int) else 2
    try:
        args.func(args)
    except (UserError, EndpointError, RunFailed) as exc:
        print(f"mow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mow: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
