"""TLS policy of every link the engine opens or accepts (MLLP listeners and senders, the DMP
client and the DMP simulator), and the checks `pfi check` runs on TLS material.

The policy is set here, not left to the system OpenSSL configuration: TLS 1.2 at least, and for
TLS 1.2 only forward-secret key exchange (ECDHE/DHE) with AEAD ciphers (AES-GCM, ChaCha20-Poly1305).
TLS 1.3 keeps OpenSSL's suites, which are all AEAD with forward secrecy. See docs/tls.md.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are not set by it)
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def policy() -> dict:
    """CertificateOptions keywords of the policy (minimum version, cipher list)."""
    return {
        "raiseMinimumTo": MINIMUM_VERSION,
        "acceptableCiphers": ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
    }


def _read(path) -> bytes:
    return Path(path).read_bytes()


def server_options(cert_pem: bytes, key_pem: bytes, ca_pem: bytes | None) -> ssl.CertificateOptions:
    """Server side; with a CA the client MUST present a certificate that CA signed (a CA without
    client authentication would let anyone in, so the two cannot be separated)."""
    cert = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    authority = {}
    if ca_pem:
        authorities = [ssl.Certificate.loadPEM(block).original for block in pem_blocks(ca_pem)]
        authority = {"verify": True, "caCerts": authorities, "requireCertificate": True}
    return ssl.CertificateOptions(
        privateKey=cert.privateKey.original, certificate=cert.original, **authority, **policy()
    )


def server_context(tls) -> ssl.CertificateOptions:
    """Options of an MLLP listener's `tls:` settings."""
    return server_options(_read(tls.certificate), _read(tls.key), _read(tls.ca) if tls.ca else None)


def client_options(host: str, trust=None, client_certificate: ssl.PrivateCertificate | None = None):
    """Client side: verify the server name against `trust` (system roots when None) and present
    `client_certificate`."""
    return ssl.optionsForClientTLS(
        host, trustRoot=trust, clientCertificate=client_certificate, extraCertificateOptions=policy()
    )


def server_endpoint(reactor, settings):
    backlog = getattr(settings, "listen_backlog", 50)
    if settings.tls is None:
        return TCP4ServerEndpoint(reactor, settings.port, backlog=backlog, interface=settings.host)
    return SSL4ServerEndpoint(
        reactor, settings.port, server_context(settings.tls), backlog=backlog, interface=settings.host
    )


def pem_blocks(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, one PEM block each."""
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in bundle.split(marker) if b"BEGIN CERTIFICATE" in block]


# -- checks (`pfi check`, start-up) -------------------------------------------------------------


def key_pair_problems(label: str, cert_path: Path, key_path: Path) -> list[str]:
    """Both files readable, PEM, and the key is the certificate's."""
    missing = [f"{label}: {path} is not a readable file" for path in (cert_path, key_path) if not Path(path).is_file()]
    if missing:
        return missing
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path))
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except (ValueError, TypeError) as exc:
        return [f"{label}: certificate or key unreadable: {exc}"]
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return [f"{label}: key {key_path} does not match certificate {cert_path}"]
    return []


def ca_problems(label: str, ca_path: Path) -> list[str]:
    """A readable PEM bundle with at least one certificate."""
    if not Path(ca_path).is_file():
        return [f"{label}: CA bundle {ca_path} is not a readable file"]
    blocks = pem_blocks(_read(ca_path))
    try:
        for block in blocks:
            x509.load_pem_x509_certificate(block)
    except ValueError as exc:
        return [f"{label}: CA bundle {ca_path} unreadable: {exc}"]
    return [] if blocks else [f"{label}: no certificate in CA bundle {ca_path}"]


def tls_settings_problems(channel: str, tls) -> list[str]:
    """File-level problems of one channel's `tls:` settings."""
    label = f"channel {channel}: tls"
    problems = key_pair_problems(label, Path(tls.certificate), Path(tls.key))
    if tls.ca:
        problems += ca_problems(label, Path(tls.ca))
    return problems
