"""The TLS policy of engine/tls.py through real sockets on 127.0.0.1: TLS >= 1.2, ECDHE/DHE + AEAD
for TLS 1.2, a listener's CA always means a mandatory client certificate, and `pfi check` refuses
half configurations. Peers are the standard library's ssl module, run in a thread."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from engine.config.channels import MllpOutSettings
from engine.mllp.framing import frame
from engine.mllp.sender import MLLPSender
from engine.pki import generate_test_pki
from tests.support import ROOT, inbound, sample_adt, start_engine, write_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return generate_test_pki(tmp_path_factory.mktemp("pki"))


def _client_context(pki, with_cert: bool = True, version=None, ciphers: str | None = None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.ca.cert))
    if with_cert:
        ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    if version is not None:
        # SECLEVEL=0 so that it is our server, not this client's OpenSSL, that says no
        ctx.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = version
    elif ciphers:
        ctx.set_ciphers(ciphers)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _exchange(port: int, ctx: ssl.SSLContext) -> str:
    """Blocking: handshake, send one ADT, return the MSA-1 code or `refused: <why>`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(frame(sample_adt("TLS-POLICY").encode()))
                data = tls.recv(65536)
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"
    if not data:
        return "refused: closed without an answer"
    return next(seg.split("|")[1] for seg in data.decode().strip("\x0b\x1c\r").split("\r") if seg.startswith("MSA"))


async def _try(port, ctx) -> str:
    return await threads.deferToThread(_exchange, port, ctx)


@pytest_twisted.ensureDeferred
async def test_a_ca_makes_the_client_certificate_mandatory(tmp_path, pki):
    tls = {"certificate": str(pki.server.cert), "key": str(pki.server.key), "ca": str(pki.ca.cert)}
    engine = await start_engine(write_config(tmp_path / "cfg", {"in": inbound(tls=tls)}), tmp_path / "data")
    try:
        port = engine.port_of("in")
        assert await _try(port, _client_context(pki)) == "AA"
        assert (await _try(port, _client_context(pki, with_cert=False))).startswith("refused")
    finally:
        await engine.stopService()


@pytest_twisted.ensureDeferred
async def test_old_protocols_and_weak_tls12_ciphers_are_refused(tmp_path, pki):
    tls = {"certificate": str(pki.server.cert), "key": str(pki.server.key), "ca": str(pki.ca.cert)}
    engine = await start_engine(write_config(tmp_path / "cfg", {"in": inbound(tls=tls)}), tmp_path / "data")
    try:
        port = engine.port_of("in")
        assert (await _try(port, _client_context(pki, version=ssl.TLSVersion.TLSv1_1))).startswith("refused")
        assert (await _try(port, _client_context(pki, version=ssl.TLSVersion.TLSv1))).startswith("refused")
        # TLS 1.2 without forward secrecy / without AEAD: refused; ECDHE + AES-GCM: accepted
        for weak in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA256"):
            assert (await _try(port, _client_context(pki, ciphers=weak))).startswith("refused"), weak
        assert await _try(port, _client_context(pki, ciphers="ECDHE-RSA-AES128-GCM-SHA256")) == "AA"
    finally:
        await engine.stopService()


def _weak_server(pki, ciphers: str):
    """A TLS 1.2 MLLP peer that only offers `ciphers` (blocking accept of one connection)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)

    def serve() -> str:
        try:
            conn, _ = sock.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(65536)
            return "handshake completed"
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {exc}"
        finally:
            sock.close()

    return sock.getsockname()[1], serve


@pytest_twisted.ensureDeferred
async def test_the_sender_refuses_a_destination_without_aead_ciphers(pki):
    port, serve = _weak_server(pki, "AES128-SHA")
    served = threads.deferToThread(serve)
    settings = MllpOutSettings(
        name="out",
        type="mllp-out",
        host="127.0.0.1",
        port=port,
        connect_timeout=5,
        tls={"certificate": str(pki.client.cert), "key": str(pki.client.key), "ca": str(pki.ca.cert)},
    )
    sender = MLLPSender(reactor, settings)
    try:
        outcome = await sender.send(sample_adt("WEAK").encode())
    finally:
        await sender.close()
    assert outcome.action == "retry" and outcome.ack is None
    assert (await served).startswith("refused")


def _pfi_check(cfg) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "check", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "tls, message",
    [
        ({"ca": "CA", "require_client_certificate": False}, "would accept clients without a certificate"),
        ({"require_client_certificate": True}, "need `ca`"),
        ({"allowed_subjects": ["RIS"]}, "need `ca`"),
    ],
)
def test_check_refuses_half_configured_listeners(tmp_path, pki, tls, message):
    tls = {
        "certificate": str(pki.server.cert),
        "key": str(pki.server.key),
        **{k: (str(pki.ca.cert) if v == "CA" else v) for k, v in tls.items()},
    }
    result = _pfi_check(write_config(tmp_path, {"in": inbound(tls=tls)}))
    assert result.returncode == 1 and message in result.stdout, result.stdout


def test_check_refuses_missing_or_mismatched_tls_files(tmp_path, pki):
    cfg = write_config(
        tmp_path,
        {
            "nokey": inbound(tls={"certificate": str(pki.server.cert)}),
            "wrongkey": inbound(tls={"certificate": str(pki.server.cert), "key": str(pki.client.key)}),
            "out": {
                "type": "mllp-out",
                "host": "127.0.0.1",
                "port": 2575,
                "tls": {"certificate": str(pki.client.cert), "key": str(pki.client.key), "allowed_subjects": ["x"]},
            },
        },
    )
    result = _pfi_check(cfg)
    assert result.returncode == 1
    assert "nokey.yaml" in result.stdout and "tls.key: required setting missing" in result.stdout
    assert "listener settings; a sender does not use them" in result.stdout
    fixed = write_config(
        tmp_path / "b", {"wrongkey": inbound(tls={"certificate": str(pki.server.cert), "key": str(pki.client.key)})}
    )
    result = _pfi_check(fixed)
    assert result.returncode == 1 and "does not match certificate" in result.stdout, result.stdout


@pytest_twisted.ensureDeferred
async def test_failed_handshakes_are_counted_and_logged_rate_limited(tmp_path, pki):
    from structlog.testing import capture_logs

    from tests.routing.peers import until

    tls = {"certificate": str(pki.server.cert), "key": str(pki.server.key), "ca": str(pki.ca.cert)}
    engine = await start_engine(write_config(tmp_path / "cfg", {"in": inbound(tls=tls)}), tmp_path / "data")
    try:
        port = engine.port_of("in")
        with capture_logs() as logs:
            for _ in range(3):
                assert (await _try(port, _client_context(pki, with_cert=False))).startswith("refused")
            labels = {"channel": "in", "reason": "tls_handshake_failed", "node": engine.node}
            count = lambda: engine.metrics.registry.get_sample_value("pfi_connections_closed_total", labels)  # noqa: E731
            await until(lambda: count() == 3.0, what="three failed handshakes counted")
        lines = [e for e in logs if e["event"] == "mllp.tls_handshake_failed"]
        assert len(lines) == 1 and lines[0]["peer_host"] == "127.0.0.1" and lines[0]["error"]
    finally:
        await engine.stopService()
