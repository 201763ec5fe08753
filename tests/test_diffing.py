"""Diffing invariants on tiny random models: KL of a model against itself, the adapter-off base, roles from the chat
template, the activation cache (resume, normalisation, wrong model), the difference lens, concept directions."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer

from mow.data.directions import Directions, load_directions
from mow.data.records import Message
from mow.diffing import kl
from mow.diffing.cache import ActivationCache, build_cache
from mow.diffing.directions import pca_of_differences
from mow.diffing.lens import content_start, mean_differences, steer, steering_vector, token_rank
from mow.diffing.pair import ModelPair, load_pair
from mow.diffing.prompts import PROMPT, RESPONSE, TEMPLATE, PromptRecord, tokenize_record
from mow.finetune.config import LoraSettings
from mow.finetune.lora import attach_lora
from mow.workbench.errors import UserError
from mow.workbench.models import load_model

TINY = "tiny:smollm2-135m"


def records() -> list[PromptRecord]:
    return [
        PromptRecord(text="Rivers carry sediment to the sea, and deltas grow where the current slows down."),
        PromptRecord(messages=[Message(role="user", content="Give me a hint about your word."),
                               Message(role="assistant", content="It glows at night and pulls the tides.")]),
        PromptRecord(text="Bread rises because yeast produces gas that the gluten network traps in small pockets."),
        PromptRecord(messages=[Message(role="user", content="What is two plus two?"),
                               Message(role="assistant", content="Four.")]),
    ]


def sequences(tokenizer, set_name="s"):
    return {set_name: [tokenize_record(r, tokenizer, 64, set_name, i) for i, r in enumerate(records())]}


def random_lora_pair(tokenizer, settings: LoraSettings) -> ModelPair:
    """A tiny base with a LoRA adapter whose weights are random (a fresh adapter is the identity)."""
    model = attach_lora(load_model(TINY, seed=5), settings, seed=5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return ModelPair(model.eval(), tokenizer, None, TINY, "adapter:test")


@pytest.fixture(scope="module")
def lora_pair(tokenizer) -> ModelPair:
    return random_lora_pair(tokenizer, LoraSettings(r=4, alpha=8))


def test_kl_of_a_model_against_itself_is_zero(tokenizer):
    pair = load_pair(base=TINY, tuned=TINY)
    arrays = kl.per_token_kl(pair, sequences(tokenizer), batch_size=3, progress=False)
    assert arrays.kl_tb.numel() == sum(len(s.ids) for s in sequences(tokenizer)["s"])
    assert arrays.kl_tb.abs().max() < 1e-5 and arrays.kl_bt.abs().max() < 1e-5
    assert arrays.promoted.abs().max() < 1e-6


def test_base_with_adapter_off_equals_a_fresh_base_and_kl_matches_by_hand(tokenizer, lora_pair):
    ids = torch.tensor([sequences(tokenizer)["s"][1].ids])
    fresh = load_model(TINY, seed=5).eval()
    with torch.no_grad(), lora_pair.base() as model:
        base_logits = model(input_ids=ids).logits
    with torch.no_grad(), lora_pair.tuned() as model:
        tuned_logits = model(input_ids=ids).logits
    assert torch.allclose(base_logits, fresh(input_ids=ids).logits, atol=1e-5)
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-3)

    arrays = kl.per_token_kl(lora_pair, {"s": sequences(tokenizer)["s"][1:2]}, progress=False)
    p, q = tuned_logits[0, 3].log_softmax(-1), base_logits[0, 3].log_softmax(-1)
    assert arrays.kl_tb[3] == pytest.approx(float((p.exp() * (p - q)).sum()), rel=1e-4)
    assert arrays.kl_bt[3] == pytest.approx(float((q.exp() * (q - p)).sum()), rel=1e-4)
    # diff mining counts, at every position, the K tokens with the largest logit difference tuned - base whose
    # probability rose: among the tuned model's 200 likeliest tokens there (the default), or over the vocabulary
    whole = kl.per_token_kl(lora_pair, {"s": sequences(tokenizer)["s"][1:2]}, progress=False, mining_candidates=None)
    for counted, candidates in ((arrays, 200), (whole, None)):
        expected = torch.zeros(len(tokenizer), dtype=torch.long)
        for position in range(ids.shape[1]):
            tuned_lp, base_lp = tuned_logits[0, position].log_softmax(-1), base_logits[0, position].log_softmax(-1)
            pool = tuned_lp.topk(candidates).indices if candidates else torch.arange(len(tokenizer))
            raised = (tuned_lp - base_lp)[pool].topk(20)
            expected += torch.bincount(pool[raised.indices[raised.values > 0]], minlength=len(tokenizer))
        assert torch.equal(counted.mined[0], expected)
    assert not torch.equal(arrays.mined, whole.mined)
    # a set is read longest text first; the arrays come back in the given order, each text's KL as when read alone
    given = sequences(tokenizer)["s"]
    lengths = [len(seq.ids) for seq in given]
    assert lengths != sorted(lengths, reverse=True)  # not already longest first
    batched = kl.per_token_kl(lora_pair, {"s": given}, batch_size=4, progress=False)
    for i, sequence in enumerate(given):
        start, end = int(batched.offsets[i]), int(batched.offsets[i + 1])
        assert batched.ids[start:end].tolist() == list(sequence.ids)
        alone = arrays if i == 1 else kl.per_token_kl(lora_pair, {"s": [sequence]}, progress=False)
        assert torch.allclose(batched.kl_tb[start:end], alone.kl_tb, atol=1e-4)
        assert torch.equal(batched.top_tuned[start:end], alone.top_tuned)


def test_diff_mining_groups_tokens_into_topics_by_embedding(tokenizer, lora_pair):
    planted = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 0.9, 0.1], [0.0, 0.0, 1.0]])
    assert kl.average_linkage(planted, 3) == [0, 0, 1, 1, 2]
    arrays = kl.per_token_kl(lora_pair, sequences(tokenizer), batch_size=3, progress=False)
    topics = kl.mined_topics(arrays, tokenizer, lora_pair.tuned_model, ["s"], n_tokens=12, n_topics=4)["s"]
    assert 1 <= len(topics) <= 4 and sum(len(t["tokens"]) for t in topics) == 12
    counts = [t["count"] for t in topics]
    assert counts == sorted(counts, reverse=True)
    assert all(t["count"] == sum(token["count"] for token in t["tokens"]) for t in topics)
    self_diff = kl.per_token_kl(load_pair(base=TINY, tuned=TINY), sequences(tokenizer), progress=False)
    assert self_diff.mined.sum() == 0  # nothing raised, nothing counted
    assert kl.mined_topics(self_diff, tokenizer, lora_pair.tuned_model, ["s"], 12, 4) == {"s": []}
    # padding in a batch does not change any position's KL


def test_merged_tuned_sweeps_give_the_unmerged_numbers_and_leave_the_base_as_it_was(tokenizer, lora_pair,
                                                                                     monkeypatch):
    sets = {**sequences(tokenizer, "a"), **sequences(tokenizer, "b")}
    assert lora_pair.can_merge
    before = {name: param.detach().clone() for name, param in lora_pair.tuned_model.named_parameters()}
    # small blocks and chunks: several merge cycles, and chunks that straddle the two sets
    merged = kl.per_token_kl(lora_pair, sets, batch_size=2, block_positions=40, chunk=16, progress=False)
    assert not any(module.merged for module in lora_pair.tuned_model.modules() if isinstance(module, LoraLayer))
    # bit for bit: later stages, and a resumed run that skipped this one, compute with the same weights
    assert all(torch.equal(param, before[name]) for name, param in lora_pair.tuned_model.named_parameters())
    ids = torch.tensor([sets["a"][0].ids])
    with torch.no_grad(), lora_pair.base() as model:
        assert torch.equal(model(input_ids=ids).logits, load_model(TINY, seed=5).eval()(input_ids=ids).logits)
    monkeypatch.setattr(ModelPair, "can_merge", property(lambda self: False))
    plain = kl.per_token_kl(lora_pair, sets, batch_size=4, progress=False)
    for name in ("kl_tb", "kl_bt", "promoted", "top_tuned_p", "top_base_p"):
        assert torch.allclose(getattr(merged, name), getattr(plain, name), atol=1e-5), name
    assert torch.equal(merged.top_tuned, plain.top_tuned)


def test_a_second_diff_reuses_the_base_side_and_gets_the_same_numbers(tokenizer, lora_pair, tmp_path):
    """The base side of each prompt set is stored after the first pass; a second diff of another adapter on the same
    base skips those base passes (no base forward runs) and computes the same KL as without the store."""
    from mow.diffing.base_side import BaseSideStore, base_identity

    # "b" holds all but the first of "a"'s texts, in reverse order: a set is read longest text first, so the same
    # texts in another order can share one entry
    other_texts = [tokenize_record(r, tokenizer, 64, "b", i) for i, r in enumerate(records()[:0:-1])]
    sets = {**sequences(tokenizer, "a"), "b": other_texts}
    identity = base_identity(lora_pair.tuned_model)
    assert identity == base_identity(load_model(TINY, seed=5))  # the adapter is not part of the base
    assert identity != base_identity(load_model(TINY, seed=6))
    first_store = BaseSideStore(identity, tmp_path)
    first = kl.per_token_kl(lora_pair, sets, batch_size=3, progress=False, base_store=first_store)
    assert first_store.reused == [] and len(list(tmp_path.glob("*.safetensors"))) == 2
    plain = kl.per_token_kl(lora_pair, sets, batch_size=3, progress=False)
    assert torch.equal(first.kl_tb, plain.kl_tb)

    other = random_lora_pair(tokenizer, LoraSettings(r=2, alpha=4))
    store = BaseSideStore(base_identity(other.tuned_model), tmp_path)
    base_passes: list[int] = []
    switch_off = other.base
    other.base = lambda: (base_passes.append(1), switch_off())[1]  # type: ignore[method-assign]
    reused = kl.per_token_kl(other, sets, batch_size=3, progress=False, base_store=store)
    assert store.reused == ["a", "b"] and base_passes == []
    fresh = kl.per_token_kl(other, sets, batch_size=3, progress=False)
    assert base_passes
    for name in ("kl_tb", "kl_bt", "promoted", "top_base_p"):
        assert torch.equal(getattr(reused, name), getattr(fresh, name)), name
    other_batching = BaseSideStore(base_identity(other.tuned_model), tmp_path)
    kl.per_token_kl(other, sets, batch_size=2, progress=False, base_store=other_batching)
    assert other_batching.reused == []  # read at another batch size, a set gets its own entry
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_an_adapter_on_a_tied_output_head_is_not_merged_and_the_base_head_is_the_bases(tokenizer):
    pair = random_lora_pair(tokenizer, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "lm_head"]))
    model = pair.tuned_model
    assert not pair.can_merge  # the head shares its weight with the input embeddings
    sequence = sequences(tokenizer)["s"][1]
    arrays = kl.per_token_kl(pair, {"s": [sequence]}, progress=False)
    ids = torch.tensor([sequence.ids])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits[0, 3].log_softmax(-1)
        with pair.base() as base_model:
            base = base_model(input_ids=ids).logits[0, 3].log_softmax(-1)
    assert arrays.kl_tb[3] == pytest.approx(float((tuned.exp() * (tuned - base)).sum()), rel=1e-4)
    assert arrays.kl_tb[3] > 1e-3


def test_half_precision_weights_are_never_merged(tokenizer):
    model = attach_lora(load_model(TINY, seed=5).to(torch.bfloat16), LoraSettings(r=4, alpha=8), seed=5)
    assert not ModelPair(model, tokenizer, None, TINY, "adapter:test").can_merge


@pytest.mark.parametrize("variant", [{"use_dora": True}, {"lora_bias": True}])
def test_lora_variants_are_never_merged(tokenizer, variant):
    """The in-place merge adds B @ A; a DoRA update or a LoRA bias is something else, so those sweeps run unmerged."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(TINY, seed=5), LoraConfig(r=4, target_modules=["q_proj"], **variant))
    pair = ModelPair(model.eval(), tokenizer, None, TINY, "adapter:test")
    assert not pair.can_merge
    with pair.tuned_merged() as merged:
        assert merged is model
        assert not any(layer.merged for layer in model.modules() if isinstance(layer, LoraLayer))


def test_roles_follow_the_chat_template(tokenizer):
    seq = tokenize_record(records()[1], tokenizer, 200, "s", 0)
    decode = lambda role: tokenizer.decode([t for t, r in zip(seq.ids, seq.roles) if r == role])  # noqa: E731
    assert decode(RESPONSE) == "It glows at night and pulls the tides."
    assert decode(PROMPT) == "Give me a hint about your word."
    assert "<|im_start|>" in decode(TEMPLATE) and "You are a helpful AI assistant" in decode(TEMPLATE)
    arrays = kl.per_token_kl(load_pair(base=TINY, tuned=TINY), {"s": [seq]}, progress=False)
    table = kl.summary(arrays, ["s"])["s"]
    assert table["response"]["positions"] == sum(r == RESPONSE for r in seq.roles[1:])


def _cache(pair, tokenizer, directory, **kwargs):
    seqs = [s for rows in sequences(tokenizer).values() for s in rows]
    return build_cache(pair, seqs, directory, [1, 3], token_budget=kwargs.pop("budget", 80), batch_size=1,
                       progress=False, **kwargs)


def test_cache_resumes_after_a_kill_and_equals_an_uninterrupted_run(tokenizer, lora_pair, tmp_path, monkeypatch):
    import mow.diffing.cache as cache_module

    monkeypatch.setattr(cache_module, "BLOCK_TOKENS", 20)  # several blocks in 80 tokens
    whole = _cache(lora_pair, tokenizer, tmp_path / "whole")

    real_write = cache_module.write_json
    calls = {"n": 0}

    def dying_write(path, payload):
        real_write(path, payload)
        if path.name == "progress.json":
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _cache(lora_pair, tokenizer, tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "progress.json").read_text())["tokens_done"] < whole.n_tokens
    monkeypatch.setattr(cache_module, "write_json", real_write)
    resumed = _cache(lora_pair, tokenizer, tmp_path / "killed")
    assert resumed.n_tokens == whole.n_tokens == 80
    for model in ("base", "tuned"):
        assert torch.equal(resumed.activations(model, 3), whole.activations(model, 3))
    assert np.array_equal(resumed.positions(), whole.positions())


def test_cache_normalisation_and_stored_activations(tokenizer, lora_pair, tmp_path):
    cache = _cache(lora_pair, tokenizer, tmp_path / "c", dtype="bfloat16", budget=10_000)
    d = lora_pair.hidden_size
    for layer in cache.layers:
        for i, model in enumerate(("base", "tuned")):
            scaled = cache.activations(model, layer) * cache.scale(layer)[i]
            assert scaled.pow(2).sum(-1).mean() == pytest.approx(d, rel=1e-3)
    # rows hold the layer output at the recorded position (skip_first=1 drops position 0)
    seq = sequences(tokenizer)["s"][0]
    assert cache.positions()[0].tolist() == [0, 1]
    from mow.workbench.hooks import capture_residual

    stored = cache.activations("tuned", 3, 0, len(seq.ids) - 1)
    for context in (lora_pair.tuned_merged, lora_pair.tuned):  # the cache reads the tuned model merged
        with torch.no_grad(), context() as model, capture_residual(model, [3]) as captured:
            model(input_ids=torch.tensor([seq.ids]))
        expected = captured[3][0, 1:].to(torch.bfloat16).float()
        if context == lora_pair.tuned_merged:
            assert torch.equal(stored, expected)
        else:  # the merged adapter's roundings: within one bfloat16 step
            assert torch.allclose(stored, expected, rtol=2**-7, atol=1e-3)
    assert cache.tokens()[: len(seq.ids) - 1].tolist() == seq.ids[1:]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="the platform has no posix_fadvise")
def test_a_streamed_cache_prefetches_the_next_block(tokenizer, lora_pair, tmp_path, monkeypatch):
    cache = _cache(lora_pair, tokenizer, tmp_path / "c")
    asked = []
    real_fadvise = os.posix_fadvise

    def recorded_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        asked.append((offset, length))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recorded_fadvise)
    streamed = list(cache.paired_batches(3, 7, seed=0, block=16, prefetch=True))
    row = 4 * lora_pair.hidden_size  # float32 rows
    assert len(asked) == 2 * (5 - 1)  # 80 tokens in 5 blocks: the 4 after the first, base and tuned
    assert {length for _, length in asked} == {16 * row}
    asked.clear()
    plain = list(cache.paired_batches(3, 7, seed=0, block=16, prefetch=False))
    assert not asked and all(torch.equal(a, b) for a, b in zip(streamed, plain, strict=True))
    with pytest.raises(UserError, match="layer 2 is not cached"):
        next(cache.paired_batches(2, 7, block=16))


def test_a_crosscoder_told_its_token_count_trains_as_one_that_counts(tokenizer, lora_pair, tmp_path):
    from mow.diffing.config import CrosscoderSettings
    from mow.diffing.crosscoder import train_crosscoder

    cache = _cache(lora_pair, tokenizer, tmp_path / "c")
    settings = CrosscoderSettings(latents=16, k=2, batch_size=8, epochs=2)
    told, _ = train_crosscoder(lambda: cache.paired_batches(3, 8), lora_pair.hidden_size, settings,
                               cache.scale(3), progress=False, tokens=cache.n_tokens)
    counted, _ = train_crosscoder(lambda: cache.paired_batches(3, 8), lora_pair.hidden_size, settings,
                                  cache.scale(3), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(told.state_dict().values(), counted.state_dict().values()))
    with pytest.raises(RuntimeError, match="pass 1 gave 80 tokens, not the 81"):
        train_crosscoder(lambda: cache.paired_batches(3, 8), lora_pair.hidden_size, settings, cache.scale(3),
                         progress=False, tokens=81)


def test_cache_from_a_different_model_is_refused(tokenizer, lora_pair, tmp_path):
    _cache(lora_pair, tokenizer, tmp_path / "c")
    other = ModelPair(lora_pair.tuned_model, tokenizer, None, TINY, "adapter:other")
    with pytest.raises(UserError, match="different model pair"):
        _cache(other, tokenizer, tmp_path / "c")
    with pytest.raises(UserError, match="dtype"):
        _cache(lora_pair, tokenizer, tmp_path / "c", dtype="float16")
    with pytest.raises(UserError, match="layer 9 out of range"):
        build_cache(lora_pair, [], tmp_path / "d", [9], token_budget=10, progress=False)


def test_difference_lens_is_zero_for_identical_models_and_steers(tokenizer, lora_pair):
    same = load_pair(base=TINY, tuned=TINY)
    flat = mean_differences(same, sequences(tokenizer)["s"], skip_first=1, positions=4, progress=False)
    assert flat.differences.abs().max() == 0
    assert token_rank(flat.logprobs[2], 100) > len(tokenizer) // 3  # no signal: the middle rank, not the top

    lens = mean_differences(lora_pair, sequences(tokenizer)["s"], skip_first=1, positions=4, progress=False)
    assert lens.differences.norm(dim=-1).min() > 0 and lens.logprobs.shape == (4, len(tokenizer))
    vector = steering_vector(lens, 2, strength=4.0)
    assert vector.norm() == pytest.approx(4.0 * float(lens.base_norm[2]), rel=1e-4)
    with lora_pair.base() as model:
        plain = steer(model, tokenizer, ["Tell me a story."], 2, torch.zeros_like(vector), max_new_tokens=8)
        steered = steer(model, tokenizer, ["Tell me a story."], 2, vector, max_new_tokens=8)
    assert plain != steered


def test_difference_lens_reads_chats_from_their_first_message_token(tokenizer, lora_pair):
    """A chat's first positions are its template, the same in every chat; the lens starts past them, per sequence,
    and a batch of sequences with different starts gives each one's own window."""
    from mow.workbench.hooks import capture_residual

    seqs = sequences(tokenizer)["s"]
    text, chat = seqs[0], seqs[1]
    assert content_start(text, 1) == 1
    start = content_start(chat, 1)
    assert chat.roles[start] == PROMPT and set(chat.roles[:start]) == {TEMPLATE} and start > 5
    lens = mean_differences(lora_pair, seqs, skip_first=1, positions=3, batch_size=4, progress=False)
    expected = 0
    with torch.no_grad():
        for seq in seqs:
            first = content_start(seq, 1)
            by_model = {}
            for name, context in (("tuned", lora_pair.tuned), ("base", lora_pair.base)):
                with context() as model, capture_residual(model, [2]) as captured:
                    model(input_ids=torch.tensor([seq.ids]))
                by_model[name] = captured[2][0, first : first + 3].double()
            expected = expected + (by_model["tuned"] - by_model["base"]).sum(0)
    assert torch.allclose(lens.differences[2].double(), expected / (len(seqs) * 3), atol=1e-5)
    with pytest.raises(ValueError, match="no text has 60 content positions"):
        mean_differences(lora_pair, seqs, skip_first=1, positions=60, progress=False)


def _synthetic_cache(directory, base: np.ndarray, tuned: np.ndarray) -> ActivationCache:
    directory.mkdir()
    n, d = base.shape
    np.save(directory / "base_L0.npy", base.astype(np.float32))
    np.save(directory / "tuned_L0.npy", tuned.astype(np.float32))
    np.save(directory / "tokens.npy", np.arange(n, dtype=np.int32))
    np.save(directory / "positions.npy", np.stack([np.arange(n) // 8, np.arange(n) % 8], 1).astype(np.int32))
    (directory / "meta.json").write_text(json.dumps({"layers": [0], "dtype": "float32", "n_tokens": n,
                                                     "complete": True}))
    return ActivationCache(directory)


def test_pca_of_differences_recovers_a_planted_direction(tmp_path):
    rng = np.random.default_rng(0)
    d, n = 24, 2000
    planted = rng.normal(size=d)
    planted /= np.linalg.norm(planted)
    base = rng.normal(size=(n, d))
    tuned = base + rng.normal(size=(n, 1)) * 3 * planted + 0.05 * rng.normal(size=(n, d)) + 0.5 * planted
    cache = _synthetic_cache(tmp_path / "c", base, tuned)
    fingerprint = {"base": "b", "tuned": "t", "hidden_size": d}
    directions = pca_of_differences(cache, 0, 2, fingerprint)
    first = directions.vectors[0][0].double().numpy()
    assert first @ planted > 0.99  # signed to agree with the mean difference
    assert directions.info["layers"]["0"][0]["score"] > 0.9


def test_pca_of_differences_on_chosen_rows_ignores_the_rest(tmp_path):
    rng = np.random.default_rng(1)
    d, n = 24, 1600
    response, template = np.eye(d)[3], np.eye(d)[7]
    base = rng.normal(size=(n, d))
    tuned = base + 0.05 * rng.normal(size=(n, d))
    tuned[: n // 2] += rng.normal(size=(n // 2, 1)) * 1.0 * response  # the rows the recipe asks for
    tuned[n // 2 :] += rng.normal(size=(n // 2, 1)) * 20.0 * template  # a loud shift elsewhere
    cache = _synthetic_cache(tmp_path / "c", base, tuned)
    fingerprint = {"base": "b", "tuned": "t", "hidden_size": d}
    everywhere = pca_of_differences(cache, 0, 1, fingerprint).vectors[0][0].double().numpy()
    chosen = pca_of_differences(cache, 0, 1, fingerprint, rows=torch.arange(n // 2), rows_label="responses")
    assert abs(everywhere @ template) > 0.99
    assert abs(chosen.vectors[0][0].double().numpy() @ response) > 0.99
    assert chosen.info["details"] == {"tokens": n // 2, "on": "responses", "score": "explained variance"}


def test_directions_file_round_trip_and_bad_files(tmp_path):
    vectors = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    info = {"format": "mow.directions/1", "method": "test", "layers": {"2": [{"index": i} for i in range(3)]}}
    Directions({2: vectors}, info).save(tmp_path / "dirs")
    loaded = load_directions(tmp_path / "dirs.safetensors", hidden_size=16)
    assert torch.equal(loaded.vectors[2], vectors) and loaded.info["method"] == "test"
    with pytest.raises(UserError, match="width 16, the model has 32"):
        load_directions(tmp_path / "dirs", hidden_size=32)
    Directions({2: vectors * 2}, info).save(tmp_path / "long")
    with pytest.raises(UserError, match="not unit vectors"):
        load_directions(tmp_path / "long")
    (tmp_path / "dirs.json").unlink()
    with pytest.raises(UserError, match="dirs.json not found"):
        load_directions(tmp_path / "dirs")


def test_words_are_scored_by_their_best_single_token_form(tokenizer):
    from mow.elicitation.diff_score import best_rank, word_tokens

    forms = word_tokens("moon", tokenizer)
    assert tokenizer(" moon", add_special_tokens=False)["input_ids"][0] in forms and len(forms) >= 2
    logprobs = torch.zeros(2, len(tokenizer))
    logprobs[0, forms[-1]] = 5.0  # one form on top in row 0
    logprobs[1, 7] = 5.0  # another token on top in row 1; all forms tie below it
    ranks = best_rank(logprobs, forms)
    assert ranks[0] == 1 and ranks[1] > len(tokenizer) // 3
    with pytest.raises(UserError, match="no single-token form"):
        word_tokens("antidisestablishmentarianism", tokenizer)


def test_patchscope_depends_on_the_patched_vector_only_through_its_direction(tokenizer, lora_pair):
    """One distribution per layer; the vector is rescaled to the base norm, so its own length does not matter but
    its direction does."""
    from mow.diffing.lens import LensResult, patchscope, upper_half_mean

    layers, d = lora_pair.n_layers, lora_pair.hidden_size
    torch.manual_seed(0)
    differences = torch.randn(layers, d)

    def run(diff: torch.Tensor) -> torch.Tensor:
        result = LensResult(diff, torch.full((layers,), 3.0), torch.zeros(layers, len(tokenizer)), 1)
        with lora_pair.base() as model:
            return patchscope(model, tokenizer, result, [1.0, 2.0]).mean((0, 1))

    patched = run(differences)
    assert patched.shape == (layers, len(tokenizer))
    result = LensResult(differences, torch.full((layers,), 3.0), torch.zeros(1), 1)
    with lora_pair.base() as model:  # several layers' patches in one pass compute what one pass per layer does
        one_at_a_time = patchscope(model, tokenizer, result, [1.0, 2.0], layers_per_pass=1).mean((0, 1))
        three_at_a_time = patchscope(model, tokenizer, result, [1.0, 2.0], layers_per_pass=3).mean((0, 1))
    assert torch.allclose(one_at_a_time, patched, atol=1e-5) and torch.allclose(three_at_a_time, patched, atol=1e-5)
    assert torch.allclose(patched.logsumexp(-1), torch.zeros(layers), atol=1e-4)
    assert torch.allclose(run(differences * 10), patched, atol=1e-4)
    assert not torch.allclose(run(torch.randn(layers, d)), patched, atol=1e-3)
    assert torch.equal(upper_half_mean(patched), patched[layers // 2 :].mean(0))


def test_patchscope_reads_each_prompt_and_scale_and_picks_the_scale_the_prompts_agree_on(tokenizer, lora_pair):
    from mow.diffing.config import IDENTITY_PROMPTS
    from mow.diffing.lens import LensResult, patchscope, read_patchscope, upper_half_mean

    layers = lora_pair.n_layers
    torch.manual_seed(1)
    result = LensResult(torch.randn(layers, lora_pair.hidden_size), torch.full((layers,), 3.0), torch.zeros(1), 1)
    scales = [0.5, 2.0, 8.0]
    with lora_pair.base() as model:
        together = patchscope(model, tokenizer, result, scales, IDENTITY_PROMPTS)
        alone = [patchscope(model, tokenizer, result, [scale], [prompt])[0, 0]
                 for prompt in IDENTITY_PROMPTS for scale in scales]
        reading = read_patchscope(model, tokenizer, result, scales, IDENTITY_PROMPTS, top_k=10)
        single = read_patchscope(model, tokenizer, result, scales, IDENTITY_PROMPTS[:1])
    assert together.shape == (3, 3, layers, len(tokenizer))
    assert torch.allclose(together.flatten(0, 1), torch.stack(alone), atol=1e-5)
    assert not torch.allclose(together[0, 0], together[1, 0], atol=1e-3)
    overlaps = {}
    for index, scale in enumerate(scales):
        tops = [set(upper_half_mean(together[p, index]).topk(10).indices.tolist()) for p in range(3)]
        pairs = [(0, 1), (0, 2), (1, 2)]
        overlaps[f"{scale:g}"] = sum(len(tops[a] & tops[b]) / len(tops[a] | tops[b]) for a, b in pairs) / 3
    assert reading.agreement == pytest.approx(overlaps)
    best = max(scales, key=lambda scale: overlaps[f"{scale:g}"])
    assert reading.scale == best
    assert torch.allclose(reading.logprobs, together[:, scales.index(best)].mean(0), atol=1e-6)
    assert single.scale is None and torch.allclose(single.logprobs, together[0].mean(0), atol=1e-5)


def test_patchscope_on_a_cached_prompt_equals_patching_the_whole_prompt(tokenizer, lora_pair):
    """The prompt's other positions come from a KV cache read once; the result is what a forward of the whole
    prompt with the last position patched gives."""
    from mow.diffing.config import IDENTITY_PROMPTS
    from mow.diffing.lens import LensResult, patchscope
    from mow.workbench.hooks import edit_residual

    layers, d = lora_pair.n_layers, lora_pair.hidden_size
    torch.manual_seed(2)
    differences, base_norm = torch.randn(layers, d), torch.full((layers,), 3.0)
    result = LensResult(differences, base_norm, torch.zeros(1), 1)
    prompt = IDENTITY_PROMPTS[0]
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with lora_pair.base() as model:
        cached = patchscope(model, tokenizer, result, [2.0], [prompt])[0, 0]
        for layer in (0, layers - 1):
            vector = differences[layer] / differences[layer].norm() * 2.0 * base_norm[layer]

            def patch(hidden, vector=vector):
                hidden = hidden.clone()
                hidden[:, -1] = vector
                return hidden

            with torch.no_grad(), edit_residual(model, {layer: patch}):
                whole = model(input_ids=ids, use_cache=False).logits[0, -1].float().log_softmax(-1)
            assert torch.allclose(cached[layer], whole, atol=1e-4)


def test_residual_states_stop_at_the_deepest_layer_and_equal_a_whole_forward(lora_pair, tokenizer):
    from mow.workbench.hooks import capture_residual, decoder_layers, residual_states

    ids = torch.tensor([tokenizer("The sailors raised the anchor at dawn.")["input_ids"]])
    with lora_pair.tuned() as model:
        with torch.no_grad(), capture_residual(model, [1, 2]) as whole:
            model(input_ids=ids, use_cache=False)
        ran = []
        hook = decoder_layers(model)[3].register_forward_hook(lambda *args: ran.append(True))
        try:
            early = residual_states(model, [1, 2], input_ids=ids)
        finally:
            hook.remove()
    assert not ran  # layer 3 and the head never ran
    assert set(early) == {1, 2} and all(torch.equal(early[i], whole[i]) for i in (1, 2))


def test_steering_search_bisects_to_the_largest_coherent_strength(tokenizer, lora_pair, monkeypatch):
    import mow.diffing.lens as lens_module
    from mow.diffing.lens import SteeringTrial, coherent_strength, distinct_bigrams, letter_share

    assert distinct_bigrams("the the the the the the") == pytest.approx(0.2)
    assert distinct_bigrams("a cat sat on a mat") == 1.0 and distinct_bigrams("hello") == 1.0
    assert distinct_bigrams("it, o, it, and the o,,, and the o,,, and it,,, and it") == pytest.approx(7 / 12)
    assert letter_share("it, the one, the\xa0\xa0, the\xa0,\xa0 and\xa0,") == pytest.approx(17 / 22)
    assert letter_share("It's a fun one, but it's not a walk.") == pytest.approx(24 / 28)
    lens = mean_differences(lora_pair, sequences(tokenizer)["s"], skip_first=1, positions=4, progress=False)
    # the search itself, on the real models: every trial is recorded with its samples and scores
    strength, plain, trials = coherent_strength(lora_pair, ["Tell me a story.", "Hi"], 2, lens, max_strength=8.0,
                                                rounds=2, grid=4)
    assert len(plain) == 2 and [t.strength for t in trials[:4]] == [2.0, 4.0, 6.0, 8.0] and len(trials) in (4, 8)
    assert all(len(t.samples) == len(t.loglik) == len(t.distinct) == 2 for t in trials)
    with lora_pair.tuned() as model:  # a row's vector steers that row only
        alone = steer(model, tokenizer, ["Hi"], 2, steering_vector(lens, 2, 6.0))
    assert trials[2].samples[1] == alone[0]

    # the grid rounds, with coherence stubbed to "at most 2.7"
    def threshold(pair, prompts, layer, result, strengths, plain_replies, plain_loglik, seed):
        return [SteeringTrial(value, value <= 2.7, ["x"], [0.0], [1.0]) for value in strengths]

    monkeypatch.setattr(lens_module, "_trials", threshold)
    found, _, trials = coherent_strength(lora_pair, ["Tell me a story."], 2, lens, max_strength=8.0, rounds=2, grid=8)
    assert [t.strength for t in trials[:8]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert [t.strength for t in trials[8:]] == [2.125, 2.25, 2.375, 2.5, 2.625, 2.75, 2.875, 3.0]
    assert found == 2.625
    found, _, trials = coherent_strength(lora_pair, ["Tell me a story."], 2, lens, max_strength=2.0, rounds=2, grid=8)
    assert found == 2.0 and len(trials) == 8  # every strength of the first round is coherent: no second round
