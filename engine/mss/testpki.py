"""A throw-away PKI for tests and `pfi mss sim`: one CA, a server and a client certificate.

Never used in production: the real MSSanté operator and IGC Santé certificates come from
configuration. Keys are small EC keys so that generation stays fast.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TestPki:
    """Paths of the generated PEM files (certificate + key together for leaves)."""

    ca_cert: Path
    server_pem: Path
    client_pem: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: str, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


def _pem(cert: x509.Certificate, key=None) -> bytes:
    out = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return out


def _leaf(ca_key, common_name: str, usage, sans: list[x509.GeneralName]):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(common_name, "PFI test CA", key.public_key())
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    return builder.sign(ca_key, hashes.SHA256()), key


def ensure_test_pki(directory: Path, server_name: str = "localhost") -> TestPki:
    """The test PKI of `directory`, generated only when missing: a restarted simulator keeps the
    CA the engine's channel trusts."""
    pki = TestPki(directory / "ca.pem", directory / "server.pem", directory / "client.pem")
    if all(p.is_file() for p in (pki.ca_cert, pki.server_pem, pki.client_pem)):
        return pki
    return generate_test_pki(directory, server_name)


def generate_test_pki(directory: Path, server_name: str = "localhost") -> TestPki:
    """Write ca.pem, server.pem and client.pem in `directory` and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _builder("PFI test CA", "PFI test CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
        .sign(ca_key, hashes.SHA256())
    )
    sans = [x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server, server_key = _leaf(ca_key, server_name, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client, client_key = _leaf(ca_key, "pfi-test-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pki = TestPki(directory / "ca.pem", directory / "server.pem", directory / "client.pem")
    pki.ca_cert.write_bytes(_pem(ca))
    pki.server_pem.write_bytes(_pem(server, server_key))
    pki.client_pem.write_bytes(_pem(client, client_key))
    return pki
