"""`pfi test [PATHS]`: run the YAML route tests; exit 1 on any failure."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("test", help="run route tests written in YAML")
    p.add_argument("paths", nargs="*", type=Path, help="YAML files or folders (default: tests/routes)")
    p.add_argument("--config", type=Path, default=Path("."))
    p.set_defaults(handler=run)


def run(args) -> int:
    from twisted.internet import defer, task

    from engine.commands.common import load_or_report
    from engine.log import configure_logging

    config = load_or_report(args.config)
    if config is None:
        return 2
    configure_logging("error")
    files = _files(args.paths or [args.config / "tests" / "routes"])

    async def main(reactor):
        from engine.routetest import load_tests, run_test

        failed = total = 0
        for path in files:
            for test in load_tests(path):
                total += 1
                result = await run_test(config, test, path.parent)
                status = "ok" if not result.failures else "FAIL"
                print(f"{status:4} {path.name}: {test.name}")
                for failure in result.failures:
                    print(f"       {failure}")
                failed += bool(result.failures)
        print(f"{total - failed} passed, {failed} failed")
        if failed or not total:
            raise SystemExit(1)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        out += sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
    return out
