"""Replace / delete mails give MDM^T10 / MDM^T04 like the ANS examples; the poll loop schedule."""

from __future__ import annotations

import base64
import datetime as dt

from twisted.internet import reactor, task

from engine.mss.inbound import MailboxPoller, MailIntake
from engine.mss.lps import parse_ack
from engine.mss.outbound import MssSender
from engine.mss.store import MssStore
from engine.mss.xdm import build_xdm
from mss_helpers import channel_settings, submission_metadata
from test_mss_inbound import LPS_DIR, equivalent_mail, lps_settings, segment_key, segments


def example(ans_corpus, folder: str, name: str):
    fields = {segment_key(s): s for s in segments((ans_corpus / LPS_DIR / folder / name).read_bytes())}
    b64 = fields["OBX1"][5].split("^")[4]
    return fields, base64.b64decode(b64 + "=" * (-len(b64) % 4))


def analyse(pki, operator, tmp_path, cda: bytes, action: str, confidentiality=("N",)):
    settings = lps_settings(pki, operator, tmp_path)
    zip_bytes = build_xdm(
        cda,
        submission_metadata(confidentiality=confidentiality),
        sender="thomas.eric@medecin.mssante.fr",
        title="CR",
        action=action,
    )
    store = MssStore(settings.state_file)
    intake = MailIntake(settings, store, lambda: "015", lambda: dt.datetime(2021, 10, 5, 15, 29, 8))
    analysis = intake.analyse(equivalent_mail(cda, zip_bytes=zip_bytes))
    store.close()
    [mdm] = analysis.mdms
    return {segment_key(s): s for s in segments(mdm)}


def test_replace_mail_gives_the_t10_of_the_example(pki, operator, tmp_path, ans_corpus):
    expected, cda = example(ans_corpus, "Remplacement MDM", "message_MDM__LPS_MSS_CR_Radio_RPLC_N1.er7")
    got = analyse(pki, operator, tmp_path, cda, "replace")
    assert got["MSH"][8] == expected["MSH"][8] == "MDM^T10^MDM_T02"
    assert got["ORC"][1] == expected["ORC"][1] == "RO"
    assert got["OBX1"][11] == expected["OBX1"][11] == "C"
    assert got["TXA"][13] == expected["TXA"][13].split("^")[0]  # parent id, EI-2 left empty
    for flag in ("OBX3", "OBX4", "OBX5", "OBX6"):
        assert got[flag][3:6] == expected[flag][3:6]


def test_delete_mail_gives_the_t04_of_the_example(pki, operator, tmp_path, ans_corpus):
    expected, cda = example(ans_corpus, "Suppression MDM", "message_MDM__LPS_MSS_CR_Radio_DEL_N1.er7")
    got = analyse(pki, operator, tmp_path, cda, "delete")
    assert (got["MSH"][8], got["ORC"][1], got["OBX1"][11]) == ("MDM^T04^MDM_T02", "CA", "D")
    assert got["TXA"][12] == expected["TXA"][12].split("^")[0]
    assert got.get("TXA")[13:14] in ([], [""])
    for flag in ("OBX3", "OBX4", "OBX5", "OBX6"):
        assert got[flag][3:6] == expected[flag][3:6]


def test_ack_parsing_copes_with_the_examples(ans_corpus):
    ack = parse_ack(
        (
            ans_corpus / "IG-hl7v2-volet-trans-lps-doc-cda-courriel-mss/_extracted_from_pages/"
            "profils-messages/ACK_T02_AE_203_unsupported_version.hl7"
        ).read_bytes()
    )
    assert (ack.code, ack.hl7_error, ack.error_code) == ("AE", "203", None)
    assert parse_ack((ans_corpus / LPS_DIR / "Transmission initiale MDM/ack.er7").read_bytes()).code == "AA"


def test_poll_loop_follows_the_clock_and_survives_failures(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    clock = task.Clock()
    store = MssStore(settings.state_file)
    poller = MailboxPoller(settings, reactor, None, MssSender(settings, reactor), store, clock=clock)
    calls = []

    async def fake_poll():
        calls.append(clock.seconds())
        if len(calls) == 1:
            raise ConnectionRefusedError("operator down")

    poller.poll_once = fake_poll
    poller.start()
    assert calls == [0]
    clock.advance(settings.imap.poll_interval_s - 1)
    assert calls == [0]
    clock.advance(1)
    clock.advance(settings.imap.poll_interval_s)
    assert calls == [0, 30, 60]
    poller.stop()
    store.close()
