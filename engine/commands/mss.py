"""`pfi mss sim`: a local MSSanté operator (SMTP + IMAP over TLS) for demos and integrators."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add `pfi mss sim`."""
    parser = subparsers.add_parser("mss", help="MSSanté connector tools")
    sub = parser.add_subparsers(dest="mss_command", required=True, metavar="ACTION")
    sim = sub.add_parser("sim", help="run a local MSSanté operator (SMTP/IMAP over TLS, in memory)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--smtp-port", type=int, default=2587, help="SMTP submission with STARTTLS")
    sim.add_argument("--smtps-port", type=int, default=2465, help="SMTP submission, implicit TLS")
    sim.add_argument("--imap-port", type=int, default=2993, help="IMAP4rev1, implicit TLS")
    sim.add_argument("--pki-dir", default="var/mss-sim-pki", help="test CA and certificates (created)")
    sim.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="ADDRESS:PASSWORD",
        help="a mailbox login (repeatable); default pfi@localhost.mssante.fr:pfi",
    )
    sim.add_argument(
        "--reject",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="recipient refused with 550 (to exercise ZAM^Z02 errors)",
    )
    sim.add_argument("--require-client-cert", action="store_true")
    sim.set_defaults(handler=run_sim)


def _users(values: list[str]) -> dict[str, str]:
    users = {}
    for value in values or ["pfi@localhost.mssante.fr:pfi"]:
        address, sep, password = value.partition(":")
        if not sep:
            raise SystemExit(f"--user expects ADDRESS:PASSWORD, got {value!r}")
        users[address] = password
    return users


def run_sim(args: argparse.Namespace) -> int:
    """Start the servers and run until interrupted."""
    from pathlib import Path

    from twisted.internet import reactor

    from engine.sim.mss import MailOperator, imap_factory, smtp_factory
    from engine.mss.testpki import ensure_test_pki
    from engine.mss.tls import server_tls

    pki = ensure_test_pki(Path(args.pki_dir))
    operator = MailOperator(users=_users(args.user), rejected={a.lower() for a in args.reject})
    tls = server_tls(pki.server_pem, pki.ca_cert, require_client=args.require_client_cert)
    reactor.listenTCP(args.smtp_port, smtp_factory(operator, tls, implicit=False), interface=args.host)
    reactor.listenTCP(args.smtps_port, smtp_factory(operator, tls, implicit=True), interface=args.host)
    reactor.listenTCP(args.imap_port, imap_factory(operator, tls), interface=args.host)
    print(
        f"MSSanté simulator on {args.host}: SMTP STARTTLS {args.smtp_port}, SMTP TLS "
        f"{args.smtps_port}, IMAP TLS {args.imap_port}"
    )
    print(f"CA: {pki.ca_cert}  client certificate: {pki.client_pem}  (server name: localhost)")
    print("Mailboxes: " + ", ".join(operator.users) + " (any recipient gets a mailbox on delivery)")
    reactor.run()
    return 0
