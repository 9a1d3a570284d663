"""Mutual TLS on an MLLP listener: client certificate from the channel's CA, CN allow-list."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol

from engine.mllp.client import MLLPClientProtocol, read_ack
from engine.pki import generate_test_pki
from tests.support import inbound, sample_adt, start_engine, write_config


def _client_options(pki, pair):
    cert = ssl.PrivateCertificate.loadPEM(pair.cert.read_bytes() + pair.key.read_bytes())
    ca = ssl.Certificate.loadPEM(pki.ca.cert.read_bytes())
    return ssl.optionsForClientTLS("localhost", trustRoot=ca, clientCertificate=cert)


async def _try(port, options) -> str:
    client = MLLPClientProtocol()
    try:
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port, options), client)
        d = client.send(sample_adt("TLS-1").encode())
        d.addTimeout(5, reactor)
        return read_ack(await d).code
    except (defer.TimeoutError, Exception) as exc:  # refused handshake or aborted connection
        return f"refused ({exc.__class__.__name__})"
    finally:
        if client.transport is not None:
            client.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_mutual_tls_checks_ca_and_allowed_subject(tmp_path):
    pki = generate_test_pki(tmp_path / "pki")
    from cryptography import x509

    client_cn = (
        x509.load_pem_x509_certificate(pki.client.cert.read_bytes())
        .subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0]
        .value
    )
    tls = {
        "certificate": str(pki.server.cert),
        "key": str(pki.server.key),
        "ca": str(pki.ca.cert),
        "require_client_certificate": True,
    }
    cfg = write_config(
        tmp_path / "cfg",
        {
            "open": inbound(tls={**tls, "allowed_subjects": [client_cn]}),
            "closed": inbound(tls={**tls, "allowed_subjects": ["someone else"]}),
        },
    )
    engine = await start_engine(cfg, tmp_path / "data")
    try:
        good = _client_options(pki, pki.client)
        assert await _try(engine.port_of("open"), good) == "AA"
        assert (await _try(engine.port_of("closed"), good)).startswith("refused")
        foreign = _client_options(pki, pki.client_other_ca)
        assert (await _try(engine.port_of("open"), foreign)).startswith("refused")
    finally:
        await engine.stopService()
