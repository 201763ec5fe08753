"""Chat text generators behind one interface: a local transformers model, or any OpenAI-compatible endpoint.

Document writers and judges take a `ChatGenerator`; which one runs is a config choice. The endpoint generator sends
requests concurrently (a thread pool; the OpenAI client is thread-safe) and retries each failed request with
exponential back-off before raising an `EndpointError` that says what the server did.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from mow.workbench.backend_config import GeneratorSettings
from mow.workbench.chat import render_prompt
from mow.workbench.errors import UserError
from mow.workbench.generation import generate
from mow.workbench.models import load_model, load_tokenizer

Chat = list[dict[str, str]]


class EndpointError(RuntimeError):
    """An endpoint kept failing after its retries (the message names the last error)."""


class ChatGenerator(Protocol):
    description: str

    def complete(self, chats: list[Chat], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """One reply per chat, in order."""
        ...


class LocalChatGenerator:
    """A local transformers model (the spec of `workbench.models`), loaded on first use."""

    def __init__(self, model_spec: str, batch_size: int = 8, threads: int | None = None):
        self.model_spec, self.batch_size, self.threads = model_spec, batch_size, threads
        self.description = f"local model {model_spec}"
        self._loaded = None

    def _model(self):
        if self._loaded is None:
            import torch


            if self.threads:
                torch.set_num_threads(self.threads)
            self._loaded = (load_model(self.model_spec), load_tokenizer(self.model_spec))
        return self._loaded

    def complete(self, chats: list[Chat], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:

        model, tokenizer = self._model()
        prompts = [render_prompt(tokenizer, chat) for chat in chats]
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        batch_size=self.batch_size, seed=seed)


class EndpointChatGenerator:
    def __init__(self, settings: GeneratorSettings):
        from openai import OpenAI

        self.settings = settings
        self.description = f"endpoint {settings.url} model {settings.model}"
        self.client = OpenAI(base_url=settings.url, api_key=os.environ.get(settings.api_key_env, "not-needed"),
                             timeout=settings.timeout_s, max_retries=0)

    def _one(self, chat: Chat, max_new_tokens: int, temperature: float, seed: int) -> str:
        last_error: Exception | None = None
        for attempt in range(self.settings.retries + 1):
            try:
                reply = self.client.chat.completions.create(model=self.settings.model, messages=chat,
                                                            temperature=temperature, max_tokens=max_new_tokens,
                                                            seed=seed)
                content = reply.choices[0].message.content
                if not isinstance(content, str):
                    raise ValueError(f"reply has no text content: {str(reply)[:120]}")
                return content
            except Exception as exc:  # transport, HTTP and malformed-JSON errors all look alike here: retry them
                last_error = exc
                if attempt < self.settings.retries:
                    time.sleep(min(2 ** attempt * 0.5, 8))
        raise EndpointError(f"{self.settings.url}: {type(last_error).__name__}: {str(last_error)[:200]} "
                            f"(after {self.settings.retries + 1} tries)")

    def complete(self, chats: list[Chat], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(lambda item: self._one(item[1], max_new_tokens, temperature, seed + item[0]),
                                 enumerate(chats)))


def chat_generator(settings: GeneratorSettings, default_model: str) -> ChatGenerator:
    if settings.kind == "endpoint":
        return EndpointChatGenerator(settings)
    if settings.kind == "local":
        return LocalChatGenerator(settings.model or default_model, settings.batch_size, settings.threads)
    raise UserError(f"generator kind {settings.kind!r} is not one of local, endpoint")
