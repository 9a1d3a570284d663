"""Peers of the MSSanté flow tests: the fake operator (SMTP + IMAP over TLS on 127.0.0.1), an
MLLP peer answering a chosen ACK, the ANS MDM example adapted per test, engine set-up."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import reactor

from engine.hl7.scan import scan
from engine.sim.mllp import MllpPeer
from engine.sim.mss import MailOperator, imap_factory, smtp_factory
from engine.mss.tls import server_tls
from tests.mss.mss_helpers import dsn_for  # noqa: F401  (re-exported for the flow tests)

APP_MAILBOX = "pfi@hopital-y.mssante.fr"
APP_PASSWORD = "secret-app"
MDM_DIR = Path(
    "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/MDM/Transmission initiale MDM"
)
MDM_EXAMPLE = MDM_DIR / "message_MDM_CR_Radio_INIT_N1_Base64.er7"
FIRST_RCT = "adam.hoda@test-ci-sis.mssante.fr"
SECOND_RCT = "claire.martin@test-ci-sis.mssante.fr"
FAST_RETRY = {"initial": 0.05, "maximum": 0.2, "jitter": 0.0}


@dataclass
class Operator:
    """The fake MSSanté operator and its three listeners."""

    mail: MailOperator
    smtp_port: int
    imap_port: int
    listeners: list

    def stop(self) -> None:
        for listener in self.listeners:
            listener.stopListening()


def start_operator(pki) -> Operator:
    mail = MailOperator(users={APP_MAILBOX: APP_PASSWORD}, allow_anonymous_smtp=True)
    tls = server_tls(pki.server_pem, pki.ca_cert)
    listeners = [
        reactor.listenTCP(0, smtp_factory(mail, tls, implicit=False), interface="127.0.0.1"),
        reactor.listenTCP(0, imap_factory(mail, tls), interface="127.0.0.1"),
    ]
    return Operator(mail, listeners[0].getHost().port, listeners[1].getHost().port, listeners)


def mss_channel(pki, operator: Operator, state_file: Path, **extra) -> dict:
    """channels/mss.yaml of the engine under test."""
    tls = {"ca_bundle": str(pki.ca_cert), "server_name": "localhost"}
    return {
        "type": "mssante",
        "mailbox_address": APP_MAILBOX,
        "state_file": str(state_file),
        "smtp": {
            "host": "127.0.0.1",
            "port": operator.smtp_port,
            "username": APP_MAILBOX,
            "password": APP_PASSWORD,
            "tls": tls,
        },
        "retry": FAST_RETRY,
        **extra,
    }


def imap_settings(pki, operator: Operator) -> dict:
    return {
        "host": "127.0.0.1",
        "port": operator.imap_port,
        "username": APP_MAILBOX,
        "password": APP_PASSWORD,
        "poll_interval_s": 300,
        "tls": {"ca_bundle": str(pki.ca_cert), "server_name": "localhost"},
    }


def mllp_out(port: int) -> dict:
    return {"type": "mllp-out", "host": "127.0.0.1", "port": port, "ack_timeout": 5, "retry": FAST_RETRY}


def ans_mdm(ans_corpus, *, ack_reception: bool, second_recipient: bool) -> bytes:
    """The ANS MDM^T02 (LF separators kept: the engine must cope), adapted for one test."""
    text = (ans_corpus / MDM_EXAMPLE).read_bytes().decode("utf-8")
    if ack_reception:
        text = text.replace(
            "ACK_RECEPTION^Accusé de réception^MetaDMPMSS||N", "ACK_RECEPTION^Accusé de réception^MetaDMPMSS||Y"
        )
    if second_recipient:
        rct = next(line for line in text.split("\n") if line.startswith("PRT||UC||RCT"))
        second = rct.replace("801234567897^Hoda^Adam", "801234567898^Martin^Claire").replace(FIRST_RCT, SECOND_RCT)
        text = text.replace(rct, rct + "\n" + second)
    return text.encode("utf-8")


def segments(er7: bytes) -> list[list[str]]:
    return [s.split("|") for s in re.split(r"\r\n|\r|\n", er7.decode("utf-8")) if s]


def obx5_document(er7: bytes) -> bytes:
    """The base64 document of OBX 1 of an MDM."""
    for fields in segments(er7):
        if fields[0] == "OBX" and fields[1] == "1":
            b64 = fields[5].split("^")[4]
            return base64.b64decode(b64 + "=" * (-len(b64) % 4))
    raise AssertionError("no OBX 1")


class AckPeer(MllpPeer):
    """The shared MLLP peer (engine/sim/mllp.py) as a creator or a RIS answering `ack(control_id)`."""

    def __init__(self, ack=None):
        write = (lambda raw, code: ack(scan(raw).control_id).encode()) if ack else None
        super().__init__("PEER", ack=write)

    def listen(self) -> int:
        return super().listen(reactor)


def ack_902(ctrl: str) -> str:
    """The RIS's AE of the ANS example (ERR-5 902 unknown patient) for MSH-10 `ctrl`."""
    return (
        f"MSH|^~\\&|DPI|CHU_X|PFI|CHU_X|202310030831||ACK^T02^ACK|12347|P|2.6|||AL|AL|FRA|8859/15\r"
        f"MSA|AE|{ctrl}\rERR||PID^1^3|207^Application error^messageErrorCondition|E|"
        f"902^Identifiant de patient inconnu^applicationErrorCode\r"
    )
