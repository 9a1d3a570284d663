"""`pfi validate FILE... [--kit DIR]`: validate CDA R2 documents and print a readable report.

An HL7 v2 file (ORU/MDM document request) is parsed into its document request, checked against its
CDA(s) (check_consistency), and each embedded CDA is validated like a CDA file.

Exit codes: 0 every file valid, 1 at least one invalid or rejected file, 2 usage/configuration
problem (kit missing, unreadable file, unsupported input).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_KIT = ROOT.parent / "shared" / "corpus" / "cda" / "TestContenuCDA-3-0"
KIT_ENV = "PFI_CDA_KIT"
VALUE_SETS_ENV = "PFI_CDA_VALUE_SETS"
EXIT_VALID, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def register(subparsers) -> None:
    """Add the `validate` sub-command."""
    parser = subparsers.add_parser(
        "validate", help="validate CDA R2 documents (XSD + Schematron)", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="CDA XML file, or HL7 v2 ORU/MDM message carrying CDA(s)"
    )
    parser.add_argument(
        "--kit",
        type=Path,
        default=None,
        help=f"ANS TestContenuCDA 3.0 directory (default: ${KIT_ENV} or {DEFAULT_KIT})",
    )
    parser.add_argument(
        "--value-sets",
        type=Path,
        action="append",
        default=None,
        metavar="DIR",
        help=f"extra value-set directory, repeatable (default: ${VALUE_SETS_ENV} or "
        "<kit>/../derived/structMin-missing-voc when present)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("var/cache/schematron"),
        help="where generated XSLT is cached (default: var/cache/schematron)",
    )
    parser.add_argument(
        "--profile",
        action="append",
        default=None,
        metavar="NAME",
        help="run these profiles instead of the templateId selection (repeatable)",
    )
    parser.add_argument("--no-prechecks", action="store_true", help="skip the engine's DMP pre-send checks")
    parser.add_argument("--warnings", action="store_true", help="also print warning-level issues")
    parser.set_defaults(handler=run)


def default_value_set_dirs(kit: Path) -> tuple[Path, ...]:
    """Value-set overlay directories: from the environment, else the corpus's derived folder."""
    if os.environ.get(VALUE_SETS_ENV):
        return tuple(Path(p) for p in os.environ[VALUE_SETS_ENV].split(os.pathsep) if p)
    derived = kit.parent / "derived" / "structMin-missing-voc"
    return (derived,) if derived.is_dir() else ()


def build_kit(args):
    """The ValidationKit the arguments describe (raises ConfigurationError)."""
    from engine.cda import ValidationKit

    kit_dir = args.kit or Path(os.environ.get(KIT_ENV) or DEFAULT_KIT)
    stages = ("conformance",) if args.no_prechecks else ("conformance", "dmp")
    value_sets = tuple(args.value_sets) if args.value_sets else default_value_set_dirs(kit_dir)
    return ValidationKit(kit_dir, cache_dir=args.cache_dir, value_set_dirs=value_sets, stages=stages)


def run(args) -> int:
    """Validate every file; print issues then one verdict line per file."""
    from engine.errors import ConfigurationError

    try:
        kit = build_kit(args)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}")
        return EXIT_USAGE
    codes = [validate_file(Path(f), kit, args) for f in args.files]
    return max(codes) if EXIT_USAGE in codes else (EXIT_INVALID if EXIT_INVALID in codes else EXIT_VALID)


def validate_file(path: Path, kit, args) -> int:
    """Validate one file and print its report; returns its exit code."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}")
        return EXIT_USAGE
    if is_hl7_message(data):
        return validate_message(path, data, kit, args)
    return validate_document(str(path), data, kit, args)


def validate_document(label: str, data: bytes, kit, args) -> int:
    """Validate one CDA (a file or an embedded document) and print its report; its exit code."""
    from engine.cda import validate_cda
    from engine.errors import ConfigurationError, ValidationError

    try:
        report = validate_cda(data, kit, args.profile)
    except ValidationError as exc:
        print(f"{label}: REJECTED: {exc}")
        return EXIT_INVALID
    except ConfigurationError as exc:
        print(f"{label}: configuration error: {exc}")
        return EXIT_USAGE
    print_report(label, report, show_warnings=args.warnings)
    return EXIT_VALID if report.valid else EXIT_INVALID


def validate_message(path: Path, data: bytes, kit, args) -> int:
    """HL7 document request: summary, request/consistency errors, then each embedded CDA's report."""
    from engine.docrequest import RequestError, check_consistency, parse_document_request
    from engine.errors import ParseError
    from engine.hl7.message import Message

    try:
        request = parse_document_request(Message.parse(data))
    except ParseError as exc:
        print(f"{path}: REJECTED: not a parsable HL7 v2 message: {exc}")
        return EXIT_INVALID
    except RequestError as exc:
        print(error_line(exc.error))
        print(f"{path}: REJECTED (request refused: ERR-3 {exc.error.code}, MSA {exc.error.ack_code})")
        return EXIT_INVALID
    for line in request_summary(path, request):
        print(line)
    problems = list(request.warnings) + check_consistency(request)
    errors = [p for p in problems if p.severity in ("E", "F")]
    for problem in problems:
        if problem in errors or args.warnings:
            print(error_line(problem))
    codes = [validate_document(f"{path} {d.location}", d.content, kit, args) for d in request.documents]
    code = max(codes + [EXIT_INVALID if errors else EXIT_VALID])
    verdict = {EXIT_VALID: "VALID", EXIT_INVALID: "INVALID"}.get(code, "NOT CHECKED")
    print(
        f"{path}: {verdict} (request {len(errors)} error{'s' * (len(errors) != 1)}; "
        f"{len(codes)} document{'s' * (len(codes) != 1)}, {codes.count(EXIT_VALID)} valid)"
    )
    return code


def error_line(error) -> str:
    """`ERR-3 code at location: message` (warnings prefixed), ERR-5 application code in brackets."""
    prefix = "" if error.severity in ("E", "F") else "warning: "
    app = f" [{error.app_code}]" if error.app_code else ""
    return f"{prefix}request: ERR-3 {error.code}{app} at {error.location or '-'}: {error.message}"


def request_summary(path: Path, request) -> list[str]:
    """Action, the twelve MetaDMPMSS rows and the patient identity with identifiers masked."""
    from engine.docrequest.model import BODY_CODES, FLAG_CODES

    h, flags = request.header, request.flags
    yn = {None: "-", True: "Y", False: "N"}
    rows = [f"{code}={yn[flags.value(code)]}" for code in FLAG_CODES]
    rows += [f"{code}={'-' if flags.value(code) is None else 'present'}" for code in BODY_CODES]
    return [
        f"{path}: {h.message_code}^{h.trigger} {h.profile} control id {h.control_id}: "
        f"{request.action.value} ({request.volet.value})",
        f"  flags: {' '.join(rows)}",
        f"  patient: {patient_line(request.patient)}",
        f"  documents: {', '.join(f'{d.location} {d.type.code}' for d in request.documents)}",
    ]


def patient_line(patient) -> str:
    """Identifiers masked to their last 4 characters; never names or birth date (patient data)."""
    parts = []
    if patient.ins is not None:
        key = "key ok" if patient.ins.key_valid else "KEY WRONG"
        parts.append(
            f"INS {patient.ins.kind.value} {mask(patient.ins.value)} ({key}, "
            f"{'qualified' if patient.ins_qualified else 'not qualified'})"
        )
    if patient.ipp is not None:
        parts.append(f"IPP {mask(patient.ipp.value)}")
    parts.append(f"identity status {patient.identity_status or '-'}")
    return ", ".join(parts)


def mask(value: str) -> str:
    """`***********8989`: only the last 4 characters (none for short values) stay readable."""
    shown = value[-4:] if len(value) > 6 else ""
    return "*" * (len(value) - len(shown)) + shown


def is_hl7_message(data: bytes) -> bool:
    """An HL7 v2 message or batch starts with MSH/FHS/BHS (after a BOM, MLLP start byte or blanks)."""
    return data.lstrip(b"\xef\xbb\xbf\x0b \t\r\n")[:3] in (b"MSH", b"FHS", b"BHS")


def print_report(path, report, show_warnings: bool = False) -> None:
    """One line per issue (`source: id at location: message`), then the verdict line."""
    from engine.cda import Severity

    for issue in report.issues:
        if issue.severity is Severity.ERROR or show_warnings:
            prefix = "" if issue.severity is Severity.ERROR else "warning: "
            print(prefix + issue.line())
    for skipped in report.skipped:
        print(f"skipped: {skipped}")
    print(verdict_line(path, report))


def verdict_line(path, report) -> str:
    """`FILE: VALID|INVALID (xsd 0 errors; structMin 0 errors, 1 warning; …) in N ms`."""
    parts = []
    for profile in report.profiles:
        text = f"{profile.source} {profile.errors} error{'s' * (profile.errors != 1)}"
        if profile.warnings:
            text += f", {profile.warnings} warning{'s' * (profile.warnings != 1)}"
        parts.append(text)
    verdict = "VALID" if report.valid else "INVALID"
    wrapper = " [self-presentable]" if report.self_presentable else ""
    return f"{path}: {verdict}{wrapper} ({'; '.join(parts)}) in {report.timings.get('total', 0):.0f} ms"
