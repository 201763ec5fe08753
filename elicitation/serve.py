"""`mow serve`: black-box access for outside auditors, through an existing server (`transformers serve`).

The organism's adapter is merged into its base weights and saved, with the tokenizer, to a private temporary
directory; `transformers serve` (FastAPI + uvicorn, OpenAI-compatible `/v1/chat/completions`) serves that directory
on 127.0.0.1 only. The server process is given the merged weights and nothing else: no config, no card, nothing
from `sealed/`, so a person or an agent talking to it over HTTP can play the challenge while the truth stays on the
server side. The directory is removed when the server stops.

An organism on an endpoint is served by its prompt proxy (`elicitation.prompt_proxy`), which adds the sealed prompt
and forwards each chat to the endpoint. A local hidden-system-prompt organism has no weights to merge. The base
weights are saved with a chat template that writes the sealed prompt before every chat: the server adds the prompt,
which sits in the server's private directory only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from mow.data.layouts import OrganismLayout
from mow.elicitation.prompt_proxy import serve as serve_proxy
from mow.organisms.store import LoadedOrganism, check_organism_dir, load_organism, organism_endpoint
from mow.workbench.chat import hide_system_prompt, self_folding_template
from mow.workbench.errors import RunFailed, UserError
from mow.workbench.files import read_text
from mow.workbench.hooks import has_virtual_prefix
from mow.workbench.models import load_tokenizer

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
        return _export_hidden_prompt(loaded, destination)
    merged = loaded.model.merge_and_unload()
    merged.save_pretrained(destination)
    folding = self_folding_template(loaded.tokenizer)
    if folding is not None:
        loaded.tokenizer.chat_template = folding
    loaded.tokenizer.save_pretrained(destination)
    return destination


def _export_hidden_prompt(loaded: LoadedOrganism, destination: Path) -> Path:
    """The base weights, and the base template made to write the sealed system prompt before every chat (split as
    the build split it, so the server computes what the organism computes)."""
    prompt_file = OrganismLayout(loaded.path).sealed_system_prompt
    system = read_text(prompt_file, "hidden system prompt")
    tokenizer = load_tokenizer(loaded.public_config["model"], bool(loaded.public_config.get("trust_remote_code")))
    folding = self_folding_template(tokenizer)
    if folding is not None:
        tokenizer.chat_template = folding
    tokenizer.chat_template = hide_system_prompt(tokenizer, system).served_template
    loaded.model.get_base_model().save_pretrained(destination)
    tokenizer.save_pretrained(destination)
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
    check_organism_dir(organism, needs_weights=False)
    if organism_endpoint(organism) is not None:  # nothing to export: the prompt proxy serves it
        print(f"serving {Path(organism).name} at http://{HOST}:{port}/v1 (its endpoint's model, the hidden prompt "
              "added here); Ctrl-C stops", flush=True)
        serve_proxy(organism, port)
        return
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
