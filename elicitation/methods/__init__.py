"""Elicitation methods, registered explicitly: name -> (category, function(view, config, auditor) -> MethodResult)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mow.elicitation.config import BASELINE, BLACK_BOX, WHITE_BOX
from mow.elicitation.methods import amplification, blackbox, fuzzing, whitebox
from mow.elicitation.methods.base import MethodResult, MethodUnavailable
from mow.workbench.errors import UserError

__all__ = ["METHODS", "Method", "MethodResult", "MethodUnavailable", "method"]


@dataclass(frozen=True)
class Method:
    name: str
    category: str
    run: Callable[..., MethodResult]
    chats_only: bool = False  # runs on an organism that answers chats only (on an endpoint): no weights, no raw text


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("direct", BLACK_BOX, blackbox.direct, chats_only=True),
    Method("adversarial", BLACK_BOX, blackbox.adversarial, chats_only=True),
    Method("prefill", BLACK_BOX, blackbox.prefill),
    Method("user_persona", BLACK_BOX, blackbox.user_persona),
    Method("many_shot", BLACK_BOX, blackbox.many_shot, chats_only=True),
    Method("high_temperature", BLACK_BOX, blackbox.high_temperature, chats_only=True),
    Method("hint_guess", BASELINE, blackbox.hint_guess, chats_only=True),
    Method("fuzzing", WHITE_BOX, fuzzing.fuzzing),
    Method("prefill_fuzzing", WHITE_BOX, fuzzing.prefill_fuzzing),
    Method("amplified_sampling", WHITE_BOX, amplification.amplified_sampling),
    Method("logit_lens", WHITE_BOX, whitebox.logit_lens_method),
    Method("embedding_similarity", WHITE_BOX, whitebox.embedding_similarity),
    Method("diff_lens", WHITE_BOX, whitebox.diff_lens),
    Method("crosscoder_latents", WHITE_BOX, whitebox.crosscoder_latents),
    Method("difference_sae", WHITE_BOX, whitebox.difference_sae),
    Method("kl_suppressed", WHITE_BOX, whitebox.kl_suppressed),
]}


def method(name: str, source: str) -> Method:
    if name not in METHODS:
        raise UserError(f"{source}: unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]
