"""Test helpers for the MSSanté connector: PKI, a running fake operator, XDS metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from twisted.internet import reactor

from engine.mss.settings import ImapSettings, MssChannelSettings, SmtpSettings, TlsClientSettings
from engine.sim.mss import MailOperator, imap_factory, smtp_factory
from engine.mss.testpki import TestPki
from engine.mss.tls import server_tls

APP_MAILBOX = "pfi@hopital-y.mssante.fr"
APP_PASSWORD = "secret-app"
LPS_MAILBOX = "dpi@hopitalA.mssante.fr"

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"


@dataclass
class RunningOperator:
    """A fake operator listening on 127.0.0.1 (ports chosen by the OS)."""

    operator: MailOperator
    starttls_port: int
    implicit_port: int
    imap_port: int
    listeners: list

    def stop(self):
        for listener in self.listeners:
            listener.stopListening()


def start_operator(pki: TestPki, require_client_cert: bool = False) -> RunningOperator:
    """SMTP (STARTTLS + implicit TLS) and IMAP over TLS on ephemeral ports."""
    operator = MailOperator(
        users={APP_MAILBOX: APP_PASSWORD, LPS_MAILBOX: APP_PASSWORD, "thomas.eric@medecin.mssante.fr": "x"},
        allow_anonymous_smtp=True,
    )
    tls = server_tls(pki.server_pem, pki.ca_cert, require_client=require_client_cert)
    listeners = [
        reactor.listenTCP(0, smtp_factory(operator, tls, implicit=False), interface="127.0.0.1"),
        reactor.listenTCP(0, smtp_factory(operator, tls, implicit=True), interface="127.0.0.1"),
        reactor.listenTCP(0, imap_factory(operator, tls), interface="127.0.0.1"),
    ]
    ports = [l.getHost().port for l in listeners]
    return RunningOperator(operator, ports[0], ports[1], ports[2], listeners)


def channel_settings(
    pki: TestPki,
    running: RunningOperator,
    state_file: Path,
    security: str = "starttls",
    use_cert: bool = False,
    **extra,
) -> MssChannelSettings:
    """Settings of the engine's channel pointing at the fake operator."""
    tls = TlsClientSettings(
        ca_bundle=pki.ca_cert, server_name="localhost", client_certificate=pki.client_pem if use_cert else None
    )
    port = running.starttls_port if security == "starttls" else running.implicit_port
    creds = {} if use_cert else {"username": APP_MAILBOX, "password": APP_PASSWORD}
    return MssChannelSettings(
        mailbox_address=APP_MAILBOX,
        reply_to="secretariat@hopital-y.mssante.fr",
        smtp=SmtpSettings(host="127.0.0.1", port=port, security=security, tls=tls, **creds),
        imap=ImapSettings(
            host="127.0.0.1",
            port=running.imap_port,
            username=APP_MAILBOX,
            password=APP_PASSWORD,
            tls=tls,
            poll_interval_s=30,
        ),
        state_file=state_file,
        **extra,
    )


def submission_metadata(
    patient_ins: str = "279035121518989",
    author_person: str = "801234564895^Eric^Thomas^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
    confidentiality: tuple[str, ...] = ("N",),
) -> bytes:
    """A minimal but valid ebRIM SubmitObjectsRequest (one DocumentEntry + SubmissionSet)."""
    codes = "".join(
        f'<rim:Classification id="urn:uuid:c{i:07d}-0000-4000-8000-000000000000" '
        f'classificationScheme="urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f" '
        f'classifiedObject="Document01" nodeRepresentation="{code}">'
        f'<rim:Slot name="codingScheme"><rim:ValueList><rim:Value>'
        f"{'2.16.840.1.113883.5.25' if code in 'NRV' else '1.2.250.1.213.1.1.4.13'}"
        f"</rim:Value></rim:ValueList></rim:Slot></rim:Classification>"
        for i, code in enumerate(confidentiality)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<lcm:SubmitObjectsRequest xmlns:lcm="{LCM}" xmlns:rim="{RIM}">
 <rim:RegistryObjectList>
  <rim:ExtrinsicObject id="Document01" mimeType="text/xml"
      objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">
   <rim:Slot name="creationTime"><rim:ValueList><rim:Value>20210409094914</rim:Value></rim:ValueList></rim:Slot>
   <rim:Slot name="languageCode"><rim:ValueList><rim:Value>fr-FR</rim:Value></rim:ValueList></rim:Slot>
   {codes}
   <rim:ExternalIdentifier id="urn:uuid:e0000001-0000-4000-8000-000000000000"
       identificationScheme="urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
       registryObject="Document01" value="{patient_ins}^^^&amp;1.2.250.1.213.1.4.10&amp;ISO^NH">
    <rim:Name><rim:LocalizedString value="XDSDocumentEntry.patientId"/></rim:Name>
   </rim:ExternalIdentifier>
  </rim:ExtrinsicObject>
  <rim:RegistryPackage id="SubmissionSet01">
   <rim:Slot name="submissionTime"><rim:ValueList><rim:Value>20221216093200</rim:Value></rim:ValueList></rim:Slot>
   <rim:Classification id="urn:uuid:a0000001-0000-4000-8000-000000000000"
       classificationScheme="urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
       classifiedObject="SubmissionSet01" nodeRepresentation="">
    <rim:Slot name="authorPerson"><rim:ValueList><rim:Value>{escape(author_person)}</rim:Value></rim:ValueList></rim:Slot>
   </rim:Classification>
  </rim:RegistryPackage>
  <rim:Classification id="urn:uuid:a0000002-0000-4000-8000-000000000000"
      classifiedObject="SubmissionSet01" classificationNode="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"/>
 </rim:RegistryObjectList>
</lcm:SubmitObjectsRequest>
""".encode()


def dsn_for(original_id: str, failed: str, delivered: str, mailbox: str = APP_MAILBOX) -> bytes:
    """The operator's RFC 3464 report: `failed` got a 550, `delivered` got the mail."""
    return f"""From: MAILER-DAEMON@operateur.mssante.fr
To: {mailbox}
Subject: Delivery Status Notification
Message-ID: <dsn-{abs(hash(original_id))}@operateur.mssante.fr>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Delivery to {failed} failed.
--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; operateur.mssante.fr

Final-Recipient: rfc822; {failed}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 User unknown

Final-Recipient: rfc822; {delivered}
Action: delivered
Status: 2.0.0

--b1
Content-Type: text/rfc822-headers

Message-ID: {original_id}
Subject: XDM/1.0/DDM+CR

--b1--
""".replace("\n", "\r\n").encode()
