"""The operator console as a child process of `pfi run` (docs/console.md: why a process and not
the engine's reactor). It is started after the engine, restarted if it dies, stopped with it
(engine/childprocess.py)."""

from __future__ import annotations

import sys

from engine.childprocess import SupervisedChild


def console_child(reactor, args) -> SupervisedChild:
    argv = [sys.executable, "-m", "engine.cli", "console", "--config", str(args.config)]
    if args.data:
        argv += ["--data", str(args.data)]
    if args.journal:
        argv += ["--journal", args.journal]
    return SupervisedChild("console", reactor, argv)
