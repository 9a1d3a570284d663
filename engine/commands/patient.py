"""`pfi patient ID`: what the patient registry knows about a patient (by IPP or INS).

Identifiers are masked unless --show-phi: the output may end up in a ticket or a terminal log.
"""

from __future__ import annotations

import time
from pathlib import Path

MASK = "***"
_PHI_CHANGES = ("ins", "merged", "withdrawn_ins")


def register(sub) -> None:
    """Add the `patient` sub-command."""
    p = sub.add_parser("patient", help="show a patient's identity, INS status and DMP consent")
    p.add_argument("identifier", metavar="ID", help="IPP or INS of the patient")
    p.add_argument("--config", type=Path, default=Path("."))
    p.add_argument("--data", type=Path, default=None, help="data directory (default: from config)")
    p.add_argument("--journal", default=None, help="a shared postgresql:// journal holding the registry")
    p.add_argument("--show-phi", action="store_true", help="show identifiers in clear")
    p.set_defaults(handler=show)


def show(args) -> int:
    """Exit 0 when found, 1 when the patient is unknown, 2 when the registry cannot be read."""
    from engine.errors import JournalError
    from engine.patients.registry import FILE_NAME, PatientRegistry

    data_dir, url = _location(args)
    if data_dir is None:
        return 2
    if url is None and not (data_dir / FILE_NAME).is_file():
        print(f"no patient registry in {data_dir} (no ADT message received yet)")
        return 1
    try:
        registry = PatientRegistry(data_dir, url=url)
    except JournalError as exc:
        print(exc)
        return 2
    try:
        record = registry.find(args.identifier)
        if record is None:
            print("patient unknown to the registry")
            return 1
        history = registry.history(args.identifier)
    finally:
        registry.close()
    print(format_record(record, history, args.show_phi))
    return 0


def _location(args) -> tuple[Path | None, str | None]:
    """(data directory, shared journal URL or None) of the registry."""
    from engine.journal.postgres import is_postgres_url

    if args.journal and is_postgres_url(args.journal):
        return args.data or Path("."), args.journal
    if args.data is not None and not args.journal:
        return args.data, None
    from engine.commands.common import data_dir_for, load_with_overrides

    config = load_with_overrides(args)
    if config is None:
        return None, None
    url = config.engine.journal if is_postgres_url(config.engine.journal) else None
    return data_dir_for(args, config), url


def format_record(record, history, show_phi: bool) -> str:
    """Readable lines: identifiers, INS status, consent with dates, merges, history."""
    ident = (lambda v: v) if show_phi else (lambda v: MASK)  # noqa: E731
    ipp = record.ipp
    lines = [
        f"patient #{record.id}",
        f"  IPP          {ident(ipp.value)} (authority {ipp.authority or '-'} {ipp.oid or ''})".rstrip(),
    ]
    if record.ins:
        quality = "qualified" if record.ins_qualified else "NOT qualified"
        lines.append(f"  INS          {ident(record.ins.value)} ({record.ins.kind}, OID {record.ins.oid}, {quality})")
    else:
        lines.append("  INS          none")
    if record.withdrawn_ins:
        lines.append(f"  INS withdrawn {ident(record.withdrawn_ins)} (A47: a report still carrying it waits)")
    attributes = f" attributes {', '.join(record.identity_attributes)}" if record.identity_attributes else ""
    lines.append(f"  PID-32       {record.identity_status or '(empty)'}{attributes}")
    lines.append(f"  DMP status   {record.dmp_status or '-'} {_date(record.dmp_status_date)}".rstrip())
    lines.append(f"  feeding      {_consent(record.feeding, FEEDING)}")
    lines.append(f"  consultation {_consent(record.consultation, CONSULTATION)}")
    for merge in record.merges:
        lines.append(
            f"  merged       IPP {ident(merge.old_ipp.value)} at {_stamp(merge.at)} (message {merge.control_id or '-'})"
        )
    lines.append("  history")
    lines.extend(
        f"    {_stamp(h.at)}  {h.event:<4} ctrl={h.control_id or '-'}  {_changes(h.changes, show_phi)}" for h in history
    )
    return "\n".join(lines)


FEEDING = {
    "INO": "informed, not opposed",
    "IO": "informed and OPPOSED (no DMP feeding)",
    "NA": "not collected (feeding allowed)",
}
CONSULTATION = {"IC": "informed, consents", "INC": "informed, refuses", "NA": "not collected"}


def _consent(value, labels: dict[str, str]) -> str:
    if value is None:
        return "unknown (feeding allowed by default)" if labels is FEEDING else "unknown"
    source = " (date of the message: ZFA date empty)" if value.date_from_message else ""
    return f"{value.code} = {labels.get(value.code, value.code)}, collected {_date(value.date)}{source}"


def _changes(changes: dict, show_phi: bool) -> str:
    shown = {k: (v if show_phi or k not in _PHI_CHANGES else MASK) for k, v in changes.items()}
    return "; ".join(f"{k}: {v}" for k, v in sorted(shown.items())) or "no change"


def _date(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "(no date)"


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
