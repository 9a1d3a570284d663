"""Cost of ack_mode `document-request`: time of the intake-time document check per message.

    .venv/bin/python bench/document_check.py [--rounds 50]

For each ANS v2.1 ORU/MDM example that carries a real CDA: size, the receipt-mode scan (MSH/PID
only) and the full check (Message.parse + parse_document_request + check_consistency), warm,
p50/p99 in ms, one thread. This is what each message costs in the worker thread before its ACK.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.docrequest.check import ack_code_for, check_document_message  # noqa: E402
from engine.hl7.scan import scan  # noqa: E402

ANS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "ans" / "hl7V2-exemples"
V21 = ANS / "Vague 2" / "Trans_Doc-CDA-HL7V2" / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"
TWO_FORMAT = ANS / "Volets" / "TRANS_DOC_CDA_HL7V2" / "V2.1" / "ORU" / "Remplacement ORU"
FILES = [
    V21 / "ORU" / "Transmission initiale ORU" / "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7",
    V21 / "ORU" / "Remplacement ORU" / "message_ORU_CR_Bio_RPLC_N3_SEGUR.hl7",
    V21 / "ORU" / "Suppression ORU" / "message_ORU_CR_Bio_DEL_N3_SEGUR.hl7",
    V21 / "MDM" / "Transmission initiale MDM" / "message_MDM_CR_Radio_INIT_N1_Base64.er7",
    V21 / "MDM" / "Remplacement MDM" / "message_MDM_CR_Radio_RPLC_N1.er7",
    TWO_FORMAT / "message_ORU_CR_Bio_RPLC_N1_Base64_N3_Base64.er7",
]


def timings(fn, raw: bytes, rounds: int) -> tuple[float, float]:
    """p50 and p99 in ms of `fn(raw)` after one warm-up call."""
    fn(raw)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn(raw)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    print(f"{'message':58} {'KB':>6} {'scan p50':>9} {'check p50':>10} {'p99':>7}  ACK")
    for path in FILES:
        raw = path.read_bytes()
        scan_p50, _ = timings(scan, raw, args.rounds)
        p50, p99 = timings(check_document_message, raw, args.rounds)
        print(
            f"{path.name:58} {len(raw) / 1024:6.0f} {scan_p50:9.3f} {p50:10.2f} {p99:7.2f}  "
            f"{ack_code_for(check_document_message(raw))}"
        )
    kit_latency(max(10, args.rounds // 5))


def kit_latency(rounds: int) -> None:
    """The shipped document channels also validate the CDA before the ACK (check_cda): what that
    adds, on the fictional kit-valid CR (N1), per level, warm (Schematrons compiled once)."""
    from engine.cda.checker import CdaChecker

    root = Path(__file__).resolve().parent.parent
    raw = (root / "samples" / "mdm_t02_fictional.hl7").read_bytes()
    print(f"\n{'check before the ACK (samples/mdm_t02_fictional.hl7)':58} {'p50 ms':>9} {'p99 ms':>10}  ACK")
    for level, stages in (
        ("request only (receipt of errors)", None),
        ("check_cda: structure (platforms)", ()),
        ("check_cda: full (RIS)", ("conformance", "dmp")),
    ):
        checker = (
            None
            if stages is None
            else CdaChecker.from_settings("", root, root / "var" / "cache" / "schematron", stages)
        )
        p50, p99 = timings(lambda r: check_document_message(r, None, checker), raw, rounds)
        print(f"{level:58} {p50:9.2f} {p99:10.2f}  {ack_code_for(check_document_message(raw, None, checker))}")


if __name__ == "__main__":
    main()
