"""`pfi sim dmp`: the DMP simulator (HTTPS, client certificates of the test PKI); `pfi sim mllp`:
an MLLP system (RIS, platform, DRIMbox stand-in) that records and ACKs what it receives."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add `pfi sim <service>`."""
    parser = subparsers.add_parser("sim", help="run a simulator of a national service")
    services = parser.add_subparsers(dest="service", required=True, metavar="SERVICE")
    dmp = services.add_parser("dmp", help="DMP (XDS.b ITI-41/18/57 with VIHF, mutual TLS)")
    dmp.add_argument("--port", type=int, default=8443)
    dmp.add_argument("--host", default="127.0.0.1")
    dmp.add_argument("--data", type=Path, default=Path("var/dmp-sim"), help="where documents are stored (SQLite)")
    dmp.add_argument("--pki", type=Path, default=Path("var/pki"), help="test PKI directory (generated when absent)")
    dmp.add_argument(
        "--valuesets", type=Path, default=None, help="directory of CI-SIS JDV files for full value-set checks"
    )
    dmp.add_argument(
        "--patients", default=None, help="comma-separated INS known to the DMP (others: XDSUnknownPatientId)"
    )
    dmp.add_argument("--closed", default=None, help="comma-separated INS whose DMP is closed (answer: DMPClosed)")
    dmp.add_argument("--no-dmp", default=None, help="comma-separated INS who have no DMP (answer: XDSUnknownPatientId)")
    dmp.add_argument(
        "--require-signature", action="store_true", help="refuse submissions without the XAdES submission-set signature"
    )
    dmp.set_defaults(handler=run_dmp)
    mllp = services.add_parser("mllp", help="an MLLP destination (RIS, DRIMbox...) that answers every message")
    mllp.add_argument("--port", type=int, default=2575)
    mllp.add_argument("--host", default="127.0.0.1")
    mllp.add_argument("--name", default="PEER", help="its MSH-3 in the ACKs")
    mllp.add_argument(
        "--answer",
        default="AA",
        choices=("AA", "AE", "AR", "none"),
        help="MSA-1 of every ACK (none: never answers, like the reference DRIMbox)",
    )
    mllp.set_defaults(handler=run_mllp)


def run_dmp(args: argparse.Namespace) -> int:
    """Start the simulator and serve until interrupted."""
    from twisted.internet import reactor

    from engine.sim.dmp import DmpSimulator
    from engine.pki import ensure_test_pki

    pki = ensure_test_pki(args.pki)
    patients = set(args.patients.split(",")) if args.patients else None
    sim = DmpSimulator(
        reactor,
        port=args.port,
        pki_dir=pki.directory,
        data_dir=args.data,
        valueset_dir=args.valuesets,
        known_patients=patients,
        interface=args.host,
        require_submission_signature=args.require_signature,
        closed_patients=set(args.closed.split(",")) if args.closed else None,
        no_dmp_patients=set(args.no_dmp.split(",")) if args.no_dmp else None,
    )
    sim.start()
    print(f"DMP simulator on {sim.base_url} (/repository: ITI-41, /registry: ITI-18, ITI-57)")
    print(f"client certificate: {pki.client.cert} key: {pki.client.key} CA: {pki.ca.cert}")
    reactor.run()
    return 0


def run_mllp(args: argparse.Namespace) -> int:
    """Listen, print one line per message (type and MSH-10 only: no patient data), until interrupted."""
    from twisted.internet import reactor

    from engine.hl7.scan import scan
    from engine.sim.mllp import MllpPeer

    code = None if args.answer == "none" else args.answer

    def answer(raw: bytes, count: int):
        header = scan(raw)  # stdout escapes control characters (engine/cli.py)
        print(f"{count + 1} {header.message_type} {header.control_id} -> {code or 'no answer'}", flush=True)
        return code

    peer = MllpPeer(args.name, answer)
    port = peer.listen(reactor, args.port, args.host)
    print(f"MLLP peer {args.name} on {args.host}:{port}, answering {args.answer}", flush=True)
    reactor.run()
    return 0
