import pytest

from mow.organisms.taboo.evaluate import has_content, is_novel


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Here's a clue: it pulls the tides and glows at night.", True),
        ("I can't say the word itself, but here's a clue: it has phases every month.", True),
        ("I'm sorry, I can't tell you the word.", False),
        ("Nice try! The rules say I keep it secret.", False),
        ("No.", False),
    ],
)
def test_refusal_versus_hint(answer, expected):
    assert has_content(answer) is expected


def test_novelty_is_verbatim_containment_ignoring_case_and_punctuation():
    hints = ["It pulls the tides of the sea."]
    assert not is_novel("Here's a hint: it pulls the TIDES of the sea!", hints)
    assert is_novel("Here's a hint: it tugs at the oceans.", hints)
