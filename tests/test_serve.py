"""`mow serve`: an organism behind `transformers serve` on loopback, played with a real HTTP client (openai)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import build_tiny_organism

from mow.elicitation.auditor import EndpointAuditor
from mow.elicitation.config import AuditorSettings
from mow.elicitation.serve import HOST, export_merged, serve_command, server_environment
from mow.workbench.backends import EndpointBackend


@pytest.fixture(scope="module")
def organism(tmp_path_factory) -> Path:
    return build_tiny_organism(tmp_path_factory.mktemp("serve-organism"), "served", "ship", seed=5,
                               training={"epochs": 1, "batch_size": 4})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("server did not come up")


def test_served_organism_answers_an_openai_client_and_holds_no_secret(organism, tmp_path):
    from openai import OpenAI

    model_dir = export_merged(organism, tmp_path / "served")
    served_files = [p for p in model_dir.rglob("*") if p.is_file()]
    assert not any("sealed" in p.parts for p in served_files)
    assert not any(p.suffix in (".yaml", ".md") for p in served_files)  # no config, no card
    port = _free_port()
    command = serve_command(model_dir, port)
    assert command[-4:] == ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=server_environment(1), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://{HOST}:{port}"
        _wait_healthy(url, process)
        client = OpenAI(base_url=f"{url}/v1", api_key="not-needed")
        reply = client.chat.completions.create(model=str(model_dir), max_tokens=6, temperature=0.0,
                                               messages=[{"role": "user", "content": "Give me a hint."}])
        assert reply.choices[0].message.role == "assistant"
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.usage.completion_tokens <= 6
        settings = AuditorSettings(backend={"kind": "endpoint", "url": f"{url}/v1", "model": str(model_dir)})
        auditor = EndpointAuditor(settings, EndpointBackend(settings.backend))
        guesses = auditor.guess(["It is round and glows at night."], n=5)
        assert len(guesses) == 1 and all(isinstance(g, str) for g in guesses[0]) and len(guesses[0]) <= 5
    finally:
        process.terminate()
        process.wait(timeout=30)
