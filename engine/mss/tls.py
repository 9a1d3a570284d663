"""TLS context helpers for the MSSanté client connections (and the test peer's servers)."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet import ssl

from engine.errors import ConfigurationError
from engine.mss.settings import TlsClientSettings
from engine.tls import client_options

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError([f"cannot read TLS file {path}: {exc.strerror}"]) from exc


def load_certificates(path: Path) -> list[ssl.Certificate]:
    """Every certificate of a PEM bundle."""
    blocks = _PEM_CERT.findall(_read(path))
    if not blocks:
        raise ConfigurationError([f"no PEM certificate in {path}"])
    return [ssl.Certificate.loadPEM(block) for block in blocks]


def client_tls(settings: TlsClientSettings, default_host: str):
    """A client connection creator: server name check, CA bundle, optional client certificate."""
    trust = None
    if settings.ca_bundle is not None:
        trust = ssl.trustRootFromCertificates(load_certificates(settings.ca_bundle))
    client_cert = None
    if settings.client_certificate is not None:
        client_cert = ssl.PrivateCertificate.loadPEM(_read(settings.client_certificate))
    return client_options(settings.server_name or default_host, trust, client_cert)


def server_tls(server_pem: Path, ca_cert: Path | None = None, require_client: bool = False):
    """Server options for the test peer; verifies client certificates against `ca_cert`."""
    private = ssl.PrivateCertificate.loadPEM(_read(server_pem))
    kwargs = {}
    if ca_cert is not None:
        kwargs = dict(
            verify=True,
            caCerts=[c.original for c in load_certificates(ca_cert)],
            requireCertificate=require_client,
        )
    return ssl.CertificateOptions(privateKey=private.privateKey.original, certificate=private.original, **kwargs)


def set_no_delay(transport) -> None:
    """Disable Nagle on the TCP transport under any TLS wrapper.

    IMAP and SMTP are request/response protocols with small writes: with Nagle and delayed
    ACKs each exchange can wait ~40 ms.
    """
    while transport is not None:
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
            return
        transport = getattr(transport, "transport", None)
