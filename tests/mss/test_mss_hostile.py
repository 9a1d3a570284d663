"""Hostile or unusable mails are quarantined with a reason, answered by a KO MDN, never fatal."""

from __future__ import annotations

import datetime as dt
import email
import io
import zipfile
from email import policy
from email.message import EmailMessage

import pytest
import pytest_twisted
from twisted.internet import reactor

from engine.mss.inbound import MailIntake, MailboxPoller
from engine.mss.outbound import MssSender
from engine.mss.settings import InboundLimits
from engine.mss.store import MssStore
from engine.mss.xdm import build_xdm
from mss_helpers import APP_MAILBOX, channel_settings, submission_metadata

CDA = b'<ClinicalDocument xmlns="urn:hl7-org:v3"><recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="279035121518989"/><patient><name><family>TEST</family><given>A</given></name></patient></patientRole></recordTarget><code code="18748-4" codeSystem="2.16.840.1.113883.6.1" displayName="CR"/><id root="1.2.3"/></ClinicalDocument>'
SENDER = "hostile@ps.mssante.fr"


def mail(zip_bytes: bytes | None = None, *, sender: str | None = SENDER, filename="IHE_XDM.zip",
         mime=("application", "zip"), message_id="<m@ps.mssante.fr>", padding: int = 0) -> bytes:
    msg = EmailMessage()
    if sender:
        msg["From"] = sender
        msg["Disposition-Notification-To"] = sender
    msg["To"] = APP_MAILBOX
    msg["Subject"] = "XDM/1.0/DDM+CR TEST A 01/01/1980"
    msg["Message-ID"] = message_id
    msg.set_content("corps" + "x" * padding)
    if zip_bytes is not None:
        msg.add_attachment(zip_bytes, maintype=mime[0], subtype=mime[1], filename=filename)
    return msg.as_bytes(policy=policy.SMTP)


def xdm_with(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def good_xdm() -> bytes:
    return build_xdm(CDA, submission_metadata(), sender=SENDER, title="CR")


def metadata_entries() -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(good_xdm()))
    return {"IHE_XDM/SUBSET01/METADATA.XML": archive.read("IHE_XDM/SUBSET01/METADATA.XML")}


BROKEN_MIME = (b"From: hostile@ps.mssante.fr\r\nMessage-ID: <broken@x>\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=\"abc\"\r\n\r\nno boundary here at all\r\n")

CASES = {
    "no From": (mail(good_xdm(), sender=None), "malformed-mail"),
    "broken MIME": (BROKEN_MIME, "malformed-mail"),
    "zip bomb": (mail(xdm_with({**metadata_entries(), "IHE_XDM/SUBSET01/DOC0001.XML": b"\0" * 5_000_000})), "zip-bomb"),
    "path traversal": (mail(xdm_with({**metadata_entries(), "../../etc/cron.d/evil": b"x"})), "zip-path-traversal"),
    "nested traversal": (mail(xdm_with({"IHE_XDM/SUBSET01/../../../evil": b"x"})), "zip-path-traversal"),
    "not a CDA": (mail(xdm_with({**metadata_entries(), "IHE_XDM/SUBSET01/DOC0001.XML": b"<html>hi</html>"})), "not-cda"),
    "PDF only": (mail(b"%PDF-1.4", filename="cr.pdf", mime=("application", "pdf")), "not-xdm-attachment"),
    "no attachment": (mail(None), "no-attachment"),
    "not a zip": (mail(b"PK\x03\x04 garbage"), "zip-unreadable"),
    "too many entries": (mail(xdm_with({f"f{i}": b"" for i in range(100)})), "zip-too-many-entries"),
    "no metadata": (mail(xdm_with({"README.TXT": b"hello"})), "xdm-no-metadata"),
    "huge mail": (mail(good_xdm(), padding=300_000), "mail-too-large"),
}


@pytest.fixture
def intake(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite",
                                limits=InboundLimits(max_mail_bytes=200_000))
    store = MssStore(settings.state_file)
    yield MailIntake(settings, store, lambda: "1", lambda: dt.datetime(2024, 1, 1))
    store.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_hostile_input_is_quarantined_with_its_reason(intake, case):
    raw, reason = CASES[case]
    analysis = intake.analyse(raw)
    assert analysis.quarantine == reason, analysis.detail
    assert analysis.mdms == []


def test_good_mail_passes_the_same_intake(intake):
    analysis = intake.analyse(mail(good_xdm()))
    assert analysis.quarantine is None and len(analysis.mdms) == 1


@pytest_twisted.ensureDeferred
async def test_poller_quarantines_answers_and_goes_on(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite",
                                limits=InboundLimits(max_mail_bytes=200_000))
    box = operator.operator.account(APP_MAILBOX).inbox
    names = sorted(CASES)
    for index, name in enumerate(names):
        raw = CASES[name][0].replace(b"<m@ps.mssante.fr>", f"<m{index}@ps.mssante.fr>".encode())
        box.append(raw)
    box.append(mail(good_xdm(), message_id="<good@ps.mssante.fr>"))
    delivered = []

    async def ris(mdm: bytes) -> bytes:
        delivered.append(mdm)
        return b"MSH|^~\\&|RIS|X|PFI|X|20240101||ACK^T02^ACK|1|P|2.6\rMSA|AA|1\r"

    store = MssStore(settings.state_file)
    poller = MailboxPoller(settings, reactor, ris, MssSender(settings, reactor), store)
    stats = await poller.poll_once()
    assert (stats.quarantined, stats.integrated, len(delivered)) == (len(CASES), 1, 1)
    quarantine = operator.operator.account(APP_MAILBOX).folder("PFI-Quarantaine")
    assert len(quarantine.messages) == len(CASES)
    assert len(box.messages) == 1 and "$PfiProcessed" in box.messages[0].flags
    # Every mail that asked for a notification got a KO MDN (906) naming the reason.
    answers = [email.message_from_bytes(m.raw, policy=policy.default)
               for m in operator.operator.account(SENDER).inbox.messages]
    ko = [a for a in answers if a["Subject"].startswith("[KO Intégration système !][906]")]
    assert len(ko) == len(CASES) - 2  # "no From" and "broken MIME" name nobody to answer
    assert any("zip-bomb" in a.get_body(("plain",)).get_content() for a in ko)
    assert (await poller.poll_once()).seen == 0
    store.close()


def test_corrupt_and_encrypted_entries_are_unreadable(intake):
    good = good_xdm()
    # Flip bytes inside the compressed CDA data (after its local header): inflate or CRC fails.
    corrupt = bytearray(good)
    data_start = good.index(b"IHE_XDM/SUBSET01/DOC0001.XML") + len("IHE_XDM/SUBSET01/DOC0001.XML")
    for offset in range(data_start + 5, data_start + 40):
        corrupt[offset] ^= 0xFF
    analysis = intake.analyse(mail(bytes(corrupt)))
    assert analysis.quarantine == "zip-unreadable", analysis.detail
    encrypted = bytearray(good)
    # Set the "encrypted" bit (general purpose flag bit 0) in every central directory record.
    position = 0
    while (position := encrypted.find(b"PK\x01\x02", position)) != -1:
        encrypted[position + 8] |= 0x01
        position += 4
    assert intake.analyse(mail(bytes(encrypted))).quarantine == "zip-unreadable"
