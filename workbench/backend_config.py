"""Settings of a text backend, a local transformers model or an OpenAI-compatible endpoint (no model code: configs
import this cheaply; the clients are in `mow.workbench.textgen`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mow.workbench.config import StrictModel


class GeneratorSettings(StrictModel):
    kind: Literal["local", "endpoint"] = "local"
    model: str | None = Field(None, description="local: model spec; endpoint: the model name sent to the server")
    url: str | None = Field(None, description="endpoint: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="endpoint: environment variable holding the key")
    timeout_s: float = Field(120, gt=0)
    retries: int = Field(3, ge=0)
    concurrency: int = Field(8, ge=1, description="endpoint: requests in flight at once")
    batch_size: int = Field(8, ge=1, description="local: prompts per generate call")
    threads: int | None = Field(None, ge=1, description="local: torch CPU threads")

    @model_validator(mode="after")
    def _endpoint_needs_url(self) -> "GeneratorSettings":
        if self.kind == "endpoint" and (not self.url or not self.model):
            raise ValueError("an endpoint generator needs url and model")
        return self
