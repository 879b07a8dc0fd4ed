"""The leak check used by conftest.py (tests.unit.log_leaks) can actually find leaks."""

from __future__ import annotations

from tests.unit.log_leaks import find_leaks


def test_finds_a_token_a_body_and_a_private_key() -> None:
    lines = [
        "sendonce.graph INFO sent with token abcdefghijklmnop",
        "msal DEBUG body was: Dear customer, your invoice",
        "x ERROR -----BEGIN PRIVATE KEY-----",
        "sendonce.graph INFO all fine",
    ]
    leaks = find_leaks(lines, {"abcdefghijklmnop", "Dear customer, your invoice"})
    assert len(leaks) == 3


def test_clean_lines_pass() -> None:
    assert find_leaks(["sendonce INFO sent 3 emails"], {"abcdefghijklmnop"}) == []
