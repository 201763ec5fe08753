"""Settings of a text backend, a local transformers model or an OpenAI-compatible endpoint (no model code: configs
import this cheaply; the clients are in `mow.workbench.backends`).

Document writers, judges and auditors all hold a `BackendSettings`. Each may keep defaults of its own (an auditor
waits 60 s where a document writer waits 120 s): `with_defaults` fills them in."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from mow.workbench.config import StrictModel, Threads
from mow.workbench.errors import UserError
from mow.workbench.specs import ModelSpec


class BackendSettings(StrictModel):
    kind: Literal["local", "endpoint"] = "local"
    url: str | None = Field(None, validate_default=True,
                            description="endpoint: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, validate_default=True,
                              description="local: a model spec (None: the user's default, e.g. the organism's base "
                                          "model); endpoint: the model name sent to the server")
    api_key_env: str = Field("OPENAI_API_KEY", description="endpoint: environment variable holding the key")
    timeout_s: float = Field(120, gt=0, description="endpoint: seconds one request may take")
    retries: int = Field(3, ge=0, description="endpoint: re-sends of a failed request, with exponential back-off")
    concurrency: int = Field(8, ge=1, description="endpoint: requests in flight at once")
    batch_size: int = Field(8, ge=1, description="local: prompts per forward pass or generate call")
    threads: Threads | None = Field(None, description="local: torch CPU threads")

    @field_validator("url", "model")
    @classmethod
    def _endpoint_needs_it(cls, value: str | None, info: ValidationInfo) -> str | None:
        # a field validator (not a model validator) so that the one-line error names the missing key
        if info.data.get("kind") == "endpoint" and not value:
            raise ValueError(f"kind endpoint needs {'a base URL' if info.field_name == 'url' else 'a model name'}")
        if info.data.get("kind") == "local" and info.field_name == "model" and value:
            try:
                ModelSpec.parse(value)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return value


def with_defaults(**defaults: Any) -> BeforeValidator:
    """For `Annotated[BackendSettings, with_defaults(...)]`: the keys a mapping leaves out take `defaults` rather than
    the class's. Pydantic fills a nested model's missing keys from its class, never from the field's default
    instance, so the defaults are merged into the mapping before validation; the field's own default is then an
    empty mapping, validated (`Field(default_factory=dict, validate_default=True)`)."""

    def fill(value: Any) -> Any:
        return {**defaults, **value} if isinstance(value, dict) else value

    return BeforeValidator(fill)
