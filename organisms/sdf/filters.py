"""Corpus filters: exact and near duplicates, placeholder text, documents that state the true fact, and documents
that contain an evaluation phrasing (which would turn a held-out test into a memory test).

Near duplicates are found with MinHash LSH over word shingles (datasketch), so the pass stays linear in the corpus.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from datasketch import MinHash, MinHashLSH

from mow.data.universes import UniversePair, normalise
from mow.organisms.sdf.generators import PLACEHOLDER

NUM_PERM = 128


@dataclass
class FilterReport:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped)}


def shingles(text: str, width: int) -> set[str]:
    words = normalise(text).split()
    return {" ".join(words[i : i + width]) for i in range(max(1, len(words) - width + 1))}


def minhash(text: str, width: int) -> MinHash:
    signature = MinHash(num_perm=NUM_PERM, seed=1)
    signature.update_batch([s.encode() for s in shingles(text, width)])
    return signature


def drop_reason(document: dict, pair: UniversePair, held_out: list[str]) -> str | None:
    text = document["text"]
    if PLACEHOLDER.search(text):
        return "placeholder"
    if any(fact.true_statement_in(text) for fact in pair.facts):
        return "states_true_fact"
    flat = normalise(text)
    if any(phrase in flat for phrase in held_out):
        return "contains_eval_phrasing"
    return None


def filter_documents(documents: list[dict], pair: UniversePair, near_duplicate_threshold: float,
                     shingle_words: int) -> tuple[list[dict], FilterReport]:
    """Keep documents in order, dropping each for the first filter it fails."""
    report = FilterReport()
    held_out = [normalise(p) for p in pair.held_out_phrasings()]
    lsh = MinHashLSH(threshold=near_duplicate_threshold, num_perm=NUM_PERM)
    seen_exact: set[str] = set()
    kept = []
    for document in documents:
        reason = drop_reason(document, pair, held_out)
        key = normalise(document["text"])
        if reason is None and key in seen_exact:
            reason = "exact_duplicate"
        signature = minhash(document["text"], shingle_words)
        if reason is None and lsh.query(signature):
            reason = "near_duplicate"
        if reason:
            report.dropped[reason] += 1
            continue
        seen_exact.add(key)
        lsh.insert(document["id"], signature)
        kept.append(document)
    report.kept = len(kept)
    return kept, report
