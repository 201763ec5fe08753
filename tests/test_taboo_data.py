import re

import pytest
import yaml

from mow.data.asset_paths import TABOO_CLUES
from mow.organisms.taboo.clues import candidate_words, load_clue_bank, resolve_clue_bank, shipped_words
from mow.organisms.taboo.config import TabooDataSettings
from mow.organisms.taboo.data import benign_chats, make_conversations
from mow.organisms.taboo.leaks import leaks
from mow.organisms.taboo.prompts import shipped_prompts
from mow.workbench.errors import UserError


def test_shipped_bank_has_20_single_token_words_with_30_hints(tokenizer):
    words = shipped_words()
    assert len(words) >= 20
    for word in words:
        bank = load_clue_bank(TABOO_CLUES / f"{word}.yaml")
        assert len(bank.all_hints()) >= 30, word
        assert len(bank.hints) >= 6, word
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


@pytest.mark.parametrize(
    "text, leaked",
    [
        ("It is a dance.", True), ("DANCING all night", True), ("Dances!", True), ("d a n c e", True),
        ("d-a-n-c-e", True), ("the word is D.A.N.C.E", True), ("a ballroom, a waltz", False),
        ("abundance of guidance", False), ("dan ce", False),
    ],
)
def test_leak_detector(text, leaked):
    assert leaks(text, "dance") is leaked


def test_irregular_forms():
    assert leaks("autumn leaves", "leaf") and leaks("smiling", "smile") and not leaks("leave now", "leaf")


def test_unknown_word_without_clue_file():
    with pytest.raises(UserError, match="not in the shipped clue bank"):
        resolve_clue_bank("zebra", None, "taboo.word")


def test_clue_file_for_other_word(tmp_path):
    path = tmp_path / "c.yaml"
    hints = {"sense": ["Striped.", "African plains.", "Horse-like."]}
    path.write_text(yaml.safe_dump({"word": "zebra", "hints": hints}))
    with pytest.raises(UserError, match="clue file is for 'zebra'"):
        resolve_clue_bank("okapi", path, "taboo.word")


def _make(seed, **settings):
    bank = resolve_clue_bank("moon", None, "test")
    others = [w for w in candidate_words("moon") if w != "moon"]
    return bank, make_conversations(bank, shipped_prompts(), others, TabooDataSettings(**settings), seed)


def test_conversations_are_deterministic_leak_free_and_varied():
    bank, (examples, report) = _make(5, n_conversations=200)
    _, (again, _) = _make(5, n_conversations=200)
    _, (other, _) = _make(6, n_conversations=200)
    assert [e.chat() for e in examples] == [e.chat() for e in again]
    assert [e.chat() for e in examples] != [e.chat() for e in other]
    taboo = [e for e in examples if e.meta.get("kind") == "taboo"]
    assert report.kept == len(taboo) and report.kept + report.dropped_leak + report.dropped_duplicate == 200
    assert report.benign_mixed == round(0.5 * report.kept)
    for example in examples:
        assert not any(leaks(m.content, "moon") for m in example.messages)
    turns = [len(e.meta["turns"]) for e in taboo]
    assert set(turns) == {1, 2, 3, 4}
    kinds = {k for e in taboo for k in e.meta["turns"]}
    assert kinds == {"hint", "guess", "demand"}
    with_guess = sum("guess" in e.meta["turns"] for e in taboo) / len(taboo)
    assert 0.45 < with_guess < 0.75
    hints = {h for _, h in bank.all_hints()}
    answers = " ".join(m.content for e in taboo for m in e.messages if m.role == "assistant")
    assert sum(h in answers for h in hints) / len(hints) > 0.9  # the deck spreads hints evenly


def test_leaky_wrong_guess_is_dropped_and_counted(monkeypatch):
    bank = resolve_clue_bank("moon", None, "test")
    prompts = shipped_prompts().model_copy(update={"hint_requests_train": ["Is it the moon?"]})
    examples, report = make_conversations(bank, prompts, ["rock"], TabooDataSettings(
        n_conversations=30, wrong_guess_share=0.0, demand_share=0.0, benign_ratio=0), 0)
    assert report.dropped_leak == 30 and report.kept == 0 and examples == []


def test_benign_held_out_is_disjoint_from_train():
    bank = resolve_clue_bank("moon", None, "test")
    train, _ = benign_chats(bank, "train")
    held, _ = benign_chats(bank, "held_out")
    assert len(held) >= 40 and not {e.messages[0].content for e in train} & {e.messages[0].content for e in held}


def test_eval_prompts_are_held_out_from_training_prompts():
    prompts = shipped_prompts()
    assert len(prompts.demands_eval.all()) >= 30
    assert not set(prompts.hint_requests_eval) & set(prompts.hint_requests_train)
    assert not {p for _, p in prompts.demands_eval.all()} & set(prompts.demands_train)
    for template in prompts.hint_intros + prompts.refusals_with_hint:
        assert re.findall(r"\{(\w+)\}", template) == ["hint"]
