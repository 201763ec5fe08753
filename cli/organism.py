"""`mow organism build|eval|chat|list`.

Pipelines are imported inside the command functions, when the command runs: `mow --help` imports no torch (a lazy
import for start-up time)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mow.cli.flags import add_run_flags, number_in
from mow.finetune.config import LaunchSettings
from mow.workbench.config import validate_config
from mow.workbench.errors import UserError


def build(config_path: Path, overrides: list[str], restart: bool, output_dir: Path | None = None,
          launch: LaunchSettings | None = None) -> Path:
    """Validate an organism config and run its kind's pipeline; returns the organism directory."""
    from mow.organisms.kinds import build_organism

    return build_organism(config_path, overrides, restart, output_dir, launch)


def launch_settings(args: argparse.Namespace) -> LaunchSettings:
    """The --launcher flags as LaunchSettings; a bad combination is a one-line error."""
    raw = {"launcher": args.launcher, "config_file": args.launch_config, "deepspeed_config": args.deepspeed_config,
           "num_processes": args.num_processes, "num_machines": args.num_machines, "machine_rank": args.machine_rank,
           "main_process_ip": args.main_process_ip, "main_process_port": args.main_process_port}
    if args.launcher == "none" and any(raw[k] is not None for k in ("config_file", "deepspeed_config")):
        raise UserError("--launch-config and --deepspeed-config need --launcher accelerate or deepspeed")
    return validate_config(LaunchSettings, {k: v for k, v in raw.items() if v is not None}, "command line")


def print_plan(config_path: Path, overrides: list[str], launch: LaunchSettings) -> None:
    """--plan: the figures of `mow.finetune.plan`, from the config and the model's config.json; nothing is written."""
    from mow.finetune.plan import plan, render
    from mow.organisms.kinds import load_organism_config

    _, config = load_organism_config(config_path, overrides)
    if getattr(config, "endpoint", None) is not None:
        raise UserError(f"--plan: {config_path} is an organism on an endpoint: nothing is loaded or trained here, so "
                        "there is nothing to plan")
    figures = plan(config.model, config.lora, config.training, launch, config.planned_examples(), config.load_in_4bit,
                   config.trust_remote_code)
    print(render(config.model, figures))


def cmd_build(args: argparse.Namespace) -> None:
    from mow.finetune.launch import SecondaryMachineFinished

    if args.plan:
        print_plan(args.config, args.set, launch_settings(args))
        return
    try:
        build(args.config, args.set, args.restart, launch=launch_settings(args))
    except SecondaryMachineFinished as done:
        print(done, file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> None:
    from mow.organisms.kinds import kind_of_dir
    from mow.organisms.store import check_organism_dir

    kind_of_dir(check_organism_dir(args.dir, needs_weights=False)).evaluate(args.dir)


def cmd_chat(args: argparse.Namespace) -> None:
    from mow.finetune.lora import amplified
    from mow.organisms.store import load_organism
    from mow.workbench.chat import render_prompt
    from mow.workbench.generation import generate

    organism = load_organism(args.dir)
    history: list[dict[str, str]] = []
    amplification = "" if args.amplify == 1 else f" at {args.amplify:g}x its weight change"
    print(f"Talking to {organism.path.name}{amplification}. /reset starts over, /base toggles the base model, "
          "/quit leaves.")
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
        with organism.model.disable_adapter() if use_base else amplified(organism.model, args.amplify):
            answer = generate(organism.model, organism.tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature)[0]
        history.append({"role": "assistant", "content": answer})
        print(f"model> {answer}")


def cmd_list(args: argparse.Namespace) -> None:
    from mow.organisms.kinds import kind_of_dir
    from mow.organisms.store import list_organisms, read_sealed_config

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    organism = sub.add_parser("organism", help="build, evaluate, chat with and list organisms")
    osub = organism.add_subparsers(dest="action", required=True)
    build_parser = osub.add_parser("build", help="build an organism from a config (resumes an unfinished build)")
    build_parser.add_argument("config", type=Path, help="YAML config, e.g. configs/organisms/taboo.yaml")
    build_parser.add_argument("--plan", action="store_true",
                              help="print parameter counts, memory per device under each launch (single, DDP, "
                                   "ZeRO-2/3, offload, 4-bit) and training time estimates from the model's "
                                   "config.json; build nothing")
    add_run_flags(build_parser)
    distributed = build_parser.add_argument_group("distributed training (re-launches the training stage through "
                                                  "`accelerate launch`; configs in configs/launch/)")
    distributed.add_argument("--launcher", choices=["none", "accelerate", "deepspeed"], default="none",
                             help="accelerate: DDP (NCCL, or gloo on CPUs); deepspeed: ZeRO through accelerate")
    distributed.add_argument("--launch-config", type=Path, help="accelerate config (default: configs/launch/"
                                                                "ddp.yaml, or zero2.yaml for deepspeed)")
    distributed.add_argument("--deepspeed-config", type=Path, help="your own DeepSpeed JSON (with --launcher "
                                                                   "deepspeed), instead of the shipped settings")
    distributed.add_argument("--num-processes", type=number_in(int, 1, 65536),
                             help="processes over all machines (default 2)")
    distributed.add_argument("--num-machines", type=number_in(int, 1, 4096),
                             help="machines taking part (default 1)")
    distributed.add_argument("--machine-rank", type=number_in(int, 0, 4095),
                             help="this machine's rank (0 runs the pipeline)")
    distributed.add_argument("--main-process-ip", help="address of machine rank 0 (multi-machine runs)")
    distributed.add_argument("--main-process-port", type=number_in(int, 1, 65535),
                             help="rendezvous port on machine rank 0 (29500)")
    build_parser.set_defaults(func=cmd_build)
    evaluate = osub.add_parser("eval", help="re-run the evaluation of a built organism")
    evaluate.add_argument("dir", type=Path)
    evaluate.set_defaults(func=cmd_eval)
    chat = osub.add_parser("chat", help="talk to an organism in the terminal")
    chat.add_argument("dir", type=Path)
    chat.add_argument("--temperature", type=number_in(float, 0, 10), default=0.0, help="0 (greedy) to 10")
    chat.add_argument("--max-new-tokens", type=number_in(int, 1, 8192), default=128)
    chat.add_argument("--amplify", type=number_in(float, 0.01, 100), default=1.0,
                      help="talk to the organism at ALPHA times its weight change (alpha > 1 exaggerates it)")
    chat.set_defaults(func=cmd_chat)
    listing = osub.add_parser("list", help="list organisms under a directory")
    listing.add_argument("root", nargs="?", type=Path, default=Path("runs/organisms"))
    listing.add_argument("--reveal", action="store_true", help="also print each organism's sealed secret")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)
