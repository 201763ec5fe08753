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
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mow.data.layouts import OrganismLayout
from mow.organisms.store import organism_endpoint
from mow.workbench.backend_config import BackendSettings
from mow.workbench.backends import with_system
from mow.workbench.errors import RunFailed, UserError
from mow.workbench.files import read_text

HOST = "127.0.0.1"
CHAT_ROUTE = "/v1/chat/completions"


def _json_error(status: int, message: str) -> tuple[int, bytes]:
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    return status, json.dumps({"error": {"message": message, "type": kind}}).encode()


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
        messages = request.get("messages") if isinstance(request, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                     for m in messages):
            return _json_error(400, "a chat completion needs a list of messages, each with a role")
        if request.get("stream"):
            return _json_error(400, "streaming is not proxied: send stream=false")
        request.update(model=self.endpoint.model, messages=with_system(messages, self.system))
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

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            """A client that hung up mid-reply (it timed out first): nothing to answer, and no traceback."""

    return Server((HOST, port), Handler)


def serve(organism: Path, port: int, url_file: Path | None = None) -> None:
    """Serve the organism until interrupted; the base URL is written to `url_file` when one is given (how
    `started_proxy` learns the port)."""
    settings = organism_endpoint(organism)
    if settings is None:
        raise UserError(f"{organism}: not an organism on an endpoint (its config has no 'endpoint')")
    system = read_text(OrganismLayout(organism).sealed_system_prompt, "hidden system prompt")
    server = make_server(Forwarder(settings, system), port, Path(organism).resolve().name)
    url = f"http://{HOST}:{server.server_address[1]}/v1"
    if url_file is not None:
        partial = url_file.with_suffix(".partial")
        partial.write_text(url)
        partial.rename(url_file)  # whole or absent: the parent never reads half a URL
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@contextmanager
def started_proxy(organism: Path, start_timeout_s: float = 120.0) -> Iterator[BackendSettings]:
    """The organism's proxy running in a child process on a free loopback port, while the context is open; yields
    the settings of a client for it (the organism's endpoint settings, pointed at the proxy). Started before any
    sealed guard opens (the guard refuses new processes). The child's output goes to a file, so a chatty child can
    never block on a full pipe; it is stopped (killed if it does not stop) when the context closes."""
    settings = organism_endpoint(organism)
    assert settings is not None, "started for an organism on an endpoint"
    with tempfile.TemporaryDirectory(prefix="mow-proxy-") as scratch, \
            tempfile.TemporaryFile(mode="w+", prefix="mow-proxy-log-") as log:
        url_file = Path(scratch) / "url"
        process = subprocess.Popen([sys.executable, "-m", "mow.elicitation.prompt_proxy", str(organism), "--port",
                                    "0", "--url-file", str(url_file)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + start_timeout_s
            while not url_file.is_file():
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
                    why = lines[-1] if lines else (f"exited with status {process.returncode}"
                                                   if process.returncode is not None
                                                   else f"no port after {start_timeout_s:.0f} s")
                    raise RunFailed(f"the prompt proxy for {organism} did not start: {why[-300:]}")
                time.sleep(0.05)
            yield settings.model_copy(update={"url": url_file.read_text().strip(),
                                              "model": Path(organism).resolve().name,
                                              "api_key_env": "MOW_PROXY_NEEDS_NO_KEY"})
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def organism_proxy(organism: Path) -> Iterator[BackendSettings | None]:
    """`started_proxy` for an organism on an endpoint; None (nothing started) for a local one."""
    if organism_endpoint(organism) is None:
        yield None
        return
    with started_proxy(organism) as settings:
        yield settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("organism", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url-file", type=Path, help="where to write the base URL once the port is bound")
    args = parser.parse_args()
    try:
        serve(args.organism, args.port, args.url_file)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
