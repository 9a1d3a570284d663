"""Sending: mails built from the flags, submitted over real TLS, zip contents byte-identical."""

from __future__ import annotations

import email
import hashlib
import io
import zipfile
from email import policy

import pytest
import pytest_twisted
from twisted.internet import reactor

from engine.errors import TransientDeliveryError, ValidationError
from engine.mss.inbound import MailboxPoller
from engine.mss.models import MssDocumentRequest, MssFlags, PatientIdentity, Recipient
from engine.mss.outbound import DMP_INVISIBLE_NOTICE, MssSender, plan_mails, send_document
from engine.mss.store import MssStore
from engine.mss.xdm import read_xdm
from mss_helpers import APP_MAILBOX, channel_settings, dsn_for, start_operator, submission_metadata

PS = "adam.hoda@test-ci-sis.mssante.fr"
ORG = "radiologie@hopitalA.mssante.fr"
PATIENT = "279035121518989@patient.mssante.fr"
CDA_PATH = (
    "hl7V2-exemples/Vague 2/Trans_LPS_CDA_MSSanté/TRANSMISSION_LPS_DOC_CDA_COURRIEL_FROM_MSSANTE_V1.1/"
    "Transmission initiale MDM/CR_Radio_CDAN1_v1.XML"
)


def request(cda: bytes, **flags) -> MssDocumentRequest:
    base = dict(
        dest_mssante_ps=True,
        dest_mssante_pat=True,
        dest_dmp=True,
        ack_reception=True,
        ack_lecture=True,
        patient_no_reply=True,
    )
    base.update(flags)
    return MssDocumentRequest(
        control_id="015",
        document_title="CR d'imagerie médicale",
        cda=cda,
        patient=PatientIdentity(
            family="Pat-Trois",
            given="DOMINIQUE",
            birth_date="19790328",
            ins="279035121518989",
            ins_oid="1.2.250.1.213.1.4.10",
            identity_qualified=True,
        ),
        flags=MssFlags(**base),
        recipients=[
            Recipient(address=PS),
            Recipient(address=ORG, kind="organisation"),
            Recipient(address=PATIENT, kind="patient"),
        ],
        reply_to=["secretariat.radio@hopitalA.mssante.fr"],
        body_ps="Cher confrère, voici le compte rendu.",
        body_patient="Bonjour, voici votre compte rendu.",
    )


def metadata(_request) -> bytes:
    return submission_metadata()


def inbox_mails(running, address):
    return [
        email.message_from_bytes(m.raw, policy=policy.default) for m in running.operator.account(address).inbox.messages
    ]


def zip_of(message) -> zipfile.ZipFile:
    [part] = [p for p in message.iter_attachments() if p.get_filename() == "IHE_XDM.zip"]
    return zipfile.ZipFile(io.BytesIO(part.get_content()))


@pytest_twisted.ensureDeferred
async def test_report_reaches_professionals_and_patient_byte_identical(pki, operator, tmp_path, ans_corpus):
    cda = (ans_corpus / CDA_PATH).read_bytes()
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    store = MssStore(settings.state_file)
    results = await send_document(request(cda), settings, metadata, MssSender(settings, reactor), store)
    assert {(r.address, r.accepted, r.smtp_code) for r in results} == {
        (PS, True, 250),
        (ORG, True, 250),
        (PATIENT, True, 250),
    }
    for address, audience in ((PS, "ps"), (ORG, "ps"), (PATIENT, "patient")):
        [mail] = inbox_mails(operator, address)
        archive = zip_of(mail)
        assert archive.namelist() == [
            "INDEX.HTM",
            "README.TXT",
            "IHE_XDM/SUBSET01/METADATA.XML",
            "IHE_XDM/SUBSET01/DOC0001.XML",
        ]
        assert archive.read("IHE_XDM/SUBSET01/DOC0001.XML") == cda
        package = read_xdm(zip_of(mail).fp.getvalue())
        assert package.documents[0].content == cda
        meta = archive.read("IHE_XDM/SUBSET01/METADATA.XML").decode()
        assert hashlib.sha1(cda).hexdigest() in meta and f">{len(cda)}<" in meta
        assert mail["Subject"] == "XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979"
        assert mail["From"] == APP_MAILBOX
        assert mail["Reply-To"] == "secretariat.radio@hopitalA.mssante.fr"
        assert mail["Disposition-Notification-To"] == APP_MAILBOX
        assert mail["X-Mailer"] == "PFI engine"
        body = mail.get_body(("plain",)).get_content()
        if audience == "patient":
            assert mail["To"] == PATIENT and mail["X-MSS-MES"] == "FIN"
            assert body.startswith("Bonjour, voici votre compte rendu.")
        else:
            assert mail["X-MSS-MES"] is None and PATIENT not in mail["To"]
            assert body.startswith("Cher confrère")
    message_id = str(inbox_mails(operator, PS)[0]["Message-ID"])
    assert store.sent(message_id)["control_id"] == "015"
    # ACK_RECEPTION=Y and the server offers DSN: every RCPT asks for success/failure reports.
    assert all("NOTIFY=SUCCESS,FAILURE,DELAY" in line for line in operator.operator.envelope if line.startswith("RCPT"))
    assert any(line.endswith("ENVID=" + message_id) for line in operator.operator.envelope)
    store.close()


@pytest_twisted.ensureDeferred
async def test_implicit_tls_with_client_certificate(pki, tmp_path, ans_corpus):
    running = start_operator(pki, require_client_cert=True)
    try:
        cda = (ans_corpus / CDA_PATH).read_bytes()
        settings = channel_settings(pki, running, tmp_path / "s.sqlite", security="implicit", use_cert=True)
        plan = plan_mails(request(cda, dest_mssante_pat=False, invisible_patient=True), settings, metadata)
        [result_ps, result_org] = await MssSender(settings, reactor).send(plan.mails[0])
        assert result_ps.accepted and result_org.accepted
        no_cert = channel_settings(pki, running, tmp_path / "t.sqlite", security="implicit")
        with pytest.raises(TransientDeliveryError):
            await MssSender(no_cert, reactor).send(plan.mails[0])
    finally:
        running.stop()


@pytest_twisted.ensureDeferred
async def test_refused_recipient_gives_smtp_code(pki, operator, tmp_path, ans_corpus):
    operator.operator.rejected.add(ORG.lower())
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    cda = (ans_corpus / CDA_PATH).read_bytes()
    plan = plan_mails(request(cda, dest_mssante_pat=False, invisible_patient=True), settings, metadata)
    results = {r.address: r for r in await MssSender(settings, reactor).send(plan.mails[0])}
    assert results[PS].accepted and not results[ORG].accepted
    assert results[ORG].smtp_code == 550 and "Mailbox unavailable" in results[ORG].reason


def test_masked_documents_never_go_to_professionals(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    plan = plan_mails(
        request(b"<ClinicalDocument xmlns='urn:hl7-org:v3'/>", masque_ps=True, dest_dmp=False), settings, metadata
    )
    assert [m.recipients for m in plan.mails] == [[PATIENT]]
    assert {r.address for r in plan.refused} == {PS, ORG}
    assert all("MASQUE_PS" in r.reason for r in plan.refused)


def test_invisible_patient_blocks_patient_mail_and_the_notice_comes_with_the_dmp_acceptance(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    plan = plan_mails(request(b"<x/>", invisible_patient=True), settings, metadata)
    [mail] = plan.mails
    assert mail.recipients == [PS, ORG]
    assert DMP_INVISIBLE_NOTICE not in mail.message.get_body(("plain",)).get_content()  # the DMP did not answer yet
    assert [r.address for r in plan.refused] == [PATIENT]
    accepted = request(b"<x/>", invisible_patient=True).model_copy(update={"dmp_notice": "Texte configurable."})
    [mail] = plan_mails(accepted, settings, metadata).mails
    assert "Texte configurable." in mail.message.get_body(("plain",)).get_content()


def test_patient_mailbox_needs_a_qualified_ins(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    req = request(b"<x/>")
    req.patient.identity_qualified = False
    plan = plan_mails(req, settings, metadata)
    assert [m.recipients for m in plan.mails] == [[PS, ORG]]
    assert "not qualified" in plan.refused[0].reason
    req = request(b"<x/>")
    req.recipients[2].address = "123456789012345@patient.mssante.fr"
    plan = plan_mails(req, settings, metadata)
    assert plan.mails[1].recipients == [PATIENT]
    assert plan.refused[0].reason == "patient address does not match the INS"


def test_flag_matrix_is_enforced_when_configured(pki, operator, tmp_path):
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite", enforce_flag_matrix=True)
    # ANS MDM T10 example: visible to the patient but mailed to professionals only.
    with pytest.raises(ValidationError):
        plan_mails(request(b"<x/>", dest_mssante_pat=False), settings, metadata)
    assert len(plan_mails(request(b"<x/>"), settings, metadata).mails) == 2


@pytest_twisted.ensureDeferred
async def test_dsn_and_mdn_become_z02_and_z03_outcomes(pki, operator, tmp_path, ans_corpus):
    cda = (ans_corpus / CDA_PATH).read_bytes()
    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    store = MssStore(settings.state_file)
    sender = MssSender(settings, reactor)
    await send_document(request(cda, dest_mssante_pat=False, invisible_patient=True), settings, metadata, sender, store)
    [sent] = inbox_mails(operator, PS)
    original_id = str(sent["Message-ID"])
    app_inbox = operator.operator.account(APP_MAILBOX).inbox
    app_inbox.append(dsn_for(original_id, ORG, PS))
    # The PS's software answers with a processing MDN carrying an application error.
    from engine.mss.notifications import build_mdn

    mdn = build_mdn(
        inbox_mails(operator, PS)[0].as_bytes(),
        from_address=PS,
        to_address=APP_MAILBOX,
        error_code="904",
        error_label="INS ne correspond pas",
    )
    app_inbox.append(mdn.as_bytes())
    app_inbox.append(dsn_for("<unknown@elsewhere>", ORG, PS))
    outcomes = []

    async def no_ris(mdm):
        raise AssertionError("reports are not delivered to the RIS")

    poller = MailboxPoller(settings, reactor, no_ris, sender, store, on_outcome=outcomes.append)
    stats = await poller.poll_once()
    assert stats.reports == 3
    summary = sorted((o.kind, o.address, o.success, o.error_code, o.request_control_id) for o in outcomes)
    assert summary == sorted(
        [("Z02", ORG, False, "550", "015"), ("Z02", PS, True, None, "015"), ("Z03", PS, False, "904", "015")]
    )
    assert all(o.original_message_id == original_id for o in outcomes)
    store.close()


def test_submission_refusals_become_z02_failures():
    from engine.mss.models import RecipientResult
    from engine.mss.outbound import submission_outcomes

    results = [
        RecipientResult(address=PS, accepted=True, smtp_code=250),
        RecipientResult(address=ORG, accepted=False, smtp_code=550, reason="5.1.1 unknown"),
        RecipientResult(address=PATIENT, accepted=False, reason="MASQUE_PS=Y"),
    ]
    outcomes = submission_outcomes(results, "015", "<m@x>")
    assert [(o.address, o.success, o.error_code) for o in outcomes] == [(ORG, False, "550"), (PATIENT, False, None)]
    assert len(submission_outcomes(results, "015", acceptance_is_receipt=True)) == 3


def test_flags_become_confidentiality_codes_in_ebrim_order(pki, operator, tmp_path):
    from lxml import etree

    settings = channel_settings(pki, operator, tmp_path / "s.sqlite")
    plan = plan_mails(
        request(b"<x/>", invisible_patient=True, invisible_rep_legaux=True, dest_mssante_pat=False), settings, metadata
    )
    archive = zip_of(plan.mails[0].message)
    entry = etree.fromstring(archive.read("IHE_XDM/SUBSET01/METADATA.XML")).find(
        ".//{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}ExtrinsicObject"
    )
    tags = [etree.QName(child).localname for child in entry]
    assert tags == sorted(tags, key=["Slot", "Name", "Description", "Classification", "ExternalIdentifier"].index)
    codes = [c.get("nodeRepresentation") for c in entry if etree.QName(c).localname == "Classification"]
    assert codes == ["N", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"]
    slots = {s.get("name") for s in entry if etree.QName(s).localname == "Slot"}
    assert {"URI", "hash", "size"} <= slots
