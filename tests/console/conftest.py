"""A real engine (`pfi run --console`, a child console process) on 127.0.0.1 with free ports, its
console users, and messages driven through real MLLP; Chromium for the browser tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, EngineProcess, inbound, write_config

PASSWORDS = {
    "olivia": ("operator", "amber-kettle-radio-42"),
    "victor": ("viewer", "silver-lantern-moss-42"),
    "ada": ("admin", "quiet-harbour-fig-42"),
}
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
CHROMIUM = os.environ.get("PFI_CHROMIUM", "/usr/bin/chromium")


def refused_port() -> int:
    """A port nothing listens on (bound then closed): sends there fail at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_user(config: Path, data: Path, name: str, role: str, password: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "user",
            "add",
            name,
            "--role",
            role,
            "--config",
            str(config),
            "--data",
            str(data),
            *extra,
        ],
        env={**os.environ, "PFI_CONSOLE_PASSWORD": password},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def console_port(engine: EngineProcess, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in engine.output().splitlines():
            if '"console.started"' in line:
                return json.loads(line)["port"]
        time.sleep(0.05)
    raise RuntimeError(f"console did not start: {engine.output()}")


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """(engine process, console base URL, config dir, data dir)."""
    base = tmp_path_factory.mktemp("console")
    config, data = base / "cfg", base / "data"
    write_config(
        config,
        {
            "ris": inbound(),
            "out": {
                "type": "mllp-out",
                "host": "127.0.0.1",
                "port": refused_port(),
                "connect_timeout": 1,
                "retry": {"max_attempts": 1, "initial": 0.1},
            },
        },
        routes=[{"name": "to-out", "match": {"channel": "ris"}, "steps": [{"deliver": {"to": "out"}}]}],
        # the routing process too: the console's replays reach it through the journal
        engine={
            "console": {"port": 0},
            "routing_process": True,
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": refused_port()},
        },
    )
    for name, (role, password) in PASSWORDS.items():
        assert add_user(config, data, name, role, password).returncode == 0
    engine = EngineProcess(config, data, args=("--console",))
    engine.start(wait_for='"role": "routing", "event": "engine.started"')
    try:
        yield engine, f"http://127.0.0.1:{console_port(engine)}", config, data
    finally:
        engine.proc.terminate()
        engine.proc.wait(timeout=20)
        engine.ensure_dead()


class BrowserThread:
    """Playwright's sync API on a thread of its own: its greenlet must never meet pytest-twisted's
    (which runs the reactor for the other test modules in the main thread)."""

    def __init__(self):
        import queue
        import threading

        self.jobs: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True, name="playwright")
        self.thread.start()
        self.ready.wait(60)
        if self.failure is not None:
            raise self.failure

    def _serve(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                self.ready.set()
                while (job := self.jobs.get()) is not None:
                    body, done = job
                    try:
                        done["result"] = body(browser)
                    except BaseException as exc:  # re-raised in the test's thread
                        done["error"] = exc
                    done["event"].set()
                browser.close()
        except BaseException as exc:
            self.failure = exc
            self.ready.set()

    def run(self, body):
        import threading

        done = {"event": threading.Event()}
        self.jobs.put((body, done))
        done["event"].wait()
        if "error" in done:
            raise done["error"]
        return done.get("result")

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(30)


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright (never a downloaded browser), on its own thread:
    `chromium.run(body)` calls body(browser) there."""
    if os.environ.get("PFI_SKIP_BROWSER") == "1":
        pytest.skip("PFI_SKIP_BROWSER=1: browser tests skipped")
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: `make test` installs it as root on Debian "
            "(apt-get install chromium), or set PFI_SKIP_BROWSER=1 to skip the browser tests"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed (pip install -e '.[test]'), or set PFI_SKIP_BROWSER=1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = BrowserThread()
    yield browser
    browser.close()
