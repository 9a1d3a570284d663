"""VIHF identity (31/03/2026 committee): Identifiant_Structure is the structure of the certificate
that authenticates TLS and signs the VIHF; one certificate per structure; NameID as an IDNPS.
Through real HTTPS + mTLS to the DMP simulator."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import defer, reactor

from engine.dmp.client import DmpClient
from engine.dmp.config import OrgCertificate, check_settings, resolve_certificates
from engine.dmp.model import DmpResult, Organisation, Person
from engine.dmp.vihf import SAML
from engine.errors import ConfigurationError
from tests.dmp.conftest import N3, make_settings, request_for

SECOND = "1300017985"


def _two_structures(simulator, pki, **overrides):
    return make_settings(
        simulator,
        pki.client.cert,
        pki.client.key,
        pki.ca.cert,
        certificates=(OrgCertificate(cert=pki.client_second.cert, key=pki.client_second.key),),
        **overrides,
    )


@pytest.fixture()
def two_client(simulator, pki):
    dmp = DmpClient(reactor, _two_structures(simulator, pki))
    yield dmp
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(dmp.close()))


class _SeenBySimulator:
    """Records the structure of each TLS client certificate and VIHF the simulator checked."""

    def __init__(self, simulator, monkeypatch):
        from engine.sim import dmp_checks as simulator_checks

        self.seen: list[tuple[str, str]] = []
        original = simulator_checks.check_vihf

        def spy(env, peer_pem, now=None):
            from cryptography import x509

            vihf = original(env, peer_pem, now)
            cert = x509.load_pem_x509_certificate(peer_pem)
            unit = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
            self.seen.append((unit, vihf.attributes["Identifiant_Structure"][0]))
            return vihf

        monkeypatch.setattr(simulator_checks, "check_vihf", spy)


@pytest_twisted.ensureDeferred
async def test_each_structure_publishes_with_its_own_certificate(simulator, two_client, corpus, monkeypatch):
    spy = _SeenBySimulator(simulator, monkeypatch)
    second = request_for(corpus(N3), sender_organisation=Organisation(name="Site B", id=SECOND))
    assert (await two_client.publish(second)).status == "success"
    assert set(spy.seen) == {(SECOND, SECOND)}
    spy.seen.clear()
    default = request_for(corpus(N3), sender_organisation=None, action="delete")
    assert (await two_client.publish(default)).ok  # no PRT-8: the default structure's certificate
    assert set(spy.seen) == {("3300017985", "3300017985")}


@pytest_twisted.ensureDeferred
async def test_unknown_structure_is_refused_without_sending(simulator, two_client, corpus):
    other = request_for(corpus(N3), sender_organisation=Organisation(name="Elsewhere", id="1999999999"))
    result = await two_client.publish(other)
    assert (result.error_code, result.transient) == ("STRUCTURE_NOT_CONFIGURED", False)
    assert "1999999999" in result.detail and simulator.requests_seen == 0


class _OtherStructure:
    """Signs a correct VIHF but for another structure than the certificate's."""

    def __init__(self, signer):
        self._signer = signer

    def assertion(self, context, now):
        return self._signer.assertion(dataclasses.replace(context, structure_id=SECOND), now)


@pytest_twisted.ensureDeferred
async def test_simulator_refuses_a_vihf_structure_that_is_not_the_certificates(simulator, client, corpus):
    client._signer = _OtherStructure(client._signer)
    result = await client.publish(request_for(corpus(N3)))
    assert (result.error_code, result.transient) == ("wsse:FailedAuthentication", False)
    assert result.certificate_refused and simulator.store.all() == []


def test_certificate_structure_comes_from_the_subject_ou(simulator, pki):
    structures, problems = resolve_certificates(_two_structures(simulator, pki, structure_id=None))
    assert problems == []
    assert (set(structures.by_structure), structures.default) == ({"3300017985", SECOND}, "3300017985")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(structure_id="1111111111"), "is the certificate of structure 3300017985 (subject OU), not of 1111111111"),
        (dict(client_cert="server"), "carries no structure identifier"),
        (dict(certificates="same"), "two certificates for structure 3300017985"),
        (dict(certificates=(), structure_id=None, client_cert=None, client_key=None), "no organisation certificate"),
    ],
)
def test_certificates_that_cannot_be_used_are_configuration_errors(simulator, pki, change, message):
    values = dict(change)
    if values.get("client_cert") == "server":  # a certificate without OU, no structure_id given
        values.update(client_cert=pki.server.cert, client_key=pki.server.key, structure_id=None)
    if values.get("certificates") == "same":
        values["certificates"] = (OrgCertificate(cert=pki.client_expired.cert, key=pki.client_expired.key),)
    settings = make_settings(simulator, pki.client.cert, pki.client.key, pki.ca.cert, **values)
    now = dt.datetime.now(dt.timezone.utc)
    assert any(message in p for p in check_settings(settings, now)), check_settings(settings, now)
    with pytest.raises(ConfigurationError):
        DmpClient(reactor, settings)


@pytest.mark.parametrize(
    "id_type, ident, name_id",
    [
        ("RPPS", "10001234567", "810001234567"),
        ("RPPS", "810001234567", "810001234567"),  # the ANS examples label an IDNPS `RPPS`
        ("ADELI", "751234567", "0751234567"),
        ("IDNPS", "801234560801", "801234560801"),
        ("IDNPS", "3/123456/789", "3/123456/789"),
    ],
)
def test_name_id_is_the_idnps_of_prt5(client, corpus, id_type, ident, name_id):
    person = Person(
        id=ident, family="BIDEAULT", given="Jacques", id_type=id_type, roles=(("10", "1.2.250.1.71.1.2.7"),)
    )
    request = request_for(corpus(N3), sender=person)
    env, _ = client.iti41_envelope(request, client.metadata(request))
    assert env.findtext(f".//{{{SAML}}}Subject/{{{SAML}}}NameID") == name_id
    author = etree.tostring(env).decode()
    assert f"{name_id}^BIDEAULT^Jacques^^^^^^&amp;1.2.250.1.71.4.2.1&amp;ISO^D^^^IDNPS" in author


def test_certificate_refusal_codes():
    refused = [
        DmpResult(status="error", error_code=code).certificate_refused
        for code in ("TLS_CLIENT_CERT_REFUSED", "wsse:FailedAuthentication", "wsse:FailedCheck", "TLS_SERVER_UNTRUSTED")
    ]
    assert refused == [True, True, False, False]


def _dmp_channel_files(pki, **extra) -> dict:
    return {
        "type": "dmp",
        "endpoint": "https://127.0.0.1:8443",
        "client_cert": str(pki.client.cert),
        "client_key": str(pki.client.key),
        "ca_bundle": str(pki.ca.cert),
        "source_oid": "1.2.250.1.999.1",
        "lps": {"homologation_id": "H"},
        **extra,
    }


def _check(cfg):
    """`pfi check` on `cfg` in a subprocess (subprocess.CompletedProcess)."""
    import subprocess
    import sys

    from tests.support import ROOT

    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "check", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pfi_check_validates_dmp_certificates_and_warns_before_expiry(tmp_path, pki):
    from engine.pki import generate_test_pki
    from tests.support import write_config

    soon = generate_test_pki(tmp_path / "soon", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=800))
    good = _check(write_config(tmp_path / "a", {"dmp": _dmp_channel_files(soon)}))
    assert good.returncode == 0, good.stdout
    assert "warning: channel dmp: the certificate of structure 3300017985 expires in 2" in good.stdout
    wrong = _check(write_config(tmp_path / "b", {"dmp": _dmp_channel_files(pki, structure_id="1999999999")}))
    assert wrong.returncode == 1 and "not of 1999999999" in wrong.stdout
    half = _check(write_config(tmp_path / "c", {"dmp": {**_dmp_channel_files(pki), "client_key": None}}))
    assert half.returncode == 1 and "client_cert and client_key go together" in half.stdout


def test_pfi_run_refuses_to_start_with_a_certificate_of_another_structure(tmp_path, pki):
    import subprocess
    import sys

    from tests.support import ROOT, write_config

    cfg = write_config(tmp_path / "cfg", {"dmp": _dmp_channel_files(pki, structure_id="1999999999")})
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--config", str(cfg), "--data", str(tmp_path / "data")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "not of 1999999999" in result.stderr
    assert "not starting" in result.stderr


def test_the_dmp_gate_takes_the_identity_status_from_the_registry_first():
    from engine.dmp.gates import check_publishable
    from engine.dmp.model import DmpFlags, PublishRequest

    class Registry:
        def __init__(self, status):
            self.status = status

        def is_opposed(self, ins):
            return False

        def identity_status(self, ins, ipp="", ipp_domain=""):
            return self.status

    def request(qualified: bool) -> PublishRequest:
        return PublishRequest.model_construct(
            ins="279035121518989", ins_oid="1.2.250.1.213.1.4.10", ins_qualified=qualified, flags=DmpFlags()
        )

    assert not check_publishable(request(True), Registry("PROV")).allowed  # the GAM knows better
    assert check_publishable(request(False), Registry("VALI")).allowed
    decision = check_publishable(request(True), Registry(None))  # unknown to the registry: PID-32
    assert decision.allowed
    refused = check_publishable(request(False), Registry(None))
    assert refused.code == "INS_NOT_QUALIFIED" and "PID-32" in refused.reason
