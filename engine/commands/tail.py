"""`pfi tail`: the journal's events, one readable line each; patient data masked by default."""

from __future__ import annotations

import time

from engine.commands.safe_output import printable


def register(sub) -> None:
    from engine.commands.common import add_journal_options

    p = sub.add_parser("tail", help="show the message log")
    add_journal_options(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--channel")
    p.add_argument("--type", dest="msg_type", help="e.g. ORU^R01")
    p.add_argument("-n", "--lines", type=int, default=50, help="events shown before following")
    p.add_argument("--show-phi", action="store_true", help="show patient identifiers and names")
    p.set_defaults(handler=tail)


def tail(args) -> int:
    from engine.commands.common import data_dir_for, load_with_overrides
    from engine.journal.reader import open_reader

    config = load_with_overrides(args)
    if config is None:
        return 2
    reader = open_reader(config.engine.journal, data_dir_for(args, config))
    if not reader.exists():
        print("journal is empty (no message received yet)")
        return 0
    end = reader.last_event_id()
    last = max(end - args.lines, 0)
    try:
        while True:
            events = reader.events_after(last, channel=args.channel, msg_type=args.msg_type)
            for event in events:
                print(format_event(event, reader if args.show_phi else None), flush=True)
                last = max(last, event.id)
            if not args.follow and (not events or last >= end):
                return 0
            if not events:
                time.sleep(0.5)
            # else: a read returns at most a page (500 events) and -n may ask for more
    except KeyboardInterrupt:
        return 0


def format_event(event, phi_reader=None) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.at)) + f".{int(event.at * 1000) % 1000:03d}Z"
    patient = "patient=***" if event.patient_ids else ""
    if phi_reader is not None and event.patient_ids:
        patient = f"patient={phi_reader.patient_label(event.message_uid)}"
    parts = [
        stamp,
        event.message_uid,
        event.channel or "-",
        event.msg_type or "-",
        f"ctrl={event.control_id or '-'}",
        event.state,
        patient,
        f"@{event.node}" if event.node else "",
        event.detail or "",
    ]
    return printable("  ".join(p for p in parts if p))
