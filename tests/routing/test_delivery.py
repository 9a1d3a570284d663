"""Routing and delivery end to end: real MLLP in, real MLLP destinations on 127.0.0.1."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer
import structlog.testing

from engine.journal.reader import JournalReader
from engine.journal.sqlite import NOT_ROUTED
from tests.routing.peers import RecordingPeer, refuse_first_follow_up_apply, until
from tests.support import client_for, exchange, inbound, sample_adt, sleep, write_config

FAST_RETRY = {"initial": 0.05, "maximum": 0.2, "jitter": 0.0}


def out(port: int, **extra) -> dict:
    return {"type": "mllp-out", "host": "127.0.0.1", "port": port, "ack_timeout": 2, "retry": FAST_RETRY, **extra}


def refused_once(control_id: str):
    """A peer's answer: AR to the first try of `control_id` (its retry then takes the messages of
    its key queued behind it in the same batch), AA to everything else."""

    def answer(raw, n):
        from engine.hl7.scan import scan

        first_try = scan(raw).control_id == control_id and not answer.refused
        answer.refused = answer.refused or first_try
        return "AR" if first_try else "AA"

    answer.refused = False
    return answer


def states(engine) -> list[tuple[str, str]]:
    return [(e.control_id, e.state) for e in JournalReader(engine.journal.data_dir).events_after(0, limit=10000)]


async def _engine(tmp_path, channels, routes, clock=None, data_dir=None):
    from engine.config.load import load_config
    from engine.service import Engine
    from twisted.internet import reactor

    cfg = write_config(tmp_path / "cfg", channels, routes)
    engine = Engine(load_config(cfg), data_dir or tmp_path / "data", reactor, with_metrics=False, clock=clock)
    await engine.startService()
    return engine


@pytest_twisted.ensureDeferred
async def test_fan_out_gate_and_unrouted(tmp_path):
    a, b = RecordingPeer(), RecordingPeer()
    pa, pb = await a.listen(), await b.listen()
    routes = [
        {
            "name": "adt",
            "match": {"channel": "in", "type": "ADT^A01"},
            "steps": [
                {"gate": {"when": {"PID-32": "VALI"}, "reason": "INS not qualified"}},
                {"deliver": {"to": ["a", "b"]}},
            ],
        },
    ]
    engine = await _engine(tmp_path, {"in": inbound(), "a": out(pa), "b": out(pb)}, routes)
    client = await client_for(engine, "in")
    try:
        assert (await exchange(client, sample_adt("OK-1").encode())).code == "AA"
        held = sample_adt("HELD-1").replace("|VALI", "|PROV")
        assert (await exchange(client, held.encode())).code == "AA"
        assert (await exchange(client, sample_adt("ORU-1", msg_type="ORU^R01^ORU_R01").encode())).code == "AA"
        await until(lambda: a.control_ids() == ["OK-1"] and b.control_ids() == ["OK-1"], what="fan-out")
        await until(lambda: ("ORU-1", "unrouted") in states(engine), what="unrouted row")
        journal = states(engine)
        assert ("HELD-1", "held") in journal and ("OK-1", "sent") in journal
        assert sum(1 for c, s in journal if c == "OK-1" and s == "sent") == 2
        assert "HELD-1" not in a.control_ids()
        # Successes are counted, not logged one by one: one summary line per destination.
        await until(lambda: engine.dispatcher.delivered == {"a": 1, "b": 1}, what="counted sends")
        with structlog.testing.capture_logs() as lines:
            engine.dispatcher.flush_summary()
        assert [(x["event"], x["destination"], x["done"]) for x in lines] == [
            ("delivery.summary", "a", 1),
            ("delivery.summary", "b", 1),
        ]
        assert not engine.dispatcher.delivered
    finally:
        client.close()
        await engine.stopService()
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_fifo_per_key_through_ar_retries_and_ae_dead_letter_with_follow_up(tmp_path):
    # Key P1's first message gets AR (circumstantial) twice: P1's next must wait, P2 may pass it;
    # BAD gets AE (the message has errors): a dead letter at once, the follow-up runs.
    def answer(raw, n):
        from engine.hl7.scan import scan

        ctrl = scan(raw).control_id
        if ctrl == "P1-a" and answer.ae < 2:
            answer.ae += 1
            return "AR"
        return "AE" if ctrl == "BAD" else "AA"

    answer.ae = 0
    dest, alert = RecordingPeer(answer), RecordingPeer()
    pd, pa = await dest.listen(), await alert.listen()
    routes = [
        {
            "name": "r",
            "match": {"channel": "in"},
            "steps": [
                {
                    "label": "send",
                    "deliver": {"to": "dest", "key": "PID-3.1"},
                    "on_failure": [{"deliver": {"to": "alert"}}],
                }
            ],
        }
    ]
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(pd), "alert": out(pa)}, routes)
    client = await client_for(engine, "in")
    try:
        p1a = sample_adt("P1-a").replace("IPP001", "P1")
        p1b = sample_adt("P1-b").replace("IPP001", "P1")
        p2 = sample_adt("P2-a").replace("IPP001", "P2")
        for msg in (p1a, p1b, p2, sample_adt("BAD").replace("IPP001", "P3")):
            assert (await exchange(client, msg.encode())).code == "AA"
        await until(lambda: len(dest.control_ids()) == 3 and alert.control_ids() == ["BAD"], what="deliveries")
        order = dest.control_ids()
        assert order.index("P1-a") < order.index("P1-b")
        journal = states(engine)
        assert ("P1-a", "retry") in journal and ("BAD", "dead-letter") in journal
    finally:
        client.close()
        await engine.stopService()
        await dest.close()
        await alert.close()


@pytest_twisted.ensureDeferred
async def test_transform_map_and_failing_xslt(tmp_path):
    dest = RecordingPeer()
    pd = await dest.listen()
    (tmp_path / "cfg" / "mappings").mkdir(parents=True)
    (tmp_path / "cfg" / "mappings" / "broken.xsl").write_text(
        '<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">'
        '<xsl:template match="/"><xsl:message terminate="yes">no mapping for this sender</xsl:message>'
        "</xsl:template></xsl:stylesheet>"
    )
    routes = [
        {
            "name": "mapped",
            "match": {"channel": "in", "sender": "GAM"},
            "steps": [{"transform": {"map": {"MSH-5": "RIS", "MSH-6.1": "CHU-Y"}}}, {"deliver": {"to": "dest"}}],
        },
        {
            "name": "xslt",
            "match": {"channel": "in", "sender": "OTHER"},
            "steps": [{"transform": {"xslt": "mappings/broken.xsl"}}, {"deliver": {"to": "dest"}}],
        },
    ]
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(pd)}, routes)
    client = await client_for(engine, "in")
    try:
        await exchange(client, sample_adt("M-1").encode())
        await exchange(client, sample_adt("X-1").replace("|GAM|", "|OTHER|").encode())
        await exchange(client, sample_adt("M-2").encode())
        await until(lambda: dest.control_ids() == ["M-1", "M-2"], what="mapped deliveries")
        assert dest.received[0].split(b"|")[4:6] == [b"RIS", b"CHU-Y"]
        await until(lambda: ("X-1", "invalid") in states(engine), what="xslt failure recorded")
        detail = [e.detail for e in JournalReader(engine.journal.data_dir).events_after(0) if e.state == "invalid"]
        assert "no mapping for this sender" in detail[0]
    finally:
        client.close()
        await engine.stopService()
        await dest.close()


@pytest_twisted.ensureDeferred
async def test_destination_down_holds_queue_then_drains_in_order(tmp_path):
    dest = RecordingPeer()
    pd = await dest.listen()
    await dest.close()  # down: connection refused
    routes = [{"name": "r", "match": {"channel": "in"}, "steps": [{"deliver": {"to": "dest"}}]}]
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(pd)}, routes)
    client = await client_for(engine, "in")
    try:
        for i in range(5):
            await exchange(client, sample_adt(f"Q-{i}").encode())
        await until(lambda: any(s == "retry" for _, s in states(engine)), what="retries while down")
        from twisted.internet import reactor

        dest.port = reactor.listenTCP(pd, dest, interface="127.0.0.1")
        await until(lambda: dest.control_ids() == [f"Q-{i}" for i in range(5)], timeout=15, what="drain")
    finally:
        client.close()
        await engine.stopService()
        await dest.close()


@pytest_twisted.ensureDeferred
async def test_parallel_keys_use_several_connections_and_keep_order_per_key(tmp_path):
    dest = RecordingPeer()
    pd = await dest.listen()
    routes = [{"name": "r", "match": {"channel": "in"}, "steps": [{"deliver": {"to": "dest", "key": "PID-3.1"}}]}]
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(pd, parallel_keys=4)}, routes)
    client = await client_for(engine, "in")
    try:
        sent = []
        for i in range(10):
            for key in ("KA", "KB", "KC", "KD", "KE", "KF"):
                sent.append(f"{key}-{i}")
                await exchange(client, sample_adt(f"{key}-{i}").replace("IPP001", key).encode())
        await until(lambda: len(dest.received) == len(sent), what="all delivered")
        got = dest.control_ids()
        for key in ("KA", "KB", "KC", "KD", "KE", "KF"):
            assert [c for c in got if c.startswith(key)] == [f"{key}-{i}" for i in range(10)]
        assert dest.connections > 1
    finally:
        client.close()
        await engine.stopService()
        await dest.close()


@pytest_twisted.ensureDeferred
async def test_a_message_of_a_channel_no_route_names_is_unrouted_without_reading_its_payload(tmp_path, monkeypatch):
    from engine.journal.payloads import PayloadStore

    reads = []
    real_read = PayloadStore.read
    monkeypatch.setattr(PayloadStore, "read", lambda self, *a: reads.append(a) or real_read(self, *a))
    peer = RecordingPeer()
    port = await peer.listen()
    routes = [{"name": "only-a", "match": {"channel": "a"}, "steps": [{"deliver": {"to": "dest"}}]}]
    engine = await _engine(tmp_path, {"a": inbound(), "b": inbound(), "dest": out(port)}, routes)
    client = await client_for(engine, "b")
    try:
        assert (await exchange(client, sample_adt("B-1").encode())).code == "AA"
        # Indexed `unrouted` with the message itself: the dispatcher never sees it.
        reader = JournalReader(engine.journal.data_dir)
        [event] = reader.events_after(0)
        assert (event.control_id, event.state, event.detail) == ("B-1", "received", NOT_ROUTED)
        await sleep(0.2)  # a dispatcher that wrongly looked at it would have read it by now
        assert reads == [] and peer.control_ids() == []
        assert reader.load_message(event.message_uid).state == "unrouted"  # (reads the payload)
    finally:
        client.close()
        await engine.stopService()
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_a_follow_up_that_fails_unexpectedly_is_journaled_and_spares_the_others(tmp_path):
    # Two reports of one patient recorded as sent together (the first one's AR holds the second
    # back until its retry takes both): the first one's on_success planning raising something no
    # step expects must neither go unjournaled nor cancel the second one's follow-up.
    from engine.demo import fictional_report

    dest, after = RecordingPeer(refused_once("REP-1")), RecordingPeer()
    pd, pa = await dest.listen(), await after.listen()
    routes = [
        {
            "name": "reports",
            "match": {"channel": "in"},
            "steps": [
                {
                    "label": "first",
                    "deliver": {"to": "dest"},
                    "on_success": [{"label": "check", "validate": "cda"}, {"deliver": {"to": "after"}}],
                }
            ],
        }
    ]
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(pd), "after": out(pa)}, routes)

    def validator(content: bytes) -> list[str]:
        validator.calls += 1
        if validator.calls == 1:
            raise RuntimeError("validator defect")
        return []

    validator.calls = 0
    engine.dispatcher.env.cda_validator = validator
    client = await client_for(engine, "in")
    try:
        for n in (1, 2):
            assert (await exchange(client, fictional_report(f"REP-{n}", n))).code == "AA"
        await until(lambda: dest.control_ids() == ["REP-1", "REP-2"], what="both sent")
        await until(lambda: after.control_ids() == ["REP-2"], what="the second follow-up")
        failed = [
            (e.control_id, e.detail)
            for e in JournalReader(engine.journal.data_dir).events_after(0, limit=1000)
            if e.state == "invalid"
        ]
        assert failed == [("REP-1", "route reports step first on_success failed: validator defect")]
    finally:
        client.close()
        await engine.stopService()
        await dest.close()
        await after.close()


@pytest_twisted.ensureDeferred
async def test_a_follow_up_due_when_the_engine_stops_runs_at_the_next_start(tmp_path):
    # The files are copied while a report's on_success is being planned (its delivery recorded as
    # sent, its follow-up not yet applied): what a crash at that moment leaves. An engine started
    # on the copy runs the follow-up, once, without sending the report again.
    import shutil
    import sqlite3
    import threading

    from engine.demo import fictional_report
    from twisted.internet import threads

    routes = [
        {
            "name": "reports",
            "match": {"channel": "in"},
            "steps": [
                {
                    "label": "first",
                    "deliver": {"to": "dest"},
                    "on_success": [{"label": "check", "validate": "cda"}, {"deliver": {"to": "after"}}],
                }
            ],
        }
    ]
    peers = [RecordingPeer() for _ in range(4)]
    dest, after, dest2, after2 = peers
    ports = [await p.listen() for p in peers]
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(ports[0]), "after": out(ports[1])}, routes)
    planning, release = threading.Event(), threading.Event()
    judge = engine.dispatcher.env.cda_validator

    def held_validator(content: bytes) -> list[str]:
        planning.set()
        release.wait(30)
        return judge(content)

    engine.dispatcher.env.cda_validator = held_validator
    client = await client_for(engine, "in")
    data, crashed = tmp_path / "data", tmp_path / "crashed"

    def due() -> list:
        with sqlite3.connect(data / "journal" / "journal.sqlite") as conn:
            return conn.execute("SELECT follow_up FROM deliveries WHERE destination='dest'").fetchall()

    try:
        assert (await exchange(client, fictional_report("REP-1", 1))).code == "AA"
        await threads.deferToThread(planning.wait, 30)
        assert due() == [("on_success",)]  # recorded with the finish, before the follow-up ran
        shutil.copytree(data, crashed)
        release.set()
        await until(lambda: after.control_ids() == ["REP-1"], what="the follow-up")
        await until(lambda: due() == [(None,)], what="the mark cleared with the follow-up's plan")
    finally:
        release.set()
        client.close()
        await engine.stopService()
    channels = {"in": inbound(), "dest": out(ports[2]), "after": out(ports[3])}
    restarted = await _engine(tmp_path / "second", channels, routes, data_dir=crashed)
    try:
        await until(lambda: after2.control_ids() == ["REP-1"], what="the resumed follow-up")
        await sleep(0.3)
        assert dest2.control_ids() == [] and after2.control_ids() == ["REP-1"]
        resumed = [e.detail for e in JournalReader(restarted.journal.data_dir).events_after(0) if e.state == "queued"]
        assert len(resumed) == 2  # dest before the copy, after once
    finally:
        await restarted.stopService()
        for p in peers:
            await p.close()


@pytest_twisted.ensureDeferred
async def test_a_follow_up_whose_write_fails_stays_due_and_the_sweep_applies_it_once(tmp_path, monkeypatch):
    # The first follow-up's journal write is refused (a full disk): the second one of the same
    # batch still runs, the first stays due, and the next sweep applies it, once.
    dest, after = RecordingPeer(refused_once("P1-a")), RecordingPeer()
    pd, pa = await dest.listen(), await after.listen()
    routes = [
        {
            "name": "r",
            "match": {"channel": "in"},
            "steps": [{"label": "send", "deliver": {"to": "dest"}, "on_success": [{"deliver": {"to": "after"}}]}],
        }
    ]
    refuse_first_follow_up_apply(monkeypatch)
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(pd), "after": out(pa)}, routes)
    client = await client_for(engine, "in")
    try:
        for ctrl in ("P1-a", "P1-b"):
            assert (await exchange(client, sample_adt(ctrl).replace("IPP001", "P1").encode())).code == "AA"
        await until(lambda: after.control_ids() == ["P1-b"], what="the second follow-up")
        await engine.dispatcher.resume_follow_ups()  # what the periodic sweep runs
        await until(lambda: after.control_ids() == ["P1-b", "P1-a"], what="the deferred follow-up")
        await engine.dispatcher.resume_follow_ups()  # nothing left due: nothing twice
        await sleep(0.3)
        assert after.control_ids() == ["P1-b", "P1-a"]
    finally:
        client.close()
        await engine.stopService()
        await dest.close()
        await after.close()


class OneAckHeld(RecordingPeer):
    """Answers at once, except the first message of `held_id`: its ACK waits for `release()`."""

    def __init__(self, held_id: str):
        super().__init__()
        self.held_id, self.waiting = held_id, None

    def on_message(self, transport, raw: bytes) -> None:
        from engine.hl7.scan import scan

        if self.waiting is None and scan(raw).control_id == self.held_id:
            self.received.append(raw)
            self.waiting = (transport, raw)
            return
        super().on_message(transport, raw)

    def release(self) -> None:
        from engine.mllp.framing import frame
        from engine.sim.mllp import ack_for

        transport, raw = self.waiting
        transport.write(frame(ack_for(raw, "AA", self.name)))


@pytest_twisted.ensureDeferred
async def test_a_lane_waiting_for_its_ack_leaves_the_other_lanes_sending(tmp_path):
    """Claims go on while a send is in flight: with batches of two, the keys of the other lane
    are sent while one lane's ACK is held, and the held key's next message waits for it."""
    dest = OneAckHeld("SLOW-0")
    pd = await dest.listen()
    routes = [{"name": "r", "match": {"channel": "in"}, "steps": [{"deliver": {"to": "dest", "key": "PID-3.1"}}]}]
    channels = {"in": inbound(), "dest": out(pd, parallel_keys=2, ack_timeout=20)}
    engine = await _engine(tmp_path, channels, routes)
    engine.dispatcher.claim_limit = 2
    client = await client_for(engine, "in")
    try:
        # lane_of: SLOW and K1 go to lane 1, K4..K7 to lane 0 (crc32 % 2)
        await exchange(client, sample_adt("SLOW-0").replace("IPP001", "SLOW").encode())
        await until(lambda: dest.waiting is not None, what="the held send")
        await exchange(client, sample_adt("SLOW-1").replace("IPP001", "SLOW").encode())
        others = [(f"F-{i}", f"K{4 + i % 4}") for i in range(8)]
        for control_id, key in others:
            await exchange(client, sample_adt(control_id).replace("IPP001", key).encode())
        await until(lambda: set(dest.control_ids()) >= {c for c, _ in others}, what="the other lane's sends")
        assert "SLOW-1" not in dest.control_ids()  # FIFO per key: behind the send in flight
        dest.release()
        await until(lambda: "SLOW-1" in dest.control_ids(), what="the held key's next message")
        got = dest.control_ids()
        assert got.count("SLOW-0") == 1 and got.index("SLOW-0") < got.index("SLOW-1")
        assert sorted(got) == sorted(["SLOW-0", "SLOW-1", *(c for c, _ in others)])  # each once
    finally:
        client.close()
        await engine.stopService()
        await dest.close()


def _sending(data_dir) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{data_dir / 'journal' / 'journal.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM deliveries WHERE state='sending'").fetchone()[0]


@pytest_twisted.ensureDeferred
async def test_a_clean_stop_gives_back_the_deliveries_claimed_behind_a_send_in_flight(tmp_path):
    """One connection: the next batch, claimed while the first send waits for its ACK, queues
    behind it. Stopping then finishes and records the send in flight, gives the others back
    unsent, and the next start sends each of them once."""
    dest = OneAckHeld("SLOW-0")
    pd = await dest.listen()
    routes = [{"name": "r", "match": {"channel": "in"}, "steps": [{"deliver": {"to": "dest", "key": "PID-3.1"}}]}]
    channels = {"in": inbound(), "dest": out(pd, ack_timeout=20)}
    engine = await _engine(tmp_path, channels, routes)
    client = await client_for(engine, "in")
    others = [f"F-{i}" for i in range(4)]
    try:
        await exchange(client, sample_adt("SLOW-0").replace("IPP001", "SLOW").encode())
        await until(lambda: dest.waiting is not None, what="the held send")
        for control_id in others:
            await exchange(client, sample_adt(control_id).replace("IPP001", control_id).encode())
        await until(lambda: _sending(tmp_path / "data") == 1 + len(others), what="claimed behind it")
    finally:
        client.close()
    stopping = defer.ensureDeferred(engine.stopService())
    await sleep(0.2)
    assert not stopping.called  # the send in flight is waited for
    dest.release()
    await stopping
    assert dest.control_ids() == ["SLOW-0"]
    sent = [c for c, s in states(engine) if s == "sent"]
    assert sent == ["SLOW-0"] and _sending(tmp_path / "data") == 0

    again = await _engine(tmp_path / "again", channels, routes, data_dir=tmp_path / "data")
    try:
        await until(lambda: sorted(dest.control_ids()) == sorted(["SLOW-0", *others]), what="the rest, once")
        await sleep(0.2)
        assert sorted(dest.control_ids()) == sorted(["SLOW-0", *others])
    finally:
        await again.stopService()
        await dest.close()
