"""Flags several commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def number_in(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], int | float]:
    """An argparse type: a finite number from `low` to `high`; argparse names the flag in its one-line error."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g} to {high:g}")
        return value

    return parse


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--set overrides and --restart, for every command that writes a run directory."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set taboo.word=moon --set training.epochs=2")
    p.add_argument("--restart", action="store_true",
                   help="start over: discard an unfinished output, and rebuild (replace) a finished one")
