"""engine.docrequest.check: HL7Error → AckError, which messages are checked, MSA code."""

from __future__ import annotations

import pytest
import pytest_twisted

from engine.config.load import load_config
from engine.docrequest import check
from engine.docrequest.check import (
    RequestAckError,
    ack_code_for,
    check_document_message,
    describe,
    is_document_message,
    to_ack_error,
)
from engine.docrequest.errors import HL7Error, app_error
from engine.errors import ConfigurationError
from engine.hl7.scan import scan
from engine.service import policy_for
from tests.docrequest.corpus import GOOD, INS_MISMATCH, V20_ORU
from tests.support import inbound, sample_adt, write_config


def test_app_error_keeps_err5_msa_code_and_escapes_the_label():
    error = to_ack_error(app_error("INS_MISMATCH", "PID-3 vs CDA", "PID^1^3"))
    assert isinstance(error, RequestAckError) and error.ack_code == "AE"
    assert error.segment("^~\\&") == (
        "ERR||PID^1^3|207^Application internal error^HL70357|E|"
        "INS_MISMATCH^INS in PID-3 differs from the CDA recordTarget^99PFI|||"
        "PID-3 vs CDA"
    )
    refused = HL7Error(code=207, message="engine busy", ack_code="AR", app_code="X_Y", app_label="a$b")
    assert to_ack_error(refused, "$").app_code == "X_Y$a\\S\\b$99PFI"
    assert ack_code_for([to_ack_error(refused)]) == "AR"


def test_only_blocking_errors_change_the_ack_code():
    warning = to_ack_error(app_error("CDA_SETID_MISSING", "no setId", "OBX^1^5", severity="W"))
    assert ack_code_for([]) == ack_code_for([warning]) == "AA"
    assert ack_code_for([warning, to_ack_error(HL7Error(code=203, message="old"))]) == "AE"


def test_which_messages_are_document_requests():
    assert is_document_message(scan(GOOD["oru-init"].read_bytes()))
    assert is_document_message(scan(GOOD["mdm-init"].read_bytes()))
    assert is_document_message(scan(V20_ORU.read_bytes()))  # superseded: checked, gets 203
    assert not is_document_message(scan(sample_adt().encode()))
    assert not is_document_message(scan(sample_adt(msg_type="ORU^R01^ORU_R01").encode()))
    lps = GOOD["mdm-init"].read_bytes().replace(b"2.1^CISIS_CDA_HL7_V2", b"1.1^CISIS_CDA_HL7_LPS")
    assert not is_document_message(scan(lps))


def test_corpus_verdicts_and_journal_reason():
    results = {name: check_document_message(p.read_bytes()) for name, p in GOOD.items()}
    assert {name: ack_code_for(errors) for name, errors in results.items()} == {name: "AA" for name in GOOD}
    # Only tolerated defects remain (MANIFEST: truncated CORPSMAIL_PS, MDM CDAs without setId).
    assert {e.app_code.split("^")[0] for errors in results.values() for e in errors} == {
        "MAILBODY_TRUNCATED",
        "CDA_SETID_MISSING",
    }
    assert {e.severity for errors in results.values() for e in errors} == {"W"}
    errors = check_document_message(INS_MISMATCH.read_bytes())
    assert [(e.code, e.location, e.app_code.split("^")[0], e.severity) for e in errors] == [
        (207, "PID^1^3", "INS_MISMATCH", "E"),
        (207, "OBX^12^5", "MAILBODY_TRUNCATED", "W"),
    ]  # E first
    assert describe(errors[:1]).startswith("document request: 207 INS_MISMATCH at PID^1^3: INS in PID-3")


def test_unparsable_message_is_a_coded_error_not_an_exception():
    [error] = check_document_message(b"MSH|^~\\&|A|B|C|D|||ORU^R01|1|P|2.5|||||FRA|8859/1\rPID|\xff\xfe")
    assert error.code in (100, 101, 200) and error.severity == "E"
    [error] = check_document_message(
        b"MSH|^~\\&|A|B|C|D|||ORU^R01|1|P|2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\rPID|\xff\xfe"
    )
    assert (error.code, error.location) == (100, "MSH^1") and "offset" in error.message


@pytest_twisted.ensureDeferred
async def test_a_checker_defect_in_the_thread_becomes_ar_207(monkeypatch):
    def broken(raw, charset=None, cda_check=None):
        raise KeyError("bug")

    monkeypatch.setattr(check, "check_document_message", broken)
    errors = await check.DocumentRequestGate().check_in_thread(b"MSH|^~\\&|")
    assert [(e.code, e.message) for e in errors] == [
        (207, "document request could not be checked (KeyError): send it again later")
    ]
    assert ack_code_for(errors) == "AR"  # our fault, not the message's: it may be sent again


def test_ack_mode_setting_is_validated(tmp_path):
    write_config(tmp_path / "good", {"docs": inbound(ack_mode="document-request"), "plain": inbound()})
    config = load_config(tmp_path / "good")
    policies = {s.name: policy_for(s) for s in config.channels_of_type("mllp-in")}
    assert isinstance(policies["docs"].document_check, check.DocumentRequestGate)
    assert policies["plain"].document_check is None
    write_config(tmp_path / "bad", {"docs": inbound(ack_mode="full")})
    with pytest.raises(ConfigurationError, match="ack_mode"):
        load_config(tmp_path / "bad")
