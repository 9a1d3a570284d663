"""The engine with the operator console served on its own reactor (the alternative not chosen,
measured by bench/console.py): `python bench/console_inprocess.py CONFIG DATA`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor  # noqa: E402

from engine.config.load import load_config  # noqa: E402
from engine.console.server import ConsoleServer  # noqa: E402
from engine.commands.run import SWITCH_INTERVAL  # noqa: E402
from engine.log import configure_logging  # noqa: E402
from engine.service import Engine  # noqa: E402


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    configure_logging(config.engine.log_level, reactor=reactor)
    sys.setswitchinterval(SWITCH_INTERVAL)  # as `pfi run`
    engine = Engine(config, Path(sys.argv[2]), reactor)
    console = ConsoleServer(config, Path(sys.argv[2]), reactor)

    async def start():
        await engine.startService()
        await console.start()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(console.stop()))
    reactor.addSystemEventTrigger("before", "shutdown", engine.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
