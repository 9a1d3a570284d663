"""The shared MLLP peer (engine/sim/mllp.py, `pfi sim mllp`): records, answers by policy, holds ACKs."""

import socket
import subprocess
import sys

import pytest_twisted
from twisted.internet import reactor

from engine.mllp.client import connect, read_ack
from engine.mllp.framing import frame
from engine.sim.mllp import MllpPeer
from tests.routing.peers import until
from tests.support import ROOT, sample_adt


@pytest_twisted.ensureDeferred
async def test_peer_records_and_answers_by_policy():
    peer = MllpPeer("RIS", answer=lambda raw, n: "AA" if n == 0 else "AE", keep=lambda code: code == "AA")
    port = peer.listen(reactor)
    client = await connect(reactor, "127.0.0.1", port)
    try:
        first = read_ack(await client.send(sample_adt("P-1").encode()))
        second = read_ack(await client.send(sample_adt("P-2").encode()))
        assert (first.code, first.control_id, second.code, second.control_id) == ("AA", "P-1", "AE", "P-2")
        assert peer.control_ids() == ["P-1"]  # only the accepted one is kept
        assert peer.summary() == ["ADT^A01 P-1"] and len(peer.times) == 1
    finally:
        client.transport.loseConnection()
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_held_acks_leave_on_release():
    peer = MllpPeer()
    port = peer.listen(reactor)
    peer.hold()
    client = await connect(reactor, "127.0.0.1", port)
    try:
        pending = client.send(sample_adt("H-1").encode())
        await until(lambda: peer.received, what="the message")
        assert not pending.called
        peer.release()
        assert read_ack(await pending).code == "AA"
    finally:
        client.transport.loseConnection()
        await peer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pfi_sim_mllp_answers_and_prints_type_and_control_id_only():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "sim", "mllp", "--port", str(port), "--answer", "AE"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "answering AE" in proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(frame(sample_adt("CLI-1").encode()))
            answer = b""
            while not answer.endswith(b"\x1c\r"):
                answer += sock.recv(4096)
        assert read_ack(answer[1:-2]).code == "AE"
        line = proc.stdout.readline()
        assert line.strip() == "1 ADT^A01 CLI-1 -> AE"  # no patient name, no identifier
    finally:
        proc.terminate()
        proc.wait(timeout=10)
