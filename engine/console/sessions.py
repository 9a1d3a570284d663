"""Console sessions (in memory: a console restart signs everyone out), CSRF tokens and the login
rate limit. The clock is injected so that tests drive expiry without waiting."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

ROLE_RANK = {"viewer": 0, "operator": 1, "admin": 2}
REVEAL_MINUTES = 15.0  # identities of a message stay shown to the session that asked, this long


@dataclass
class Session:
    id: str
    csrf: str
    user: str = ""
    role: str = ""
    created: float = 0.0
    seen: float = 0.0
    revealed: dict = field(default_factory=dict)  # message uid -> until

    @property
    def signed_in(self) -> bool:
        return bool(self.user)

    def may(self, role: str) -> bool:
        return self.signed_in and ROLE_RANK.get(self.role, -1) >= ROLE_RANK[role]

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), token.encode())

    def shows_identities(self, uid: str, now: float) -> bool:
        return self.revealed.get(uid, 0.0) > now


class Sessions:
    def __init__(self, idle_seconds: float, max_seconds: float, clock=time.time):
        self.idle, self.max_age, self.clock = idle_seconds, max_seconds, clock
        self._by_id: dict[str, Session] = {}

    def new(self) -> Session:
        """An anonymous session: it carries the login form's CSRF token."""
        self._expire()
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), created=now, seen=now)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id or "")
        now = self.clock()
        if session is None:
            return None
        if now - session.seen > self.idle or now - session.created > self.max_age:
            self._by_id.pop(session.id, None)
            return None
        session.seen = now
        return session

    def sign_in(self, old: Session, user: str, role: str) -> Session:
        """A new id and token on sign-in: an id planted before the login is worth nothing after."""
        self._by_id.pop(old.id, None)
        session = self.new()
        session.user, session.role = user, role
        return session

    def sign_out(self, session: Session) -> None:
        self._by_id.pop(session.id, None)

    def end_user(self, user: str) -> None:
        """A removed user or a changed password: that user's sessions end."""
        for sid in [s.id for s in self._by_id.values() if s.user == user]:
            self._by_id.pop(sid, None)

    def _expire(self) -> None:
        now = self.clock()
        for sid in [s.id for s in self._by_id.values() if now - s.seen > self.idle or now - s.created > self.max_age]:
            self._by_id.pop(sid, None)


class LoginLimiter:
    """At most `per_user` failed logins per user name and `per_address` per client address in
    `window` seconds; beyond, logins are refused (429) until the window has passed, right
    password or not, so guessing gets nowhere."""

    def __init__(self, per_user: int = 5, per_address: int = 20, window: float = 300.0, clock=time.time):
        self.per_user, self.per_address, self.window, self.clock = per_user, per_address, window, clock
        self._failures: dict[str, list[float]] = {}

    def retry_after(self, user: str, address: str) -> float:
        """Seconds before another try is allowed (0: allowed now)."""
        now = self.clock()
        waits = []
        for key, limit in ((f"user:{user.lower()}", self.per_user), (f"addr:{address}", self.per_address)):
            recent = [t for t in self._failures.get(key, []) if now - t < self.window]
            self._failures[key] = recent
            if len(recent) >= limit:
                waits.append(recent[-limit] + self.window - now)
        return max(waits, default=0.0)

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        for key in (f"user:{user.lower()}", f"addr:{address}"):
            self._failures.setdefault(key, []).append(now)

    def succeeded(self, user: str) -> None:
        self._failures.pop(f"user:{user.lower()}", None)
