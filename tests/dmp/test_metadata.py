"""CDA header → XDS metadata, field by field, on the ANS CR d'imagerie examples."""

from __future__ import annotations

import hashlib

import pytest
from lxml import etree

from engine.dmp.metadata import MetadataError, MetadataExtractor, to_utc
from engine.dmp.model import DmpFlags
from engine.errors import ValidationError
from tests.dmp.conftest import MDM_V1, MDM_V2, N1, N3

H = "urn:hl7-org:v3"


@pytest.fixture(scope="module")
def extractor():
    return MetadataExtractor()


@pytest.fixture(scope="module")
def n3(corpus, extractor):
    return extractor.extract(corpus(N3))


@pytest.fixture(scope="module")
def n1(corpus, extractor):
    return extractor.extract(corpus(N1))


def test_n3_identity_and_document_fields(n3, corpus):
    assert n3.unique_id == "1.2.250.1.213.1.1.1.45.2024.1.1"
    assert n3.title == "CR d’imagerie médicale - Scanner Tête + Cou + Thorax avec injection"
    assert n3.language_code == "fr-FR"
    assert n3.mime_type == "text/xml"
    data = corpus(N3)
    assert n3.hash == hashlib.sha1(data).hexdigest() and n3.size == len(data)


def test_n3_times_are_converted_to_utc(n3):
    # effectiveTime 20210108111700+0100, serviceEvent low 102500+0100, high 111700+0100
    assert n3.creation_time == "20210108101700"
    assert n3.service_start_time == "20210108092500"
    assert n3.service_stop_time == "20210108101700"


def test_n3_codes(n3):
    assert (n3.type_code.code, n3.type_code.scheme) == ("18748-4", "2.16.840.1.113883.6.1")
    assert (n3.class_code.code, n3.class_code.scheme) == ("10", "1.2.250.1.213.1.1.4.1")
    assert n3.format_code.code == "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013"
    assert n3.format_code.scheme == "1.3.6.1.4.1.19376.1.2.3" and n3.level == "N3"
    assert [(c.code, c.scheme) for c in n3.confidentiality_codes] == [("N", "2.16.840.1.113883.5.25")]
    assert (n3.healthcare_facility_type_code.code, n3.healthcare_facility_type_code.scheme) == (
        "SA08",
        "1.2.250.1.71.4.2.4",
    )
    assert (n3.practice_setting_code.code, n3.practice_setting_code.scheme) == ("AMBULATOIRE", "1.2.250.1.213.1.1.4.9")


def test_n3_patient(n3):
    assert n3.patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert n3.source_patient_id == "1234567890121^^^&1.2.3.4.567.8.9.10&ISO^PI"
    assert n3.source_patient_info == ["PID-5|PAT-TROIS^DOMINIQUE^^^^^L", "PID-7|19790328", "PID-8|F"]


def test_n3_author_and_legal_authenticator(n3):
    (author,) = n3.authors
    assert author.person == "801234560801^BIDEAULT^Jacques^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    assert author.institutions == ["Centre de radiologie Ambroise^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1920008059"]
    assert author.roles[0].startswith("ATTPHYS^")
    assert author.specialties == ["G15_10/SM44^Médecin - Radio-diagnostic (SM)^1.2.250.1.213.1.1.4.5"]
    assert n3.legal_authenticator == author.person
    assert n3.legal_authenticator_code == "G15_10/SM44"


def test_n3_event_codes_are_modalities_and_regions_without_duplicates(n3):
    assert [(c.code, c.scheme) for c in n3.event_codes] == [
        ("CT", "1.2.250.1.213.1.1.5.618"),
        ("774007", "1.2.250.1.213.1.1.5.695"),
        ("67734004", "1.2.250.1.213.1.1.5.695"),
    ]


def test_n3_reference_ids(n3):
    kinds = [ref.rsplit("^", 1)[1] for ref in n3.reference_ids]
    assert kinds.count("urn:ihe:iti:xds:2013:accession") == 2
    assert kinds.count("urn:ihe:iti:xds:2016:studyInstanceUID") == 3
    assert kinds.count("urn:ihe:iti:xds:2013:order") == 2
    assert "105234751^^^&1.2.250.1.925.994044785528.27&ISO^urn:ihe:iti:xds:2013:accession" in n3.reference_ids
    assert "1.2.250.1.925.994044.27.123.1876360^^^^urn:ihe:iti:xds:2016:studyInstanceUID" in n3.reference_ids
    assert "984375862^^^&1.2.250.1.748.12345678.12&ISO^urn:ihe:iti:xds:2013:order" in n3.reference_ids


def test_n3_replaced_document(n3):
    assert n3.replaced_document_id == "90E1C8EC-F951-4B26-A305-A34848818DD6"


def test_n1_format_code_is_xds_sd_pdf(n1):
    assert n1.format_code.code == "urn:ihe:iti:xds-sd:pdf:2008" and n1.level == "N1"
    assert n1.unique_id == "1.2.250.1.213.1.1.1.45.2024.2.1"
    assert n1.type_code.code == "18748-4" and n1.class_code.code == "10"


def test_mdm_n1_without_ipp_uses_the_ins_as_source_patient_id(corpus, extractor):
    meta = extractor.extract(corpus(MDM_V1))
    assert meta.source_patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^PI"
    assert meta.authors[0].specialties == [] and meta.authors[0].roles == []
    assert meta.practice_setting_code.code == "ETABLISSEMENT"
    assert meta.healthcare_facility_type_code.code == "SA07"
    assert meta.creation_time == "20050411103328"  # no zone: kept as is


def test_mdm_v2_points_to_the_replaced_version(corpus, extractor):
    meta = extractor.extract(corpus(MDM_V2))
    assert meta.replaced_document_id == "1.2.250.1.71.4.2.2.120456789.71024000081"
    assert meta.unique_id == "1.2.250.1.71.4.2.2.120456789.71024000082"


def test_flags_add_dmp_confidentiality_codes_after_the_cda_one(corpus, extractor):
    flags = DmpFlags(masque_ps=True, invisible_patient=True, invisible_rep_legaux=True)
    codes = extractor.extract(corpus(N3), flags).confidentiality_codes
    assert [(c.code, c.scheme) for c in codes] == [
        ("N", "2.16.840.1.113883.5.25"),
        ("MASQUE_PS", "1.2.250.1.213.1.1.4.13"),
        ("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13"),
        ("INVISIBLE_REPRESENTANTS_LEGAUX", "1.2.250.1.213.1.1.4.13"),
    ]


def _without(data: bytes, xpath: str) -> bytes:
    root = etree.fromstring(data)
    for node in root.xpath(xpath, namespaces={"h": H}):
        node.getparent().remove(node)
    return etree.tostring(root)


@pytest.mark.parametrize(
    "xpath, named",
    [
        ("/h:ClinicalDocument/h:title", "ClinicalDocument/title"),
        ("/h:ClinicalDocument/h:effectiveTime", "ClinicalDocument/effectiveTime/@value"),
        ("//h:healthCareFacility/h:code", "healthCareFacility/code"),
        ("/h:ClinicalDocument/h:author", "ClinicalDocument/author/assignedAuthor/id"),
        ("//h:patientRole/h:id[@root='1.2.250.1.213.1.4.10']", "patientRole/id (INS)"),
        ("/h:ClinicalDocument/h:languageCode", "ClinicalDocument/languageCode/@code"),
        ("//h:serviceEvent/h:effectiveTime", "serviceEvent/effectiveTime/low/@value"),
        ("/h:ClinicalDocument/h:templateId", "ClinicalDocument/templateId"),
    ],
)
def test_missing_header_element_is_named(corpus, extractor, xpath, named):
    with pytest.raises(MetadataError) as info:
        extractor.extract(_without(corpus(N3), xpath))
    assert any(named in missing for missing in info.value.missing), info.value.missing


def test_practice_setting_falls_back_to_the_author_organisation(corpus, extractor):
    data = _without(corpus(N3), "//h:performer//h:standardIndustryClassCode")
    assert extractor.extract(data).practice_setting_code.code == "AMBULATOIRE"


def test_document_id_with_extension_is_refused_unless_configured(corpus):
    root = etree.fromstring(corpus(N3))
    root.find(f"{{{H}}}id").set("extension", "A42")
    data = etree.tostring(root)
    with pytest.raises(MetadataError, match="root\\^extension"):
        MetadataExtractor().extract(data)
    meta = MetadataExtractor(unique_id_with_extension="caret").extract(data)
    assert meta.unique_id == "1.2.250.1.213.1.1.1.45.2024.1.1^A42"


def test_not_a_cda_names_the_root(extractor):
    with pytest.raises(MetadataError, match="ClinicalDocument"):
        extractor.extract(b"<foo/>")


def test_hostile_xml_is_refused(extractor):
    with pytest.raises(ValidationError):
        extractor.extract(b'<!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>')


@pytest.mark.parametrize(
    "value, expected",
    [
        ("20210108111700+0100", "20210108101700"),
        ("20210101003000+0200", "20201231223000"),
        ("20210409094914.827+0100", "20210409084914"),
        ("202101081117+0100", "202101081017"),
        ("20210409", "20210409"),
        ("20050411103328", "20050411103328"),
    ],
)
def test_to_utc(value, expected):
    assert to_utc(value) == expected


def test_to_utc_rejects_garbage():
    with pytest.raises(MetadataError):
        to_utc("2021AB08111700+0100")


def test_hl7_delimiters_in_names_are_escaped(corpus, extractor):
    data = corpus(N3).replace(b"<name>Centre de radiologie Ambroise</name>", b"<name>Radiologie A &amp; B^C</name>", 1)
    data = data.replace(b"<family>BIDEAULT</family>", b"<family>BIDEAULT|X~Y\\Z</family>", 1)
    author = extractor.extract(data).authors[0]
    assert author.institutions == ["Radiologie A \\T\\ B\\S\\C^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1920008059"]
    assert author.person.startswith("801234560801^BIDEAULT\\F\\X\\R\\Y\\E\\Z^Jacques^")
