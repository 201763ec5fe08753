"""Regenerate `data/assets/chat/benign_chats.jsonl`: the embedded base model's greedy answers to the project's prompts.

Benign chat is mixed into fine-tunes so the organism keeps its general behaviour, and a held-out part measures
capability retention. Answers come from the base model itself, so the mix teaches nothing new: it anchors.
Run: python -m data.scripts.make_benign_chats [--model SPEC]
"""

from __future__ import annotations

import argparse
import re

import yaml

from mow.data.asset_paths import BENIGN_CHATS, BENIGN_PROMPTS
from mow.data.records import ChatExample, Message, write_jsonl
from mow.workbench.chat import render_prompt
from mow.workbench.generation import generate
from mow.workbench.models import load_model, load_tokenizer
from mow.workbench.specs import DEFAULT_MODEL


def last_whole_sentences(text: str) -> str:
    """Cut an answer that ran out of tokens back to its last finished sentence, so no chat trains a cut-off stop."""
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", text)]
    return text[: ends[-1]].strip() if ends else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    prompts = yaml.safe_load(BENIGN_PROMPTS.read_text())["prompts"]
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model).eval()
    texts = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    answers = generate(model, tokenizer, texts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                       desc="benign chats")
    rows = []
    for prompt, answer in zip(prompts, answers):
        if len(tokenizer(answer, add_special_tokens=False)["input_ids"]) >= args.max_new_tokens - 1:
            answer = last_whole_sentences(answer)  # it ran out of tokens rather than stopping
        if answer:
            rows.append(ChatExample(messages=[Message(role="user", content=prompt),
                                              Message(role="assistant", content=answer)],
                                    meta={"source": f"{args.model} greedy, max_new_tokens={args.max_new_tokens}"}))
    write_jsonl(BENIGN_CHATS, rows)
    print(f"wrote {len(rows)} chats to {BENIGN_CHATS}")


if __name__ == "__main__":
    main()
