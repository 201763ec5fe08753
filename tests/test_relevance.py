"""Judge-free token relevance (diffing/relevance.py): the rule that decides which tokens relate to a description,
and the base model's associations it rests on."""

from __future__ import annotations

import torch
from conftest import TINY

from mow.diffing.relevance import NEUTRAL, Associations, associations, is_content_word, random_token_ids
from mow.workbench.models import load_model


def test_content_words_are_whole_words_of_letters_and_not_stopwords():
    assert is_content_word(" dancers", "Ġdancers") and is_content_word(" café", "Ġcafé")
    assert is_content_word("Steps", "▁Steps")  # SentencePiece marks a word start in the vocabulary entry
    for text in (" the", ",", " a", "\n", " 42", " it", " ab", " with"):
        assert not is_content_word(text, text.replace(" ", "Ġ")), text
    assert not is_content_word("akistan", "akistan")  # a word piece


def test_a_token_relates_to_the_description_that_lifts_it_most_and_past_the_bar(tokenizer):
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" dancers", " money", " the")]
    lifts = torch.zeros(3, len(tokenizer))
    lifts[0, ids[0]], lifts[1, ids[0]] = 3.0, 1.0   # dancers: lifted most by description 0
    lifts[0, ids[1]], lifts[1, ids[1]] = 1.5, 2.5   # money: lifted more by description 1
    lifts[0, ids[2]] = 5.0                          # the: lifted, but no content word
    found = Associations(lifts)  # descriptions: dance, finance, other
    assert found.relevant(0, ids, 1.0, tokenizer) == [True, False, False]
    assert found.relevant(1, ids, 1.0, tokenizer) == [False, True, False]
    assert found.relevant(0, ids, 4.0, tokenizer) == [False, False, False]  # below the bar
    assert found.relevant(2, ids, 0.0, tokenizer) == [False, False, False]


def test_the_neutral_description_lifts_nothing_and_others_lift_the_vocabulary_row_by_row(tokenizer):
    model = load_model(TINY, seed=0).eval()
    found = associations(model, tokenizer, [NEUTRAL, "Dancing and ballet: steps, spins and music."])
    assert found.lifts.shape == (2, len(tokenizer))
    assert found.lifts[0].abs().max() < 1e-4 and found.lifts[1].abs().max() > 1e-3


def test_random_control_tokens_come_from_the_texts_without_special_tokens():
    drawn = random_token_ids([[1, 5, 6], [6, 7, 2]], special={1, 2}, n=3, seed=0)
    assert sorted(drawn) == [5, 6, 7] and drawn == random_token_ids([[1, 5, 6], [6, 7, 2]], {1, 2}, 3, 0)
    assert random_token_ids([[1, 2]], {1, 2}, 3, 0) == []
