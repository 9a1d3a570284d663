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


def mail(
    zip_bytes: bytes | None = None,
    *,
    sender: str | None = SENDER,
    filename="IHE_XDM.zip",
    mime=("application", "zip"),
    message_id="<m@ps.mssante.fr>",
    padding: int = 0,
) -> bytes:
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


BROKEN_MIME = (
    b"From: hostile@ps.mssante.fr\r\nMessage-ID: <broken@x>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="abc"\r\n\r\nno boundary here at all\r\n'
)

CASES = {
    "no From": (mail(good_xdm(), sender=None), "malformed-mail"),
    "broken MIME": (BROKEN_MIME, "malformed-mail"),
    "zip bomb": (mail(xdm_with({**metadata_entries(), "IHE_XDM/SUBSET01/DOC0001.XML": b"\0" * 5_000_000})), "zip-bomb"),
    "path traversal": (mail(xdm_with({**metadata_entries(), "../../etc/cron.d/evil": b"x"})), "zip-path-traversal"),
    "nested traversal": (mail(xdm_with({"IHE_XDM/SUBSET01/../../../evil": b"x"})), "zip-path-traversal"),
    "not a CDA": (
        mail(xdm_with({**metadata_entries(), "IHE_XDM/SUBSET01/DOC0001.XML": b"<html>hi</html>"})),
        "not-cda",
    ),
    "PDF only": (mail(b"%PDF-1.4", filename="cr.pdf", mime=("application", "pdf")), "not-xdm-attachment"),
    "no attachment": (mail(None), "no-attachment"),
    "not a zip": (mail(b"PK\x03\x04 garbage"), "zip-unreadable"),
    "too many entries": (mail(xdm_with({f"f{i}": b"" for i in range(100)})), "zip-too-many-entries"),
    "no metadata": (mail(xdm_with({"README.TXT": b"hello"})), "xdm-no-metadata"),
    "huge mail": (mail(good_xdm(), padding=300_000), "mail-too-large"),
}


@pytest.fixture
def intake(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite", limits=InboundLimits(max_mail_bytes=200_000))
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
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite", limits=InboundLimits(max_mail_bytes=200_000))
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
    answers = [
        email.message_from_bytes(m.raw, policy=policy.default) for m in operator.operator.account(SENDER).inbox.messages
    ]
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


# An external MSSanté sender once forged an NTE and an OBX in the MDM the RIS received by putting
# `&#13;` (CR) and delimiters in CDA attributes and texts the LPS MDM copies.
FORGED = "&#13;NTE|1||FORGED&#13;OBX|99|ST|X||FORGED"
HOSTILE_CDA = f"""<ClinicalDocument xmlns="urn:hl7-org:v3">
<id root="1.2.250.1.999.1" extension="DOC-1|^~X"/>
<code code="18748-4" codeSystem="2.16.840.1.113883.6.1" displayName="CR|^~\\&amp;{FORGED}"/>
<recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="279035121518989"/>
<addr><streetAddressLine>1 rue ~ des | Lilas{FORGED}</streetAddressLine><city>LYON^3</city></addr>
<patient><name><family qualifier="BR">TEST|X{FORGED}</family><given>A^B&amp;C</given></name>
<administrativeGenderCode code="F"/><birthTime value="19800101"/></patient></patientRole></recordTarget>
<legalAuthenticator><assignedEntity><id root="1.2.250.1.71.4.2.1" extension="810001234567|FORGED^X"/></assignedEntity></legalAuthenticator>
</ClinicalDocument>""".encode()


def _segments(mdm: bytes) -> list[str]:
    return [s for s in mdm.decode().split("\r") if s]


def test_delimiters_and_cr_in_the_cda_never_forge_segments(intake):
    from engine.hl7.encode import unescape
    from engine.hl7.message import Message

    analysis = intake.analyse(mail(build_xdm(HOSTILE_CDA, submission_metadata(), sender=SENDER, title="CR")))
    assert analysis.quarantine is None, analysis.detail
    [mdm] = analysis.mdms
    names = [s[:3] for s in _segments(mdm)]
    assert "NTE" not in names and names.count("OBX") == 6  # the CDA, the mail body, 4 flags
    msg = Message.parse(mdm)
    assert unescape(msg.get("PID-5.1")) == "TEST|X\rNTE|1||FORGED\rOBX|99|ST|X||FORGED"
    assert unescape(msg.get("PID-5.2")) == "A^B&C" and unescape(msg.get("PID-11.3")) == "LYON^3"
    assert msg.get("PID-32") == "VALI" and msg.get("PID-31") == "N"  # not shifted
    assert unescape(msg.get("TXA-22")) == "810001234567|FORGED^X"
    assert unescape(msg.get("TXA-12.1")) == "DOC-1|^~X" and msg.get("TXA-12.3") == "1.2.250.1.999.1"


@pytest.mark.parametrize(
    "attribute, value, field",
    [
        ('administrativeGenderCode code="F"', 'administrativeGenderCode code="M&#13;OBX|1|ST|X||F"', "PID-8"),
        ('birthTime value="19800101"', 'birthTime value="1980&#13;NTE|1"', "PID-7"),
        ('root="1.2.250.1.999.1"', 'root="1.2.3&#13;OBX|1"', "TXA-12"),
        ('extension="810001234567|FORGED^X"', 'extension="8100&#13;OBX|1"', "TXA-22"),
    ],
)
def test_values_that_cannot_be_valid_for_their_field_refuse_the_mail(intake, attribute, value, field):
    cda = HOSTILE_CDA.replace(attribute.encode(), value.encode())
    analysis = intake.analyse(mail(build_xdm(cda, submission_metadata(), sender=SENDER, title="CR")))
    assert analysis.quarantine == "cda-unusable" and field in analysis.detail and analysis.mdms in ([], None)


@pytest.mark.parametrize(
    "dnt, expected",
    [
        ("hostile@ps.mssante.fr", "hostile@ps.mssante.fr"),
        ("Secrétariat <secretariat@ps.mssante.fr>", "secretariat@ps.mssante.fr"),  # same MSSanté domain
        ("victim@elsewhere.example", "hostile@ps.mssante.fr"),  # a third party: the sender gets it
        ("", None),
    ],
)
def test_failure_notices_go_to_the_sender_not_to_third_parties(dnt, expected):
    from engine.mss.notifications import mdn_recipient

    msg = email.message_from_bytes(mail(good_xdm()), policy=policy.default)
    del msg["Disposition-Notification-To"]
    if dnt:
        msg["Disposition-Notification-To"] = dnt
    assert mdn_recipient(msg) == expected
