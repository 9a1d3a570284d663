"""The native ACK writer (engine/_hotpath.c `ack`) writes what build_ack writes in Python.

build_ack takes the native ACK for an ACK without ERR whose values are printable ASCII, and the
Python one for everything else: on headers read from the ANS corpus and the samples, with their
values replaced at random by awkward ones (control characters, non-ASCII, separators, values at
and past the echo limit), both give the same bytes.
"""

from __future__ import annotations

import dataclasses
import random

from engine.hl7 import ack as ack_module
from engine.hl7.ack import ECHO_LIMIT, build_ack, build_ack_python
from engine.hl7.scan import HeaderError, scan
from tests.hl7.test_scan_native import base_messages

AWKWARD = ["", "X", "ACK", "A01", "2.5", "P^T", "a|b", "x^y", "é", "CHU-\x1c", "A\rB", "\x7f", " ", "~"]
AWKWARD += ["L" * ECHO_LIMIT, "L" * (ECHO_LIMIT + 1), "T" * (ECHO_LIMIT - 8), "T" * (ECHO_LIMIT - 7)]
ECHOED = [
    "receiving_app",
    "receiving_facility",
    "sending_app",
    "sending_facility",
    "message_code",
    "trigger",
    "processing_id",
    "version_field",
    "country",
    "charset",
    "control_id",
]


def corpus_headers() -> list:
    headers = []
    for raw in base_messages():
        try:
            headers.append(scan(raw))
        except HeaderError:
            pass
    return headers


def test_the_native_ack_writer_is_built():
    assert ack_module._native_ack is not None, "engine/_hotpath.c is not built: `make install` builds it"


def test_acks_of_corpus_headers_are_the_same():
    headers = corpus_headers()
    assert len(headers) >= 150
    native = 0
    for h in headers:
        for code in ("AA", "AE", "CA"):
            expected = build_ack_python(h, code, "17330000000001", "20261205101010", (), "PFI", "utf-8")
            assert build_ack(h, code, "17330000000001", "20261205101010") == expected
            native += ack_module._native_ack_of(h, code, "17330000000001", "20261205101010", "PFI") is not None
    assert native >= len(headers)  # the native writer answered for the usual headers


def test_acks_of_awkward_values_are_the_same():
    rng = random.Random(2026)
    headers = corpus_headers()
    native = 0
    for _ in range(20_000):
        h = dataclasses.replace(rng.choice(headers))
        for name in rng.sample(ECHOED, rng.randrange(4)):
            setattr(h, name, rng.choice(AWKWARD))
        if rng.random() < 0.05:
            h.codec = rng.choice(["utf-16", "cp1252", "ascii", "iso8859-15", "cp037"])
        if rng.random() < 0.03:
            h.field_sep, h.encoding_chars = rng.choice([("#", "^~\\&"), ("|", "$~\\&"), ("|", "^~\\&#")])
        code, local_app, control, stamp = rng.choice(["AA", "AE", "AR"]), "PFI", "1733", "20261205"
        if rng.random() < 0.2:  # the engine's own values, awkward too
            local_app, control, stamp = rng.choice(["", "PFIé", "P\x01"]), rng.choice(["", "C\r1"]), "2026\x1c"
        expected = build_ack_python(h, code, control, stamp, (), local_app, "utf-8")
        assert build_ack(h, code, control, stamp, (), local_app) == expected, h
        native += ack_module._native_ack_of(h, code, control, stamp, local_app) is not None
    assert native > 5_000
