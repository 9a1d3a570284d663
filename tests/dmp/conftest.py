"""DMP fixtures: one test PKI per session, a fresh simulator per test, a client configured for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from engine.dmp.config import DmpChannelSettings, DmpEndpoints, LpsIdentity
from engine.dmp.model import DmpFlags, Organisation, Person, PublishRequest
from engine.sim.dmp import DmpSimulator
from engine.pki import generate_test_pki

KIT = "TestContenuCDA-3-0/ExemplesCDA"
N3 = f"{KIT}/IMG_CR_IMG_2024.01.xml"
N1 = f"{KIT}/IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml"
MDM = "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/MDM"
MDM_V1 = f"{MDM}/Transmission initiale MDM/CR_Radio_CDAN1_v1.XML"
MDM_V2 = f"{MDM}/Remplacement MDM/CR_Radio_CDAN1_v2.XML"
MDM_V2_DELETE = f"{MDM}/Suppression MDM/CR_Radio_CDAN1_v2.XML"
INS = "279035121518989"
INS_OID = "1.2.250.1.213.1.4.10"


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return generate_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def jdv_dir(cda_kit) -> Path:
    return cda_kit / "TestContenuCDA-3-0" / "jeuxDeValeurs"


@pytest.fixture()
def simulator(pki, jdv_dir, tmp_path):
    from twisted.internet import reactor

    sim = DmpSimulator(reactor, port=0, pki_dir=pki.directory, data_dir=tmp_path / "dmp", valueset_dir=jdv_dir)
    sim.start()
    yield sim
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(sim.stop()))


def make_settings(sim: DmpSimulator, cert, key, ca, **overrides) -> DmpChannelSettings:
    values = dict(
        endpoints=DmpEndpoints.from_base(sim.base_url),
        client_cert=cert,
        client_key=key,
        ca_bundle=ca,
        structure_id="3300017985",
        lps=LpsIdentity(name="PFI-engine", version="0.1.0", homologation_id="HOMOLOGATION-TEST"),
        source_oid="1.2.250.1.999.1",
        connect_timeout=5,
        response_timeout=10,
    )
    values.update(overrides)
    return DmpChannelSettings(**values)


@pytest.fixture()
def settings(simulator, pki):
    return make_settings(simulator, pki.client.cert, pki.client.key, pki.ca.cert)


@pytest.fixture()
def client(settings):
    from twisted.internet import reactor
    from engine.dmp.client import DmpClient

    dmp = DmpClient(reactor, settings)
    yield dmp
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(dmp.close()))


@pytest.fixture(scope="session")
def corpus(cda_kit, ans_corpus):
    """Read a corpus file by its short name."""

    def read(name: str) -> bytes:
        base = cda_kit if name.startswith("TestContenuCDA") else ans_corpus
        return (base / name).read_bytes()

    return read


def request_for(cda: bytes, action: str = "initial", **overrides) -> PublishRequest:
    values = dict(
        action=action,
        cda=cda,
        ins=INS,
        ins_oid=INS_OID,
        ins_qualified=True,
        flags=DmpFlags(),
        message_control_id="MSG0001",
        sender=Person(id="801234560801", family="BIDEAULT", given="Jacques", roles=(("10", "1.2.250.1.71.1.2.7"),)),
        sender_organisation=Organisation(name="Centre de radiologie Ambroise", id="3300017985"),
    )
    values.update(overrides)
    return PublishRequest(**values)
