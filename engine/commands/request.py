"""`pfi request FILE`: show the document request an HL7 file carries, and its problems."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the `request` sub-command."""
    parser = subparsers.add_parser("request", help="parse an ORU/MDM document request and check it against its CDA")
    parser.add_argument("file", help="HL7 v2 message file (ER7, CR or LF separators)")
    parser.add_argument("--json", action="store_true", help="print the typed request as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the request is acceptable, 1 when it would be NACKed, 2 on unreadable input."""
    from engine.docrequest import RequestError, check_consistency, parse_document_request
    from engine.errors import ParseError
    from engine.hl7 import Message

    try:
        with open(args.file, "rb") as handle:
            msg = Message.parse(handle.read())
    except (OSError, ParseError) as exc:
        print(f"cannot read {args.file}: {exc}")
        return 2
    try:
        request = parse_document_request(msg)
    except RequestError as exc:
        print(f"NACK AE  {exc.error.err_segment()}")
        return 1
    problems = check_consistency(request)
    print(
        request.model_dump_json(indent=2, exclude={"documents": {"__all__": {"content"}}})
        if args.json
        else _summary(request)
    )
    for problem in list(request.warnings) + problems:
        print(f"{problem.severity}  {problem}")
    return 1 if any(p.severity == "E" for p in problems) else 0


def _summary(request) -> str:
    flags = request.flags
    yn = lambda v: "-" if v is None else ("Y" if v else "N")  # noqa: E731
    lines = [
        f"{request.header.message_code}^{request.header.trigger} {request.header.profile} "
        f"control id {request.header.control_id}: {request.action.value}",
        f"identity: INS {'qualified' if request.patient.ins_qualified else 'not qualified'}, "
        f"status {request.patient.identity_status or '-'}",
        f"documents: {', '.join(f'{d.type.code} ({len(d.content)} bytes)' for d in request.documents)}",
        f"routes DMP/MSS-PS/MSS-patient: {yn(flags.destdmp)}/{yn(flags.destmssanteps)}/"
        f"{yn(flags.destmssantepat)}; acks reception/read: {yn(flags.ack_reception)}/"
        f"{yn(flags.ack_lecture_mss)}",
        f"recipients: {', '.join(request.mssante_addresses) or '-'}",
    ]
    return "\n".join(lines)
