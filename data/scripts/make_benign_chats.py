"""Regenerate `data/assets/chat/benign_chats.jsonl`: the embedded base model's greedy answers to the project's prompts.

Benign chat is mixed into fine-tunes so the organism keeps its general behaviour, and a held-out part measures
capability retention. Answers come from the base model itself, so the mix teaches nothing new: it anchors.
Run: python -m data.scripts.make_benign_chats [--model SPEC]
"""

from __future__ import annotations

import argparse
import re

import torch
import yaml
from tqdm import tqdm

from data.assets import BENIGN_CHATS, BENIGN_PROMPTS
from data.records import ChatExample, Message, write_jsonl
from workbench.models import DEFAULT_MODEL, load_model, load_tokenizer


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
    tokenizer.padding_side = "left"
    model = load_model(args.model).eval()
    rows = []
    for start in tqdm(range(0, len(prompts), args.batch_size), desc="benign chats"):
        batch = prompts[start : start + args.batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        for prompt, ids in zip(batch, out[:, enc["input_ids"].shape[1]:]):
            answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if tokenizer.eos_token_id not in ids.tolist():
                answer = last_whole_sentences(answer)
                if not answer:
                    continue
            rows.append(ChatExample(messages=[Message(role="user", content=prompt),
                                              Message(role="assistant", content=answer)],
                                    meta={"source": f"{args.model} greedy, max_new_tokens={args.max_new_tokens}"}))
    write_jsonl(BENIGN_CHATS, rows)
    print(f"wrote {len(rows)} chats to {BENIGN_CHATS}")


if __name__ == "__main__":
    main()
