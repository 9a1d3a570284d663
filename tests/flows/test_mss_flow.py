"""MSSanté wired into the engine, end to end: MLLP in → route → SMTP (real TLS) → ZAM^Z02 back
over MLLP; and the application mailbox (IMAP over TLS) → LPS MDM → RIS over MLLP → MDN."""

from __future__ import annotations

import email
import hashlib
import io
import zipfile
from email import policy
from email.message import EmailMessage

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import reactor

from engine.config.load import load_config
from engine.journal.reader import JournalReader
from engine.mss.testpki import generate_test_pki
from engine.service import Engine
from tests.flows.mss_support import (
    APP_MAILBOX,
    FIRST_RCT,
    SECOND_RCT,
    AckPeer,
    ack_902,
    ans_mdm,
    dsn_for,
    imap_settings,
    mllp_out,
    mss_channel,
    obx5_document,
    segments,
    start_operator,
)
from tests.routing.peers import until
from tests.support import client_for, exchange, inbound, write_config

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
ROUTES = [{"name": "to-mss", "match": {"channel": "creator-in", "type": "MDM"}, "steps": [{"deliver": {"to": "mss"}}]}]
SENDER = "thomas.eric@medecin.mssante.fr"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return generate_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def operator(pki):
    running = start_operator(pki)
    yield running
    running.stop()


async def _engine(tmp_path, channels: dict, routes: list) -> Engine:
    cfg = write_config(tmp_path / "cfg", channels, routes)
    engine = Engine(load_config(cfg), tmp_path / "data", reactor, with_metrics=False)
    await engine.startService()
    return engine


def _events(engine) -> list:
    return JournalReader(engine.journal.data_dir).events_after(0, limit=10000)


def _xdm_of(raw: bytes) -> zipfile.ZipFile:
    message = email.message_from_bytes(raw, policy=policy.default)
    (part,) = [p for p in message.iter_attachments() if p.get_filename() == "IHE_XDM.zip"]
    return zipfile.ZipFile(io.BytesIO(part.get_content()))


def _slot(entry, name: str) -> list[str]:
    return entry.xpath(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value/text()", namespaces={"rim": RIM})


def _zam_rows(zam: bytes) -> dict:
    rows = {f[0] + (f[1] if f[0] == "OBX" else ""): f for f in segments(zam)}
    return {
        "type": rows["MSH"][8],
        "status": rows["OBX1"][5].split("^")[0],
        "request": rows["OBX1"][4],
        "address": rows["OBX2"][5].split("^")[3],
        "error": rows["ERR"][5].split("^")[0] if "ERR" in rows else None,
    }


async def _send_request(tmp_path, pki, operator, *, ack_reception: bool, mdm_corpus):
    creator = AckPeer()
    channels = {
        "creator-in": inbound(),
        "mss": mss_channel(
            pki, operator, tmp_path / "mss.sqlite", zam_channel="creator-out", acceptance_is_receipt=True
        ),
        "creator-out": mllp_out(creator.listen()),
    }
    engine = await _engine(tmp_path, channels, ROUTES)
    client = await client_for(engine, "creator-in")
    mdm = ans_mdm(mdm_corpus, ack_reception=ack_reception, second_recipient=True)
    assert (await exchange(client, mdm)).code == "AA"
    client.close()
    return engine, creator


@pytest_twisted.ensureDeferred
async def test_report_is_mailed_to_each_prt_recipient_with_the_cda_byte_for_byte(tmp_path, pki, operator, ans_corpus):
    engine, creator = await _send_request(tmp_path, pki, operator, ack_reception=True, mdm_corpus=ans_corpus)
    try:
        await until(lambda: len(operator.mail.received) == 2 and len(creator.received) == 2, what="mails and ZAMs")
        assert sorted(r for r, _ in operator.mail.received) == sorted([FIRST_RCT, SECOND_RCT])
        # byte for byte = the CDA the creator sent in OBX-5 (not the sibling .XML file, which differs)
        cda = obx5_document(ans_mdm(ans_corpus, ack_reception=True, second_recipient=True))
        assert cda.startswith(b"<ClinicalDocument")
        for _, raw in operator.mail.received:
            xdm = _xdm_of(raw)
            assert xdm.read("IHE_XDM/SUBSET01/DOC0001.XML") == cda
            entry = etree.fromstring(xdm.read("IHE_XDM/SUBSET01/METADATA.XML")).find(f".//{{{RIM}}}ExtrinsicObject")
            assert _slot(entry, "hash") == [hashlib.sha1(cda).hexdigest()]
            assert _slot(entry, "size") == [str(len(cda))]
            ids = {e.get("value") for e in entry.iter(f"{{{RIM}}}ExternalIdentifier")}
            assert "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH" in ids
            assert "1.2.250.1.71.4.2.2.120456789.71024000081" in ids
            headers = email.message_from_bytes(raw, policy=policy.default)
            assert headers["From"] == APP_MAILBOX and "PAT-TROIS" in headers["Subject"]
        zams = sorted((_zam_rows(z) for z in creator.received), key=lambda z: z["address"])
        assert zams == [
            {"type": "ZAM^Z02^ZAM_Z01", "status": "Y", "request": "015", "address": a, "error": None}
            for a in sorted([FIRST_RCT, SECOND_RCT])
        ]
        await until(lambda: ("015", "sent") in [(e.control_id, e.state) for e in _events(engine)], what="done")
    finally:
        await engine.stopService()
        await creator.close()


@pytest_twisted.ensureDeferred
async def test_no_zam_when_the_creator_did_not_ask(tmp_path, pki, operator, ans_corpus):
    engine, creator = await _send_request(tmp_path, pki, operator, ack_reception=False, mdm_corpus=ans_corpus)
    try:
        await until(lambda: ("015", "sent") in [(e.control_id, e.state) for e in _events(engine)], what="done")
        assert len(operator.mail.received) == 2 and creator.received == []
    finally:
        await engine.stopService()
        await creator.close()


@pytest_twisted.ensureDeferred
async def test_550_for_every_recipient_is_a_dead_letter_with_failed_z02(tmp_path, pki, operator, ans_corpus):
    operator.mail.rejected.update({FIRST_RCT, SECOND_RCT})
    engine, creator = await _send_request(tmp_path, pki, operator, ack_reception=True, mdm_corpus=ans_corpus)
    try:
        await until(lambda: any(e.state == "dead-letter" for e in _events(engine)), what="dead letter")
        (dead,) = [e for e in _events(engine) if e.state == "dead-letter"]
        assert dead.channel == "mss" and "550: 5.1.1 Mailbox unavailable" in dead.detail
        await until(lambda: len(creator.received) == 2, what="failed ZAMs")
        zams = sorted((_zam_rows(z) for z in creator.received), key=lambda z: z["address"])
        assert [(z["status"], z["error"], z["address"]) for z in zams] == [
            ("N", "550", a) for a in sorted([FIRST_RCT, SECOND_RCT])
        ]
        assert operator.mail.received == []
    finally:
        await engine.stopService()
        await creator.close()


def _mail_for_the_mailbox(ans_corpus, pki, operator, tmp_path) -> tuple[bytes, bytes]:
    """A mail from a correspondent's PFI, its XDM made by the same code path as our sending."""
    from engine.config.mssante import MssanteChannel
    from engine.connectors.mssante import XdmMetadata, mss_request
    from engine.docrequest import parse_document_request
    from engine.hl7.message import Message
    from engine.mss.xdm import build_xdm

    mdm = ans_mdm(ans_corpus, ack_reception=False, second_recipient=False)
    request = mss_request(parse_document_request(Message.parse(mdm)), "initial")
    channel = MssanteChannel.model_validate({"name": "peer", **mss_channel(pki, operator, tmp_path / "p.sqlite")})
    metadata = XdmMetadata(channel, reactor).for_request(request, None, "I")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, APP_MAILBOX, "XDM/1.0/DDM+CR d'imagerie PAT-TROIS DOMINIQUE"
    msg["Message-ID"], msg["Disposition-Notification-To"] = "<flow-1@medecin.mssante.fr>", SENDER
    msg["Date"] = "Fri, 16 Dec 2022 09:32:00 +0100"
    msg.set_content("Corps du courriel")
    msg.add_attachment(
        build_xdm(request.cda, metadata, sender=SENDER, title="CR d'imagerie"),
        maintype="application",
        subtype="zip",
        filename="IHE_XDM.zip",
    )
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")), request.cda


@pytest_twisted.ensureDeferred
async def test_mailbox_mail_goes_to_the_ris_and_its_902_becomes_the_mdn(tmp_path, pki, operator, ans_corpus):
    raw, cda = _mail_for_the_mailbox(ans_corpus, pki, operator, tmp_path)
    operator.mail.account(APP_MAILBOX).inbox.append(raw)
    ris = AckPeer(ack_902)
    channels = {
        "mss": mss_channel(pki, operator, tmp_path / "mss.sqlite", imap=imap_settings(pki, operator), deliver_to="ris"),
        "ris": mllp_out(ris.listen()),
    }
    engine = await _engine(tmp_path, channels, [])
    try:
        await until(lambda: any(r == SENDER for r, _ in operator.mail.received), what="MDN")
        (mdm,) = ris.received
        msh = segments(mdm)[0]
        assert msh[8].startswith("MDM^T02") and msh[20] == "1.1^CISIS_CDA_HL7_LPS"
        assert obx5_document(mdm) == cda
        (mdn_raw,) = [m for r, m in operator.mail.received if r == SENDER]
        mdn = email.message_from_bytes(mdn_raw, policy=policy.default)
        assert mdn["Subject"].startswith("[KO Intégration système !][902]")
        assert mdn.get_content_type() == "multipart/report"
        assert b"902" in mdn_raw and b"<flow-1@medecin.mssante.fr>" in mdn_raw
        stored = operator.mail.account(APP_MAILBOX).inbox.messages[0]
        await until(lambda: "$PfiProcessed" in stored.flags, what="processed flag")
        # Through the journal like every other message: visible, with the RIS's answer, replayable.
        await until(lambda: any(e.state == "sent" for e in _events(engine)), what="the RIS answer journaled")
        [integration] = [e for e in _events(engine) if e.state == "mail-integration"]
        assert integration.channel == "mss" and integration.msg_type.startswith("MDM^T02")
        assert JournalReader(engine.journal.data_dir).load_message(integration.message_uid).raw == mdm
    finally:
        await engine.stopService()
        await ris.close()


@pytest_twisted.ensureDeferred
async def test_dsn_in_the_mailbox_becomes_z02_for_the_creator(tmp_path, pki, operator, ans_corpus):
    creator, ris = AckPeer(), AckPeer()
    channels = {
        "creator-in": inbound(),
        "creator-out": mllp_out(creator.listen()),
        "ris": mllp_out(ris.listen()),
        "mss": mss_channel(
            pki,
            operator,
            tmp_path / "mss.sqlite",
            zam_channel="creator-out",
            imap=imap_settings(pki, operator),
            deliver_to="ris",
        ),
    }
    engine = await _engine(tmp_path, channels, ROUTES)
    client = await client_for(engine, "creator-in")
    try:
        mdm = ans_mdm(ans_corpus, ack_reception=True, second_recipient=True)
        assert (await exchange(client, mdm)).code == "AA"
        await until(lambda: len(operator.mail.received) == 2, what="mails")
        assert creator.received == []  # accepted: the receipt waits for the DSN
        original_id = email.message_from_bytes(operator.mail.received[0][1])["Message-ID"]
        poller = engine.getServiceNamed("mss-poller").poller
        # the poll made at start is over (the next one is scheduled in 300 s): poll by hand
        await until(lambda: poller._loop.call is not None, what="first poll")
        operator.mail.account(APP_MAILBOX).inbox.append(dsn_for(original_id, SECOND_RCT, FIRST_RCT))
        stats = await poller.poll_once()
        assert stats.reports == 1
        await until(lambda: len(creator.received) == 2, what="ZAMs from the DSN")
        zams = sorted((_zam_rows(z) for z in creator.received), key=lambda z: z["address"])
        assert [(z["status"], z["error"], z["address"], z["request"]) for z in zams] == [
            ("Y", None, FIRST_RCT, "015"),
            ("N", "550", SECOND_RCT, "015"),
        ]
        assert ris.received == []
    finally:
        client.close()
        await engine.stopService()
        await creator.close()
        await ris.close()


@pytest.mark.parametrize(
    "extra, problem",
    [
        ({"zam_channel": "nowhere"}, "zam_channel 'nowhere' is not an mllp-out channel"),
        ({"imap": "IMAP"}, "IMAP needs deliver_to"),
        ({"imap": "IMAP", "deliver_to": "creator-in"}, "deliver_to 'creator-in' is not an mllp-out channel"),
        ({"wait_for_dmp_when_invisible": True}, "never mailed"),  # no route mails after a DMP delivery
    ],
)
def test_misnamed_channels_stop_the_engine_with_a_clear_error(tmp_path, pki, operator, extra, problem):
    from engine.errors import ConfigurationError

    extra = {k: imap_settings(pki, operator) if v == "IMAP" else v for k, v in extra.items()}
    channels = {"creator-in": inbound(), "mss": mss_channel(pki, operator, tmp_path / "m.sqlite", **extra)}
    config = load_config(write_config(tmp_path / "cfg", channels, ROUTES))
    with pytest.raises(ConfigurationError, match=problem):
        Engine(config, tmp_path / "data", reactor, with_metrics=False)


@pytest_twisted.ensureDeferred
async def test_operator_unreachable_is_retried_then_delivered(tmp_path, pki, operator, ans_corpus):
    smtp_listener = operator.listeners[0]
    await smtp_listener.stopListening()  # SMTP down: connection refused
    channels = {"creator-in": inbound(), "mss": mss_channel(pki, operator, tmp_path / "mss.sqlite")}
    engine = await _engine(tmp_path, channels, ROUTES)
    client = await client_for(engine, "creator-in")
    try:
        mdm = ans_mdm(ans_corpus, ack_reception=False, second_recipient=False)
        assert (await exchange(client, mdm)).code == "AA"
        await until(lambda: any(e.state == "retry" for e in _events(engine)), what="retry")
        (first_retry, *_) = [e for e in _events(engine) if e.state == "retry"]
        assert first_retry.channel == "mss" and "SMTP submission failed" in first_retry.detail
        from engine.sim.mss import smtp_factory
        from engine.mss.tls import server_tls

        operator.listeners[0] = reactor.listenTCP(
            operator.smtp_port,
            smtp_factory(operator.mail, server_tls(pki.server_pem, pki.ca_cert), implicit=False),
            interface="127.0.0.1",
        )
        await until(lambda: ("015", "sent") in [(e.control_id, e.state) for e in _events(engine)], what="sent")
        assert [r for r, _ in operator.mail.received] == [FIRST_RCT]
    finally:
        client.close()
        await engine.stopService()


def _for_the_patient_too(mdm: bytes) -> bytes:
    """DESTMSSANTEPAT=Y, INVISIBLE_PATIENT=N, a qualified identity (PID-32 VALI), the patient's RCT."""
    lines = mdm.decode("utf-8").split("\n")
    for i, line in enumerate(lines):
        if line.startswith("PID|"):
            fields = line.split("|") + [""] * 33
            fields[32] = "VALI"
            lines[i] = "|".join(fields[:33])
    rct = next(i for i, line in enumerate(lines) if line.startswith("PRT||UC||RCT"))
    lines.insert(
        rct + 1,
        "PRT||UC||RCT^^participation|279035121518989^PAT-TROIS^DOMINIQUE^^^^^^"
        "ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^L^^^INS||||||||||"
        "^NET^X.400^279035121518989@patient.mssante.fr",
    )
    text = "\n".join(lines)
    for code in ("DESTMSSANTEPAT", "INVISIBLE_PATIENT"):
        value = "Y" if code == "DESTMSSANTEPAT" else "N"
        start = text.index(f"|{code}^")
        line_end = text.index("\n", start)
        line = text[start:line_end]
        text = text[:start] + line.replace("||Y^^", f"||{value}^^").replace("||N^^", f"||{value}^^") + text[line_end:]
    return text.encode("utf-8")


@pytest_twisted.ensureDeferred
async def test_patient_mailbox_gets_its_own_mail_when_the_identity_is_qualified(tmp_path, pki, operator, ans_corpus):
    channels = {"creator-in": inbound(), "mss": mss_channel(pki, operator, tmp_path / "mss.sqlite")}
    engine = await _engine(tmp_path, channels, ROUTES)
    client = await client_for(engine, "creator-in")
    try:
        mdm = _for_the_patient_too(ans_mdm(ans_corpus, ack_reception=False, second_recipient=False))
        assert (await exchange(client, mdm)).code == "AA"
        await until(lambda: len(operator.mail.received) == 2, what="mails")
        by_recipient = dict(operator.mail.received)
        patient = "279035121518989@patient.mssante.fr"
        assert sorted(by_recipient) == sorted([FIRST_RCT, patient])
        to_patient = email.message_from_bytes(by_recipient[patient], policy=policy.default)
        assert to_patient["To"] == patient and FIRST_RCT not in to_patient["To"]
        cda = obx5_document(mdm)
        assert _xdm_of(by_recipient[patient]).read("IHE_XDM/SUBSET01/DOC0001.XML") == cda
    finally:
        client.close()
        await engine.stopService()


@pytest_twisted.ensureDeferred
async def test_a_report_invisible_to_the_patient_is_mailed_once_the_dmp_accepted_it(
    tmp_path, pki, operator, ans_corpus
):
    # The ANS example asks for the DMP and is invisible to the patient: with the shipped setting the
    # professionals' mail leaves only after the DMP's acceptance (here an MLLP stand-in), with the
    # configured notice; the mail step of the report itself sends nothing.
    dmp = AckPeer()
    routes = [
        {
            "name": "r",
            "match": {"channel": "creator-in", "type": "MDM"},
            "steps": [
                {"label": "to-mss", "deliver": {"to": "mss"}},
                {
                    "label": "to-dmp",
                    "deliver": {"to": "dmp", "delay": "0.5s"},
                    "on_success": [{"deliver": {"to": "mss"}}],
                },
            ],
        }
    ]
    channels = {
        "creator-in": inbound(),
        "dmp": mllp_out(dmp.listen()),
        "mss": mss_channel(
            pki,
            operator,
            tmp_path / "mss.sqlite",
            wait_for_dmp_when_invisible=True,
            dmp_invisible_notice="Avis configurable : invisible dans le DMP.",
        ),
    }
    engine = await _engine(tmp_path, channels, routes)
    client = await client_for(engine, "creator-in")
    try:
        mdm = ans_mdm(ans_corpus, ack_reception=False, second_recipient=False)
        assert b"INVISIBLE_PATIENT" in mdm and (await exchange(client, mdm)).code == "AA"
        await until(
            lambda: any("deferred until the DMP" in (e.detail or "") for e in _events(engine)),
            what="the first mail step deferred",
        )
        await until(lambda: operator.mail.received, what="mails after the DMP")
        assert dmp.received  # the DMP (stand-in) had accepted first
        mail = email.message_from_bytes(operator.mail.received[0][1], policy=policy.default)
        assert "Avis configurable : invisible dans le DMP." in mail.get_body(("plain",)).get_content()
    finally:
        client.close()
        await engine.stopService()
        await dmp.close()
