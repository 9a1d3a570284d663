"""Benchmark of the MSSanté connector against the in-process fake operator (127.0.0.1, TLS).

* send: mails per second with a 40 KB CDA report (plan + XDM zip + SMTP STARTTLS + AUTH, one
  connection per mail as Twisted's ESMTP sender does), a few submissions in flight;
* integrate: mails per second from the IMAP mailbox to LPS MDMs handed to a RIS that answers AA
  at once (fetch over TLS, parse, XDM checks, MDM build, SQLite record, IMAP STORE).

Usage: python bench/mss.py [--mails 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mss"))

from mss_helpers import APP_MAILBOX, channel_settings, start_operator, submission_metadata  # noqa: E402

from engine.mss.inbound import MailboxPoller  # noqa: E402
from engine.mss.models import MssDocumentRequest, MssFlags, PatientIdentity, Recipient  # noqa: E402
from engine.mss.outbound import MssSender, plan_mails  # noqa: E402
from engine.mss.store import MssStore  # noqa: E402
from engine.mss.testpki import generate_test_pki  # noqa: E402

ACK = b"MSH|^~\\&|RIS|X|PFI|X|20240101||ACK^T02^ACK|1|P|2.6\rMSA|AA|1\r"


def report_cda(size: int = 40_000) -> bytes:
    pdf = base64.b64encode(os.urandom(int(size * 0.74))).decode()
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.250.1.999.1"/>
<code code="18748-4" codeSystem="2.16.840.1.113883.6.1" displayName="CR d'imagerie médicale"/>
<recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="279035121518989"/>
<patient><name><family>BENCH</family><given>PATIENT</given></name>
<administrativeGenderCode code="F"/><birthTime value="19790328"/></patient></patientRole></recordTarget>
<component><nonXMLBody><text mediaType="application/pdf" representation="B64">{pdf}</text></nonXMLBody></component>
</ClinicalDocument>""".encode()


def request(cda: bytes) -> MssDocumentRequest:
    return MssDocumentRequest(
        control_id="1",
        document_title="CR d'imagerie médicale",
        cda=cda,
        patient=PatientIdentity(family="BENCH", given="PATIENT", birth_date="19790328"),
        flags=MssFlags(dest_mssante_ps=True, invisible_patient=True),
        recipients=[Recipient(address=APP_MAILBOX)],
    )


async def bench_send(reactor, settings, mails: int, concurrency: int) -> float:
    sender = MssSender(settings, reactor)
    cda = report_cda()
    sem = defer.DeferredSemaphore(concurrency)

    async def one():
        plan = plan_mails(request(cda), settings, lambda r: submission_metadata())
        results = await sender.send(plan.mails[0])
        assert all(r.accepted for r in results)

    start = time.perf_counter()
    await defer.gatherResults([sem.run(lambda: defer.Deferred.fromCoroutine(one())) for _ in range(mails)])
    return mails / (time.perf_counter() - start)


async def bench_integrate(reactor, settings, expected: int) -> float:
    async def ris(mdm: bytes) -> bytes:
        return ACK

    store = MssStore(settings.state_file)
    poller = MailboxPoller(settings, reactor, ris, MssSender(settings, reactor), store)
    start = time.perf_counter()
    stats = await poller.poll_once()
    elapsed = time.perf_counter() - start
    store.close()
    assert stats.integrated == expected, stats
    return expected / elapsed


async def main(reactor, mails: int, concurrency: int):
    with tempfile.TemporaryDirectory() as tmp:
        pki = generate_test_pki(Path(tmp) / "pki")
        running = start_operator(pki)
        try:
            settings = channel_settings(pki, running, Path(tmp) / "state.sqlite")
            sent_rate = await bench_send(reactor, settings, mails, concurrency)
            integrate_rate = await bench_integrate(reactor, settings, mails)
        finally:
            running.stop()
    print(
        f"mss send      : {sent_rate:8.1f} mails/s  ({mails} mails, 40 KB CDA, {concurrency} in flight, STARTTLS+AUTH)"
    )
    print(f"mss integrate : {integrate_rate:8.1f} mails/s  ({mails} mails, IMAP TLS -> LPS MDM -> AA -> STORE)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, options.mails, options.concurrency)))
