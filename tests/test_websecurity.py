"""The dashboard's security pieces on their own (asyncapp.faces.dashboard.security)."""

from __future__ import annotations

from flask import Flask

from asyncapp.faces.dashboard.security import (
    SESSION_MAX_AGE,
    SlidingWindow,
    csrf_matches,
    logged_in,
    login_mark,
    session_key,
    token_matches,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_allows_the_limit_then_says_how_long_to_wait() -> None:
    clock = Clock()
    window = SlidingWindow(limit=5, window=60, clock=clock)
    for _ in range(5):
        assert window.hit("10.0.0.1") == 0
        clock.now += 1
    assert window.hit("10.0.0.1") == 55  # at 1005; the first attempt leaves the window at 1060
    assert window.hit("10.0.0.2") == 0  # per address
    clock.now = 1060.5
    assert window.hit("10.0.0.1") == 0  # one slot free again
    assert window.hit("10.0.0.1") == 0.5


def test_sliding_window_forgets_the_least_recent_address_when_full() -> None:
    clock = Clock()
    window = SlidingWindow(limit=1, window=60, max_keys=2, clock=clock)
    assert window.hit("a") == 0 and window.hit("b") == 0
    assert window.hit("a") > 0  # a is now the most recent
    assert window.hit("c") == 0  # b is forgotten
    assert window.hit("b") == 0
    assert window.hit("a") == 0  # ... and then a, the least recent


def test_tokens_and_csrf_compare_whole_values() -> None:
    assert token_matches("s3cret", "s3cret")
    assert not token_matches("s3cre", "s3cret") and not token_matches("", "s3cret")
    assert token_matches("ü-token", "ü-token")  # any text, compared as bytes
    assert csrf_matches({"csrf": "abc"}, "abc")
    assert not csrf_matches({"csrf": "abc"}, "abd")
    assert not csrf_matches({"csrf": "abc"}, None) and not csrf_matches({}, "")


def test_a_login_holds_for_its_token_and_its_age() -> None:
    session = {"login": login_mark("tok"), "at": 5000.0}
    assert logged_in(session, "tok", now=5001)
    assert not logged_in(session, "other", now=5001)  # the token changed
    assert not logged_in(session, None, now=5001)
    assert not logged_in(session, "tok", now=5000 + SESSION_MAX_AGE)
    assert not logged_in({}, "tok") and not logged_in({"login": "x", "at": "y"}, "tok")
    assert "tok" not in login_mark("tok")


def test_the_session_key_is_the_apps_secret_key_else_derived_from_the_token() -> None:
    app = Flask(__name__)
    derived = session_key(app, "tok")
    assert isinstance(derived, bytes) and len(derived) == 32
    assert session_key(app, "tok") == derived and session_key(app, "tok2") != derived
    assert b"tok" not in derived
    assert session_key(app, None) is None
    app.secret_key = "configured"
    assert session_key(app, "tok") == "configured"
