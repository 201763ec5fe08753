import pytest

from mow.data.records import ChatExample, Message, read_jsonl, write_jsonl
from mow.workbench.errors import UserError


def test_round_trip_and_hash_is_stable(tmp_path):
    rows = [ChatExample(messages=[Message(role="user", content="hi"), Message(role="assistant", content="hello")])]
    h1 = write_jsonl(tmp_path / "a.jsonl", rows)
    h2 = write_jsonl(tmp_path / "b.jsonl", rows)
    assert h1 == h2
    assert read_jsonl(tmp_path / "a.jsonl", ChatExample) == rows


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no records"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n{oops\n',
         ":2: the line is not valid JSON"),
        ('{"messages": [{"role": "robot", "content": "x"}]}\n', ":1: messages.0.role"),
        ('{"messages": [{"role": "user", "content": "only a question"}]}\n', ":1: messages"),
        ('{"messages": [], "extra": 1}\n', ":1:"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        read_jsonl(path, ChatExample)
    assert str(path) in str(err.value) and message in str(err.value)
