"""Text backends behind one interface: a local transformers model, or any OpenAI-compatible endpoint.

Document writers, judges and auditors build theirs with `make_backend` from a `BackendSettings`; which one runs is
a config choice. Both answer `complete` (one reply per chat). Beyond that, a judge or an auditor that reads
probabilities takes the local model and tokenizer from `LocalBackend.model()` and `.tokenizer`, and one that needs
more of an endpoint's reply than its text (log-probabilities, a system prompt) sends its own request through
`EndpointBackend.ask`, which carries the timeout, the retries with back-off and the one error type. The endpoint
client sends requests concurrently (a thread pool; the OpenAI client is thread-safe).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mow.workbench.backend_config import BackendSettings
from mow.workbench.chat import render_prompt
from mow.workbench.errors import EndpointError, UserError
from mow.workbench.generation import generate
from mow.workbench.models import check_source, load_model, load_tokenizer

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

Chat = list[dict[str, str]]
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
MAX_BACKOFF_S = 8.0


@dataclass
class HeldModel:
    """A model the caller already holds, which a local backend of the same spec uses instead of loading a second
    copy. `use` yields the model as the backend must see it (e.g. an organism with its adapter turned off)."""

    spec: str
    use: Callable[[], AbstractContextManager[nn.Module]]
    tokenizer: PreTrainedTokenizerBase


class LocalBackend:
    """A local transformers model (a spec of `workbench.models`), loaded on first use unless it is held."""

    def __init__(self, spec: str, batch_size: int = 8, threads: int | None = None, *, seed: int = 0,
                 held: HeldModel | None = None):
        self.spec, self.batch_size, self.threads, self.seed, self.held = spec, batch_size, threads, seed, held
        if held is None:
            check_source(spec)  # the weights load lazily, perhaps after hours of other stages: refuse a bad spec now
        self.description = f"local model {spec}"
        self._model: nn.Module | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._threads_set = False

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self.held is not None:
            return self.held.tokenizer
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.spec)
        return self._tokenizer

    def load(self) -> None:
        """Load the weights now rather than on first use (a caller that must not load later, e.g. in a sandbox)."""
        if self.threads and not self._threads_set:
            torch.set_num_threads(self.threads)
            self._threads_set = True
        if self.held is None:
            self._own_model()

    def _own_model(self) -> nn.Module:
        if self._model is None:
            self._model = load_model(self.spec, seed=self.seed).eval()
        return self._model

    @contextmanager
    def model(self) -> Iterator[nn.Module]:
        """The model, ready to run, while the context is open."""
        self.load()
        if self.held is not None:
            with self.held.use() as model:
                yield model
            return
        yield self._own_model()

    def complete(self, chats: list[Chat], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """One reply per chat, in order."""
        prompts = [render_prompt(self.tokenizer, chat) for chat in chats]
        with self.model() as model:
            return generate(model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            batch_size=self.batch_size, seed=seed)


def reply_text(reply: ChatCompletion) -> str:
    """The text of a reply's first choice; a reply without text raises (and so is retried)."""
    content = reply.choices[0].message.content
    if not isinstance(content, str):
        raise ValueError(f"reply has no text content: {str(reply)[:120]}")
    return content


def with_system(chat: list[dict[str, Any]], system: str) -> list[dict[str, Any]]:
    """`chat` with `system` in front: as its system message, or before the system message the chat brings (one
    system message, which every template takes; its content a string or a list of OpenAI content parts)."""
    if chat and chat[0].get("role") == "system":
        content = chat[0].get("content")
        merged = ([{"type": "text", "text": system}, *content] if isinstance(content, list)
                  else f"{system}\n\n{content or ''}")
        return [{**chat[0], "content": merged}, *chat[1:]]
    return [{"role": "system", "content": system}, *chat]


class EndpointBackend:
    """An OpenAI-compatible chat-completions endpoint with a timeout per request, retries with exponential back-off,
    and `concurrency` requests in flight. With `system`, every chat is sent with that system prompt in front (a
    hidden-prompt organism on an endpoint)."""

    def __init__(self, settings: BackendSettings, system: str | None = None):
        # openai is imported only when an endpoint is used: it costs start-up time for every local run otherwise
        from openai import OpenAI

        if not settings.url or not settings.model:  # validation checks both; settings changed since (an assignment
            # of `kind` alone, a model_copy) are caught here, before the first request
            raise UserError(f"an endpoint backend needs url and model (got url={settings.url!r}, "
                            f"model={settings.model!r})")
        self.settings, self.model, self.system = settings, settings.model, system
        self.description = f"endpoint {settings.url} model {settings.model}"
        self.client = OpenAI(base_url=settings.url, timeout=settings.timeout_s, max_retries=0,
                             api_key=os.environ.get(settings.api_key_env, "not-needed"))

    def ask(self, messages: Chat, read: Callable[[ChatCompletion], ResultT], **request: Any) -> ResultT:
        """One chat completion (`request`: its parameters beyond model and messages) and what `read` takes from it.
        A failure of either is retried; the last one raises `EndpointError`."""
        last_error: Exception | None = None
        for attempt in range(self.settings.retries + 1):
            try:
                chat = messages if self.system is None else with_system(messages, self.system)
                sent = cast("list[ChatCompletionMessageParam]", chat)  # the same dicts, typed for the client
                return read(self.client.chat.completions.create(model=self.model, messages=sent, **request))
            except Exception as exc:  # transport, HTTP and malformed-reply errors all look alike here: retry them
                last_error = exc
                if attempt < self.settings.retries:
                    time.sleep(min(2**attempt * 0.5, MAX_BACKOFF_S))
        raise EndpointError(f"{self.settings.url}: {type(last_error).__name__}: {str(last_error)[:200]} "
                            f"(after {self.settings.retries + 1} tries)")

    def map(self, function: Callable[[ItemT], ResultT], items: list[ItemT]) -> list[ResultT]:
        """`function` over the items, `concurrency` at once, results in order."""
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(function, items))

    def complete(self, chats: list[Chat], *, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """One reply per chat, in order; chat i is sent with seed + i."""
        return self.map(lambda item: self.ask(item[1], reply_text, temperature=temperature,
                                              max_tokens=max_new_tokens, seed=seed + item[0]),
                        list(enumerate(chats)))

    def check_answers(self, source: str) -> None:
        """One one-token chat, so that an endpoint that is down or names no such model is refused (a `UserError`
        naming `source`) before anything is written."""
        try:
            self.complete([[{"role": "user", "content": "Say OK."}]], max_new_tokens=1, temperature=0.0, seed=0)
        except EndpointError as exc:
            raise UserError(f"{source}: {self.description} does not answer a chat ({exc})") from None

    def reply(self, chat: Chat, *, max_new_tokens: int, temperature: float, seed: int) -> tuple[str, int]:
        """One reply and the tokens it cost: the server's count, or its words where the server gives no usage."""
        def read(reply: ChatCompletion) -> tuple[str, int]:
            text = reply_text(reply)
            return text, reply.usage.completion_tokens if reply.usage is not None else len(text.split())

        return self.ask(chat, read, temperature=temperature, max_tokens=max_new_tokens, seed=seed)


Backend = LocalBackend | EndpointBackend


def make_backend(settings: BackendSettings, default_model: str, *, held: HeldModel | None = None,
                 seed: int = 0) -> Backend:
    """The backend the settings name. A local one runs `settings.model`, or `default_model` when none is named;
    when that spec is `held`'s, it uses the held weights. `seed` seeds the weights of a random tiny model spec."""
    if settings.kind == "endpoint":
        return EndpointBackend(settings)
    spec = settings.model or default_model
    if held is not None and held.spec == spec:
        return LocalBackend(spec, settings.batch_size, settings.threads, held=held)
    return LocalBackend(spec, settings.batch_size, settings.threads, seed=seed)
