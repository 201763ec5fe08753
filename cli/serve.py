"""`mow serve`: an organism behind an OpenAI-compatible endpoint on loopback; the secret stays server-side.

The server is imported when the command runs, not at parse time (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mow.cli.flags import number_in


def cmd_serve(args: argparse.Namespace) -> None:
    from mow.elicitation.serve import main as serve_main

    serve_main(args.organism, args.port, threads=args.threads)


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve an organism over an OpenAI-compatible endpoint on 127.0.0.1")
    serve.add_argument("organism", type=Path)
    serve.add_argument("--port", type=number_in(int, 1, 65535), default=8000)
    serve.add_argument("--threads", type=number_in(int, 1, 1024),
                       help="torch threads of the server (default: torch's choice)")
    serve.set_defaults(func=cmd_serve)
