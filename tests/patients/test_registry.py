"""PatientRegistry on a real SQLite file: consent ordering, merges, the DMP gate, the hook."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted

from engine.dmp.gates import check_publishable
from engine.dmp.model import PublishRequest
from engine.hl7 import Message
from engine.patients import AdtError, PatientRegistry, read_adt, update_from_message
from tests.patients.messages import INS_OID, OTHER_INS, TEST_INS, adt
from tests.patients.test_adt import CONSENT_DIR, CONSENT_EXAMPLES


class FakeClock:
    """Deterministic registry clock: each reading is one second later."""

    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path):
    """The same rules on both stores: a local SQLite file, or the shared journal's database."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    reg = PatientRegistry(tmp_path, clock=FakeClock(), url=url)
    yield reg
    reg.close()


def apply(registry, raw: bytes):
    return registry.apply(read_adt(Message.parse(raw)))


def publish_request(ins: str) -> PublishRequest:
    return PublishRequest(
        action="initial",
        cda=b"<ClinicalDocument/>",
        ins=ins,
        ins_oid=INS_OID,
        ins_qualified=True,
        message_control_id="c1",
    )


def test_corpus_examples_in_order_follow_the_latest_collection(registry, ans_corpus):
    opposed = []
    for name, *_ in CONSENT_EXAMPLES:
        record = apply(registry, ans_corpus.joinpath(*CONSENT_DIR, name).read_bytes())
        opposed.append(registry.is_opposed(TEST_INS))
    assert opposed == [False, False, True, False, False]
    # The last file says NA/NA: "not collected" never erases what was collected before.
    assert record.feeding.code == "INO" and record.feeding.date.day == 10
    assert record.consultation.code == "INC" and record.consultation.date.day == 9
    assert registry.is_opposed(TEST_INS) is False
    assert [h.control_id for h in registry.history("000003")] == ["3975", "3976", "3977", "3978", "3979"]


def test_opposed_patient_is_blocked_by_the_dmp_gate(registry, ans_corpus):
    apply(registry, ans_corpus.joinpath(*CONSENT_DIR, CONSENT_EXAMPLES[2][0]).read_bytes())
    assert registry.is_opposed(TEST_INS) is True
    decision = check_publishable(publish_request(TEST_INS), registry)
    assert (decision.allowed, decision.code) == (False, "PATIENT_OPPOSED")


def test_unknown_patient_is_not_opposed(registry):
    assert registry.is_opposed(OTHER_INS) is False
    assert registry.find("nobody") is None and registry.history("nobody") == []
    assert check_publishable(publish_request(OTHER_INS), registry).allowed


def test_a08_changes_consent_later(registry):
    apply(registry, adt(control="1", feeding="IO", feeding_date="20240301100000"))
    assert registry.is_opposed(TEST_INS)
    record = apply(registry, adt(event="A08", control="2", feeding="INO", feeding_date="20240401100000"))
    assert record.feeding.code == "INO" and not registry.is_opposed(TEST_INS)
    assert registry.history(TEST_INS)[-1].changes["feeding"] == "INO collected 2024-04-01 10:00:00"


def test_older_consent_arriving_late_does_not_override(registry):
    apply(
        registry,
        adt(control="new", feeding="IO", feeding_date="20240401100000", consult="INC", consult_date="20240401100000"),
    )
    record = apply(
        registry,
        adt(
            event="A08",
            control="old",
            feeding="INO",
            feeding_date="20240301100000",
            consult="IC",
            consult_date="20240501100000",
        ),
    )
    assert record.feeding.code == "IO" and registry.is_opposed(TEST_INS)
    assert record.consultation.code == "IC"  # each field is ordered on its own date
    last = registry.history("900001")[-1]
    assert last.control_id == "old" and "feeding_ignored" in last.changes


def test_merge_moves_consent_and_keeps_the_old_ipp_resolvable(registry):
    apply(registry, adt(control="1", ipp="900001", ins=OTHER_INS, feeding="IO", feeding_date="20240301100000"))
    apply(registry, adt(control="2", ipp="900002", ins=None, zfa=False))
    merged = apply(registry, adt(event="A40", control="3", ipp="900002", ins=None, mrg_ipp="900001", zfa=False))
    assert merged.ipp.value == "900002"
    assert merged.ins.value == OTHER_INS and merged.feeding.code == "IO"
    assert [(m.old_ipp.value, m.control_id) for m in merged.merges] == [("900001", "3")]
    assert registry.find("900001").id == merged.id
    assert registry.find(OTHER_INS).id == merged.id
    assert registry.is_opposed(OTHER_INS)
    # Later messages with the old IPP update the survivor.
    after = apply(
        registry,
        adt(event="A08", control="4", ipp="900001", ins=OTHER_INS, feeding="INO", feeding_date="20240601100000"),
    )
    assert after.id == merged.id and not registry.is_opposed(OTHER_INS)
    assert [h.control_id for h in registry.history("900002")] == ["1", "2", "3", "3", "4"]


def test_merged_ins_still_answers_with_the_survivor_consent(registry):
    apply(registry, adt(control="1", ipp="900001", ins=OTHER_INS, feeding="IO"))
    apply(registry, adt(control="2", ipp="900002", ins=TEST_INS, zfa=False))
    survivor = apply(registry, adt(event="A40", control="3", ipp="900002", ins=TEST_INS, mrg_ipp="900001", zfa=False))
    assert survivor.ins.value == TEST_INS and survivor.feeding.code == "IO"
    assert registry.is_opposed(OTHER_INS) and registry.is_opposed(TEST_INS)
    assert registry.find(OTHER_INS).id == survivor.id


def test_replayed_merge_changes_nothing(registry):
    apply(registry, adt(control="1", ipp="900001", feeding="IO"))
    a40 = adt(event="A40", control="2", ipp="900002", ins=None, mrg_ipp="900001", zfa=False)
    first = apply(registry, a40)
    again = apply(registry, a40)
    assert again.merges == first.merges and again.feeding == first.feeding
    assert registry.history("900002")[-1].changes == {}


def test_merge_of_an_unknown_ipp_is_recorded(registry):
    apply(registry, adt(control="1", ipp="900002"))
    record = apply(registry, adt(event="A40", control="2", ipp="900002", mrg_ipp="900009"))
    assert [m.old_ipp.value for m in record.merges] == ["900009"]
    assert registry.find("900009").ipp.value == "900002"


def test_registry_survives_reopening_and_uses_wal(tmp_path):
    first = PatientRegistry(tmp_path)
    apply(first, adt(feeding="IO"))
    first.close()
    again = PatientRegistry(tmp_path)
    try:
        assert again.is_opposed(TEST_INS)
    finally:
        again.close()
    with sqlite3.connect(tmp_path / "patients.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest_twisted.ensureDeferred
async def test_hook_applies_off_the_reactor_thread(tmp_path):
    registry = PatientRegistry(tmp_path)
    try:
        record = await update_from_message(registry, adt(feeding="IO").replace(b"\n", b"\r"))
        assert record.feeding.code == "IO" and registry.is_opposed(TEST_INS)
        with pytest.raises(AdtError) as caught:
            await update_from_message(registry, b"\x00\x01 not hl7")
        assert caught.value.error.code == 100
        with pytest.raises(AdtError) as caught:
            await update_from_message(registry, adt(feeding="MAYBE"))
        assert caught.value.error.location == "ZFA^1^9"
        assert [h.control_id for h in registry.history(TEST_INS)] == ["1"]
    finally:
        registry.close()


def test_a_failed_write_keeps_nothing_and_is_a_journal_error(tmp_path):
    from engine.errors import JournalError

    registry = PatientRegistry(tmp_path)
    try:
        apply(registry, adt(control="1", feeding="INO"))
        # A trigger standing in for a disk failure in the middle of the transaction.
        with sqlite3.connect(tmp_path / "patients.sqlite") as conn:
            conn.execute("CREATE TRIGGER fail BEFORE INSERT ON history BEGIN SELECT RAISE(ABORT, 'disk gone'); END")
        with pytest.raises(JournalError):
            apply(registry, adt(event="A08", control="2", feeding="IO", feeding_date="20250101000000"))
        assert not registry.is_opposed(TEST_INS)
        assert [h.control_id for h in registry.history(TEST_INS)] == ["1"]
    finally:
        registry.close()


def test_on_a_shared_journal_every_node_sees_the_consent_another_recorded(tmp_path, pg_url, ans_corpus):
    leader = PatientRegistry(tmp_path / "n1", url=pg_url)  # the node that routed the PAM.fr ADT
    other = PatientRegistry(tmp_path / "n2", url=pg_url)  # the node that sends to the DMP
    try:
        apply(leader, ans_corpus.joinpath(*CONSENT_DIR, CONSENT_EXAMPLES[2][0]).read_bytes())
        assert other.is_opposed(TEST_INS) is True
        assert not (tmp_path / "n2" / "patients.sqlite").exists()
    finally:
        leader.close()
        other.close()


@pytest.mark.parametrize("event", ["A14", "Z99"])
def test_pending_admissions_and_movement_updates_carry_identity_and_consent(registry, event):
    record = apply(registry, adt(event=event, control=f"{event}-1", feeding="IO"))
    assert record.identity_status == "VALI" and record.ins is not None
    assert registry.is_opposed(TEST_INS) and registry.identity_status(TEST_INS) == "VALI"


def test_an_a47_downgrade_withdraws_the_ins_and_the_dmp_gate_waits(registry):
    apply(registry, adt(control="A01-1"))
    assert registry.identity_status(TEST_INS) == "VALI"
    # PAM.fr: the INS moves to MRG-1 and PID-3 carries none; the identity is no longer qualified.
    downgrade = adt(event="A47", control="A47-1", ins=None, status="PROV", zfa=False).replace(
        b"PV1|1|I\n", f"MRG|{TEST_INS}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS\n".encode()
    )
    record = apply(registry, downgrade)
    assert record.ins is None and record.identity_status == "PROV"
    # No patient holds that INS any more, yet a report still carrying it must wait: the registry
    # remembers the withdrawn INS, whether the report is looked up by INS or by IPP.
    assert registry.identity_status(TEST_INS) == "WITHDRAWN"
    assert registry.identity_status(TEST_INS, ipp="900001", ipp_domain="000897406") == "WITHDRAWN"
    gate = check_publishable(publish_request(TEST_INS), registry)  # the sender still says VALI
    assert gate.code == "INS_NOT_QUALIFIED" and "A47" in gate.reason
    # Qualified again later (INSi call): the INS is back, nothing withdrawn any more.
    record = apply(registry, adt(control="A31-1", event="A31", zfa=False))
    assert record.ins.value == TEST_INS and registry.identity_status(TEST_INS) == "VALI"


def test_an_a47_change_of_ipp_moves_the_patient_to_the_new_ipp(registry):
    apply(registry, adt(control="A01-2", ipp="900001", feeding="IO"))
    change = adt(event="A47", control="A47-2", ipp="900002", zfa=False, mrg_ipp="900001")
    record = apply(registry, change)
    assert record.ipp.value == "900002" and record.ins.value == TEST_INS
    assert registry.find("900001").id == record.id  # the old IPP still leads to the patient
    assert registry.is_opposed(TEST_INS) and registry.identity_status(TEST_INS) == "VALI"


def test_the_identity_status_comes_from_the_ipp_when_the_gam_sends_no_ins(registry):
    # PAM.fr: an unqualified identity is sent without its INS; the report's sender may still
    # carry the INS with PID-32 = VALI. The registry knows the patient by IPP: not qualified.
    apply(registry, adt(control="A01-3", ipp="900003", ins=None, status="PROV"))
    assert registry.identity_status(TEST_INS) is None
    assert registry.identity_status(TEST_INS, ipp="900003", ipp_domain="000897406") == "PROV"
    assert registry.identity_status(TEST_INS, ipp="900003") == "PROV"  # any domain
    # Known IPP qualified with another INS than the report's: not this patient's INS.
    apply(registry, adt(control="A01-4", ipp="900004", ins=OTHER_INS))
    assert registry.identity_status(TEST_INS, ipp="900004") == "OTHER_INS"
    assert registry.identity_status(OTHER_INS, ipp="900004") == "VALI"


def test_a_registry_file_of_an_earlier_version_gains_the_withdrawn_ins_column(tmp_path):
    from engine.journal.patients import PATIENT_MIGRATIONS

    old = sqlite3.connect(tmp_path / "patients.sqlite")  # unnumbered, without the A47 column
    old.executescript(PATIENT_MIGRATIONS[0][1])
    old.execute(
        "INSERT INTO patients (ipp, ipp_domain, ipp_authority, ipp_oid, ins, identity_status, created_at,"
        " updated_at) VALUES ('900001', '000897406', 'CHU-X', '000897406', ?, 'VALI', 1, 1)",
        (TEST_INS,),
    )
    old.commit()
    old.close()
    registry = PatientRegistry(tmp_path, clock=FakeClock())
    try:
        assert registry.identity_status(TEST_INS) == "VALI"
        downgrade = adt(event="A47", control="A47-9", ins=None, status="PROV", zfa=False).replace(
            b"PV1|1|I\n", f"MRG|{TEST_INS}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS\n".encode()
        )
        apply(registry, downgrade)
        assert registry.identity_status(TEST_INS) == "WITHDRAWN"
    finally:
        registry.close()


def test_an_unnumbered_registry_file_that_has_every_column_opens_and_is_numbered(tmp_path):
    from engine.journal.patients import PATIENT_MIGRATIONS, open_sqlite

    first = open_sqlite(tmp_path / "patients.sqlite")
    first.execute("DROP TABLE schema_version")  # as the engine wrote it before numbering the schema
    first.close()
    again = open_sqlite(tmp_path / "patients.sqlite")
    try:
        versions = [r[0] for r in again.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == [n for n, _ in PATIENT_MIGRATIONS]
        assert "withdrawn_ins" in {r[1] for r in again.execute("PRAGMA table_info(patients)")}
    finally:
        again.close()
