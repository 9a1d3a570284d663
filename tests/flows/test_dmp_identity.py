"""Identity gating through the real engine: MLLP in, the PAM.fr feed on its own channel, the DMP
simulator over HTTPS + mTLS. A DMP send for an identity the registry does not say qualified waits
(held, visible, never dead-lettered, never sent), and leaves once a PAM.fr update qualifies its
patient (A31, A14, Z99, or a movement such as an A02 transfer); an A47 downgrade makes a report
whose sender still says VALI wait.

The ADT messages are the ANS PAM.fr consent example (A01) with its trigger, PID-32 and ZFA-9 set as
each case needs (the corpus has no A14, A47 or Z99 example)."""

from __future__ import annotations

import base64

import pytest_twisted
from twisted.internet import threads

from tests.flows.dmp_support import INITIAL, V1_ID, adapt, renumber_document, segments, set_field, start_flow
from tests.flows.test_dmp_flow import send, zam_fields
from tests.patients.messages import INS_OID, OTHER_INS, TEST_INS
from tests.routing.peers import until
from tests.routing.test_hold import pfi
from tests.support import client_for, exchange

CONSENT = (
    "hl7V2-exemples",
    "Vague 2",
    "Consentement_DMP_PAMFR",
    "ConsentementConsultation_NonOppositionAlimentation.er7",
)


def pam(
    ans_corpus,
    event: str,
    control: str,
    status: str = "VALI",
    feeding: str = "INO",
    ins: str | None = TEST_INS,
    withdrawn: str | None = None,
) -> bytes:
    """The ANS A01 consent example as `event` (A01/A14/A31/Z99, or A47 with `withdrawn` in MRG-1)."""
    out = []
    for seg in segments(ans_corpus.joinpath(*CONSENT).read_bytes()):
        if seg.startswith("MSH|"):
            seg = set_field(set_field(seg, 9, f"ADT^{event}^{'ADT_A30' if event == 'A47' else 'ADT_A01'}"), 10, control)
        elif seg.startswith("PID|"):
            ids = "000003^^^CHU-X&000897406&N^PI" + (f"~{ins}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS" if ins else "")
            seg = set_field(set_field(seg, 3, ids), 32, status)
        elif seg.startswith("ZFA|"):
            seg = set_field(seg, 9, feeding)
        elif seg.startswith("PV1|") and withdrawn:
            seg = f"MRG|{withdrawn}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS"
        out.append(seg)
    return ("\r".join(out) + "\r").encode("utf-8")


def other_patient(raw: bytes) -> bytes:
    """The same report for another (fictional) patient: OTHER_INS in PID-3 and in the CDA, and its
    own document id."""
    raw = renumber_document(raw, V1_ID, V1_ID[:-2] + "77")
    out = []
    for seg in segments(raw):
        if seg.startswith("OBX|") and "|ED|" in seg and "^Base64^" in seg:
            fields = seg.split("|")
            parts = fields[5].split("^")
            cda = base64.b64decode(parts[4] + "=" * (-len(parts[4]) % 4))
            parts[4] = base64.b64encode(cda.replace(TEST_INS.encode(), OTHER_INS.encode())).decode()
            fields[5] = "^".join(parts)
            seg = "|".join(fields)
        out.append(seg.replace(TEST_INS, OTHER_INS) if seg.startswith("PID|") else seg)
    return ("\r".join(out) + "\r").encode("utf-8")


async def feed(flow, raw: bytes) -> None:
    gam = await client_for(flow.engine, "gam")
    try:
        assert (await exchange(gam, raw)).code == "AA"
    finally:
        gam.close()
    control = segments(raw)[0].split("|")[9]
    await until(lambda: any(s == "patient-updated" for s, _ in flow.states_of(control)), what=f"{control} applied")


def held(flow, control: str) -> list[str]:
    return [d for s, d in flow.states_of(control) if s == "held"]


@pytest_twisted.ensureDeferred
async def test_a_qualifying_update_releases_its_patients_report_only(tmp_path, simulator, pki, ans_corpus):
    flow = await start_flow(tmp_path, simulator, pki)
    initial = (ans_corpus / INITIAL).read_bytes()
    try:
        assert await send(flow, adapt(initial, "PROV-A", status="PROV")) == "AA"
        assert await send(flow, adapt(other_patient(initial), "PROV-B", status="PROV")) == "AA"
        await until(lambda: held(flow, "PROV-A") and held(flow, "PROV-B"), what="both DMP sends held")
        assert "identity not qualified" in held(flow, "PROV-A")[0]
        # A14 (pending admission) qualifies patient A: A's report leaves, B's stays held, untouched.
        await feed(flow, pam(ans_corpus, "A14", "A14-1"))
        await until(lambda: len(flow.creator_out.received) == 1, what="A's report published")
        zam = zam_fields(flow.creator_out.received[0])
        assert (zam["status"], zam["original"]) == ("Y", "PROV-A")
        assert [e.unique_id for e in simulator.store.all()] == [V1_ID]
        [released] = [d for s, d in flow.states_of("PROV-A") if s == "released"]
        assert "qualified by the PAM.fr update ADT^A14" in released and "A14-1" in released
        assert len(held(flow, "PROV-B")) == 1 and not any(s == "released" for s, _ in flow.states_of("PROV-B"))
        assert not any(e.state == "dead-letter" for e in flow.events())
        # The operator sees what waits and why (no patient identifier in the line).
        shown = await threads.deferToThread(
            pfi, "queue", "--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data")
        )
        [line] = [li for li in shown.stdout.splitlines() if li.startswith("HELD delivery")]
        assert "to dmp" in line and "identity not qualified" in line and OTHER_INS not in line
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_a_movement_update_z99_qualifies_and_carries_the_consent(tmp_path, simulator, pki, ans_corpus):
    flow = await start_flow(tmp_path, simulator, pki)
    initial = (ans_corpus / INITIAL).read_bytes()
    try:
        assert await send(flow, adapt(initial, "PROV-Z", status="PROV")) == "AA"
        await until(lambda: held(flow, "PROV-Z"), what="DMP send held")
        # Z99 qualifies the identity but records an opposition: released, then refused at the gate.
        await feed(flow, pam(ans_corpus, "Z99", "Z99-1", feeding="IO"))
        await until(lambda: len(flow.creator_out.received) == 1, what="failure ZAM")
        zam = zam_fields(flow.creator_out.received[0])
        assert (zam["status"], zam["error"]) == ("N", "PATIENT_OPPOSED") and simulator.requests_seen == 0
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_an_a47_downgrade_holds_a_report_whose_sender_still_says_vali(tmp_path, simulator, pki, ans_corpus):
    flow = await start_flow(tmp_path, simulator, pki)
    initial = (ans_corpus / INITIAL).read_bytes()
    try:
        await feed(flow, pam(ans_corpus, "A01", "A01-1"))
        await feed(flow, pam(ans_corpus, "A47", "A47-1", status="PROV", ins=None, withdrawn=TEST_INS))
        assert await send(flow, adapt(initial, "STALE-1", status="VALI")) == "AA"  # the RIS did not hear
        await until(lambda: held(flow, "STALE-1"), what="DMP send held")
        assert "A47" in held(flow, "STALE-1")[0] and simulator.requests_seen == 0
        await feed(flow, pam(ans_corpus, "A31", "A31-1"))  # qualified again (INSi)
        await until(lambda: len(flow.creator_out.received) == 1, what="published once qualified again")
        assert zam_fields(flow.creator_out.received[0])["status"] == "Y"
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_an_update_landing_between_the_gate_and_the_hold_still_releases_it(tmp_path, simulator, pki, ans_corpus):
    # The gate read "not qualified", then the PAM.fr update was applied (finding nothing held to
    # release) before the hold was written: the worker looks once more and lets the send go.
    flow = await start_flow(tmp_path, simulator, pki)
    registry = flow.engine.patients
    answers = iter(["PROV"])
    real = registry.identity_status
    registry.identity_status = lambda ins, **kw: next(answers, None) or real(ins, **kw)
    try:
        registry.apply(_read(pam(ans_corpus, "A31", "A31-R")))  # qualified meanwhile, no release
        assert await send(flow, adapt((ans_corpus / INITIAL).read_bytes(), "RACE-1", status="PROV")) == "AA"
        await until(lambda: len(flow.creator_out.received) == 1, what="published without another update")
        assert len(held(flow, "RACE-1")) == 1 and any(s == "released" for s, _ in flow.states_of("RACE-1"))
    finally:
        await flow.close()


def _read(raw: bytes):
    from engine.hl7 import Message
    from engine.patients import read_adt

    return read_adt(Message.parse(raw))


@pytest_twisted.ensureDeferred
async def test_a_transfer_carrying_the_qualified_identity_releases_the_report(tmp_path, simulator, pki, ans_corpus):
    # The GAM qualified the identity during the stay; the next movement (A02) says so in PID-32.
    flow = await start_flow(tmp_path, simulator, pki)
    try:
        assert await send(flow, adapt((ans_corpus / INITIAL).read_bytes(), "PROV-T", status="PROV")) == "AA"
        await until(lambda: held(flow, "PROV-T"), what="DMP send held")
        await feed(flow, pam(ans_corpus, "A02", "A02-1"))
        await until(lambda: len(flow.creator_out.received) == 1, what="published after the transfer")
        assert zam_fields(flow.creator_out.received[0])["status"] == "Y"
    finally:
        await flow.close()
