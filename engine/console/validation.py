"""The validation report of a stored message, on an operator's request: its document request
(CI-SIS) and each embedded CDA against the ANS kit, with the rule ids (what `pfi validate` prints)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    problems: list[tuple[str, str, str, str]] = field(default_factory=list)  # (severity, source, rule, message)
    verdicts: list[str] = field(default_factory=list)
    error: str = ""


def validation_report(raw: bytes, config) -> Report:
    from engine.docrequest import RequestError, check_consistency, parse_document_request
    from engine.errors import ParseError
    from engine.hl7.message import Message

    report = Report()
    try:
        request = parse_document_request(Message.parse(raw))
    except ParseError as exc:
        report.error = f"not a parsable HL7 v2 message: {exc}"
        return report
    except RequestError as exc:
        e = exc.error
        report.problems.append(("error", "request", f"ERR-3 {e.code}", f"{e.location or '-'}: {e.message}"))
        report.verdicts.append(f"request refused (MSA {e.ack_code})")
        return report
    for p in list(request.warnings) + check_consistency(request):
        severity = "error" if p.severity in ("E", "F") else "warning"
        report.problems.append((severity, "request", f"ERR-3 {p.code}", f"{p.location or '-'}: {p.message}"))
    _documents(report, request, config)
    return report


def _documents(report: Report, request, config) -> None:
    from engine.cda import validate_cda
    from engine.cda.checker import CdaChecker
    from engine.errors import ConfigurationError, ValidationError

    try:
        cache = Path(config.root) / config.engine.data_dir / "cache" / "schematron"
        kit = CdaChecker.from_settings(config.engine.cda_kit, config.root, cache).kit
    except ConfigurationError as exc:
        report.error = f"CDA kit unavailable: {exc}"
        return
    for document in request.documents:
        try:
            result = validate_cda(document.content, kit)
        except ValidationError as exc:
            report.problems.append(("error", document.location, "not-a-cda", str(exc)))
            continue
        for issue in result.issues:
            report.problems.append(
                (
                    issue.severity.value,
                    f"{document.location} {issue.source}",
                    issue.rule_id,
                    f"{issue.location}: {issue.message.strip()[:400]}",
                )
            )
        report.verdicts.append(f"{document.location}: {'VALID' if result.valid else 'INVALID'}")
