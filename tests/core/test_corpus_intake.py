"""Every ANS example message in ../shared/corpus/ans is accepted (AA) with its fields indexed."""

from __future__ import annotations

import re

import pytest_twisted

from engine.journal.reader import JournalReader
from tests.conftest import ANS
from tests.support import intake_events, client_for, exchange, inbound, start_engine, write_config


def corpus_messages() -> list:
    files = [p for p in ANS.rglob("*") if p.is_file() and p.suffix.lower() in (".hl7", ".er7")]
    files += [p for p in ANS.rglob("Message metier*") if p.is_file()]
    return sorted(files)


def oracle(raw: bytes) -> dict:
    """Independent reading of MSH/PID by plain splitting (what a human reads in the file)."""
    lines = [line for line in re.split(rb"\r\n|\r|\n", raw) if line.strip()]
    msh = lines[0].decode("utf-8").split("|")
    pid = next((line.decode("utf-8").split("|") for line in lines if line.startswith(b"PID|")), None)
    return {
        "control_id": msh[9],
        "type": "^".join(msh[8].split("^")[:2]),
        "patient_ids": pid[3] if pid and len(pid) > 3 else "",
    }


def test_corpus_is_there():
    assert len(corpus_messages()) >= 70


@pytest_twisted.ensureDeferred
async def test_all_ans_examples_are_accepted_and_indexed(tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound(duplicate_window=0)})
    engine = await start_engine(cfg, tmp_path / "data")
    client = await client_for(engine, "in")
    files = corpus_messages()
    try:
        for path in files:
            raw = path.read_bytes()
            ack = await exchange(client, raw)
            expected = oracle(raw)
            assert (ack.code, ack.control_id) == ("AA", expected["control_id"]), f"{path}: {ack.errors}"
        events = intake_events(JournalReader(engine.journal.data_dir))
    finally:
        client.close()
        await engine.stopService()
    assert len(events) == len(files)
    for path, event in zip(files, events):
        expected = oracle(path.read_bytes())
        assert (event.control_id, event.msg_type) == (expected["control_id"], expected["type"]), path
        assert event.patient_ids == expected["patient_ids"], path


def test_lf_examples_and_known_ins_are_indexed():
    # Spot check against the MANIFEST: the MDM T02 CR d'imagerie carries the test INS.
    mdm = next(p for p in corpus_messages() if p.name == "message_MDM_CR_Radio_INIT_N1_Base64.er7")
    raw = mdm.read_bytes()
    assert b"\r" not in raw[:2000]  # the file uses LF separators
    assert "279035121518989" in oracle(raw)["patient_ids"]
