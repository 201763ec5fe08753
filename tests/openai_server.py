"""A small OpenAI-compatible HTTP server on loopback whose replies a test scripts: real sockets, real HTTP, real
JSON, so the endpoint client is exercised end to end, including servers that fail or answer garbage."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# reply(request_json, request_number) -> (status, body bytes)
Reply = Callable[[dict, int], tuple[int, bytes]]


def completion(text: str, model: str = "scripted") -> bytes:
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


class ScriptedServer:
    def __init__(self, reply: Reply):
        self.reply, self.requests = reply, []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.requests.append(body)
                    number = len(server.requests)
                status, payload = server.reply(body, number)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tool_calls(*calls: tuple[str, object], text: str = "") -> bytes:
    """A completion whose message calls tools: (name, arguments) pairs, arguments a dict or a raw string."""
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": text or None,
            "tool_calls": [{"id": f"call-{i}", "type": "function",
                            "function": {"name": name,
                                         "arguments": args if isinstance(args, str) else json.dumps(args)}}
                           for i, (name, args) in enumerate(calls)]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


class Agent:
    """Scripts one reply per turn of each run; a run starts with a two-message conversation (each run sends its own
    seed, so a retried first request is not a new run)."""

    def __init__(self, runs: list[list]):
        self.runs, self.run, self.lock, self.starts = runs, -1, threading.Lock(), set()

    def __call__(self, body: dict, number: int) -> tuple[int, bytes]:
        if any(t["function"]["name"] == "ping" for t in body.get("tools", [])):
            return 200, tool_calls(("ping", {}))
        with self.lock:
            if len(body["messages"]) == 2 and body["seed"] not in self.starts:
                self.starts.add(body["seed"])
                self.run += 1
            turn = sum(m["role"] == "assistant" for m in body["messages"])
        script = self.runs[self.run]
        step = script[min(turn, len(script) - 1)]
        return step if isinstance(step, tuple) else (200, step)
