"""Test helpers: write a configuration, start a real engine on 127.0.0.1, talk MLLP to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from twisted.internet import defer, reactor

from engine.config.load import load_config
from engine.journal.reader import JournalReader
from engine.mllp.client import MLLPClientProtocol, connect, read_ack
from engine.service import Engine

ROOT = Path(__file__).resolve().parent.parent


def write_config(
    directory: Path, channels: dict[str, dict], routes: list | None = None, engine: dict | None = None
) -> Path:
    (directory / "channels").mkdir(parents=True, exist_ok=True)
    for name, settings in channels.items():
        (directory / "channels" / f"{name}.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    (directory / "routes.yaml").write_text(yaml.safe_dump({"routes": routes or []}), encoding="utf-8")
    settings = {"metrics": {"enabled": False}, **(engine or {})}
    (directory / "pfi.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return directory


def inbound(**overrides) -> dict:
    base = {"type": "mllp-in", "host": "127.0.0.1", "port": 0}
    base.update(overrides)
    return base


async def start_engine(config_dir: Path, data_dir: Path) -> Engine:
    engine = Engine(load_config(config_dir), data_dir, reactor, with_metrics=False)
    await engine.startService()
    return engine


async def client_for(engine: Engine, channel: str) -> MLLPClientProtocol:
    client = await connect(reactor, "127.0.0.1", engine.port_of(channel))
    client.indexed = engine.journal.indexed  # type: ignore[attr-defined]
    return client


async def exchange(client: MLLPClientProtocol, message: bytes, timeout: float = 10.0):
    """Send, read the ACK; with a client of an in-process engine, return once the journal's index
    has caught up with it (the index follows the ACK: docs/journal.md), so readers see it."""
    d = client.send(message)
    d.addTimeout(timeout, reactor)
    ack = read_ack(await d)
    indexed = getattr(client, "indexed", None)
    if indexed is not None:
        await indexed()
    return ack


def sample_adt(
    control_id: str = "1001",
    version: str = "2.5",
    charset: str = "UNICODE UTF-8",
    name: str = "MARTIN^Léa",
    sep: str = "\r",
    msg_type: str = "ADT^A01^ADT_A01",
) -> str:
    segments = [
        f"MSH|^~\\&|GAM|CHU-X|PFI|CHU-X|20261122101010||{msg_type}|{control_id}|P|{version}|||||FRA|{charset}",
        "EVN||20261122101010",
        f"PID|1||IPP001^^^CHU-X&1.2.250.1.999&ISO^PI||{name}||19800101|F||||||||||||||||||||||||VALI",
        "PV1|1|I",
    ]
    return sep.join(segments) + sep


async def sleep(seconds: float) -> None:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


async def until(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll `condition` every 10 ms (the reactor keeps running) until true or `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.01)


class EngineProcess:
    """`pfi run` in a child process, for crash and signal tests. `args` are added to the command
    line (e.g. `--journal URL --node a`)."""

    def __init__(self, config_dir: Path, data_dir: Path, args: tuple = ()):
        self.config_dir, self.data_dir = config_dir, data_dir
        self.args = tuple(str(a) for a in args)
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        """Start the process without waiting for it (several nodes can then start together)."""
        path = self.data_dir.parent / f"engine-{time.time_ns()}.log"
        # The child appends (O_APPEND): our reads and seeks never move where it writes, so a read
        # under load cannot make it overwrite the beginning of its own log.
        with open(path, "a") as child_log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine.cli",
                    "run",
                    "--config",
                    str(self.config_dir),
                    "--data",
                    str(self.data_dir),
                    *self.args,
                ],
                stdout=child_log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.log = open(path)

    def wait_started(self, wait_for: str = "engine.started", timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wait_for in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"engine did not start: {self.output()}")

    def start(self, wait_for: str = "engine.started", timeout: float = 20.0) -> None:
        self.launch()
        self.wait_started(wait_for, timeout)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def port_of(self, channel: str) -> int:
        """The port a listener bound (configurations with `port: 0`), from its log line."""
        for line in self.output().splitlines():
            if '"listener.started"' in line:
                entry = json.loads(line)
                if entry.get("channel") == channel:
                    return entry["port"]
        raise LookupError(f"no listener.started line for channel {channel!r}")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(20)

    def routing_processes(self) -> list[int]:
        """The PIDs of the routing processes it said it started (`routing_process: true`), in order."""
        return [json.loads(line)["pid"] for line in self.output().splitlines() if '"routing.process_started"' in line]

    def ensure_dead(self) -> None:
        """SIGKILL the process, and the routing processes it started, if they still run (test
        cleanup, whatever happened before; by PID)."""
        children = self.routing_processes() if self.proc is not None else []
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        for pid in children:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


INTAKE_STATES = ("received", "rejected", "duplicate")


async def indexed_reader(engine) -> JournalReader:
    """A reader of an in-process engine's journal once its index has caught up with every ACK
    sent (the index follows the ACK: docs/journal.md)."""
    await engine.journal.indexed()
    return JournalReader(engine.journal.data_dir)


def intake_events(reader, limit: int = 100000) -> list:
    """The journal rows written by intake (routing adds its own rows after them)."""
    return [e for e in reader.events_after(0, limit=limit) if e.state in INTAKE_STATES]
