"""`pfi console` (the console process; `pfi run` starts it when pfi.yaml has a `console:` section)
and `pfi user add|passwd|remove|list` (its local users, stored in the journal)."""

from __future__ import annotations

import getpass
import os
import sys
import time
from pathlib import Path

PASSWORD_ENV = "PFI_CONSOLE_PASSWORD"


def register(sub) -> None:
    from engine.commands.common import add_journal_options

    c = sub.add_parser("console", help="serve the operator web console (http://127.0.0.1:8080 by default)")
    add_journal_options(c)
    c.add_argument("--host", help="listen address (overrides console.host)")
    c.add_argument("--port", type=int, help="listen port (overrides console.port; 0: any free port)")
    c.set_defaults(handler=serve)
    u = sub.add_parser("user", help="the console's local users: add, passwd, remove, list")
    add_journal_options(u)
    u.add_argument("action", choices=("add", "passwd", "remove", "list"))
    u.add_argument("name", nargs="?")
    u.add_argument("--role", choices=("viewer", "operator", "admin"), help="add: required; passwd: change it too")
    u.set_defaults(handler=user)


def serve(args) -> int:
    from twisted.internet import defer, reactor

    from engine.childprocess import stop_once_on_signals
    from engine.commands.common import data_dir_for, load_with_overrides
    from engine.config.engine import ConsoleSettings
    from engine.console.server import ConsoleServer, plaintext_refused
    from engine.log import configure_logging

    config = load_with_overrides(args)
    if config is None:
        return 2
    configure_logging(config.engine.log_level)
    settings = (config.engine.console or ConsoleSettings()).model_copy()
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    refused = plaintext_refused(settings)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    server = ConsoleServer(config, data_dir_for(args, config), reactor, settings)
    failed = []

    def start():
        d = defer.ensureDeferred(server.start())
        d.addErrback(
            lambda f: (failed.append(f), print(f"console: {f.getErrorMessage()}", file=sys.stderr), reactor.stop())
        )

    reactor.callWhenRunning(start)
    reactor.callWhenRunning(stop_once_on_signals, reactor)  # a child of `pfi run`: see there
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(server.stop()))
    reactor.run()
    return 1 if failed else 0


def user(args) -> int:
    from engine.commands.common import load_with_overrides
    from engine.console.passwords import WeakPassword, check_strength, hash_password
    from engine.journal import users

    config = load_with_overrides(args)
    if config is None:
        return 2
    if args.action != "list" and not args.name:
        print(f"pfi user {args.action} needs a user name", file=sys.stderr)
        return 2
    conn = _users_connection(args, config)
    if args.action == "list":
        for u in users.list_users(conn.read):
            print(f"{u.name}\t{u.role}")
        return 0
    if args.action == "remove":
        done = conn.transaction(lambda c: users.remove_user(c, args.name))
        print(f"user {args.name} removed" if done else f"no user {args.name}")
        return 0 if done else 1
    if args.action == "add" and not args.role:
        print("pfi user add needs --role viewer|operator|admin", file=sys.stderr)
        return 2
    try:
        password = _new_password(args.name)
        check_strength(password, args.name)
    except WeakPassword as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    hashed, now = hash_password(password), time.time()
    if args.action == "add":
        done = conn.transaction(lambda c: users.add_user(c, args.name, hashed, args.role, now))
        print(f"user {args.name} added ({args.role})" if done else f"user {args.name} exists (pfi user passwd)")
    else:
        done = conn.transaction(lambda c: users.set_password(c, args.name, hashed, now, args.role))
        print(f"password of {args.name} changed" if done else f"no user {args.name}")
    return 0 if done else 1


def _new_password(name: str) -> str:
    """From $PFI_CONSOLE_PASSWORD (scripts), else asked twice on the terminal (never an argument:
    it would show in the process list and the shell history)."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    first = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != first:
        from engine.console.passwords import WeakPassword

        raise WeakPassword("the two passwords differ")
    return first


def _users_connection(args, config):
    """The journal for operator tools; an SQLite journal is created (and upgraded) if the engine
    never ran, so that the first administrator exists before the first start."""
    from engine.commands.common import data_dir_for
    from engine.journal.operator import open_operator_journal

    return open_operator_journal(config.engine.journal, Path(data_dir_for(args, config)), create=True)
