"""The operator console's local users (table console_users, migration 6 on both journals).

Only hashes are stored (engine/console/passwords.py makes them). `conn` is a write connection
(SQLite or engine/journal/postgres.py's, both taking `?` placeholders); `read(sql, args)` returns
rows. Roles are a closed set checked here, so that no code path stores another one.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    role: str
    created_at: float
    updated_at: float


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")


def add_user(conn, name: str, password_hash: str, role: str, now: float) -> bool:
    """False when a user of that name exists already."""
    _check_role(role)
    if find_user(_reader(conn), name) is not None:
        return False
    conn.execute(
        "INSERT INTO console_users (name, password_hash, role, created_at, updated_at) VALUES (?,?,?,?,?)",
        (name, password_hash, role, now, now),
    )
    return True


def set_password(conn, name: str, password_hash: str, now: float, role: str | None = None) -> bool:
    """New hash (and role, when given); False for an unknown user."""
    if role is not None:
        _check_role(role)
        cur = conn.execute(
            "UPDATE console_users SET password_hash=?, role=?, updated_at=? WHERE name=?",
            (password_hash, role, now, name),
        )
    else:
        cur = conn.execute(
            "UPDATE console_users SET password_hash=?, updated_at=? WHERE name=?", (password_hash, now, name)
        )
    return bool(cur.rowcount)


def remove_user(conn, name: str) -> bool:
    return bool(conn.execute("DELETE FROM console_users WHERE name=?", (name,)).rowcount)


def find_user(read, name: str) -> User | None:
    rows = read("SELECT name, password_hash, role, created_at, updated_at FROM console_users WHERE name=?", (name,))
    return User(*rows[0]) if rows else None


def list_users(read) -> list[User]:
    return [
        User(*row)
        for row in read("SELECT name, password_hash, role, created_at, updated_at FROM console_users ORDER BY name")
    ]


def _reader(conn):
    return lambda sql, args=(): conn.execute(sql, args).fetchall()
