"""An organism on an endpoint, served on loopback: an OpenAI-compatible proxy that puts the sealed system prompt in
front of every chat and forwards it to the organism's endpoint.

The proxy runs in a process of its own (`python -m mow.elicitation.prompt_proxy ORGANISM --port P`), which reads the
sealed prompt; whoever talks to it (a challenge's methods, an audit's agent, `mow serve`'s outside auditor) holds
no copy of the prompt, so the sealed guard of `elicitation.view` keeps its meaning for an organism whose weights are
elsewhere. Only chat completions are proxied, without streaming; the reply is the endpoint's, unchanged. Written on
`http.server` because the proxy is a single forwarding route, which a web framework would not make shorter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mow.data.layouts import OrganismLayout
from mow.organisms.store import check_organism_dir, endpoint_of, read_public_config
from mow.workbench.backend_config import BackendSettings
from mow.workbench.backends import with_system
from mow.workbench.errors import RunFailed, UserError
from mow.workbench.files import read_text

HOST = "127.0.0.1"
CHAT_ROUTE = "/v1/chat/completions"


def endpoint_settings(organism: Path) -> BackendSettings | None:
    """The endpoint an organism's model is served by (its public config's `endpoint`), or None for a local one."""
    endpoint = endpoint_of(read_public_config(organism))
    return None if endpoint is None else BackendSettings(**endpoint)


def _json_error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


@dataclass
class Forwarder:
    """Adds the prompt and sends a chat-completion request on to the endpoint; returns the endpoint's reply."""

    endpoint: BackendSettings
    system: str

    def forward(self, body: bytes) -> tuple[int, bytes]:
        try:
            request = json.loads(body)
        except ValueError:
            return _json_error(400, "the body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            return _json_error(400, "a chat completion needs a list of messages")
        if request.get("stream"):
            return _json_error(400, "streaming is not proxied: send stream=false")
        request.update(model=self.endpoint.model, messages=with_system(request["messages"], self.system))
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.endpoint.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        upstream = urllib.request.Request(f"{str(self.endpoint.url).rstrip('/')}/chat/completions",
                                          data=json.dumps(request).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(upstream, timeout=self.endpoint.timeout_s) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            return _json_error(502, f"the organism's endpoint did not answer: {exc}")


def make_server(forwarder: Forwarder, port: int, served_name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload = (forwarder.forward(body) if self.path.rstrip("/") == CHAT_ROUTE
                               else _json_error(404, f"only {CHAT_ROUTE} is served"))
            self._send(status, payload)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [
                    {"id": served_name, "object": "model", "owned_by": "mow"}]}).encode())
            else:
                self._send(*_json_error(404, "only /v1/models and chat completions are served"))

        def _send(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer((HOST, port), Handler)


def serve(organism: Path, port: int) -> None:
    """Serve the organism until interrupted; the first line on stdout is the base URL (read by `started_proxy`)."""
    settings = endpoint_settings(organism)
    if settings is None:
        raise UserError(f"{organism}: not an organism on an endpoint (its config has no 'endpoint')")
    system = read_text(OrganismLayout(organism).sealed_system_prompt, "hidden system prompt")
    server = make_server(Forwarder(settings, system), port, Path(organism).resolve().name)
    print(f"http://{HOST}:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@contextmanager
def started_proxy(organism: Path) -> Iterator[BackendSettings]:
    """The organism's proxy running in a child process on a free loopback port, while the context is open; yields
    the settings of a client for it (the organism's endpoint settings, pointed at the proxy). Started before any
    sealed guard opens (the guard refuses new processes)."""
    settings = endpoint_settings(check_organism_dir(organism, needs_weights=False))
    assert settings is not None, "started for an organism on an endpoint"
    process = subprocess.Popen([sys.executable, "-m", "mow.elicitation.prompt_proxy", str(organism), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            error = process.stderr.read() if process.stderr else ""
            raise RunFailed(f"the prompt proxy for {organism} did not start: {error.strip()[-300:]}")
        yield settings.model_copy(update={"url": url, "model": Path(organism).resolve().name,
                                          "api_key_env": "MOW_PROXY_NEEDS_NO_KEY"})
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def organism_proxy(organism: Path) -> Iterator[BackendSettings | None]:
    """`started_proxy` for an organism on an endpoint; None (nothing started) for a local one."""
    if endpoint_settings(organism) is None:
        yield None
        return
    with started_proxy(organism) as settings:
        yield settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("organism", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        serve(args.organism, args.port)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
