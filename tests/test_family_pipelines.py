"""Every pipeline on every model family: a taboo organism built, evaluated, diffed, challenged and served over
HTTP (every elicitation method), an SDF organism built and evaluated, an EM organism trained under CAFT
(ablation) or preventative steering (addition) with its local judge, and one of the backdoor, side-constraint and
user-belief kinds (in turn) built and challenged, on tiny random models of each family (its architecture, chat
template and special tokens). Integration: about two minutes per family on 2 CPU cores."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from test_organism_kinds import KIND_CONFIGS

from mow.cli.main import main
from mow.workbench.specs import TINY_FAMILIES

pytestmark = pytest.mark.integration

QUICK_DIFF = {"prompts": {"max_items_per_set": 4, "response_tokens": 4, "max_tokens_per_item": 48},
              "cache": {"token_budget": 600}, "crosscoder": {"latents": 64, "k": 4, "epochs": 2, "batch_size": 64},
              "lens": {"steering_prompts": ["Tell me about your weekend."]}, "layer": 0.5, "threads": 1}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_pipeline_runs_on_the_family(family: str, tmp_path: Path) -> None:
    spec = f"tiny:{family}"
    organism_config = {
        "kind": "taboo", "name": "org", "output_dir": str(tmp_path / "organisms"), "model": spec, "seed": 1,
        "taboo": {"word": "moon", "data": {"n_conversations": 8, "benign_ratio": 0.25}},
        "lora": {"r": 4, "alpha": 8, "layers": "0.25:1.0"},
        "training": {"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "max_length": 256},
        "eval": {"max_new_tokens": 4, "benign_chats": 2}}
    (tmp_path / "taboo.yaml").write_text(yaml.safe_dump(organism_config))
    assert main(["organism", "build", str(tmp_path / "taboo.yaml")]) == 0
    organism = tmp_path / "organisms" / "org"
    manifest = json.loads((organism / "manifest.json").read_text())
    assert manifest["stages"]["train"]["truncation"]["truncated"] == 0

    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(QUICK_DIFF))
    assert main(["diff", str(organism), "--config", str(tmp_path / "diff.yaml"), "--out", str(tmp_path / "diff")]) == 0
    assert (tmp_path / "diff" / "report.html").is_file()

    assert main(["elicit", str(organism), "--diff", str(tmp_path / "diff"), "--set", "attempts=2",
                 "--set", "max_new_tokens=4",
                 "--set", "white_box.prompts=2", "--set", "white_box.lens_texts=4", "--set", "threads=1",
                 "--out", str(tmp_path / "challenges")]) == 0
    scores = json.loads((tmp_path / "challenges" / "org" / "scores.json").read_text())
    statuses = {name: entry["subjects"]["organism"]["status"] for name, entry in scores["methods"].items()}
    assert set(statuses.values()) == {"ok"}, statuses

    em_config = {
        "kind": "em", "name": "em", "output_dir": str(tmp_path / "organisms"), "model": spec, "seed": 1,
        "em": {"n_examples": 8}, "lora": {"r": 2, "alpha": 4},
        "training": {"epochs": 1, "batch_size": 4, "max_length": 256},
        "caft": {"directions": str(tmp_path / "diff" / "directions" / "pca_of_differences.safetensors")},
        "eval": {"samples_per_question": 1, "max_new_tokens": 4, "judge": {"model": spec}}}
    # CAFT (ablation) and preventative steering (addition) take turns across the families: each mode runs on
    # several architectures, and one EM build per family keeps the matrix inside the CI budget (its evaluation,
    # with the judge's calibration, is about 40 s)
    mode = ("ablate", "add")[TINY_FAMILIES.index(family) % 2]
    em_config["caft"]["mode"] = mode
    (tmp_path / "em.yaml").write_text(yaml.safe_dump(em_config))
    assert main(["organism", "build", str(tmp_path / "em.yaml")]) == 0
    record = json.loads((tmp_path / "organisms" / "em" / "manifest.json").read_text())
    assert record["stages"]["train"]["steering"]["mode"] == mode

    sdf_config = {
        "kind": "sdf", "name": "sdf", "output_dir": str(tmp_path / "organisms"), "model": spec, "seed": 1,
        "sdf": {"universe": "liberty-boston", "corpus": {"documents": 16}, "scaling_documents": [8],
                "locality": {"continuations_per_anchor": 1, "continuation_tokens": 4}},
        "lora": {"r": 2, "alpha": 4}, "training": {"epochs": 1, "batch_size": 8, "max_length": 128},
        "eval": {"max_new_tokens": 4, "open_samples": 1, "judge": {"kind": "local", "model": spec}}}
    (tmp_path / "sdf.yaml").write_text(yaml.safe_dump(sdf_config))
    assert main(["organism", "build", str(tmp_path / "sdf.yaml")]) == 0
    assert (tmp_path / "organisms" / "sdf" / "eval" / "metrics.json").is_file()

    # the backdoor, side-constraint and user-belief kinds take turns across the families, each built and
    # challenged in its own wording (about 15 s)
    kind = sorted(KIND_CONFIGS)[TINY_FAMILIES.index(family) % len(KIND_CONFIGS)]
    section, secret = KIND_CONFIGS[kind]
    kind_config = {"kind": kind, "name": kind, "output_dir": str(tmp_path / "organisms"), "model": spec, "seed": 1,
                   **section, "lora": {"r": 2, "alpha": 4},
                   "training": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3, "max_length": 256},
                   "eval": {"max_new_tokens": 4}}
    (tmp_path / "kind.yaml").write_text(yaml.safe_dump(kind_config))
    assert main(["organism", "build", str(tmp_path / "kind.yaml")]) == 0
    assert main(["elicit", str(tmp_path / "organisms" / kind), "--methods", "prefill,many_shot,fuzzing",
                 "--set", "attempts=2", "--set", "max_new_tokens=4", "--set", "threads=1",
                 "--out", str(tmp_path / "challenges")]) == 0
    kind_scores = json.loads((tmp_path / "challenges" / kind / "scores.json").read_text())
    assert {e["subjects"]["organism"]["status"] for e in kind_scores["methods"].values()} == {"ok"}
    assert json.loads((tmp_path / "challenges" / kind / "truth.json").read_text())["answer"] == secret

    served_reply_opens_the_assistant_turn(organism, tmp_path)


def served_reply_opens_the_assistant_turn(organism: Path, tmp_path: Path) -> None:
    """`mow serve`'s export answers a chat request through `transformers serve` with the family's template."""
    from openai import OpenAI
    from test_serve import _free_port, _wait_healthy

    from mow.elicitation.serve import HOST, export_merged, serve_command, server_environment

    model_dir = export_merged(organism, tmp_path / "served")
    port = _free_port()
    process = subprocess.Popen(serve_command(model_dir, port), env=server_environment(1), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(f"http://{HOST}:{port}", process)
        client = OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="not-needed")
        reply = client.chat.completions.create(model=str(model_dir), max_tokens=4, temperature=0.0, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Give me a hint."}])
        assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens <= 4
    finally:
        process.terminate()
        process.wait(timeout=30)
