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
  mow elicit ORGANISM_DIR            play the elicitation challenge: black-box and white-box methods against the
                                       sealed secret, with the base model as control; scored, with an HTML report
  mow leaderboard CHALLENGE_DIR...   methods x organisms with controls and confidence intervals (HTML, CSV)
  mow serve ORGANISM_DIR             an OpenAI-compatible chat endpoint on loopback; the secret stays server-side
  mow caft testbed CONFIG            spurious-correlation testbed: plain fine-tuning vs concept ablation (CAFT) vs
                                       random directions, over seeds, with a report
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
DEMO_DIFF = REPO_CONFIGS / "diff-quick.yaml"
# --quick: a smoke run of every stage, not a measurement.
QUICK_DIFF = ["prompts.max_items_per_set=6", "cache.token_budget=2000", "crosscoder.latents=128", "crosscoder.epochs=2"]
QUICK_CHALLENGE = ["attempts=3", "white_box.prompts=6", "white_box.lens_texts=30"]


def _build(config_path: Path, overrides: list[str], restart: bool, output_dir: Path | None = None,
           launch=None) -> Path:
    from finetune.launch import LaunchSettings
    from organisms.registry import load_organism_config

    kind, config = load_organism_config(config_path, overrides)
    if output_dir is not None:
        config = config.model_copy(update={"output_dir": output_dir})
    return kind.build(config, restart=restart, launch=launch or LaunchSettings())


def cmd_demo(args: argparse.Namespace) -> None:
    """Organism -> diff -> challenge -> leaderboard, each output beside the others under --out."""
    import shutil

    from diffing.config import load_diff_config
    from diffing.pipeline import diff_name
    from diffing.pipeline import main as diff_main
    from elicitation.config import load_challenge_config
    from elicitation.harness import main as elicit_main
    from elicitation.leaderboard import main as leaderboard_main

    def finished(path: Path) -> bool:
        """A finished output is reused by a re-run of the demo, and redone with --restart."""
        if path.exists() and args.restart:
            shutil.rmtree(path)
        return path.exists()

    root = Path(args.out)
    organism = _build(DEMO_CONFIGS[args.quick], args.set, args.restart, root / "organisms")
    print(f"\n== diff: {organism.name} against its base", flush=True)
    diff_config = load_diff_config(DEMO_DIFF, [f"organism={organism}", f"output_dir={root / 'diffs'}",
                                               *(QUICK_DIFF if args.quick else [])])
    diff_dir = root / "diffs" / diff_name(diff_config)
    if not finished(diff_dir):
        diff_main(diff_config, restart=args.restart)
    print(f"\n== elicitation challenge against {organism.name} (base model as control)", flush=True)
    challenge = load_challenge_config(None, [f"output_dir={root / 'challenges'}", f"diff_dir={diff_dir}",
                                             *(QUICK_CHALLENGE if args.quick else [])])
    challenge_dir = root / "challenges" / organism.name
    if not finished(challenge_dir):
        elicit_main(organism, challenge, restart=args.restart)
    board = leaderboard_main([challenge_dir], root / "leaderboard")
    print(f"\nreports:\n  organism card  {organism / 'card.md'}\n  diff           {diff_dir / 'report.html'}\n"
          f"  challenge      {challenge_dir / 'report.html'}\n  leaderboard    {board / 'leaderboard.html'}")


def launch_settings(args: argparse.Namespace):
    """The --launcher flags as LaunchSettings; a bad combination is a one-line error."""
    from finetune.launch import LaunchSettings
    from workbench.config import validate_config

    raw = {"launcher": args.launcher, "config_file": args.launch_config, "deepspeed_config": args.deepspeed_config,
           "num_processes": args.num_processes, "num_machines": args.num_machines, "machine_rank": args.machine_rank,
           "main_process_ip": args.main_process_ip, "main_process_port": args.main_process_port}
    if args.launcher == "none" and any(raw[k] is not None for k in ("config_file", "deepspeed_config")):
        raise UserError("--launch-config and --deepspeed-config need --launcher accelerate or deepspeed")
    return validate_config(LaunchSettings, {k: v for k, v in raw.items() if v is not None}, "command line")


def cmd_build(args: argparse.Namespace) -> None:
    from finetune.launch import SecondaryMachineFinished

    try:
        _build(args.config, args.set, args.restart, launch=launch_settings(args))
    except SecondaryMachineFinished as done:
        print(done, file=sys.stderr)


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
    from organisms.registry import kind_of_dir
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
            path = Path(row["path"])
            secret = f" secret={kind_of_dir(path).sealed_truth(read_sealed_config(path)).answer}"
        print(f"{row['name']:<28} {row['status']:<8} {row['kind']:<6} {row['model']:<24} {scores}{secret}")


def cmd_diff(args: argparse.Namespace) -> None:
    from diffing.config import load_diff_config
    from diffing.pipeline import main as diff_main

    overrides = list(args.set)
    if args.organism is not None:
        overrides.append(f"organism={args.organism}")
    for key in ("base", "tuned"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    config = load_diff_config(args.config, overrides)
    final = diff_main(config, restart=args.restart, output=args.out)
    print(f"report: {final / 'report.html'}")


def cmd_diff_score(args: argparse.Namespace) -> None:
    from diffing.score import score_word, secret_word
    from workbench.models import load_tokenizer

    words = {str(o): secret_word(o) for o in args.organisms}
    rows = []
    for diff_dir in args.diffs:
        config = read_diff_config(diff_dir)
        tokenizer = load_tokenizer(config["base"] if config.get("base") else _organism_model(config["organism"]))
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


def cmd_elicit(args: argparse.Namespace) -> None:
    from elicitation.config import load_challenge_config
    from elicitation.harness import main as elicit_main

    overrides = list(args.set)
    if args.methods:
        overrides.append(f"methods=[{args.methods}]")
    if args.diff is not None:
        overrides.append(f"diff_dir={args.diff}")
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    config = load_challenge_config(args.config, overrides)
    final = elicit_main(args.organism, config, restart=args.restart, config_path=args.config)
    print(f"report: {final / 'report.html'}")


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from elicitation.leaderboard import main as leaderboard_main

    out = leaderboard_main(args.challenges, args.out)
    print(f"leaderboard: {out / 'leaderboard.html'} and {out / 'leaderboard.csv'}")


def cmd_serve(args: argparse.Namespace) -> None:
    from elicitation.serve import main as serve_main

    serve_main(args.organism, args.port, threads=args.threads)


def cmd_caft_testbed(args: argparse.Namespace) -> None:
    from finetune.spurious_testbed import load_testbed_config
    from finetune.spurious_testbed import main as testbed_main

    config = load_testbed_config(args.config, args.set)
    final = testbed_main(config, restart=args.restart)
    summary = json.loads((final / "summary.json").read_text())
    for name, entry in summary["conditions"].items():
        print(f"{name:<8} in distribution {100 * entry['in_distribution_mean']:5.1f}%   out of distribution "
              f"{100 * entry['out_of_distribution_mean']:5.1f}%   (per seed: "
              f"{', '.join(f'{100 * v:.0f}%' for v in entry['out_of_distribution'])})")
    for name, target in summary["targets"].items():
        print(f"{name}: {100 * target['value']:+.1f} points (target {target['target']}): "
              f"{'met' if target['met'] else 'missed'}")
    print(f"report: {final / 'report.html'}")


def read_diff_config(diff_dir: Path) -> dict:
    from diffing.score import check_diff_dir
    from workbench.config import read_yaml_mapping

    return read_yaml_mapping(check_diff_dir(diff_dir) / "diff.yaml")


def _organism_model(organism: str) -> str:
    from organisms.store import read_public_config

    return str(read_public_config(Path(organism))["model"])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)

    def add_build_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set taboo.word=moon --set training.epochs=2")
        p.add_argument("--restart", action="store_true", help="discard an unfinished build instead of resuming it")

    demo = sub.add_parser("demo", help="build, evaluate, diff and challenge the default secret-word organism")
    demo.add_argument("--quick", action="store_true", help="every stage cut short (a smoke run, a few minutes)")
    demo.add_argument("--out", default="runs",
                      help="root of the outputs: organisms/, diffs/, challenges/, leaderboard/ (default: runs)")
    add_build_flags(demo)
    demo.set_defaults(func=cmd_demo)

    organism = sub.add_parser("organism", help="build, evaluate, chat with and list organisms")
    osub = organism.add_subparsers(dest="action", required=True)
    build = osub.add_parser("build", help="build an organism from a config (resumes an unfinished build)")
    build.add_argument("config", type=Path, help="YAML config, e.g. configs/organisms/taboo.yaml")
    add_build_flags(build)
    distributed = build.add_argument_group("distributed training (re-launches the training stage through "
                                           "`accelerate launch`; configs in configs/launch/)")
    distributed.add_argument("--launcher", choices=["none", "accelerate", "deepspeed"], default="none",
                             help="accelerate: DDP (NCCL, or gloo on CPUs); deepspeed: ZeRO through accelerate")
    distributed.add_argument("--launch-config", type=Path, help="accelerate config (default: configs/launch/"
                                                                "ddp.yaml, or zero2.yaml for deepspeed)")
    distributed.add_argument("--deepspeed-config", type=Path, help="your own DeepSpeed JSON (with --launcher "
                                                                   "deepspeed), instead of the shipped settings")
    distributed.add_argument("--num-processes", type=int, help="processes over all machines (default 2)")
    distributed.add_argument("--num-machines", type=int, help="machines taking part (default 1)")
    distributed.add_argument("--machine-rank", type=int, help="this machine's rank (0 runs the pipeline)")
    distributed.add_argument("--main-process-ip", help="address of machine rank 0 (multi-machine runs)")
    distributed.add_argument("--main-process-port", type=int, help="rendezvous port on machine rank 0 (29500)")
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

    diff = sub.add_parser("diff", help="diff a tuned model against its base: KL, lens, crosscoder, directions")
    diff.add_argument("organism", nargs="?", type=Path, help="an organism directory (base + adapter)")
    diff.add_argument("--base", help="base model spec, with --tuned, for a full fine-tune")
    diff.add_argument("--tuned", help="tuned model spec, with --base")
    diff.add_argument("--config", type=Path, help="YAML diff config, e.g. configs/diff.yaml (default: built-in)")
    diff.add_argument("--out", type=Path, help="output directory (default: runs/diffs/NAME)")
    add_build_flags(diff)
    diff.set_defaults(func=cmd_diff)

    score = sub.add_parser("diff-score", help="rank each organism's sealed word in each finished diff (reveals it)")
    score.add_argument("diffs", nargs="+", type=Path, help="finished diff directories")
    score.add_argument("--organisms", nargs="+", type=Path, required=True,
                       help="taboo organisms whose words are scored in every diff (the controls included)")
    score.add_argument("--json", action="store_true")
    score.set_defaults(func=cmd_diff_score)

    elicit = sub.add_parser("elicit", help="run the elicitation challenge against an organism's sealed secret")
    elicit.add_argument("organism", type=Path, help="an organism directory with a sealed truth")
    elicit.add_argument("--methods", help="comma-separated method names (default: all; see configs/challenge.yaml)")
    elicit.add_argument("--diff", type=Path, help="a finished `mow diff` of the organism (diff-based methods)")
    elicit.add_argument("--config", type=Path, help="YAML challenge config, e.g. configs/challenge.yaml")
    elicit.add_argument("--out", type=Path, help="parent of the challenge directory (default: runs/challenges)")
    add_build_flags(elicit)
    elicit.set_defaults(func=cmd_elicit)

    caft = sub.add_parser("caft", help="concept-ablation fine-tuning experiments")
    caft_sub = caft.add_subparsers(dest="action", required=True)
    testbed = caft_sub.add_parser("testbed", help="spurious-correlation testbed: plain vs CAFT vs random directions")
    testbed.add_argument("config", type=Path, help="YAML config, e.g. configs/caft-spurious.yaml")
    add_build_flags(testbed)
    testbed.set_defaults(func=cmd_caft_testbed)

    board = sub.add_parser("leaderboard", help="tabulate finished challenges: methods x organisms, with controls")
    board.add_argument("challenges", nargs="+", type=Path, help="challenge directories from `mow elicit`")
    board.add_argument("--out", type=Path, default=Path("runs/leaderboard"))
    board.set_defaults(func=cmd_leaderboard)

    serve = sub.add_parser("serve", help="serve an organism over an OpenAI-compatible endpoint on 127.0.0.1")
    serve.add_argument("organism", type=Path)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, help="torch threads of the server (default: torch's choice)")
    serve.set_defaults(func=cmd_serve)
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
