"""`mow audit`: an investigator agent (any OpenAI-compatible endpoint with tool calling) against an organism's
sealed secret. The pipeline is imported when the command runs (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mow.cli.flags import add_run_flags


def cmd_audit(args: argparse.Namespace) -> None:
    from mow.elicitation.audit import main as audit_main
    from mow.elicitation.audit import summary_line
    from mow.elicitation.audit_config import load_audit_config
    from mow.elicitation.layout import AuditLayout
    from mow.workbench.files import read_json

    overrides = list(args.set)
    if args.diff is not None:
        overrides.append(f"diff_dir={args.diff}")
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    config = load_audit_config(args.config, overrides)
    final = audit_main(args.organism, config, restart=args.restart, config_path=args.config)
    scores = read_json(AuditLayout(final).scores, "audit scores")
    print(f"{summary_line(scores)}\nreport: {AuditLayout(final).report}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="an investigator agent (OpenAI-compatible endpoint with tool calling) "
                                         "against an organism's sealed secret")
    audit.add_argument("organism", type=Path, help="an organism directory with a sealed truth")
    audit.add_argument("--diff", type=Path, help="a finished `mow diff` of the organism (the diff tools)")
    audit.add_argument("--config", type=Path, help="YAML audit config, e.g. configs/audit.yaml")
    audit.add_argument("--out", type=Path, help="parent of the audit directory (default: runs/audits)")
    add_run_flags(audit)
    audit.set_defaults(func=cmd_audit)
