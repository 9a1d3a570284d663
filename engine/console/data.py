"""What the console's pages need, as blocking calls (web.py runs them in threads): journal reads
through engine/journal/search.py, operator actions through the same functions as the `pfi`
commands (engine/commands/queue.py), configuration findings through `pfi check`'s."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from engine.journal import search, users

CONSOLE_NODE = "console"
SECRET_WORDS = ("password", "secret", "token", "passphrase")


def operator_name(user: str) -> str:
    """How the journal names a console user (beside CLI operators and OS users)."""
    return f"{user} (console)"


@dataclass
class Dashboard:
    inbound: list = field(default_factory=list)  # (name, settings, last at, rejected last hour)
    destinations: list = field(default_factory=list)  # (settings, DestinationState, paused reason or None)
    nodes: list = field(default_factory=list)
    journal: str = ""
    ready: bool = True
    routing_process: bool = False  # routing and deliveries run in a child process of the engine


class ConsoleData:
    def __init__(self, config, access):
        self.config, self.access = config, access

    # -- reads -----------------------------------------------------------------------------
    def dashboard(self, now: float) -> Dashboard:
        from engine.journal.deliveries import paused_destinations

        board = Dashboard(journal=self.access.dialect, routing_process=self.config.engine.routing_process)
        if not self.access.ready():
            board.ready = False
            return board
        for channel in self.config.channels_of_type("mllp-in"):
            last, rejected = search.channel_activity(self.access.read, channel.name, now - 3600)
            board.inbound.append((channel, last, rejected))
        paused = paused_destinations(self.access.read)
        for channel in self.config.channels.values():
            if channel.type != "mllp-in":
                state = search.destination_state(self.access.read, channel.name)
                board.destinations.append((channel, state, paused.get(channel.name)))
        if self.access.dialect == "postgresql":
            board.nodes = search.cluster_nodes(self.access.read)
        return board

    def search(self, filters: search.SearchFilters, before_id: int | None, limit: int = search.PAGE):
        return search.search_messages(self.access.read, filters, before_id, limit)

    def detail(self, uid: str):
        detail = search.message_detail(self.access.read, uid)
        raw = self.access.raw_of(uid) if detail is not None else None
        return detail, raw

    def dead_letters(self, channel: str | None = None) -> list[str]:
        return search.dead_letter_uids(self.access.read, channel)

    def find_user(self, name: str):
        return users.find_user(self.access.read, name)

    def list_users(self):
        return users.list_users(self.access.read)

    # -- actions (journaled with the console user's name) ----------------------------------------
    def reveal(self, uid: str, user: str, now: float) -> None:
        with self.access.writing() as conn:
            search.record_operator_event(
                conn, uid, "identities-shown", f"patient identity shown in the console to {operator_name(user)}", now
            )

    def replay(self, uids: list[str], user: str) -> int:
        from engine.commands.queue import replay_messages

        with self.access.writer() as conn:
            return replay_messages(conn, uids, operator_name(user), CONSOLE_NODE, _dialect(self.access))

    def cancel(self, ident: str, user: str) -> int:
        from engine.commands.queue import cancel_deliveries

        with self.access.writer() as conn:
            return cancel_deliveries(
                conn, ident, "cancelled in the console", operator_name(user), CONSOLE_NODE, _dialect(self.access)
            )

    # -- configuration -----------------------------------------------------------------------
    def findings(self) -> list[tuple[str, str]]:
        """`pfi check`'s errors and warnings on the loaded configuration."""
        from engine.commands import check

        now = dt.datetime.now(dt.timezone.utc)
        found = [("error", p) for p in check.material_problems(self.config, now)]
        warnings = (
            lambda: check.expiry_warnings(self.config, now),
            lambda: check.order_check_warnings(self.config),
            lambda: check.undeferred_dmp_warnings(self.config),
        )
        for warn in warnings:
            try:
                found += [("warning", w) for w in warn()]
            except Exception as exc:  # a check that cannot run is a finding too
                found.append(("error", f"check failed: {exc}"))
        return found

    def channel_settings(self) -> list[tuple[str, str, dict]]:
        return [
            (c.name, c.type, _without_secrets(c.model_dump(mode="json", exclude_none=True)))
            for c in sorted(self.config.channels.values(), key=lambda c: c.name)
        ]

    def route_settings(self) -> list[tuple[str, dict]]:
        return [
            (r.name, r.model_dump(mode="json", exclude_none=True, exclude_defaults=True)) for r in self.config.routes
        ]


def _without_secrets(value):
    if isinstance(value, dict):
        return {
            k: (
                "***" if any(w in k.lower() for w in SECRET_WORDS) and isinstance(v, str) and v else _without_secrets(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def _dialect(access):
    from engine.journal.dialect import POSTGRES, SQLITE

    return POSTGRES if access.dialect == "postgresql" else SQLITE


def month_bounds(now: float) -> tuple[str, str]:
    """January of last year to this month (YYYY-MM), the statistics page's default range."""
    today = time.gmtime(now)
    return f"{today.tm_year - 1}-01", f"{today.tm_year}-{today.tm_mon:02d}"
