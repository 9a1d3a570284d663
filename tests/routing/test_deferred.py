"""Deferred delivery with a controllable clock: a replace or delete inside the delay window
cancels the pending send of the version it supersedes (the newest wins)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import task

from engine.journal.reader import JournalReader
from tests.conftest import ANS
from tests.routing.peers import RecordingPeer, until
from tests.routing.test_delivery import _engine, out
from tests.support import client_for, exchange, inbound

MDM = ANS / "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/MDM"
INIT = MDM / "Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7"
RPLC = MDM / "Remplacement MDM/message_MDM_CR_Radio_RPLC_N1.er7"
DEL = MDM / "Suppression MDM/message_MDM_CR_Radio_DEL_N1.er7"


def _with_control_id(path, control_id: str) -> bytes:
    lines = path.read_bytes().replace(b"\r\n", b"\n").split(b"\n")
    fields = lines[0].split(b"|")
    fields[9] = control_id.encode()
    lines[0] = b"|".join(fields)
    return b"\r".join(line for line in lines if line) + b"\r"


async def _setup(tmp_path):
    clock = task.Clock()
    clock.advance(1_800_000_000)
    dest = RecordingPeer()
    port = await dest.listen()
    routes = [
        {
            "name": "dmp-later",
            "match": {"channel": "in", "type": "MDM"},
            "steps": [{"deliver": {"to": "dest", "delay": "10m"}}],
        }
    ]
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(port)}, routes, clock=clock)
    return clock, dest, engine


def _journal(engine):
    return JournalReader(engine.journal.data_dir).events_after(0, limit=1000)


@pytest_twisted.ensureDeferred
async def test_send_waits_for_delay_then_goes(tmp_path):
    clock, dest, engine = await _setup(tmp_path)
    client = await client_for(engine, "in")
    try:
        assert (await exchange(client, _with_control_id(INIT, "I-1"))).code == "AA"
        await until(lambda: any(e.state == "queued" for e in _journal(engine)), what="queued")
        clock.advance(9 * 60)
        await _settle(clock)
        assert dest.received == []
        clock.advance(61)
        await until(lambda: _tick(clock) and dest.control_ids() == ["I-1"], what="send after the delay", timeout=10)
    finally:
        client.close()
        await engine.stopService()
        await dest.close()


@pytest_twisted.ensureDeferred
async def test_replace_then_delete_in_window_cancel_everything(tmp_path):
    clock, dest, engine = await _setup(tmp_path)
    client = await client_for(engine, "in")
    try:
        await exchange(client, _with_control_id(INIT, "I-2"))
        await exchange(client, _with_control_id(RPLC, "R-2"))
        await until(lambda: sum(e.state == "cancelled" for e in _journal(engine)) == 1, what="init cancelled")
        await exchange(client, _with_control_id(DEL, "D-2"))
        await until(lambda: sum(e.state == "cancelled" for e in _journal(engine)) == 3, what="all cancelled")
        clock.advance(11 * 60)
        await _settle(clock)
        assert dest.received == []
        details = [e.detail for e in _journal(engine) if e.state == "cancelled"]
        assert any("superseded by replace" in d for d in details)
        assert any("nothing to delete" in d for d in details)
    finally:
        client.close()
        await engine.stopService()
        await dest.close()


@pytest_twisted.ensureDeferred
async def test_replace_in_window_is_sent_alone(tmp_path):
    clock, dest, engine = await _setup(tmp_path)
    client = await client_for(engine, "in")
    try:
        await exchange(client, _with_control_id(INIT, "I-3"))
        await exchange(client, _with_control_id(RPLC, "R-3"))
        await until(lambda: any(e.state == "cancelled" for e in _journal(engine)), what="init cancelled")
        clock.advance(11 * 60)
        await until(lambda: _tick(clock) and dest.control_ids() == ["R-3"], what="only the replace is sent", timeout=10)
    finally:
        client.close()
        await engine.stopService()
        await dest.close()


def _tick(clock) -> bool:
    """Keep the controllable clock moving while we wait (a worker may re-arm its timer late)."""
    clock.advance(0.5)
    return True


async def _settle(clock):
    """Let the workers run what the clock made due (they poll the journal in a thread)."""
    from tests.support import sleep

    for _ in range(5):
        clock.advance(0.5)
        await sleep(0.05)
