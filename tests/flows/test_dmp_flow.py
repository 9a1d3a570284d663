"""The DMP flow end to end: MLLP in -> route -> DMP simulator (HTTPS + mTLS) -> ZAM^Z01 back to the
creator over MLLP, and the report to the DRIMbox only once the DMP accepted it."""

from __future__ import annotations

import pytest_twisted

from engine.hl7.message import Message
from tests.flows.dmp_support import (DELETE, INITIAL, REPLACE, V1_ID, V2_ID, adapt, start_flow,
                                     statuses)
from tests.routing.peers import until
from tests.support import client_for, exchange


def zam_fields(raw: bytes) -> dict:
    """What the creator reads in a ZAM^Z01: type, status OBX-5, OBX-4 (original MSH-10), ERR-5."""
    msg = Message.parse(raw)
    return {"type": msg.get("MSH-9"), "status": msg.get("OBX-5.1"), "original": msg.get("OBX-4"),
            "error": msg.get("ERR-5.1") or "", "error_label": msg.get("ERR-5.2") or "",
            "to": msg.get("MSH-5")}


async def send(flow, raw: bytes) -> str:
    client = await client_for(flow.engine, "creator")
    try:
        return (await exchange(client, raw)).code
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_initial_replace_delete_reach_the_dmp_with_zams_and_drimbox(tmp_path, simulator, pki,
                                                                          ans_corpus):
    flow = await start_flow(tmp_path, simulator, pki)
    try:
        steps = [("INIT-1", INITIAL, {V1_ID: ["Approved"]}),
                 ("RPLC-1", REPLACE, {V1_ID: ["Deprecated"], V2_ID: ["Approved"]}),
                 ("DEL-1", DELETE, {V1_ID: ["Deprecated"], V2_ID: ["Deleted"]})]
        for n, (control_id, name, expected) in enumerate(steps, 1):
            assert await send(flow, adapt((ans_corpus / name).read_bytes(), control_id)) == "AA"
            await until(lambda: len(flow.creator_out.received) == n and len(flow.drimbox.received) == n,
                        what=f"ZAM and DRIMbox copy of {control_id}")
            assert statuses(simulator) == expected
            zam = zam_fields(flow.creator_out.received[-1])
            assert zam["type"].startswith("ZAM^Z01") and zam["original"] == control_id
            assert (zam["status"], zam["error"], zam["to"]) == ("Y", "", "RIS-Y")
            assert flow.drimbox.control_ids()[-1] == control_id
    finally:
        await flow.close()
