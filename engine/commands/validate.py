"""`pfi validate FILE... [--kit DIR]`: validate CDA R2 documents and print a readable report.

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
    parser = subparsers.add_parser("validate", help="validate CDA R2 documents (XSD + Schematron)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE", help="CDA XML file (HL7 messages: not yet)")
    parser.add_argument("--kit", type=Path, default=None,
                        help=f"ANS TestContenuCDA 3.0 directory (default: ${KIT_ENV} or {DEFAULT_KIT})")
    parser.add_argument("--value-sets", type=Path, action="append", default=None, metavar="DIR",
                        help=f"extra value-set directory, repeatable (default: ${VALUE_SETS_ENV} or "
                             "<kit>/../derived/structMin-missing-voc when present)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/schematron"),
                        help="where generated XSLT is cached (default: var/cache/schematron)")
    parser.add_argument("--profile", action="append", default=None, metavar="NAME",
                        help="run these profiles instead of the templateId selection (repeatable)")
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
    from engine.cda import validate_cda
    from engine.errors import ConfigurationError, ValidationError

    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}")
        return EXIT_USAGE
    if is_hl7_message(data):
        print(f"{path}: HL7 v2 message: validating the CDA it carries is not yet supported by `pfi validate` "
              "(extract the CDA, or wait for the document-request wiring)")
        return EXIT_USAGE
    try:
        report = validate_cda(data, kit, args.profile)
    except ValidationError as exc:
        print(f"{path}: REJECTED: {exc}")
        return EXIT_INVALID
    except ConfigurationError as exc:
        print(f"{path}: configuration error: {exc}")
        return EXIT_USAGE
    print_report(path, report, show_warnings=args.warnings)
    return EXIT_VALID if report.valid else EXIT_INVALID


def is_hl7_message(data: bytes) -> bool:
    """An HL7 v2 message or batch starts with MSH/FHS/BHS (after a BOM, MLLP start byte or blanks)."""
    return data.lstrip(b"\xef\xbb\xbf\x0b \t\r\n")[:3] in (b"MSH", b"FHS", b"BHS")


def print_report(path: Path, report, show_warnings: bool = False) -> None:
    """One line per issue (`source: id at location: message`), then the verdict line."""
    from engine.cda import Severity

    for issue in report.issues:
        if issue.severity is Severity.ERROR or show_warnings:
            prefix = "" if issue.severity is Severity.ERROR else "warning: "
            print(prefix + issue.line())
    for skipped in report.skipped:
        print(f"skipped: {skipped}")
    print(verdict_line(path, report))


def verdict_line(path: Path, report) -> str:
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
