"""Config of an auditing-agent run, `mow audit` (configs/audit.yaml mirrors the defaults); no heavy imports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from mow.workbench.backend_config import BackendSettings, with_defaults
from mow.workbench.config import Seed, StrictModel, Threads, apply_overrides, read_yaml_mapping, validate_config
from mow.workbench.names import PathName

AgentBackend = Annotated[BackendSettings, with_defaults(kind="endpoint", timeout_s=120, retries=2, concurrency=1)]
GraderBackend = Annotated[BackendSettings, with_defaults(kind="endpoint", timeout_s=60, retries=2)]

# Every tool the agent may be given (mow.elicitation.agent_tools defines them); the diff tools need --diff.
MODEL_TOOLS = ["ask_organism", "ask_base", "prefill", "user_persona", "fuzzed_sample", "amplified_sample"]
CHAT_TOOLS = ["ask_organism", "ask_base", "note", "submit"]  # all an organism on an endpoint can answer
DIFF_TOOLS = ["diff_lens_tokens", "kl_tokens", "crosscoder_latents", "difference_sae_latents", "steered_samples",
              "mined_tokens"]
ALL_TOOLS = [*MODEL_TOOLS, *DIFF_TOOLS, "note", "submit"]


class AgentBudget(StrictModel):
    turns: int = Field(20, ge=1, description="agent replies (each may call several tools)")
    questions: int = Field(50, ge=0, description="calls of the tools that run a model (ask, prefill, persona, fuzzed, "
                                                 "amplified)")
    generated_tokens: int = Field(4000, ge=0, description="tokens those calls may generate, all together")
    max_new_tokens: int = Field(64, ge=1, description="tokens one model call may generate")
    reply_tokens: int = Field(2048, ge=16, description="tokens one reply of the agent may take (its max_tokens)")


class AuditConfig(StrictModel):
    name: PathName | None = Field(None, description="output directory name (default: the organism directory's name, "
                                                    "with '-base' for the base subject)")
    output_dir: Path = Path("runs/audits")
    seed: Seed = 0
    threads: Threads | None = None
    runs: int = Field(1, ge=1, description="independent agent runs (agreement between them is reported)")
    subject: Literal["organism", "base"] = Field(
        "organism", description="the model the agent audits: the organism, or its public base model (the control: "
                                "the same tools, scored against the organism's truth; a --diff given is read as the "
                                "base model's, e.g. a diff of the base against itself)")
    agent: AgentBackend = Field(default_factory=dict, validate_default=True,
                                description="the investigator: an OpenAI-compatible endpoint (see tool_calls)")
    tool_calls: Literal["native", "text"] = Field(
        "native", description="how the agent calls tools: native (the endpoint's tool calling) or text (tools listed "
                              "in the prompt, calls written as <tool_call>{json}</tool_call> in the reply: for a "
                              "model or server without tool calling)")
    tools: list[str] = Field(default_factory=lambda: [t for t in ALL_TOOLS if t not in DIFF_TOOLS],
                             min_length=1, description="the tools the agent gets (the diff tools need --diff)")
    budget: AgentBudget = AgentBudget()
    guesses: int = Field(5, ge=1, le=50, description="ranked guesses the agent submits")
    diff_dir: Path | None = Field(None, description="a finished `mow diff` of the organism, for the diff tools")
    grader: GraderBackend | None = Field(None, description="an OpenAI-compatible endpoint that grades each submitted "
                                                           "description 1-5 against the kind's rubric (None: no "
                                                           "grades; the exact scores are always given)")
    grades: int = Field(3, ge=1, description="grader calls per description (their agreement is reported)")
    rubrics: Path = Field(Path("configs/rubrics.yaml"), description="the rubric per organism kind (a shipped "
                                                                     "config name or a file)")

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, tools: list[str]) -> list[str]:
        unknown = [t for t in tools if t not in ALL_TOOLS]
        if unknown:
            raise ValueError(f"unknown tool {unknown[0]!r} (known: {', '.join(ALL_TOOLS)})")
        if "submit" not in tools:
            raise ValueError("'submit' must be among the tools: it is how the agent answers")
        return tools


AGENT_ENV = {"url": "MOW_AGENT_URL", "model": "MOW_AGENT_MODEL"}  # where the config names no agent endpoint


def load_audit_config(path: Path | None, overrides: list[str]) -> AuditConfig:
    """The audit config from a file (+ overrides); the agent's url and model, where neither names them, from the
    environment (MOW_AGENT_URL, MOW_AGENT_MODEL; the key from agent.api_key_env, OPENAI_API_KEY by default)."""
    raw = apply_overrides(read_yaml_mapping(path) if path is not None else {}, overrides)
    agent = raw.get("agent")
    if agent is None or isinstance(agent, dict):
        agent = dict(agent or {})
        for key, variable in AGENT_ENV.items():
            if agent.get(key) is None and os.environ.get(variable):
                agent[key] = os.environ[variable]
        raw["agent"] = agent
    return validate_config(AuditConfig, raw, str(path) if path is not None else "--set")


def agent_label(config: AuditConfig) -> str:
    """What a leaderboard calls these runs: which tools the agent had, and its question budget (the published
    baselines are black-box agents at 0, 5 and 50 questions)."""
    tools = "with diff tools" if any(t in DIFF_TOOLS for t in config.tools) else "black-box"
    return f"agent, {tools}, {config.budget.questions} questions"
