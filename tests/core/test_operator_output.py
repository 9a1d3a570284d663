"""Operator output never carries terminal control sequences from the wire: `pfi tail`, `pfi send`,
`pfi check` print them escaped (real engine, real sockets, the real `pfi` process)."""

from __future__ import annotations

import subprocess
import sys

import pytest_twisted
from twisted.internet import protocol, reactor, threads

from engine.mllp.framing import Frame, MLLPDecoder, frame
from tests.support import ROOT, client_for, exchange, inbound, sample_adt, start_engine, write_config


def pfi_in_thread(*args: str):
    """`pfi ARGS` in a thread (subprocess.run reaps the child itself: Twisted's spawnProcess relies
    on SIGCHLD, which the test reactor does not handle, and hung now and then waiting for it)."""
    return threads.deferToThread(
        subprocess.run, [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, timeout=120
    )


CLEAR_SCREEN = "\x1b[2J"
SET_TITLE = "\x1b]0;owned\x07"
BIDI_OVERRIDE = "\u202e"
HOSTILE = (CLEAR_SCREEN, SET_TITLE, BIDI_OVERRIDE, "\r", "\x9b")


def pfi(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def assert_clean(text: str) -> None:
    for sequence in HOSTILE:
        assert sequence not in text, repr(sequence)


def test_printable_escapes_control_and_format_characters_only():
    from engine.commands.safe_output import printable

    assert printable("ADT^A01 Éloïse € ctrl=1") == "ADT^A01 Éloïse € ctrl=1"
    assert printable(f"a{CLEAR_SCREEN}b") == "a\\x1b[2Jb"
    assert printable(f"{SET_TITLE}") == "\\x1b]0;owned\\x07"
    assert printable(f"x{BIDI_OVERRIDE}y\rz\x9b") == "x\\u202ey\\x0dz\\x9b"
    assert printable("two\nlines\tand tab") == "two\nlines\tand tab"


@pytest_twisted.ensureDeferred
async def test_tail_prints_escape_sequences_from_msh9_and_msh10_escaped(tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound(accept={"versions": ["2.5"]})})
    engine = await start_engine(cfg, tmp_path / "data")
    try:
        client = await client_for(engine, "in")
        accepted = sample_adt(f"C{SET_TITLE}1", msg_type=f"ADT^A01{CLEAR_SCREEN}")
        refused = sample_adt(f"R{BIDI_OVERRIDE}2\x9b", version="2.1", msg_type=f"ORU{CLEAR_SCREEN}^R01")
        assert (await exchange(client, accepted.encode())).code == "AA"
        assert (await exchange(client, refused.encode())).code == "AE"
        client.close()
    finally:
        await engine.stopService()
    out = await pfi_in_thread("tail", "--config", str(cfg), "--data", str(tmp_path / "data"))
    stdout = out.stdout.decode("utf-8")
    assert out.returncode == 0, out
    assert_clean(stdout)
    assert "ctrl=C\\x1b]0;owned\\x071" in stdout and "ADT^A01\\x1b[2J" in stdout
    assert "R\\u202e2\\x9b" in stdout


class _HostilePeer(protocol.Protocol):
    """Answers every frame with an AE whose ERR text carries terminal escapes."""

    def connectionMade(self):
        self.decoder = MLLPDecoder()

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                ctrl = event.payload.split(b"\r")[0].split(b"|")[9].decode()
                ack = (
                    f"MSH|^~\\&|X|Y|PFI|Z|2026||ACK|A1|P|2.5\rMSA|AE|{ctrl}\r"
                    f"ERR|||207^err^HL70357|E||||{CLEAR_SCREEN}{SET_TITLE}gotcha\r"
                )
                self.transport.write(frame(ack.encode()))


@pytest_twisted.ensureDeferred
async def test_send_prints_a_hostile_ack_escaped(tmp_path):
    factory = protocol.Factory.forProtocol(_HostilePeer)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    message = tmp_path / "m.hl7"
    message.write_text(sample_adt("S-1"))
    try:
        out = await pfi_in_thread("send", str(message), "--to", f"127.0.0.1:{port.getHost().port}")
    finally:
        await port.stopListening()
    text = out.stdout.decode("utf-8")
    assert out.returncode == 1 and "NACK MSA-1=AE" in text
    assert_clean(text)
    assert "\\x1b[2J\\x1b]0;owned\\x07gotcha" in text


def test_check_prints_configuration_keys_escaped(tmp_path):
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "a.yaml").write_text(
        'type: mllp-in\nport: 2575\n"bo\\e[2Jgus\\u202e": 1\n', encoding="utf-8"
    )
    result = pfi("check", "--config", str(tmp_path))
    assert result.returncode == 1 and "unknown setting" in result.stdout
    assert_clean(result.stdout + result.stderr)
    assert "bo\\x1b[2Jgus\\u202e: unknown setting" in result.stdout
