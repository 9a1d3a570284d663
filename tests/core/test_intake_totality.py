"""Intake is total: whatever a frame does to the parser, it is answered, journaled with its raw
bytes, and the connection survives to answer the frames pipelined behind it, in order.

Real sockets on 127.0.0.1, real SQLite journal.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from structlog.testing import capture_logs
from twisted.internet import defer, reactor

from engine.mllp.client import read_ack
from engine.mllp.framing import frame
from tests.support import (
    indexed_reader,
    client_for,
    exchange,
    inbound,
    intake_events,
    sample_adt,
    start_engine,
    write_config,
)

MALFORMED_HEADERS = {
    "no field separator": b"MSH\rPID|1\r",
    "no encoding characters": b"MSH|\rPID|1\r",
    "alphanumeric field separator": b"MSHA^~\\&AGAMA\rPID|1\r",
    "repeated encoding characters": b"MSH|^^^^|GAM|CHU|PFI|CHU|2026||ADT^A01|X-1|P|2.5\r",
}


@pytest.fixture
def engine_dirs(tmp_path):
    cfg = write_config(
        tmp_path / "cfg",
        {
            "in": inbound(accept={"versions": ["2.5", "2.6"], "message_types": ["ADT", "ORU^R01"]}),
        },
    )
    return cfg, tmp_path / "data"


@pytest_twisted.async_yield_fixture
async def engine(engine_dirs):
    engine = await start_engine(*engine_dirs)
    yield engine
    await engine.stopService()


async def _pipelined(client, payloads: list[bytes], timeout: float = 10.0) -> list:
    """Write every frame in one TCP write, then collect the answers in order."""
    waiting = []
    for _ in payloads:
        d = defer.Deferred()
        client._waiting.append(d)
        waiting.append(d)
    client.transport.write(b"".join(frame(p) for p in payloads))
    acks = []
    for d in waiting:
        d.addTimeout(timeout, reactor)
        acks.append(read_ack(await d))
    return acks


@pytest_twisted.ensureDeferred
async def test_msh_without_field_separator_is_answered_journaled_and_the_connection_survives(engine):
    """The 13 bytes of the report: `<VT>MSH<CR>PID|1<CR><FS><CR>` between two good frames."""
    client = await client_for(engine, "in")
    before, bad, behind = sample_adt("B-1").encode(), b"MSH\rPID|1\r", sample_adt("B-3").encode()
    acks = await _pipelined(client, [before, bad, behind])
    assert [(a.code, a.control_id) for a in acks] == [("AA", "B-1"), ("AE", ""), ("AA", "B-3")]
    assert "|MSH^1^1|" in acks[1].errors[0]
    # the connection is still open and serves a later message
    assert (await exchange(client, sample_adt("B-4").encode())).code == "AA"
    events = intake_events(await indexed_reader(engine))
    assert [e.state for e in events] == ["received", "rejected", "received", "received"]
    assert (await indexed_reader(engine)).load_message(events[1].message_uid).raw == bad
    client.close()


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
@pytest_twisted.ensureDeferred
async def test_malformed_msh_is_ae_with_an_err_and_kept_raw(engine, name):
    raw = MALFORMED_HEADERS[name]
    client = await client_for(engine, "in")
    acks = await _pipelined(client, [raw, sample_adt("M-2").encode()])
    assert [a.code for a in acks] == ["AE", "AA"]
    assert acks[0].errors and acks[0].errors[0].startswith("ERR||MSH^1")
    [rejected, _] = intake_events(await indexed_reader(engine))
    assert rejected.state == "rejected"
    assert (await indexed_reader(engine)).load_message(rejected.message_uid).raw == raw
    client.close()


@pytest_twisted.ensureDeferred
async def test_an_unexpected_fault_is_ar_207_journaled_and_logged_once(engine, monkeypatch):
    """A defect anywhere in the per-frame path (here: the MSH scan) is an AR, not a dropped link."""
    import engine.mllp.intake as intake_module

    real_scan = intake_module.scan

    def faulty_scan(raw, *args):
        if b"|BOOM|" in raw:
            raise RuntimeError(f"defect in the scanner reading {raw[:40]!r}")
        return real_scan(raw, *args)

    monkeypatch.setattr(intake_module, "scan", faulty_scan)
    client = await client_for(engine, "in")
    boom = sample_adt("BOOM").encode()
    with capture_logs() as logs:
        acks = await _pipelined(client, [sample_adt("F-1").encode(), boom, sample_adt("F-3").encode()])
    assert [a.code for a in acks] == ["AA", "AR", "AA"]
    assert "|207^" in acks[1].errors[0] and "internal error" in acks[1].errors[0]
    faults = [e for e in logs if e["event"] == "intake.internal_error"]
    assert len(faults) == 1 and faults[0]["error_type"] == "RuntimeError" and "faulty_scan" in faults[0]["stack"]
    assert "MSH|^~" not in str(faults)  # the stack, not the message: no frame content in the log
    events = intake_events(await indexed_reader(engine))
    assert [e.state for e in events] == ["received", "rejected", "received"]
    assert (await indexed_reader(engine)).load_message(events[1].message_uid).raw == boom
    assert (await exchange(client, sample_adt("F-4").encode())).code == "AA"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_fault_after_the_journal_write_keeps_the_stored_answer(engine, monkeypatch):
    """A defect in what follows the commit (metrics, logging) must not turn a stored AA into a
    drop: the message is in the journal, its AA is due."""

    def broken_observe(*args, **kwargs):
        raise RuntimeError("metrics defect")

    monkeypatch.setattr(engine.intake, "_observe", broken_observe)
    client = await client_for(engine, "in")
    acks = await _pipelined(client, [sample_adt("O-1").encode(), sample_adt("O-2").encode()])
    assert [(a.code, a.control_id) for a in acks] == [("AA", "O-1"), ("AA", "O-2")]
    assert [e.state for e in intake_events(await indexed_reader(engine))] == ["received", "received"]
    client.close()
