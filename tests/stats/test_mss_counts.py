"""MSSanté outcomes in the programme statistics, through the engine and the local MSSanté operator
(SMTP + IMAP over TLS): a report mailed to professionals and to the patient's Mon espace santé
mailbox (sent / refused), one refused by every professional mailbox, and CDA documents of the
application mailbox handed to the RIS (integrated, refused with 902)."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from engine.config.load import load_config
from engine.journal.reader import JournalReader
from engine.mss.testpki import generate_test_pki
from engine.service import Engine
from engine.stats import month_of
from tests.flows.mss_support import (
    FIRST_RCT,
    SECOND_RCT,
    AckPeer,
    ack_902,
    ans_mdm,
    imap_settings,
    mllp_out,
    mss_channel,
    start_operator,
)
from tests.flows.test_mss_flow import _for_the_patient_too, _mail_for_the_mailbox
from tests.routing.peers import until
from tests.support import client_for, exchange, inbound, write_config

PATIENT = "279035121518989@patient.mssante.fr"
ROUTES = [{"name": "to-mss", "match": {"channel": "creator-in", "type": "MDM"}, "steps": [{"deliver": {"to": "mss"}}]}]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return generate_test_pki(tmp_path_factory.mktemp("mss-pki"))


@pytest.fixture
def operator(pki):
    running = start_operator(pki)
    yield running
    running.stop()


def ris_answers():
    """The RIS integrates the first document and refuses the second (902, unknown patient)."""
    seen: list[str] = []

    def ack(ctrl: str) -> str:
        seen.append(ctrl)
        if len(seen) == 1:
            return f"MSH|^~\\&|RIS|X|PFI|Y|20260101||ACK|{ctrl}A|P|2.6\rMSA|AA|{ctrl}\r"
        return ack_902(ctrl)

    return ack


def with_control_id(mdm: bytes, control_id: str) -> bytes:
    return mdm.replace(b"|MDM^T02^MDM_T02|015|", f"|MDM^T02^MDM_T02|{control_id}|".encode(), 1)


@pytest_twisted.ensureDeferred
async def test_mails_sent_failed_and_integrated_count_per_audience(tmp_path, pki, operator, ans_corpus):
    # two mails wait in the application mailbox when the engine starts
    first, _ = _mail_for_the_mailbox(ans_corpus, pki, operator, tmp_path)
    second = first.replace(b"<flow-1@medecin.mssante.fr>", b"<flow-2@medecin.mssante.fr>")
    for mail in (first, second):
        operator.mail.account("pfi@hopital-y.mssante.fr").inbox.append(mail)
    ris = AckPeer(ris_answers())
    channels = {
        "creator-in": inbound(),
        "ris": mllp_out(ris.listen()),
        "mss": mss_channel(pki, operator, tmp_path / "mss.sqlite", imap=imap_settings(pki, operator), deliver_to="ris"),
    }
    engine = Engine(
        load_config(write_config(tmp_path / "cfg", channels, ROUTES)), tmp_path / "data", reactor, with_metrics=False
    )
    start = month_of(time.time())
    await engine.startService()
    reader = JournalReader(tmp_path / "data" / "journal")
    client = await client_for(engine, "creator-in")
    try:
        await until(lambda: len(ris.received) == 2, what="the mailbox documents handed to the RIS")
        # 1. professionals and the patient: the professional accepts, the patient's mailbox refuses
        operator.mail.rejected.add(PATIENT)
        both = _for_the_patient_too(ans_mdm(ans_corpus, ack_reception=False, second_recipient=False))
        assert (await exchange(client, with_control_id(both, "MSS-1"))).code == "AA"
        await until(
            lambda: ("MSS-1", "sent") in [(e.control_id, e.state) for e in reader.events_after(0)],
            what="the first report's outcome",
        )
        # 2. professionals only, every mailbox refuses (550)
        operator.mail.rejected.update({FIRST_RCT, SECOND_RCT})
        professionals = ans_mdm(ans_corpus, ack_reception=False, second_recipient=True)
        assert (await exchange(client, with_control_id(professionals, "MSS-2"))).code == "AA"
        await until(
            lambda: ("MSS-2", "dead-letter") in [(e.control_id, e.state) for e in reader.events_after(0)],
            what="the second report's dead letter",
        )
        await until(
            lambda: sum(e.state == "sent" and e.channel == "ris" for e in reader.events_after(0)) == 2,
            what="the RIS's answers journaled",
        )
        table = reader.statistics(start, month_of(time.time()))
    finally:
        client.close()
        await engine.stopService()
        await ris.close()
    found: dict = {}
    for row in table.rows:
        for column, value in row.items():
            if column.startswith("mss_") and value:
                found[(row["site"], column)] = found.get((row["site"], column), 0) + value
    reports = "FINESS:300017985"  # PRT-8 of the creator's requests
    lps = {site for site, column in found if column.startswith("mss_integ")}
    assert len(lps) == 1 and reports not in lps  # the RIS's own structure, not the correspondent's
    [ris_site] = lps
    assert found == {
        (reports, "mss_ps_requested"): 2,
        (reports, "mss_patient_requested"): 1,
        (reports, "mss_ps_succeeded"): 1,
        (reports, "mss_patient_failed"): 1,
        (reports, "mss_ps_failed"): 1,
        (ris_site, "mss_integrated"): 1,
        (ris_site, "mss_integration_failed"): 1,
    }
