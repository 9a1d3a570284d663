"""`validate_cda`: XSD then the Schematron profiles the document's templateIds select."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

from lxml import etree

from engine.cda.kit import ValidationKit
from engine.cda.models import Issue, ProfileResult, Severity, ValidationReport
from engine.cda.saxon_runner import run_profile, saxon_document
from engine.errors import ConfigurationError, ValidationError
from engine.xmlsafe import parse_untrusted

HL7 = "urn:hl7-org:v3"
_NS = {"hl7": HL7}


def validate_cda(data: bytes, kit: ValidationKit, profiles: Sequence[str] | None = None) -> ValidationReport:
    """Validate one CDA R2 document (bytes) against the kit; never raises for a bad document.

    The Schematron profiles are chosen from the kit's profile table by the document's templateIds
    and body kind; `profiles` (names from that table) overrides the selection, e.g. to run the
    CR d'imagerie schematron on an N1 document for comparison.

    Raises ValidationError only when the input is not a CDA document at all (hostile, not XML,
    not a ClinicalDocument): there is nothing to report on.
    """
    started = time.perf_counter()
    tree, wrapped = _clinical_document(_refuse_doctype(parse_untrusted(data)))
    root = tree.getroot()
    report = _new_report(root)
    report.self_presentable = wrapped
    report.timings["parse"] = _ms_since(started)
    _run_xsd(tree, kit, report)
    _run_schematrons(root, kit, report, profiles)
    report.timings["total"] = _ms_since(started)
    return report


def _refuse_doctype(tree: etree._ElementTree) -> etree._ElementTree:
    """Defence in depth: parse_untrusted spots a DTD by a byte search, which a UTF-16 document
    evades; lxml then keeps the DTD unexpanded, but nothing downstream should ever see one."""
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None or tree.docinfo.externalDTD is not None:
        raise ValidationError("XML document declares a DTD or entities, which are refused")
    return tree


def _clinical_document(tree: etree._ElementTree) -> tuple[etree._ElementTree, bool]:
    """The ClinicalDocument to validate, and whether it came out of a self-presentable wrapper.

    CI-SIS "auto-présentable" documents are an XSLT stylesheet carrying the ClinicalDocument as
    data (kit: BIO-CR-BIO_2021.01_Auto-Presentable.xml); the CDA inside is what gets validated.
    """
    root = tree.getroot()
    if root.tag == f"{{{HL7}}}ClinicalDocument":
        return tree, False
    embedded = root.xpath("//hl7:ClinicalDocument", namespaces=_NS)
    if len(embedded) != 1:
        raise ValidationError(
            f"CDA-NOT-CLINICALDOCUMENT: root element is {root.tag} and it carries "
            f"{len(embedded)} hl7:ClinicalDocument elements (expected a CDA document)"
        )
    return etree.ElementTree(copy.deepcopy(embedded[0])), True


def _new_report(root: etree._Element) -> ValidationReport:
    ids = root.xpath("hl7:id", namespaces=_NS)
    document_id = None
    if ids:
        document_id = ":".join(filter(None, (ids[0].get("root"), ids[0].get("extension"))))
    return ValidationReport(
        document_id=document_id,
        template_ids=[t.get("root") for t in root.xpath("hl7:templateId[@root]", namespaces=_NS)],
        body=_body_kind(root),
    )


def _body_kind(root: etree._Element) -> str:
    if root.xpath("hl7:component/hl7:structuredBody", namespaces=_NS):
        return "structured"
    if root.xpath("hl7:component/hl7:nonXMLBody", namespaces=_NS):
        return "nonxml"
    return "none"


def _run_xsd(tree: etree._ElementTree, kit: ValidationKit, report: ValidationReport) -> None:
    started = time.perf_counter()
    schema = kit.xsd()
    schema.validate(tree)
    issues = [
        Issue(
            source="xsd",
            rule_id=entry.type_name,
            location=entry.path or f"line {entry.line}",
            message=entry.message,
            severity=Severity.ERROR,
            kind="xsd",
        )
        for entry in schema.error_log
    ]
    elapsed = _ms_since(started)
    report.issues += issues
    report.profiles.append(ProfileResult(source="xsd", errors=len(issues), elapsed_ms=elapsed))
    report.timings["xsd"] = elapsed


def _run_schematrons(
    root: etree._Element, kit: ValidationKit, report: ValidationReport, names: Sequence[str] | None
) -> None:
    selected = _select(kit, report, names)
    if not selected:
        return
    started = time.perf_counter()
    document = _saxon_document(root)
    report.timings["saxon_parse"] = _ms_since(started)
    for profile in selected:
        path = kit.profile_path(profile)
        if path is None:
            _skip_or_fail(profile, report)
            continue
        result, issues = run_profile(kit.schematron(profile), document, profile.schematron)
        report.profiles.append(result)
        report.issues += issues
        report.timings[profile.name] = result.elapsed_ms


def _saxon_document(root: etree._Element):
    from saxonche import PySaxonApiError

    try:
        return saxon_document(etree.tostring(root, encoding="unicode"))
    except PySaxonApiError as exc:  # should not happen after lxml accepted it; never a traceback
        raise ValidationError(f"CDA-SAXON-PARSE: the XSLT engine cannot read the document: {exc}") from exc


def _select(kit: ValidationKit, report: ValidationReport, names: Sequence[str] | None) -> list:
    if names is None:
        return [p for p in kit.profiles if p.applies_to(set(report.template_ids), report.body)]
    by_name = {p.name: p for p in kit.profiles}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigurationError([f"unknown CDA validation profile(s): {', '.join(unknown)}"])
    return [by_name[n] for n in names]


def _skip_or_fail(profile, report: ValidationReport) -> None:
    if not profile.optional:
        raise ConfigurationError([f"profile {profile.name}: {profile.schematron} not found in the kit"])
    report.skipped.append(f"{profile.name}: {profile.schematron} not installed")


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
