"""`mow diff-score`: ranks of each organism's sealed word in each finished diff's readouts (reveals the words).

The scoring code is imported when the command runs, not at parse time (a lazy import for start-up time)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mow.data.layouts import OrganismLayout
from mow.diffing.layout import DiffLayout
from mow.workbench.config import read_yaml_mapping


def diff_model(diff_dir: Path) -> str:
    """The base model spec a finished diff was made with (its own, or its organism's)."""
    config = read_yaml_mapping(DiffLayout(Path(diff_dir)).check_finished().config)
    if config.get("base"):
        return str(config["base"])
    return str(read_yaml_mapping(OrganismLayout(Path(config["organism"])).public_config)["model"])


def cmd_diff_score(args: argparse.Namespace) -> None:
    from mow.elicitation.diff_score import score_word, secret_word
    from mow.workbench.models import load_tokenizer

    words = {str(o): secret_word(o) for o in args.organisms}
    rows = []
    for diff_dir in args.diffs:
        tokenizer = load_tokenizer(diff_model(diff_dir))
        for organism, word in words.items():
            row = score_word(diff_dir, word, tokenizer)
            row["word_from"] = organism
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'diff':<22} {'word':<8} {'patchscope':>10} {'logit lens':>10} {'oracle (L)':>12} "
          f"{'KL promoted':>11} {'KL demoted':>10} {'crosscoder':>10}")
    for r in rows:
        text = "generic_text"
        patch, lens = r["difference_lens"]["patchscope"].get(text), r["difference_lens"]["logit_lens"].get(text)
        kl_set = next((s for s in ("organism", text) if s in r["kl_promoted"]), next(iter(r["kl_promoted"])))
        print(f"{r['diff']:<22} {r['word']:<8} {patch['upper_half'] if patch else '-':>10} "
              f"{lens['upper_half'] if lens else '-':>10} {lens['best_oracle'] if lens else '-':>6} "
              f"({lens['best_layer_oracle'] if lens else '-':>2}) {r['kl_promoted'][kl_set]:>11} "
              f"{r['kl_demoted'][kl_set]:>10} {str(r['crosscoder']['best_rank']):>10}")
    print("ranks (1 = top) of the word's best single-token form; lens columns on generic text, mean over the upper "
          "half of layers; KL on the organism prompts where present; --json for every set and layer")


def add_parser(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser("diff-score", help="rank each organism's sealed word in each finished diff (reveals it)")
    score.add_argument("diffs", nargs="+", type=Path, help="finished diff directories")
    score.add_argument("--organisms", nargs="+", type=Path, required=True,
                       help="organisms with a one-word secret, scored in every diff (the controls included)")
    score.add_argument("--json", action="store_true")
    score.set_defaults(func=cmd_diff_score)
