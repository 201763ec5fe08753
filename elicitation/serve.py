"""`mow serve`: black-box access for outside auditors, through an existing server (`transformers serve`).

The organism's adapter is merged into its base weights and saved, with the tokenizer, to a private temporary
directory; `transformers serve` (FastAPI + uvicorn, OpenAI-compatible `/v1/chat/completions`) serves that directory
on 127.0.0.1 only. The server process is given the merged weights and nothing else: no config, no card, nothing
from `sealed/`, so a person or an agent talking to it over HTTP can play the challenge while the truth stays on the
server side. The directory is removed when the server stops.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from mow.organisms.store import check_organism_dir, load_organism
from mow.workbench.chat import self_folding_template
from mow.workbench.errors import RunFailed, UserError
from mow.workbench.hooks import has_virtual_prefix

HOST = "127.0.0.1"


def check_port(port: int) -> int:
    """A TCP port this process can listen on now (checked before the minutes of merging the adapter)."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: not a TCP port (1-65535)")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, port))
    except OSError as exc:
        raise UserError(f"--port {port}: cannot listen on {HOST}:{port} ({exc.strerror})") from None
    return port


def export_merged(organism: Path, destination: Path) -> Path:
    """The organism as one plain checkpoint (adapter merged into the base weights) plus its tokenizer. A template
    without a system role is saved folding a client's system message into the first user turn, as every command of
    the workbench does, instead of failing the request."""
    loaded = load_organism(check_organism_dir(organism))
    if has_virtual_prefix(loaded.model):
        raise UserError(f"{organism}: its adapter is a prefix (a hidden system prompt), which cannot be merged into "
                        "one checkpoint to serve")
    merged = loaded.model.merge_and_unload()
    merged.save_pretrained(destination)
    folding = self_folding_template(loaded.tokenizer)
    if folding is not None:
        loaded.tokenizer.chat_template = folding
    loaded.tokenizer.save_pretrained(destination)
    return destination


def serve_command(model_dir: Path, port: int) -> list[str]:
    executable = shutil.which("transformers")
    if executable is None:
        raise UserError("`transformers serve` is not installed; pip install 'transformers[serving]'")
    return [executable, "serve", str(model_dir), "--host", HOST, "--port", str(port)]


def server_environment(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def main(organism: Path, port: int, threads: int | None = None) -> None:
    check_port(port)
    check_organism_dir(organism)
    with tempfile.TemporaryDirectory(prefix="mow-serve-") as scratch:
        model_dir = export_merged(organism, Path(scratch) / Path(organism).resolve().name)
        command = serve_command(model_dir, port)
        print(f"serving {Path(organism).name} at http://{HOST}:{port}/v1 (model name: {model_dir}); Ctrl-C stops",
              flush=True)
        try:
            status = subprocess.run(command, env=server_environment(threads), check=False).returncode
        except KeyboardInterrupt:
            print("server stopped", file=sys.stderr)
            return
        if status != 0:
            raise RunFailed(f"the server (`{' '.join(command[:2])}`) exited with status {status}")
