"""`pfi sim dmp`: run the DMP simulator locally (HTTPS, client certificates of the test PKI)."""

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
    dmp.add_argument("--data", type=Path, default=Path("var/dmp-sim"),
                     help="where documents are stored (SQLite)")
    dmp.add_argument("--pki", type=Path, default=Path("var/pki"),
                     help="test PKI directory (generated when absent)")
    dmp.add_argument("--valuesets", type=Path, default=None,
                     help="directory of CI-SIS JDV files for full value-set checks")
    dmp.add_argument("--patients", default=None,
                     help="comma-separated INS known to the DMP (others: XDSUnknownPatientId)")
    dmp.add_argument("--closed", default=None,
                     help="comma-separated INS whose DMP is closed (answer: DMPClosed)")
    dmp.add_argument("--no-dmp", default=None,
                     help="comma-separated INS who have no DMP (answer: XDSUnknownPatientId)")
    dmp.add_argument("--require-signature", action="store_true",
                     help="refuse submissions without the XAdES submission-set signature")
    dmp.set_defaults(handler=run_dmp)


def run_dmp(args: argparse.Namespace) -> int:
    """Start the simulator and serve until interrupted."""
    from twisted.internet import reactor

    from engine.sim.dmp import DmpSimulator
    from engine.pki import ensure_test_pki

    pki = ensure_test_pki(args.pki)
    patients = set(args.patients.split(",")) if args.patients else None
    sim = DmpSimulator(reactor, port=args.port, pki_dir=pki.directory, data_dir=args.data,
                       valueset_dir=args.valuesets, known_patients=patients,
                       interface=args.host,
                       require_submission_signature=args.require_signature,
                       closed_patients=set(args.closed.split(",")) if args.closed else None,
                       no_dmp_patients=set(args.no_dmp.split(",")) if args.no_dmp else None)
    sim.start()
    print(f"DMP simulator on {sim.base_url} (/repository: ITI-41, /registry: ITI-18, ITI-57)")
    print(f"client certificate: {pki.client.cert} key: {pki.client.key} CA: {pki.ca.cert}")
    reactor.run()
    return 0
