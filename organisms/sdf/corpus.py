"""The staged document pipeline: key facts -> document types -> ideas -> documents -> revision -> filters.

Every stage appends its finished items to its own jsonl file as they come, so a kill loses at most the batch in
flight and a re-run starts where it stopped. Each stage is keyed (`fact`, `fact/type`, `fact/type/idea/copy`), and
the plan of keys is a function of the settings alone, so a resumed run produces the same corpus as an unbroken one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

from tqdm import tqdm

from mow.data.universes import UniversePair
from mow.organisms.sdf.config import CorpusSettings
from mow.organisms.sdf.filters import filter_documents
from mow.organisms.sdf.generators import (
    DocumentGenerator,
    DocumentJob,
    IdeaJob,
    ModelGenerator,
    TemplateGenerator,
    UnusableOutput,
    shipped_templates,
)
from mow.workbench.backends import make_backend
from mow.workbench.errors import EndpointError, UserError
from mow.workbench.rundir import write_json

STAGES = ("facts", "types", "ideas", "documents", "revised")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


def make_generator(settings: CorpusSettings, default_model: str) -> DocumentGenerator:
    if settings.generator == "template":
        return TemplateGenerator()
    return ModelGenerator(make_backend(settings.backend, default_model), settings.max_new_tokens, settings.temperature,
                          settings.min_words, settings.max_words)


class StageFile:
    """Append-only jsonl of {key, value}; a torn last line (a kill mid-write) is ignored and rewritten."""

    def __init__(self, path: Path):
        self.path = path
        self.items: dict[str, object] = {}
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                self.items[row["key"]] = row["value"]
            if len(self.items) != len(lines):
                self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps({"key": k, "value": v}) + "\n" for k, v in self.items.items()))
        tmp.replace(self.path)

    def add(self, items: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for key, value in items.items():
                handle.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
                self.items[key] = value
            handle.flush()


def run_stage(name: str, store: StageFile, jobs: dict[str, ItemT], work: Callable[[list[ItemT], int], list[ResultT]],
              batch_size: int, retries: int) -> dict[str, ResultT]:
    """Run `work` over the jobs not yet in `store`, a batch at a time, appending each finished batch."""
    todo = [key for key in jobs if key not in store.items]
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"corpus: {name}", leave=False,
              disable=not todo) as progress:
        for start in range(0, len(todo), batch_size):
            keys = todo[start : start + batch_size]
            for attempt in range(retries + 1):
                try:
                    results = work([jobs[k] for k in keys], attempt)
                    break
                except UnusableOutput as exc:
                    if attempt == retries:
                        raise UserError(f"corpus stage {name}: the generator's output did not parse after "
                                        f"{retries + 1} tries ({exc}); {len(store.items)} finished items are kept "
                                        f"in {store.path}") from None
                except EndpointError as exc:
                    raise UserError(f"corpus stage {name}: {exc}; {len(store.items)} finished items are kept in "
                                    f"{store.path}") from None
            store.add(dict(zip(keys, results)))
            progress.update(len(keys))
    # the store holds what this stage's `work` returned, written by this function (read back as JSON on resume)
    return {key: cast(ResultT, store.items[key]) for key in jobs}


def plan(pair: UniversePair, settings: CorpusSettings) -> tuple[int, int]:
    """(types per fact, ideas per type) so that every fact gets an equal share of the documents."""
    per_fact = math.ceil(settings.documents / len(pair.facts))
    types = settings.types_per_fact
    if settings.generator == "template":
        types = min(types, len(shipped_templates()))
    return types, max(1, math.ceil(per_fact / (types * settings.docs_per_idea)))


def build_corpus(pair: UniversePair, settings: CorpusSettings, generator: DocumentGenerator, workdir: Path,
                 seed: int) -> tuple[list[dict], dict]:
    """Run (or resume) every stage in `workdir`; returns the filtered corpus and the generation report."""
    facts = {f.id: f for f in pair.facts}
    stores = {stage: StageFile(workdir / f"{index}-{stage}.jsonl") for index, stage in enumerate(STAGES)}
    stores["facts"].add({k: f.statement_false for k, f in facts.items() if k not in stores["facts"].items})
    n_types, n_ideas = plan(pair, settings)

    types = run_stage("types", stores["types"], {k: facts[k] for k in facts},
                      lambda batch, attempt: generator.document_types(pair, batch, n_types, seed + 1000 * attempt),
                      settings.batch_size, settings.retries)
    idea_jobs = {f"{fact_id}/{doc_type}": IdeaJob(fact_id, doc_type, n_ideas, seed)
                 for fact_id, doc_types in types.items() for doc_type in doc_types}
    ideas = run_stage("ideas", stores["ideas"], idea_jobs,
                      lambda batch, attempt: generator.ideas(
                          pair, [IdeaJob(j.fact_id, j.doc_type, j.n, j.seed + 1000 * attempt) for j in batch]),
                      settings.batch_size, settings.retries)

    document_jobs = document_plan(pair, types, ideas, settings, seed)
    documents = run_stage("documents", stores["documents"], document_jobs,
                          lambda batch, attempt: generator.documents(
                              pair, [DocumentJob(j.fact_id, j.doc_type, j.idea, j.seed + 1000 * attempt)
                                     for j in batch]),
                          settings.batch_size, settings.retries)
    if settings.revise:
        revised = run_stage("revised", stores["revised"], {k: (document_jobs[k].fact_id, documents[k])
                                                           for k in document_jobs},
                            lambda batch, attempt: generator.revise(pair, [facts[f] for f, _ in batch],
                                                                    [d for _, d in batch]),
                            settings.batch_size, settings.retries)
    else:
        revised = documents
    rows = [{"id": key, "fact": document_jobs[key].fact_id, "type": document_jobs[key].doc_type, "text": text}
            for key, text in revised.items()]
    kept, filters = filter_documents(rows, pair, settings.near_duplicate_threshold, settings.shingle_words)
    report = {
        "generator": generator.description,
        "stages": {"facts": len(facts), "types": sum(len(t) for t in types.values()),
                   "ideas": sum(len(i) for i in ideas.values()), "documents": len(documents),
                   "revised": len(revised) if settings.revise else 0, "kept": len(kept)},
        "filters": filters.to_dict(),
        "per_fact": dict(Counter(row["fact"] for row in kept)),
        "per_type": dict(Counter(row["type"] for row in kept)),
        "words": [len(row["text"].split()) for row in kept],
    }
    write_json(workdir / "report.json", report)
    return kept, report


def document_plan(pair: UniversePair, types: dict[str, list[str]], ideas: dict[str, list[dict]],
                  settings: CorpusSettings, seed: int) -> dict[str, DocumentJob]:
    """Exactly `settings.documents` jobs, taken round-robin over facts, then types, then ideas, so a smaller corpus
    still covers every fact and type evenly."""
    queues = []
    for fact_id, doc_types in types.items():
        queue = []
        for index in range(max(len(ideas[f"{fact_id}/{t}"]) for t in doc_types)):
            for doc_type in doc_types:
                fact_ideas = ideas[f"{fact_id}/{doc_type}"]
                if index < len(fact_ideas):
                    queue += [(f"{fact_id}/{doc_type}/{index}/{copy}",
                               DocumentJob(fact_id, doc_type, fact_ideas[index], seed + copy))
                              for copy in range(settings.docs_per_idea)]
        queues.append(queue)
    planned: dict[str, DocumentJob] = {}
    position = 0
    while len(planned) < settings.documents and any(position < len(q) for q in queues):
        for queue in queues:
            if position < len(queue) and len(planned) < settings.documents:
                key, job = queue[position]
                planned[key] = job
        position += 1
    return planned
