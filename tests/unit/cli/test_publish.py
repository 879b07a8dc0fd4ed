"""``sendonce publish``'s words: file line numbers, and grammatical counts."""

from __future__ import annotations

import pytest

from sendonce.cli.publish import _parse, summary


@pytest.mark.parametrize(
    ("published", "invalid", "line"),
    [
        (1, 0, "published 1 intent"),
        (4, 0, "published 4 intents"),
        (0, 1, "published 0 intents; 1 line was not published"),
        (3, 2, "published 3 intents; 2 lines were not published"),
    ],
)
def test_summary_counts_in_words(published: int, invalid: int, line: str) -> None:
    assert summary(published, invalid) == line


def test_a_bad_line_is_worded_without_the_parsers_own_line_number() -> None:
    # The parser sees one line; its "line 1 column 22" beside "line 2:" confused users.
    with pytest.raises(ValueError) as caught:
        _parse('{"tenant_id": "acme",,}')
    assert str(caught.value) == (
        "not JSON: Expecting property name enclosed in double quotes at column 22"
    )
    assert "line" not in str(caught.value)


def test_a_line_that_is_not_an_object_says_what_it_is() -> None:
    with pytest.raises(ValueError, match=r"^not a JSON object but a JSON list$"):
        _parse("[1, 2]")


def test_a_good_line_is_its_object() -> None:
    assert _parse('{"a": 1}\n') == {"a": 1}
