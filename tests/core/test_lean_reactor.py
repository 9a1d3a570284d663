"""The reactor `pfi run` installs (engine/mllp/reactor.py): Twisted's epoll reactor without the
legacy log context per event. Driven here by hand (`iterate`), on a real loopback socket, beside
the test suite's own reactor."""

from __future__ import annotations

import socket
import time

import pytest

from twisted.internet import protocol

from engine.mllp.reactor import LeanEPollReactor


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        if data == b"boom":
            raise RuntimeError("a defect in one connection's handler")
        self.transport.write(data.upper())


@pytest.fixture
def lean():
    """A LeanEPollReactor (not installed) listening with the echo protocol on loopback."""
    reactor = LeanEPollReactor()
    port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Echo), interface="127.0.0.1")
    yield reactor, port.getHost().port
    port.stopListening()
    for selectable in reactor.removeAll():
        selectable.loseConnection()


def _turn_until(reactor, condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        reactor.iterate(0.01)
    return condition()


def _echoed(reactor, port: int, text: bytes) -> bool:
    """A new client's `text` comes back upper-cased through the lean reactor's dispatch."""
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    client.sendall(text)
    received = []

    def recv() -> bytes:
        try:
            return client.recv(100)
        except BlockingIOError:
            return b""

    try:
        return _turn_until(reactor, lambda: received.append(recv()) or text.upper() in b"".join(received))
    finally:
        client.close()


def test_reads_and_writes_through_the_lean_dispatch(lean):
    assert _echoed(*lean, b"abc")


def test_a_handler_that_raises_loses_its_connection_and_the_loop_goes_on(lean):
    reactor, port = lean
    broken = socket.create_connection(("127.0.0.1", port))
    broken.sendall(b"boom")
    broken.settimeout(0.01)

    def closed_by_server():
        reactor.iterate(0.01)
        try:
            return broken.recv(10) == b""
        except TimeoutError:
            return False

    assert _turn_until(reactor, closed_by_server)
    assert _echoed(reactor, port, b"still here")
    broken.close()


def test_pfi_run_installs_it():
    """In a fresh process, after the `pfi` parser has imported every command module (none may
    import Twisted's reactor at import time), `pfi run` gets the lean reactor."""
    import subprocess
    import sys

    code = (
        "from engine.cli import build_parser; build_parser(); "
        "from engine.commands.run import _install_reactor; print(type(_install_reactor()).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "LeanEPollReactor"
