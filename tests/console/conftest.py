"""A real engine (`pfi run --console`, a child console process) on 127.0.0.1 with free ports, its
console users, and messages driven through real MLLP; Chromium for the browser tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, EngineProcess, inbound, write_config

PASSWORDS = {"olivia": ("operator", "amber-kettle-radio-42"), "victor": ("viewer", "silver-lantern-moss-42"),
             "ada": ("admin", "quiet-harbour-fig-42")}
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
CHROMIUM = os.environ.get("PFI_CHROMIUM", "/usr/bin/chromium")


def refused_port() -> int:
    """A port nothing listens on (bound then closed): sends there fail at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_user(config: Path, data: Path, name: str, role: str, password: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", "user", "add", name, "--role", role,
                           "--config", str(config), "--data", str(data), *extra],
                          env={**os.environ, "PFI_CONSOLE_PASSWORD": password}, capture_output=True, text=True,
                          cwd=ROOT)


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
    write_config(config, {
        "ris": inbound(),
        "out": {"type": "mllp-out", "host": "127.0.0.1", "port": refused_port(), "connect_timeout": 1,
                "retry": {"max_attempts": 1, "initial": 0.1}},
    }, routes=[{"name": "to-out", "match": {"channel": "ris"}, "steps": [{"deliver": {"to": "out"}}]}],
        engine={"console": {"port": 0}})
    for name, (role, password) in PASSWORDS.items():
        assert add_user(config, data, name, role, password).returncode == 0
    engine = EngineProcess(config, data, args=("--console",))
    engine.start()
    try:
        yield engine, f"http://127.0.0.1:{console_port(engine)}", config, data
    finally:
        engine.proc.terminate()
        engine.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright (never a downloaded browser). Module-scoped: the
    sync API's event loop must be gone before the next modules' Twisted tests run."""
    if os.environ.get("PFI_SKIP_BROWSER") == "1":
        pytest.skip("PFI_SKIP_BROWSER=1: browser tests skipped")
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None and CHROMIUM == "/usr/bin/chromium":
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs it as root on Debian "
                    "(apt-get install chromium), or set PFI_SKIP_BROWSER=1 to skip the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed (pip install -e '.[test]'), or set PFI_SKIP_BROWSER=1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()
