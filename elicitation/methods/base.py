"""What a method returns, and the shared pieces black-box and white-box methods use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import cycle, islice

from mow.elicitation.config import ChallengeConfig
from mow.elicitation.view import ChallengeView
from mow.workbench.chat import render_prompt
from mow.workbench.generation import generate


class MethodUnavailable(Exception):
    """The method cannot run on this subject (for example no diff directory); recorded, not fatal."""


@dataclass
class Attempt:
    prompt: str       # what the model was given (rendered), or what was read
    output: str       # what it produced: a transcript, a continuation, a token list
    guesses: list[str]


@dataclass
class MethodResult:
    ranking: list[str]                  # the method's answer: guesses, best first
    attempts: list[Attempt] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ranking": self.ranking, "attempts": [asdict(a) for a in self.attempts], "evidence": self.evidence}


def inputs(view: ChallengeView, config: ChallengeConfig, designed_for: str) -> list[str]:
    """The user turns a method starts from: the prompt set the challenge names (`standard`: where the model uses
    its secret; `direct`: demands to reveal it), or, under `per_method`, the set the method was designed for."""
    chosen = designed_for if config.prompt_set == "per_method" else config.prompt_set
    return list(view.prompts.probes if chosen == "standard" else view.prompts.direct)


def take(items: list[str], n: int) -> list[str]:
    """n items, cycling through the list when it is shorter."""
    return list(islice(cycle(items), n))


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def complete(view: ChallengeView, config: ChallengeConfig, rendered: list[str], *, max_new_tokens: int | None = None,
             temperature: float = 0.0, share_prefix: bool = True) -> list[str]:
    return generate(view.model, view.tokenizer, rendered, max_new_tokens=max_new_tokens or config.max_new_tokens,
                    temperature=temperature, batch_size=config.batch_size, seed=config.seed, share_prefix=share_prefix)


def chat_replies(view: ChallengeView, config: ChallengeConfig, chats: list[list[dict[str, str]]],
                 temperature: float = 0.0, max_new_tokens: int | None = None) -> list[str]:
    """The model's next assistant turn in each chat: rendered and generated locally, or sent to the organism's
    endpoint (through its prompt proxy)."""
    tokens = max_new_tokens or config.max_new_tokens
    if view.chats is not None:
        return view.chats.organism.complete(chats, max_new_tokens=tokens, temperature=temperature, seed=config.seed)
    rendered = [render_prompt(view.tokenizer, chat) for chat in chats]
    return complete(view, config, rendered, max_new_tokens=tokens, temperature=temperature)


def replies(view: ChallengeView, config: ChallengeConfig, prompts: list[str], temperature: float = 0.0,
            max_new_tokens: int | None = None) -> list[str]:
    """The model's answers to single user turns, memoised on the view (several methods read the same answers)."""
    key = ("replies", tuple(prompts), temperature, max_new_tokens or config.max_new_tokens)
    if key not in view.memo:
        view.memo[key] = chat_replies(view, config, [user_turn(p) for p in prompts], temperature, max_new_tokens)
    return view.memo[key]


def plain_transcripts(view: ChallengeView, config: ChallengeConfig, auditor: object | None,
                      prompts: list[str]) -> list[str] | None:
    """For the auditor's two-guess score (`auditor.two_guess`): the model's plain greedy answers to the method's
    user turns, as "User: ... / Assistant: ..." transcripts the auditor guesses from before it sees what the method
    drew out; None when no auditor reads the method or two_guess is off."""
    if auditor is None or not config.auditor.two_guess:
        return None
    return [f"User: {p}\nAssistant: {a}" for p, a in zip(prompts, replies(view, config, prompts))]
