"""The one backend abstraction: its settings, the endpoint client against a loopback server (and a refused port), the
local client, and the document generator, both judges and the auditor taking the same settings shape."""

from __future__ import annotations

import json
import socket
from contextlib import nullcontext

import pytest
from conftest import TINY
from openai_server import ScriptedServer, completion

from mow.elicitation.auditor import EndpointAuditor, LocalAuditor, auditor_for
from mow.elicitation.config import AuditorSettings, ChallengeConfig
from mow.organisms.em.config import EmEvalSettings
from mow.organisms.em.judge import EndpointJudge, LocalJudge, make_judge
from mow.organisms.sdf.config import CorpusSettings, SdfEvalSettings
from mow.organisms.sdf.corpus import make_generator
from mow.workbench import backends
from mow.workbench.backend_config import BackendSettings
from mow.workbench.backends import EndpointBackend, HeldModel, LocalBackend, make_backend
from mow.workbench.chat import render_prompt
from mow.workbench.config import validate_config
from mow.workbench.errors import EndpointError, UserError
from mow.workbench.generation import generate
from mow.workbench.models import load_model
from mow.workbench.specs import DEFAULT_MODEL


def _refused_url() -> str:
    """A loopback URL on which nothing listens (the port was free a moment ago), so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def delays(monkeypatch) -> list[float]:
    """The back-off sleeps of the endpoint client, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(backends.time, "sleep", slept.append)
    return slept


@pytest.mark.parametrize("raw, message", [
    ({"kind": "endpoint", "model": "m"}, "backend.url: Value error, kind endpoint needs a base URL"),
    ({"kind": "endpoint", "url": "http://127.0.0.1:1/v1"}, "backend.model: Value error, kind endpoint needs a model"),
    ({"kind": "endpoint", "url": "u", "model": "m", "endpoint_model": "m"}, "unknown key 'backend.endpoint_model'"),
    ({"kind": "remote"}, "backend.kind: Input should be 'local' or 'endpoint'"),
    ({"retries": -1}, "backend.retries: Input should be greater than or equal to 0"),
])
def test_backend_settings_are_checked_with_one_line_errors(raw, message):
    with pytest.raises(UserError) as error:
        validate_config(AuditorSettings, {"backend": raw}, "challenge.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("challenge.yaml: ")


def test_the_old_flat_auditor_keys_are_unknown_keys():
    with pytest.raises(UserError, match=r"^challenge.yaml: unknown key 'kind'$"):
        validate_config(AuditorSettings, {"kind": "endpoint", "url": "u", "endpoint_model": "m"}, "challenge.yaml")


def test_a_local_backend_needs_no_url_and_an_endpoint_both():
    assert BackendSettings().kind == "local" and BackendSettings().model is None
    settings = BackendSettings(kind="endpoint", url="http://127.0.0.1:1/v1", model="m")
    assert (settings.url, settings.model) == ("http://127.0.0.1:1/v1", "m")


def test_each_user_keeps_its_own_defaults_and_an_explicit_value_wins():
    endpoint = {"kind": "endpoint", "url": "http://127.0.0.1:1/v1", "model": "m"}
    generator = CorpusSettings(backend=endpoint).backend
    auditor = AuditorSettings(backend=endpoint).backend
    em_judge = EmEvalSettings(judge=endpoint).judge
    assert (generator.timeout_s, generator.retries, generator.batch_size) == (120, 3, 8)
    assert (auditor.timeout_s, auditor.retries, auditor.batch_size) == (60, 2, 16)
    assert (em_judge.timeout_s, em_judge.retries) == (600, 2)
    default = AuditorSettings().backend
    assert default == AuditorSettings(backend={}).backend
    assert (default.kind, default.timeout_s, default.retries, default.batch_size) == ("local", 60, 2, 16)
    assert AuditorSettings(backend={**endpoint, "retries": 5}).backend.retries == 5
    config = ChallengeConfig(auditor={"backend": endpoint})
    assert ChallengeConfig.model_validate(config.model_dump(mode="json")) == config  # the saved config reloads


def test_the_endpoint_client_retries_with_backoff_then_answers(delays):
    def reply(body: dict, number: int) -> tuple[int, bytes]:
        return (503, b'{"error": {"message": "busy"}}') if number <= 2 else (200, completion("at last"))

    with ScriptedServer(reply) as server:
        backend = make_backend(BackendSettings(kind="endpoint", url=server.url, model="scripted", retries=2), TINY)
        assert isinstance(backend, EndpointBackend)
        assert backend.complete([[{"role": "user", "content": "hi"}]], max_new_tokens=5, temperature=0.0,
                                seed=3) == ["at last"]
    assert len(server.requests) == 3 and delays == [0.5, 1.0]
    assert server.requests[-1]["model"] == "scripted" and server.requests[-1]["seed"] == 3
    assert server.requests[-1]["max_tokens"] == 5


def test_the_endpoint_client_gives_up_with_one_line_naming_the_url_and_the_last_error(delays):
    with ScriptedServer(lambda body, number: (500, b'{"error": {"message": "overloaded"}}')) as server:
        backend = EndpointBackend(BackendSettings(kind="endpoint", url=server.url, model="scripted", retries=1))
        with pytest.raises(EndpointError) as error:
            backend.complete([[{"role": "user", "content": "hi"}]], max_new_tokens=5, temperature=0.0, seed=0)
    message = str(error.value)
    assert message.startswith(f"{server.url}: InternalServerError") and "overloaded" in message
    assert message.endswith("(after 2 tries)") and "\n" not in message
    assert len(server.requests) == 2 and delays == [0.5]


def test_a_refused_connection_is_an_endpoint_error_naming_the_url(delays):
    url = _refused_url()
    backend = EndpointBackend(BackendSettings(kind="endpoint", url=url, model="m", retries=0, timeout_s=5))
    with pytest.raises(EndpointError, match=rf"^{url}: APIConnectionError: .*\(after 1 tries\)$"):
        backend.ask([{"role": "user", "content": "hi"}], backends.reply_text)
    assert delays == []


def test_a_reply_without_text_is_retried_and_replies_keep_the_order_of_the_chats(delays):
    emptied = []

    def reply(body: dict, number: int) -> tuple[int, bytes]:
        text = body["messages"][-1]["content"]
        if text == "empty" and not emptied:  # the first try of "empty" gets a reply with no content
            emptied.append(number)
            payload = json.loads(completion(""))
            payload["choices"][0]["message"]["content"] = None
            return 200, json.dumps(payload).encode()
        return 200, completion(f"echo {text} seed {body['seed']}")

    with ScriptedServer(reply) as server:
        backend = EndpointBackend(BackendSettings(kind="endpoint", url=server.url, model="scripted", concurrency=3))
        chats = [[{"role": "user", "content": text}] for text in ("a", "empty", "c")]
        replies = backend.complete(chats, max_new_tokens=4, temperature=0.5, seed=10)
    assert replies == ["echo a seed 10", "echo empty seed 11", "echo c seed 12"]
    assert len(server.requests) == 4 and delays == [0.5]


def test_the_local_backend_generates_what_generate_does(tokenizer):
    backend = make_backend(BackendSettings(batch_size=2), TINY)
    assert isinstance(backend, LocalBackend) and backend.description == f"local model {TINY}"
    chats = [[{"role": "user", "content": text}] for text in ("Hello there.", "Name a colour.", "Count to three.")]
    replies = backend.complete(chats, max_new_tokens=5, temperature=0.0, seed=1)
    model = load_model(TINY).eval()
    expected = generate(model, tokenizer, [render_prompt(tokenizer, chat) for chat in chats], max_new_tokens=5,
                        temperature=0.0, batch_size=2, seed=1)
    assert replies == expected


def test_a_local_backend_of_the_held_spec_uses_the_held_weights(tokenizer):
    held_model = object()
    held = HeldModel(TINY, lambda: nullcontext(held_model), tokenizer)
    same = make_backend(BackendSettings(), TINY, held=held)
    with same.model() as model:
        assert model is held_model and same.tokenizer is tokenizer
    named = make_backend(BackendSettings(model=TINY), DEFAULT_MODEL, held=held)
    assert named.held is held  # the named spec is the held one
    other = make_backend(BackendSettings(), DEFAULT_MODEL, held=held)
    assert other.held is None and other.spec == DEFAULT_MODEL


def test_generator_judges_and_auditor_take_the_same_settings_and_reach_the_same_endpoint(tokenizer):
    def reply(body: dict, number: int) -> tuple[int, bytes]:
        if body["messages"][0]["role"] == "system":
            return 200, completion('["moon", "lamp"]')  # the auditor
        if body.get("max_tokens") == 1:
            return 200, completion("70")  # the EM judge (this server returns no log-probabilities)
        return 200, completion("World A")

    with ScriptedServer(reply) as server:
        shape = {"kind": "endpoint", "url": server.url, "model": "scripted", "retries": 0}
        corpus = CorpusSettings(generator="model", backend=shape)
        sdf_judge = SdfEvalSettings(judge=shape).judge
        em_judge = EmEvalSettings(judge=shape).judge
        auditor_settings = AuditorSettings(backend=shape)
        for settings in (corpus.backend, sdf_judge, em_judge, auditor_settings.backend):
            assert isinstance(settings, BackendSettings)
            assert (settings.kind, settings.url, settings.model) == ("endpoint", server.url, "scripted")

        generator = make_generator(corpus, TINY)
        assert generator.description == f"endpoint {server.url} model scripted"
        assert make_backend(sdf_judge, TINY).complete([[{"role": "user", "content": "Which world?"}]],
                                                     max_new_tokens=8, temperature=0.0, seed=0) == ["World A"]
        judge = make_judge(em_judge)
        assert isinstance(judge, EndpointJudge) and judge.name == "endpoint:scripted"
        assert judge.score("Q?", "A.", "aligned") == 70.0
        base = HeldModel(TINY, lambda: nullcontext(None), tokenizer)
        auditor = auditor_for(auditor_settings, base)
        assert isinstance(auditor, EndpointAuditor)
        assert auditor.guess(["It glows at night.", "It shines."], n=5) == [["moon", "lamp"], ["moon", "lamp"]]
    assert {r["model"] for r in server.requests} == {"scripted"}


def test_judge_and_auditor_run_locally_on_the_organisms_base_when_no_model_is_named(tokenizer):
    base_model = load_model(TINY).eval()
    base = HeldModel(TINY, lambda: nullcontext(base_model), tokenizer)
    judge = make_judge(BackendSettings(model=TINY), base)
    assert isinstance(judge, LocalJudge) and judge.model is base_model and judge.name == f"local:{TINY}"
    auditor = auditor_for(AuditorSettings(), base)
    assert isinstance(auditor, LocalAuditor) and auditor.backend.held is base and auditor.tokenizer is tokenizer
    assert auditor.backend.batch_size == 16
    scores = auditor.scores(["It glows at night."])
    assert scores.shape == (1, len(tokenizer))


def test_sdf_configs_written_before_the_shared_backend_still_validate():
    """An SDF organism's sealed config from before the shared backend names it `model_generator`."""
    old = {"generator": "model", "model_generator": {"kind": "endpoint", "url": "http://127.0.0.1:9/v1",
                                                     "model": "writer", "retries": 1}}
    new = {"generator": "model", "backend": old["model_generator"]}
    assert CorpusSettings.model_validate(old) == CorpusSettings.model_validate(new)
