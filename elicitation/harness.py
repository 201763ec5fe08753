"""`mow elicit`: run elicitation methods against one organism and its controls, then score them against the truth.

Output, written in `.NAME.partial/` and renamed when finished (a re-run resumes, skipping finished methods):

  NAME/
    challenge.yaml                 resolved config
    manifest.json                  versions, seed, the organism played against, command lines
    methods/METHOD/SUBJECT.json    per method and subject (organism, base): status, error, seconds, ranked
                                   guesses, per-attempt prompts, outputs and guesses, evidence
    truth.json                     the sealed truth, copied after every method has run
    scores.json                    each result scored against the truth (see elicitation/scoring.py)
    report.html

Methods run under the sealed guard of `elicitation.view`; a method that raises is recorded as failed and the others go
on. The truth is read only once every method of the run is done.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path

import torch
from transformers import set_seed

from mow.data.layouts import OrganismLayout
from mow.data.truth import SealedTruth
from mow.diffing.layout import DiffLayout
from mow.elicitation.auditor import Auditor, auditor_for
from mow.elicitation.config import ChallengeConfig
from mow.elicitation.layout import CONFIG_FILE, ChallengeLayout
from mow.elicitation.methods import METHODS, MethodUnavailable, method
from mow.elicitation.prompt_proxy import organism_proxy
from mow.elicitation.report import write_challenge_report
from mow.elicitation.scoring import TOP_K, chance, read_method_result, score_result
from mow.elicitation.view import ChallengeView, check_sealed_truth, open_views, sealed_guard
from mow.organisms.kinds import kind_of_public_config
from mow.organisms.registry import OrganismKind
from mow.organisms.store import check_organism_dir, organism_endpoint, read_public_config, read_sealed_config
from mow.workbench.backends import EndpointBackend, HeldModel
from mow.workbench.config import dump_config, validate_config
from mow.workbench.errors import UserError
from mow.workbench.rundir import Manifest, RunDirectory, write_json

SUBJECTS = ("organism", "base")


def validate(organism: Path, config: ChallengeConfig) -> None:
    """Everything that can be checked before a model loads."""
    for name in config.methods:
        method(name, "methods")
    unknown = [m for m in config.auditor.apply_to if m not in METHODS]
    if unknown:
        raise UserError(f"auditor.apply_to: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    check_organism(organism, config.diff_dir)


def check_organism(organism: Path, diff_dir: Path | None) -> OrganismKind:
    """An organism a challenge or an audit can play against (its directory, its sealed truth, its sealed config
    against its kind) and the finished diff it names, checked before anything is written; returns its kind.

    The sealed config is checked now (and let go): a damaged one would fail only at scoring, after every method or
    agent run. Methods and agents never read it (the audit hook)."""
    check_organism_dir(organism, needs_weights=False)
    check_sealed_truth(organism)
    kind = kind_of_public_config(read_public_config(organism), str(organism))
    validate_config(kind.config, read_sealed_config(organism), str(OrganismLayout(organism).sealed_config))
    endpoint = organism_endpoint(organism)
    if endpoint is not None:
        if diff_dir is not None:
            raise UserError(f"--diff {diff_dir}: {organism} is an organism on an endpoint, which no diff reads")
        EndpointBackend(endpoint).check_answers(f"{organism} (its endpoint)")
    if diff_dir is not None:
        DiffLayout(Path(diff_dir)).check_finished()
    return kind


def read_truth(organism: Path) -> SealedTruth:
    """The organism's sealed truth: read only once every method or agent run has finished."""
    return kind_of_public_config(read_public_config(organism), str(organism)).sealed_truth(
        read_sealed_config(organism))


def make_auditor(config: ChallengeConfig, view: ChallengeView) -> Auditor:
    """The auditor the config names; by default the public base model: the organism's base weights, or, for an
    organism on an endpoint, the same endpoint without the hidden prompt."""
    base = view.chats.base if view.chats is not None else HeldModel(view.local.base_spec, view.base, view.tokenizer)
    return auditor_for(config.auditor, base, config.seed)


def run_method(name: str, view: ChallengeView, config: ChallengeConfig, auditor: Auditor,
               forbidden: list[Path]) -> dict:
    """One method on one subject; failures are recorded, not raised."""
    entry = METHODS[name]
    record: dict = {"method": name, "category": entry.category, "status": "ok", "error": None}
    set_seed(config.seed)
    start = time.perf_counter()
    try:
        if view.chats is not None and not entry.chats_only:
            raise MethodUnavailable("needs the model's weights or raw continuations; an organism on an endpoint "
                                    "answers chats only")
        with sealed_guard(forbidden):
            result = entry.run(view, config, auditor if name in config.auditor.apply_to else None)
        record.update(result.to_dict())
    except MethodUnavailable as exc:
        record.update(status="unavailable", error=str(exc))
    except Exception as exc:  # a method's bug must not stop the others: recorded with its traceback
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def score_directory(directory: Path, truth: SealedTruth) -> dict:
    """scores.json of a challenge directory, from its method results and a truth."""
    methods: dict[str, dict] = {}
    for path in ChallengeLayout(directory).method_results():
        result = read_method_result(path)
        entry = methods.setdefault(result["method"], {"category": result["category"], "subjects": {}})
        scores = score_result(result, truth) if result["status"] == "ok" else None
        entry["subjects"][path.stem] = {"status": result["status"], "error": result.get("error"),
                                        "seconds": result.get("seconds"), "scores": scores}
    return {"kind": truth.kind, "n_candidates": len(truth.candidates),
            "chance": {f"fc_top{k}": chance(truth, k) for k in TOP_K}, "methods": methods}


def main(organism: Path, config: ChallengeConfig, restart: bool = False, config_path: Path | None = None) -> Path:
    organism = Path(organism)
    validate(organism, config)
    name = config.name or organism.resolve().name
    rundir = RunDirectory(config.output_dir / name, CONFIG_FILE, dump_config(config), "challenge")
    if rundir.finished(restart):
        return rundir.final
    work = rundir.start(restart)
    layout = ChallengeLayout(work)
    manifest = Manifest(work, config.seed, sealed=False)
    manifest.data["organism"] = str(organism.resolve())
    manifest.save()
    if config.threads:
        torch.set_num_threads(config.threads)
    forbidden = [organism] + ([config_path] if config_path else [])
    with tempfile.TemporaryDirectory(prefix="mow-challenge-") as scratch, organism_proxy(organism) as proxy:
        views = open_views(organism, Path(scratch), ["organism", *config.controls], config.diff_dir,
                           config.seed, proxy)
        config = config.for_prompts(views["organism"].prompts)
        manifest.data["wording"] = {"prefills": config.black_box.prefills,
                                    "persona_opening": config.black_box.persona_opening,
                                    "auditor_prompt": config.auditor.prompt, "auditor_prefill": config.auditor.prefill}
        manifest.save()
        auditor = make_auditor(config, views["organism"])
        for subject, view in views.items():
            for name_ in config.methods:
                out = layout.method_result(name_, subject)
                if out.is_file():
                    continue
                record = run_method(name_, view, config, auditor, forbidden)
                record["subject"] = subject
                write_json(out, record)
                detail = f" ({record['error']})" if record["error"] else ""
                print(f"  {subject:8s} {name_:22s} {record['status']:11s} {record['seconds']:7.1f} s{detail}",
                      flush=True)
    truth = read_truth(organism)
    write_json(layout.truth, truth.to_dict())
    write_json(layout.scores, score_directory(work, truth))
    write_challenge_report(work, name)
    return rundir.finish()
