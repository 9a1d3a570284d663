"""`pfi run`: start every configured listener; stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(".")
SWITCH_INTERVAL = 0.005  # seconds: see run()


def register(sub) -> None:
    p = sub.add_parser("run", help="start the engine")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="configuration directory")
    p.add_argument("--data", type=Path, default=None, help="data directory (journal, caches)")
    p.add_argument("--journal", default=None, help="`sqlite` or a postgresql:// URL (overrides pfi.yaml)")
    p.add_argument("--node", default=None, help="this node's name in a shared journal (default: hostname)")
    p.add_argument(
        "--console",
        action="store_true",
        help="also start the operator console (as a `console:` section in pfi.yaml does)",
    )
    # the routing process `pfi run` starts itself with `routing_process: true` (not for operators)
    p.add_argument("--role", choices=("all", "routing"), default="all", help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def run(args) -> int:
    import structlog

    reactor = _install_reactor()

    from engine.childprocess import stop_once_on_signals
    from engine.commands.common import load_with_overrides
    from engine.errors import ConfigurationError
    from engine.log import configure_logging
    from engine.service import ROUTING, Engine

    config = load_with_overrides(args)
    if config is None:
        return 2
    role = _role(args, config)
    configure_logging(config.engine.log_level, reactor=reactor, process=role if role == ROUTING else None)
    # Python's own 5 ms, set explicitly: every thread gives the GIL up on its system calls
    # (epoll, send, writev, fdatasync), so a forced switch is rare; a short interval only makes
    # threads waiting for the GIL wake and ask more often. Measured (bench/intake.py, ADT, 8
    # connections, interleaved): 0.2 ms 218 us CPU/msg, 5 ms 160 us (docs/journal.md).
    sys.setswitchinterval(SWITCH_INTERVAL)
    data_dir = args.data or (args.config / config.engine.data_dir)
    try:
        engine = Engine(config, data_dir, reactor, with_metrics=role != ROUTING, role=role)
    except ConfigurationError as exc:  # e.g. a DMP certificate that cannot be used (docs/dmp.md)
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} configuration error(s); not starting", file=sys.stderr)
        return 2
    log = structlog.get_logger("engine.run")
    failed = []

    def start():
        d = engine.startService()
        d.addErrback(
            lambda f: (failed.append(f), log.error("engine.start_failed", error=f.getErrorMessage()), reactor.stop())
        )

    reactor.callWhenRunning(start)
    reactor.callWhenRunning(stop_once_on_signals, reactor)
    # Twisted turns SIGTERM/SIGINT into reactor.stop(); stop the tree before the reactor goes.
    reactor.addSystemEventTrigger("before", "shutdown", lambda: engine.stopService() if engine.running else None)
    console = config.engine.console
    if role != ROUTING and (args.console or (console is not None and console.enabled)):
        from engine.commands.console_child import console_child

        child = console_child(reactor, args)
        reactor.callWhenRunning(child.startService)
        reactor.addSystemEventTrigger("before", "shutdown", child.stopService)
    reactor.run()
    return 1 if failed else 0


def _role(args, config) -> str:
    from engine.service import ALL, INTAKE, ROUTING

    if args.role == ROUTING:
        return ROUTING
    return INTAKE if config.engine.routing_process else ALL


def _install_reactor():
    """The engine's lean epoll reactor (engine/mllp/reactor.py), unless the process already has
    one (a caller that imported Twisted's reactor first, e.g. in-process tests)."""
    if "twisted.internet.reactor" not in sys.modules:
        from engine.mllp.reactor import install

        install()
    from twisted.internet import reactor

    return reactor
