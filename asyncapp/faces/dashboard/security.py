"""What keeps the dashboard safe in a browser: login, session, CSRF, rate limit, headers.

Login.  The dashboard has no users: whoever knows ``ASYNCAPP_API_TOKEN`` may
steer the jobs, as with the API.  The token typed into the login form is
compared in constant time; a correct one starts a session.

Session.  Flask's signed-cookie session (itsdangerous), in a cookie of the
dashboard's own (``asyncapp_dashboard``, path ``/dashboard``), so the host
app's ``session`` and its cookie settings stay as they were.  The cookie is
HttpOnly, SameSite=Strict, and Secure when the request came over HTTPS (or
when the app sets ``SESSION_COOKIE_SECURE``).  It is signed with the app's
``SECRET_KEY`` when it has one, else with a key derived from the API token
(HMAC-SHA256 of a fixed label), so a server with a token needs no other
secret, and a new token ends every session signed with the old one.  The
session also holds a mark derived from the token, which ends sessions at a
token change under a ``SECRET_KEY`` too, and its start time: it lasts
:data:`SESSION_MAX_AGE` seconds.

CSRF.  A login creates a random token kept in the session; every form that
changes something carries it, and a POST without the right one is refused
(403) before anything happens.  SameSite=Strict already keeps the cookie out
of cross-site requests in current browsers; the token covers the others.
The login form itself needs none: forging it requires the API token.

Rate limit.  Failed login attempts per client address, in memory: after
:data:`LOGIN_ATTEMPTS` wrong tokens within :data:`LOGIN_WINDOW` seconds, every
attempt gets 429 with ``Retry-After`` until the oldest failure leaves the
window.  Correct logins are not counted: someone who holds the token and
opens several browsers is not an attacker.  One small class rather than a
library (Flask-Limiter): one counter on one form needs no storage back end,
and a guess at a random token of 32 bytes is hopeless anyway; the limit stops
noise and weak tokens being tried quickly.  It counts per process: with N workers an address gets N
times the attempts.  Behind a proxy, every client has the proxy's address
unless the app applies ``werkzeug.middleware.proxy_fix.ProxyFix``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from itsdangerous import URLSafeTimedSerializer

SESSION_COOKIE = "asyncapp_dashboard"
#: Seconds a dashboard login lasts.
SESSION_MAX_AGE = 12 * 3600
LOGIN_ATTEMPTS = 5
LOGIN_WINDOW = 60.0
#: Client addresses the limiter remembers; beyond that the least recently seen go.
LIMITER_KEYS = 10_000

_SECRET_LABEL = b"asyncapp dashboard session key"
_LOGIN_LABEL = b"asyncapp dashboard login mark"

#: Sent with every response under the dashboard's path.
HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def token_matches(given: str, token: str) -> bool:
    """Whether ``given`` is ``token``, in time that does not depend on where they differ."""
    return hmac.compare_digest(given.encode(), token.encode())


def login_mark(token: str) -> str:
    """What a session stores to say it was opened with ``token`` (not the token itself)."""
    return hmac.new(token.encode(), _LOGIN_LABEL, hashlib.sha256).hexdigest()


def session_key(app: Flask, token: str | None) -> str | bytes | None:
    """The key that signs the dashboard's cookie: ``SECRET_KEY``, else derived from the token."""
    if app.secret_key:
        return app.secret_key
    if token is None:
        return None
    return hmac.new(token.encode(), _SECRET_LABEL, hashlib.sha256).digest()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(session: Mapping[str, Any], given: str | None) -> bool:
    """Whether a form's ``given`` CSRF token is the session's, compared in constant time."""
    expected = session.get("csrf")
    if not isinstance(expected, str) or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def logged_in(session: Mapping[str, Any], token: str | None, now: float | None = None) -> bool:
    """Whether ``session`` is a login with today's ``token``, younger than SESSION_MAX_AGE."""
    if token is None:
        return False
    mark, started = session.get("login"), session.get("at")
    if not isinstance(mark, str) or not isinstance(started, int | float):
        return False
    age = (time.time() if now is None else now) - started
    return 0 <= age < SESSION_MAX_AGE and hmac.compare_digest(mark, login_mark(token))


class DashboardSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session, in the dashboard's own cookie.

    The dashboard opens and saves it itself (``open_session`` /
    ``save_session``); it is never the app's ``session_interface``.
    """

    salt = "asyncapp-dashboard-session"

    def __init__(self, path: str, token: Callable[[], str | None]) -> None:
        self.path = path
        self._token = token

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        key = session_key(app, self._token())
        if key is None:
            return None
        keys: list[str | bytes] = []
        if app.secret_key:  # rotation as Flask does it: old keys still read cookies
            keys.extend(app.config.get("SECRET_KEY_FALLBACKS") or [])
        keys.append(key)
        return URLSafeTimedSerializer(
            keys,  # type: ignore[arg-type]
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={
                "key_derivation": self.key_derivation,
                "digest_method": self.digest_method,
            },
        )

    def get_cookie_name(self, app: Flask) -> str:
        return SESSION_COOKIE

    def get_cookie_path(self, app: Flask) -> str:
        return self.path

    def get_cookie_domain(self, app: Flask) -> str | None:
        return None  # host-only: never shared with subdomains

    def get_cookie_httponly(self, app: Flask) -> bool:
        return True

    def get_cookie_samesite(self, app: Flask) -> str:
        return "Strict"

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure

    def get_cookie_partitioned(self, app: Flask) -> bool:
        return False

    def get_expiration_time(self, app: Flask, session: SessionMixin) -> datetime | None:
        return None  # gone when the browser closes; the login's age is checked anyway

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        return session.modified


class SlidingWindow:
    """At most ``limit`` events per ``window`` seconds for each key, counted in memory.

    Thread-safe.  Remembers at most ``max_keys`` keys; past that, the least
    recently seen key is forgotten (a client that many addresses can afford
    is not stopped by a per-address limit anyway, and legitimate users keep
    working).
    """

    def __init__(
        self,
        limit: int = LOGIN_ATTEMPTS,
        window: float = LOGIN_WINDOW,
        *,
        max_keys: int = LIMITER_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        #: Seconds, monotonic; tests may replace it.
        self.clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, key: str) -> float:
        """0 if ``key`` may try now; else seconds until one of its events leaves the window."""
        with self._lock:
            events = self._recent(key)
            if len(events) >= self.limit:
                return events[0] + self.window - self.clock()
            return 0.0

    def add(self, key: str) -> None:
        """Count an event of ``key`` now."""
        with self._lock:
            self._recent(key).append(self.clock())

    def hit(self, key: str) -> float:
        """Count an event of ``key`` if allowed and return 0; else seconds until it is."""
        with self._lock:
            events = self._recent(key)
            if len(events) >= self.limit:
                return events[0] + self.window - self.clock()
            events.append(self.clock())
            return 0.0

    def _recent(self, key: str) -> deque[float]:
        """``key``'s events still in the window (the caller holds the lock)."""
        now = self.clock()
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque()
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        self._events.move_to_end(key)
        while events and events[0] <= now - self.window:
            events.popleft()
        return events


#: Characters a path and query may show as they are in a ``Location`` header.
_URL_SAFE = "/?&=%:@!$'()*+,;~-._"


def same_site_path(target: str, prefix: str) -> str | None:
    """``target`` as a ``Location`` for a redirect after login, if it is a path of this
    site under ``prefix`` (a login's ``next``); else None, and the caller goes home.

    Refused: anything with a scheme or host (``https://x``, ``//x``), a backslash
    (browsers read it as ``/``), control characters (a CR or LF would split the
    header: Werkzeug refuses to send it, with an error), and paths elsewhere on
    the site.  Other characters are percent-encoded.
    """
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.fragment:
        return None
    if parts.path != prefix and not parts.path.startswith(prefix + "/"):
        return None
    if "/../" in parts.path + "/" or "/./" in parts.path + "/":
        return None
    return quote(target, safe=_URL_SAFE)
