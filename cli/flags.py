"""Flags several commands share."""

from __future__ import annotations

import argparse


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--set overrides and --restart, for every command that writes a run directory."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set taboo.word=moon --set training.epochs=2")
    p.add_argument("--restart", action="store_true",
                   help="start over: discard an unfinished output, and rebuild (replace) a finished one")
