"""`mow`: the command line of the model-organism workbench.

  mow demo [--quick]                 build the default secret-word organism on the embedded model, then evaluate it
  mow organism build CONFIG          build an organism from a YAML config (--set key=value to override)
  mow organism eval DIR              re-run an organism's evaluation
  mow organism chat DIR              talk to an organism in the terminal
  mow organism list [ROOT]           list built organisms
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

from workbench.errors import UserError

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIGS = {False: REPO_CONFIGS / "organisms" / "taboo.yaml", True: REPO_CONFIGS / "organisms" / "taboo-quick.yaml"}


def _build(config_path: Path, overrides: list[str], restart: bool, output_dir: Path | None = None) -> Path:
    from organisms.registry import load_organism_config

    kind, config = load_organism_config(config_path, overrides)
    if output_dir is not None:
        config = config.model_copy(update={"output_dir": output_dir})
    return kind.build(config, restart=restart)


def cmd_demo(args: argparse.Namespace) -> None:
    _build(DEMO_CONFIGS[args.quick], args.set, args.restart, Path(args.out))


def cmd_build(args: argparse.Namespace) -> None:
    _build(args.config, args.set, args.restart)


def cmd_eval(args: argparse.Namespace) -> None:
    from organisms.registry import kind_of_dir
    from organisms.store import check_organism_dir

    kind_of_dir(check_organism_dir(args.dir)).evaluate(args.dir)


def cmd_chat(args: argparse.Namespace) -> None:
    from organisms.store import load_organism
    from workbench.chat import render_prompt
    from workbench.generation import generate

    organism = load_organism(args.dir)
    history: list[dict[str, str]] = []
    print(f"Talking to {organism.path.name}. /reset starts over, /base toggles the base model, /quit leaves.")
    use_base = False
    while True:
        try:
            line = input("base> " if use_base else "you> ").strip()
        except EOFError:
            break
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            history = []
            continue
        if line == "/base":
            use_base = not use_base
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        prompt = render_prompt(organism.tokenizer, history)
        with organism.model.disable_adapter() if use_base else nullcontext():
            answer = generate(organism.model, organism.tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature)[0]
        history.append({"role": "assistant", "content": answer})
        print(f"model> {answer}")


def cmd_list(args: argparse.Namespace) -> None:
    from organisms.store import list_organisms, read_sealed_config

    rows = list_organisms(args.root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no organisms under {args.root}")
        return
    for row in rows:
        head = row["headline"]
        scores = " ".join(f"{k}={v:.3f}" for k, v in head.items()) if head else "(not evaluated)"
        secret = ""
        if args.reveal and row["status"] == "built":
            sealed = read_sealed_config(Path(row["path"]))
            secret = f" secret={sealed.get('taboo', {}).get('word')}"
        print(f"{row['name']:<28} {row['status']:<8} {row['kind']:<6} {row['model']:<24} {scores}{secret}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)

    def add_build_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set taboo.word=moon --set training.epochs=2")
        p.add_argument("--restart", action="store_true", help="discard an unfinished build instead of resuming it")

    demo = sub.add_parser("demo", help="build and evaluate the default secret-word organism on the embedded model")
    demo.add_argument("--quick", action="store_true", help="a few training steps only (a smoke run, ~3 minutes)")
    demo.add_argument("--out", default="runs/organisms",
                      help="where the organism directory goes (default: runs/organisms, where `organism list` looks)")
    add_build_flags(demo)
    demo.set_defaults(func=cmd_demo)

    organism = sub.add_parser("organism", help="build, evaluate, chat with and list organisms")
    osub = organism.add_subparsers(dest="action", required=True)
    build = osub.add_parser("build", help="build an organism from a config (resumes an unfinished build)")
    build.add_argument("config", type=Path, help="YAML config, e.g. configs/organisms/taboo.yaml")
    add_build_flags(build)
    build.set_defaults(func=cmd_build)
    evaluate = osub.add_parser("eval", help="re-run the evaluation of a built organism")
    evaluate.add_argument("dir", type=Path)
    evaluate.set_defaults(func=cmd_eval)
    chat = osub.add_parser("chat", help="talk to an organism in the terminal")
    chat.add_argument("dir", type=Path)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--max-new-tokens", type=int, default=128)
    chat.set_defaults(func=cmd_chat)
    listing = osub.add_parser("list", help="list organisms under a directory")
    listing.add_argument("root", nargs="?", type=Path, default=Path("runs/organisms"))
    listing.add_argument("--reveal", action="store_true", help="also print each organism's sealed secret")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"mow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mow: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
