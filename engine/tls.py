"""TLS endpoints for MLLP channels (mutual TLS for links that leave the establishment)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_context(tls) -> ssl.CertificateOptions:
    """Server-side options; with a CA the peer must present a certificate it signed."""
    cert = ssl.PrivateCertificate.loadPEM(_read(tls.certificate) + b"\n" + _read(tls.key))
    if not tls.ca:
        return cert.options()
    authority = ssl.Certificate.loadPEM(_read(tls.ca))
    return ssl.CertificateOptions(
        privateKey=cert.privateKey.original,
        certificate=cert.original,
        verify=True,
        caCerts=[authority.original],
        requireCertificate=tls.require_client_certificate,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def server_endpoint(reactor, settings):
    backlog = getattr(settings, "listen_backlog", 50)
    if settings.tls is None:
        return TCP4ServerEndpoint(reactor, settings.port, backlog=backlog, interface=settings.host)
    return SSL4ServerEndpoint(reactor, settings.port, server_context(settings.tls), backlog=backlog,
                              interface=settings.host)
