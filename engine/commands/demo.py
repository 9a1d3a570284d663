"""`pfi demo`: a scripted imaging day through the shipped configuration (see engine/demo.py)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="run a scripted imaging day on 127.0.0.1 and report")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"))
    p.add_argument("--restart", action="store_true", help="restart the engine in the middle")
    p.set_defaults(handler=demo)


def demo(args) -> None:
    import shutil

    from twisted.internet import defer, task

    from engine.demo import print_result, run_demo
    from engine.log import configure_logging

    shutil.rmtree(args.workdir / "data", ignore_errors=True)
    shutil.rmtree(args.workdir / "dmp-sim", ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    configure_logging("warning")

    async def main(reactor):
        print_result(await run_demo(args.workdir, args.restart))

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
