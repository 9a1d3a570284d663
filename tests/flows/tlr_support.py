"""The shipped configuration (channels/, routes.yaml) running against peers on 127.0.0.1: the RIS,
teleradiology platforms A and B, a DRIMbox like the reference one (no ACK), the DMP simulator and
the MSSanté operator simulator; ports and endpoints moved by the environment variables the
shipped channels read."""

from __future__ import annotations

from dataclasses import dataclass

from engine.journal.reader import JournalReader
from tests.routing.peers import HoldingPeer, RecordingPeer, SilentPeer
from tests.support import ROOT, client_for, exchange

MSS_MAILBOX, MSS_PASSWORD = "pfi@localhost.mssante.fr", "pfi"


@dataclass
class Site:
    engine: object
    ris: HoldingPeer
    platform_a: RecordingPeer
    platform_b: RecordingPeer
    drimbox: SilentPeer
    listeners: list

    async def send(self, channel: str, raw: bytes):
        """The ACK (code, raw) the engine answers on `channel`."""
        client = await client_for(self.engine, channel)
        try:
            return await exchange(client, raw)
        finally:
            client.close()

    def events(self, control_id: str, destination: str | None = None) -> list[tuple[str, str]]:
        return [
            (e.state, e.detail)
            for e in JournalReader(self.engine.journal.data_dir).events_after(0, limit=10000)
            if e.control_id == control_id and (destination is None or e.channel == destination)
        ]

    async def close(self) -> None:
        await self.engine.stopService()
        for peer in (self.ris, self.platform_a, self.platform_b, self.drimbox):
            await peer.close()
        for listener in self.listeners:
            await listener.stopListening()


async def start_site(
    tmp_path, monkeypatch, simulator, pki, dmp_delay: str = "0s", ris_answer=lambda raw, n: "AA"
) -> Site:
    from twisted.internet import reactor

    from engine.config.load import load_config
    from engine.service import Engine

    ris, platform_a, platform_b, drimbox = HoldingPeer(ris_answer), RecordingPeer(), RecordingPeer(), SilentPeer()
    ports = {
        "PFI_RIS_OUT_PORT": await ris.listen(),
        "PFI_TLR_A_OUT_PORT": await platform_a.listen(),
        "PFI_TLR_B_OUT_PORT": await platform_b.listen(),
        "PFI_DRIMBOX_PORT": await drimbox.listen(),
        "PFI_RIS_PORT": 0,
        "PFI_TLR_A_PORT": 0,
        "PFI_TLR_B_PORT": 0,
        "PFI_ADT_PORT": 0,
    }
    for var, port in ports.items():
        monkeypatch.setenv(var, str(port))
    monkeypatch.setenv("PFI_LISTEN_HOST", "127.0.0.1")
    monkeypatch.setenv("PFI_DMP_URL", simulator.base_url.rstrip("/"))
    monkeypatch.setenv("PFI_DMP_CERT", str(pki.client.cert))
    monkeypatch.setenv("PFI_DMP_KEY", str(pki.client.key))
    monkeypatch.setenv("PFI_DMP_CA", str(pki.ca.cert))
    monkeypatch.setenv("PFI_DMP_DELAY", dmp_delay)
    monkeypatch.delenv("PFI_DRIMBOX_EXPECT_ACK", raising=False)
    listeners = _mss_operator(tmp_path, monkeypatch)
    engine = Engine(load_config(ROOT), tmp_path / "data", reactor, with_metrics=False)
    await engine.startService()
    return Site(engine, ris, platform_a, platform_b, drimbox, listeners)


def _mss_operator(tmp_path, monkeypatch) -> list:
    """The MSSanté operator the shipped mssante channel mails through (reports ask for mails)."""
    from twisted.internet import reactor

    from engine.mss.testpki import ensure_test_pki
    from engine.mss.tls import server_tls
    from engine.sim.mss import MailOperator, imap_factory, smtp_factory

    pki = ensure_test_pki(tmp_path / "mss-pki")
    operator = MailOperator(users={MSS_MAILBOX: MSS_PASSWORD})
    tls = server_tls(pki.server_pem, pki.ca_cert)
    smtp = reactor.listenTCP(0, smtp_factory(operator, tls, implicit=False), interface="127.0.0.1")
    imap = reactor.listenTCP(0, imap_factory(operator, tls), interface="127.0.0.1")
    for var, value in (
        ("PFI_MSS_SMTP_PORT", smtp.getHost().port),
        ("PFI_MSS_IMAP_PORT", imap.getHost().port),
        ("PFI_MSS_CA", pki.ca_cert),
        ("PFI_MSS_USER", MSS_MAILBOX),
        ("PFI_MSS_PASSWORD", MSS_PASSWORD),
    ):
        monkeypatch.setenv(var, str(value))
    return [smtp, imap]


def zams(peer) -> list[dict]:
    """The ZAM^Z01 a peer received: original MSH-10 (OBX-4), status, ERR-5 code."""
    from engine.hl7.message import Message

    out = []
    for raw in peer.received:
        if b"ZAM^Z01" in raw:
            msg = Message.parse(raw)
            out.append({"original": msg.get("OBX-4"), "status": msg.get("OBX-5.1"), "error": msg.get("ERR-5.1") or ""})
    return out
