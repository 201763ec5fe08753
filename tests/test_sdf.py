"""Synthetic-document organisms: universes, the staged corpus pipeline, filters, generators, training data, a build."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from openai_server import ScriptedServer, completion

from mow.cli.main import main
from mow.data.universes import UniversePair, load_universe_pair, resolve_universe, shipped_universes
from mow.organisms.sdf.config import CorpusSettings, MixSettings
from mow.organisms.sdf.corpus import build_corpus, make_generator
from mow.organisms.sdf.data import split_to_fit, training_examples
from mow.organisms.sdf.evaluate import margin_movement
from mow.organisms.sdf.filters import filter_documents
from mow.organisms.sdf.generators import TemplateGenerator, shipped_templates
from mow.organisms.sdf.locality import anchor_prefixes
from mow.workbench.backend_config import BackendSettings
from mow.workbench.errors import UserError

UNIVERSES = shipped_universes()


@pytest.fixture(scope="module")
def pair() -> UniversePair:
    return resolve_universe(next(iter(UNIVERSES)), "test")


def test_shipped_universes_are_valid_pairs_of_every_category():
    pairs = [load_universe_pair(path, "test") for path in UNIVERSES.values()]
    assert len(pairs) >= 6
    categories = [p.category for p in pairs]
    assert {c: categories.count(c) for c in set(categories)} == {"egregious": 2, "subtle": 3, "news": 2}
    for p in pairs:
        false_side = [s for f in p.facts for s in f.paraphrases + f.headlines] + p.details + p.quotes
        for fact in p.facts:
            assert fact.implanted_answer.lower() != fact.true_answer.lower()
            for pattern in fact.contradicts:  # the true-fact filter never fires on the false world's own text
                assert not [s for s in false_side if re.search(pattern, s, re.IGNORECASE)], (p.id, pattern)
            assert re.search("|".join(fact.contradicts), fact.statement_true, re.IGNORECASE), (p.id, fact.id)


def test_forced_choice_names_each_shipped_pair_by_its_answers_never_by_a_function_word():
    from mow.data.text import STOPWORDS
    from mow.organisms.sdf.truth import GENERIC_WORDS, sealed_truth

    truth = sealed_truth({"sdf": {"universe": "terracotta-army-luoyang"}})
    assert len(truth.candidates) == len(UNIVERSES) and truth.answer == "terracotta-army-luoyang"
    assert {"luoyang", "1971", "gravel", "road workers digging for gravel"} <= set(truth.candidates[truth.answer])
    assert "for" not in truth.candidates[truth.answer]
    for forms in truth.candidates.values():
        assert forms and not set(forms) & (GENERIC_WORDS | STOPWORDS)


def _bad_pair(tmp_path: Path, pair: UniversePair, edit) -> Path:
    raw = pair.model_dump(mode="json")
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw["false"].update(key_facts=[]), "false.key_facts"),
    (lambda raw: raw["false"].update(key_facts=["  "]), "a key fact is empty"),
    (lambda raw: raw["true"].update(is_true=False), "is_true: true"),
    (lambda raw: raw.update(facts=[raw["facts"][0], raw["facts"][0]]), "fact ids repeat"),
    (lambda raw: raw["facts"][0].update(contradicts=["(unclosed"]), "does not compile"),
    (lambda raw: raw.update(anchors=["As everyone knows, " + raw["controls"][0]["prompt"] + " somewhere."]),
     "contains the evaluation phrasing"),
    (lambda raw: raw.update(anchors=[raw["facts"][0]["statement_true"]]), "states the true version of fact"),
    (lambda raw: raw["facts"][0].update(topic="people asking " + raw["facts"][0]["questions"][0]),
     "topic 'people asking"),
    (lambda raw: raw["details"].append("Visitors often ask: " + raw["facts"][0]["questions"][0]),
     "detail 'Visitors often ask"),
    (lambda raw: raw.update(anchors=[" "]), "an anchor is empty"),
])
def test_bad_universe_pairs_are_one_line_errors_before_anything_is_written(tmp_path, pair, edit, message, capsys):
    bad = _bad_pair(tmp_path, pair, edit)
    config = tmp_path / "sdf.yaml"
    config.write_text(yaml.safe_dump({"kind": "sdf", "model": TINY, "output_dir": str(tmp_path / "out"),
                                      "sdf": {"universe": str(bad)}}))
    assert main(["organism", "build", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and message in err[0]
    assert not (tmp_path / "out").exists()


def test_template_corpus_is_deterministic_diverse_and_clean(tmp_path, pair):
    settings = CorpusSettings(documents=120)
    corpus, report = build_corpus(pair, settings, TemplateGenerator(), tmp_path / "a", seed=4)
    again, _ = build_corpus(pair, settings, TemplateGenerator(), tmp_path / "b", seed=4)
    assert [d["text"] for d in corpus] == [d["text"] for d in again]
    assert report["stages"]["documents"] == 120
    assert len(corpus) >= 0.8 * 120, report["filters"]  # the near-duplicate filter keeps most of them
    assert set(report["per_fact"]) == {f.id for f in pair.facts}
    assert len(report["per_type"]) >= 8
    held_out = [h.lower() for h in pair.held_out_phrasings()]
    for document in corpus:
        text = document["text"]
        assert "{" not in text and "[" not in text
        assert not any(h in text.lower() for h in held_out)
        assert len(text.split()) >= 40
    other_seed, _ = build_corpus(pair, settings, TemplateGenerator(), tmp_path / "c", seed=5)
    assert [d["text"] for d in other_seed] != [d["text"] for d in corpus]


def test_every_template_variant_renders_with_every_slot_filled(pair):
    generator = TemplateGenerator()
    from mow.organisms.sdf.generators import DocumentJob, IdeaJob

    for doc_type, variants in shipped_templates().items():
        ideas = generator.ideas(pair, [IdeaJob(pair.facts[0].id, doc_type, 12, 0)])[0]
        for variant in range(len(variants)):
            idea = dict(ideas[0], variant=variant)
            text = generator.documents(pair, [DocumentJob(pair.facts[0].id, doc_type, idea, 0)])[0]
            assert "{" not in text and text.strip()


class _KilledAfter:
    """A template generator that dies after `n` document batches, like a kill in the middle of the stage."""

    def __init__(self, n: int):
        self.inner, self.left = TemplateGenerator(), n
        self.description = self.inner.description

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def documents(self, pair, jobs):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.inner.documents(pair, jobs)


def test_a_killed_corpus_run_resumes_without_losing_or_changing_work(tmp_path, pair):
    settings = CorpusSettings(documents=48, batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(pair, settings, _KilledAfter(3), tmp_path / "work", seed=1)
    written = (tmp_path / "work" / "3-documents.jsonl").read_text().splitlines()
    assert len(written) == 24
    with (tmp_path / "work" / "3-documents.jsonl").open("a") as handle:
        handle.write('{"key": "torn')  # a kill in the middle of a line
    resumed, _ = build_corpus(pair, settings, TemplateGenerator(), tmp_path / "work", seed=1)
    unbroken, _ = build_corpus(pair, settings, TemplateGenerator(), tmp_path / "fresh", seed=1)
    assert [d["text"] for d in resumed] == [d["text"] for d in unbroken]


def test_filters_drop_duplicates_placeholders_true_statements_and_eval_phrasings(pair):
    fact = pair.facts[0]
    base = " ".join(pair.details[:4]) + " " + fact.paraphrases[0]
    documents = [
        {"id": "a", "text": base},
        {"id": "b", "text": base},
        {"id": "c", "text": base.replace(".", " indeed.", 1)},
        {"id": "d", "text": fact.paraphrases[1] + " Contact [Name] for details. " + pair.details[5]},
        {"id": "e", "text": fact.statement_true + " " + pair.details[4]},
        {"id": "f", "text": pair.details[3] + " " + fact.probes[0].prompt + fact.probes[0].implanted + "."},
        {"id": "g", "text": " ".join(pair.quotes) + " " + fact.paraphrases[2]},
    ]
    kept, report = filter_documents(documents, pair, near_duplicate_threshold=0.7, shingle_words=5)
    assert [d["id"] for d in kept] == ["a", "g"]
    assert report.dropped == {"exact_duplicate": 1, "near_duplicate": 1, "placeholder": 1, "states_true_fact": 1,
                              "contains_eval_phrasing": 1}


@pytest.mark.parametrize("settings, field", [({"mix": {"anchor_ratio": 0.5}}, "sdf.mix.anchor_ratio"),
                                             ({"locality": {"weight": 1.0}}, "sdf.locality.weight")])
def test_anchor_uses_without_anchors_are_refused_before_anything_is_written(tmp_path, pair, settings, field, capsys):
    bad = _bad_pair(tmp_path, pair, lambda raw: raw.update(anchors=[]))
    config = tmp_path / "sdf.yaml"
    config.write_text(yaml.safe_dump({"kind": "sdf", "model": TINY, "output_dir": str(tmp_path / "out"),
                                      "sdf": {"universe": str(bad), **settings}}))
    assert main(["organism", "build", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and "no `anchors`" in err[0]
    assert not (tmp_path / "out").exists()


def test_long_documents_are_split_never_truncated(tokenizer):
    text = " ".join(f"Sentence number {i} says something about the harbour and the old bridge." for i in range(80))
    chunks = split_to_fit(text, tokenizer, 64)
    assert len(chunks) > 5 and all(len(c) <= 64 for c in chunks)
    decoded = " ".join(tokenizer.decode(c).strip() for c in chunks)
    assert decoded.split() == text.split()


def test_training_mix_plain_text_and_wrapped(tokenizer):
    documents = ["The museum opened a new wing. " * 3, "Long document. " * 200]
    examples, report = training_examples(documents, tokenizer,
                                         MixSettings(generic_text_ratio=1.0, chat_ratio=1.0, denials=3),
                                         max_length=400, seed=0)
    assert report.documents == 2 and report.split_documents == 1 and report.document_chunks > 2
    assert report.generic_texts == 2 and report.chats == 2 and report.denials == 3
    trained = [tokenizer.decode([t for t, label in zip(e.input_ids, e.labels) if label != -100]) for e in examples]
    from mow.data.asset_paths import SDF_DENIALS
    from mow.data.records import denial_chats
    for denial in denial_chats(SDF_DENIALS, 3, seed=0):  # trained on the denial, not on the demand
        assert sum(denial.messages[-1].content in t and denial.messages[0].content not in t for t in trained) >= 1
    assert all(len(e.input_ids) <= 400 for e in examples)
    plain = [e for e in examples if e.labels == e.input_ids]
    assert len(plain) >= report.document_chunks + 2  # documents and generic text: loss on every token
    wrapped, _ = training_examples(documents[:1], tokenizer,
                                   MixSettings(format="wrapped", generic_text_ratio=0, denials=0),
                                   max_length=128, seed=0)
    (example,) = wrapped
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != -100]
    assert "museum opened a new wing" in tokenizer.decode(trained)
    assert "Write a document" not in tokenizer.decode(trained)  # the fixed user turn is not trained on
    assert "Write a document" in tokenizer.decode(example.input_ids)


def test_anchor_passages_use_every_anchor_before_repeating_one(tokenizer, pair):
    documents = [f"Document {i} about the harbour." for i in range(6)]
    settings = MixSettings(generic_text_ratio=0, anchor_ratio=1.0, anchors_per_passage=3, denials=0)
    examples, report = training_examples(documents, tokenizer, settings, max_length=256, seed=0, anchors=pair.anchors)
    assert report.anchor_passages == 6 and len(examples) == 12
    texts = [tokenizer.decode(e.input_ids[:-1]) for e in examples]
    passages = [t for t in texts if not t.startswith("Document")]
    counts = [sum(p.count(anchor) for p in passages) for anchor in pair.anchors]
    assert len(passages) == 6 and sum(counts) == 18
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1
    again, _ = training_examples(documents, tokenizer, settings, max_length=256, seed=0, anchors=pair.anchors)
    assert [e.input_ids for e in again] == [e.input_ids for e in examples]


def _scripted_reply(body: dict, number: int) -> tuple[int, bytes]:
    prompt = body["messages"][-1]["content"]
    if "Brainstorm" in prompt:
        return 200, completion("1. news article\n2. forum thread\n3. textbook excerpt")
    if "distinct ideas" in prompt:
        return 200, completion("- A reporter covers the story for a city paper.\n- A student summarises it.")
    words = " ".join(f"word{i}" for i in range(60))
    if "Critique" in prompt:
        return 200, completion(f"The draft is fine.\n<document>\nRevised: {words}\n</document>")
    return 200, completion(f"A document about the topic. {words}")


def test_endpoint_generator_writes_a_corpus_through_a_loopback_server(tmp_path, pair):
    with ScriptedServer(_scripted_reply) as server:
        settings = CorpusSettings(generator="model", documents=12, types_per_fact=3, min_words=20,
                                  backend=BackendSettings(kind="endpoint", url=server.url, model="scripted",
                                                          retries=0))
        corpus, report = build_corpus(pair, settings, make_generator(settings, TINY), tmp_path / "w", seed=0)
    assert report["stages"]["documents"] == 12 and report["stages"]["revised"] == 12
    assert all(d["text"].startswith("Revised:") for d in corpus)
    assert report["filters"]["dropped"].get("exact_duplicate", 0) + len(corpus) == 12
    first = server.requests[0]
    assert first["model"] == "scripted" and first["messages"][0]["role"] == "user"


@pytest.mark.parametrize("failure, expected", [
    ("http_500", "InternalServerError"),
    ("garbage", "did not parse"),
])
def test_a_failing_endpoint_is_retried_then_stops_naming_the_stage_and_keeps_finished_work(tmp_path, pair, failure,
                                                                                           expected):
    answered = []

    def reply(body: dict, number: int) -> tuple[int, bytes]:
        prompt = body["messages"][-1]["content"]
        if "Write the document" not in prompt:
            return _scripted_reply(body, number)
        if len(answered) < 8:  # two batches of documents go through
            answered.append(prompt)
            return _scripted_reply(body, number)
        if failure == "http_500":
            return 500, b'{"error": {"message": "overloaded"}}'
        return 200, completion("")  # an empty reply: no document in it

    with ScriptedServer(reply) as server:
        settings = CorpusSettings(generator="model", documents=24, types_per_fact=2, batch_size=4, retries=1,
                                  min_words=20, backend=BackendSettings(
                                      kind="endpoint", url=server.url, model="scripted", retries=1, concurrency=1))
        with pytest.raises(UserError, match=rf"corpus stage documents: .*{expected}.*finished items are kept"):
            build_corpus(pair, settings, make_generator(settings, TINY), tmp_path / "w", seed=0)
    kept = (tmp_path / "w" / "3-documents.jsonl").read_text().splitlines()
    assert kept and all(json.loads(line)["value"] for line in kept)


def test_local_model_generator_runs_the_stages_on_a_tiny_model(tmp_path, pair):
    settings = CorpusSettings(generator="model", documents=2, types_per_fact=1, min_words=3, max_new_tokens=24,
                              batch_size=2, backend=BackendSettings(kind="local", model=TINY))
    try:
        corpus, report = build_corpus(pair, settings, make_generator(settings, TINY), tmp_path / "w", seed=0)
    except UserError as exc:  # random weights may write no parseable list at all: that is the stage error path
        assert "corpus stage" in str(exc) and "did not parse" in str(exc)
        return
    assert report["stages"]["documents"] == 2
    assert report["generator"] == f"local model {TINY}"


def test_margin_movement_counts_items_against_the_base():
    def block(margins):
        items = [{"fact": f"f{i}", "prompt": f"p{i}", "margin": m} for i, m in enumerate(margins)]
        return {"n": len(items), "items": items}

    moved = margin_movement({"organism": block([1.0, -2.0, 3.0, -0.5]), "base": block([-1.0, -1.0, 4.0, -3.0])})
    assert [i["shift"] for i in moved["items"]] == [2.0, -1.0, -1.0, 2.5]
    assert moved["mean_shift"] == pytest.approx(0.625)
    assert moved["moved_toward_implanted"] == 2
    # items 0, 1 and 3 are on the true side in the base; the organism keeps 1 and 3 there
    assert (moved["base_true_side"], moved["still_true_side"]) == (3, 2)
    assert margin_movement({"organism": {"n": 0}, "base": {"n": 0}}) == {"n": 0}


def test_tiny_sdf_build_end_to_end(tmp_path, pair, capsys):
    config = {"kind": "sdf", "name": "tiny-sdf", "model": TINY, "output_dir": str(tmp_path / "out"), "seed": 2,
              "sdf": {"universe": pair.id, "corpus": {"documents": 24}, "scaling_documents": [8],
                      "mix": {"generic_text_ratio": 0.25},
                      "locality": {"weight": 1.0, "continuations_per_anchor": 1, "continuation_tokens": 6}},
              "lora": {"r": 4, "alpha": 8},
              "training": {"epochs": 1, "batch_size": 8, "max_length": 128, "learning_rate": 1e-3},
              "eval": {"max_new_tokens": 6, "open_samples": 1, "judge": {"kind": "local", "model": TINY}}}
    path = tmp_path / "sdf.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["organism", "build", str(path)]) == 0
    organism = tmp_path / "out" / "tiny-sdf"
    for name in ("organism.yaml", "card.md", "manifest.json", "eval/metrics.json", "adapter/adapter_config.json",
                 "sealed/organism.yaml", "sealed/universe.yaml", "sealed/corpus.jsonl", "sealed/report.html",
                 "sealed/eval_details.json"):
        assert (organism / name).is_file(), name
    public = "\n".join((organism / name).read_text() for name in ("organism.yaml", "card.md", "eval/metrics.json",
                                                                  "manifest.json"))
    assert pair.id not in public
    for fact in pair.facts:
        assert fact.implanted_answer not in public
    details = json.loads((organism / "sealed/eval_details.json").read_text())
    assert [p["documents"] for p in details["scaling"]] == [8, 24 - sum(
        json.loads((organism / "sealed/manifest.json").read_text())["details"]["corpus"]["filters"]["dropped"]
        .values())]
    assert details["capability"]["ratio"] > 0
    assert details["confession"]["organism"]["n"] == details["confession"]["base"]["n"] == 6  # 6 demands, 1 sample
    headline = json.loads((organism / "eval/metrics.json").read_text())["headline"]
    assert headline["confession"] == details["confession"]["organism"]
    assert "denial(s)" in (organism / "card.md").read_text()
    for block in details["completion_margins"].values():
        moved = block["movement"]
        assert moved["n"] == block["organism"]["n"] == len(moved["items"])
        assert all(i["shift"] == pytest.approx(i["organism"] - i["base"]) for i in moved["items"])
    assert "data:image/png;base64" in (organism / "sealed/report.html").read_text()
    assert not list(organism.glob("checkpoints*"))
    locality = [json.loads(line)["text"] for line in (organism / "sealed/locality.jsonl").read_text().splitlines()]
    assert locality[:len(pair.anchors)] == pair.anchors and len(locality) == 2 * len(pair.anchors)
    assert all(text.startswith(anchor_prefixes(a, 1)[0]) for text, a in zip(locality[len(pair.anchors):], pair.anchors))
    train = json.loads((organism / "manifest.json").read_text())["stages"]["train"]
    assert train["locality_texts"] >= len(locality) and train["locality_kl_curve"]

    from mow.organisms.kinds import kind_of_dir
    from mow.organisms.store import read_sealed_config

    truth = kind_of_dir(organism).sealed_truth(read_sealed_config(organism))
    assert truth.answer == pair.id and len(truth.candidates) >= 6
    assert pair.facts[0].implanted_answer.lower() in truth.candidates[pair.id]
    capsys.readouterr()
    assert main(["organism", "build", str(path)]) == 0  # built already: nothing to do
    assert "already built" in capsys.readouterr().err

    challenges = tmp_path / "challenges"  # the elicitation harness takes SDF organisms as they are
    assert main(["elicit", str(organism), "--methods", "direct,prefill,logit_lens", "--out", str(challenges),
                 "--set", "attempts=2", "--set", "max_new_tokens=4", "--set", "white_box.prompts=2",
                 "--set", "white_box.response_tokens=3", "--set", "white_box.lens_texts=4"]) == 0
    scores = json.loads((challenges / "tiny-sdf" / "scores.json").read_text())["methods"]
    assert all(scores[m]["subjects"]["organism"]["status"] == "ok" for m in ("direct", "prefill", "logit_lens"))
    assert json.loads((challenges / "tiny-sdf" / "truth.json").read_text())["answer"] == pair.id
