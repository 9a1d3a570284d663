"""A throw-away test PKI for the DMP connector, its simulator, the tests and the demo.

Generates a CA, a server certificate for 127.0.0.1/localhost, an organisation (ORG) client
certificate, a second structure's ORG certificate, an expired client certificate and a client
certificate from another CA. ORG certificates carry their structure identifier in the subject OU,
as the ANS IGC-Santé naming does (docs/dmp.md). Everything is
written to one directory (tmp_path in tests, var/pki/ for the demo); private keys never go to git.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel

KEY_BITS = 2048


class CertPair(BaseModel):
    """Paths of one PEM certificate and its PEM private key."""

    cert: Path
    key: Path


class TestPki(BaseModel):
    """Where the generated material lives."""

    __test__ = False  # not a pytest class

    directory: Path
    ca: CertPair
    server: CertPair
    client: CertPair
    #: ORG certificate of a second structure (one engine publishing for two structures)
    client_second: CertPair
    client_expired: CertPair
    other_ca: CertPair
    client_other_ca: CertPair

    @classmethod
    def in_directory(cls, directory: Path) -> "TestPki":
        """The layout `generate_test_pki` writes (no file access)."""

        def pair(name: str) -> CertPair:
            return CertPair(cert=directory / f"{name}.pem", key=directory / f"{name}.key")

        return cls(
            directory=directory,
            ca=pair("ca"),
            server=pair("server"),
            client=pair("client"),
            client_second=pair("client-second"),
            client_expired=pair("client-expired"),
            other_ca=pair("other-ca"),
            client_other_ca=pair("client-other-ca"),
        )

    def exists(self) -> bool:
        """True when every file is present."""
        pairs = (
            self.ca,
            self.server,
            self.client,
            self.client_second,
            self.client_expired,
            self.other_ca,
            self.client_other_ca,
        )
        return all(p.cert.is_file() and p.key.is_file() for p in pairs)


def _name(common_name: str, org: str = "PFI test PKI", unit: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if unit:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name(parts + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _builder(subject: x509.Name, issuer: x509.Name, key, not_before, not_after):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _make_ca(common_name: str, now: dt.datetime):
    key = _new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key, now - dt.timedelta(days=1), now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(ca_cert, ca_key, common_name: str, server: bool, not_before, not_after, structure: str | None = None):
    key = _new_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(common_name, unit=structure), ca_cert.subject, key, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(pair: CertPair, cert, key) -> None:
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(pair.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def generate_test_pki(
    directory: Path,
    organisation: str = "3300017985",
    now: dt.datetime | None = None,
    second_organisation: str = "1300017985",
) -> TestPki:
    """Write a complete test PKI into `directory` and return its layout.

    Client certificates mimic ANS organisation certificates: structure id in the subject OU (and
    in the CN, for humans).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPki.in_directory(directory)
    ca_cert, ca_key = _make_ca("PFI Test CA", now)
    _write(pki.ca, ca_cert, ca_key)
    valid_from, valid_to = now - dt.timedelta(days=1), now + dt.timedelta(days=825)
    _write(pki.server, *_make_leaf(ca_cert, ca_key, "localhost", True, valid_from, valid_to))
    _write(pki.client, *_make_leaf(ca_cert, ca_key, f"{organisation} ORG", False, valid_from, valid_to, organisation))
    _write(
        pki.client_second,
        *_make_leaf(ca_cert, ca_key, f"{second_organisation} ORG", False, valid_from, valid_to, second_organisation),
    )
    expired = _make_leaf(
        ca_cert,
        ca_key,
        f"{organisation} ORG expired",
        False,
        now - dt.timedelta(days=400),
        now - dt.timedelta(days=35),
        organisation,
    )
    _write(pki.client_expired, *expired)
    other_cert, other_key = _make_ca("Other CA", now)
    _write(pki.other_ca, other_cert, other_key)
    _write(
        pki.client_other_ca,
        *_make_leaf(other_cert, other_key, f"{organisation} ORG", False, valid_from, valid_to, organisation),
    )
    return pki


def ensure_test_pki(directory: Path) -> TestPki:
    """Reuse the PKI in `directory` if complete, else generate it (demo: var/pki)."""
    pki = TestPki.in_directory(directory)
    return pki if pki.exists() else generate_test_pki(directory)
