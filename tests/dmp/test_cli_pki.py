"""The test PKI material and the `pfi sim dmp` command registration."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat

from cryptography import x509

from engine.cli import build_parser
from engine.commands.sim import run_dmp
from engine.dmp.gates import check_publishable
from engine.pki import TestPki, ensure_test_pki
from tests.dmp.conftest import request_for


def _cert(pair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def test_pki_layout_and_validity(pki):
    now = dt.datetime.now(dt.timezone.utc)
    assert pki.exists()
    assert _cert(pki.client).not_valid_after_utc > now
    assert _cert(pki.client_expired).not_valid_after_utc < now
    assert _cert(pki.client).issuer == _cert(pki.ca).subject
    assert _cert(pki.client_other_ca).issuer == _cert(pki.other_ca).subject != _cert(pki.ca).subject
    san = _cert(pki.server).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert stat.S_IMODE(pki.client.key.stat().st_mode) == 0o600


def test_ensure_reuses_an_existing_pki(pki):
    before = pki.client.cert.read_bytes()
    assert ensure_test_pki(pki.directory).client.cert.read_bytes() == before
    assert not TestPki.in_directory(pki.directory / "nowhere").exists()


def test_sim_dmp_command_is_registered():
    args = build_parser().parse_args(["sim", "dmp", "--port", "9443", "--patients", "1,2"])
    assert (args.handler, args.port, args.patients) == (run_dmp, 9443, "1,2")


def test_refused_gate_becomes_a_permanent_result():
    result = check_publishable(request_for(b"<x/>", ins_qualified=False)).as_result()
    assert (result.status, result.transient, result.error_code) == ("error", False, "INS_NOT_QUALIFIED")


def test_settings_check_reports_expired_mismatched_and_plain_http(pki, tmp_path):
    from engine.dmp.config import DmpChannelSettings, DmpEndpoints, LpsIdentity, check_settings

    now = dt.datetime.now(dt.timezone.utc)

    def settings(cert, key, base="https://127.0.0.1:1"):
        return DmpChannelSettings(
            endpoints=DmpEndpoints.from_base(base),
            client_cert=cert,
            client_key=key,
            ca_bundle=pki.ca.cert,
            structure_id="3300017985",
            source_oid="1.2",
            lps=LpsIdentity(homologation_id="H"),
        )

    assert check_settings(settings(pki.client.cert, pki.client.key), now) == []
    assert "not valid now" in check_settings(settings(pki.client_expired.cert, pki.client_expired.key), now)[0]
    assert "does not match" in check_settings(settings(pki.client.cert, pki.server.key), now)[0]
    assert len(check_settings(settings(pki.client.cert, pki.client.key, "http://x"), now)) == 3
    assert "not a readable file" in check_settings(settings(tmp_path / "none.pem", pki.client.key), now)[0]


def test_client_with_unusable_key_pair_is_a_configuration_error(pki, tmp_path):
    import pytest
    from twisted.internet import reactor

    from engine.dmp.client import DmpClient
    from engine.dmp.config import DmpChannelSettings, DmpEndpoints, LpsIdentity
    from engine.errors import ConfigurationError

    broken = tmp_path / "broken.key"
    broken.write_bytes(b"not a key")
    for key in (broken, tmp_path / "missing.key"):
        settings = DmpChannelSettings(
            endpoints=DmpEndpoints.from_base("https://127.0.0.1:1"),
            client_cert=pki.client.cert,
            client_key=key,
            ca_bundle=pki.ca.cert,
            structure_id="1",
            source_oid="1.2",
            lps=LpsIdentity(homologation_id="H"),
        )
        with pytest.raises(ConfigurationError):
            DmpClient(reactor, settings)
