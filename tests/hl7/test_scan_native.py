"""The native MSH/PID scanner (engine/_hotpath.c) reads what the Python scan reads.

`scan` takes the native reading for the common case and the Python one (`scan_python`) for every
other message: on the ANS corpus, the project's samples and random mutations of them, both give
the same Header or the same HeaderError, and the native reading must not crash on any input.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.hl7 import scan as scan_module
from engine.hl7.scan import HeaderError, scan, scan_python
from tests.core.test_corpus_intake import corpus_messages

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
#: bytes that matter to the scanner: delimiters, segment ends, MLLP blocks, non-ASCII, names
INTERESTING = b"|^~\\&\r\n\x0b\x1c\x00 \xc3\xa9\xcb\x9c\xffMSHPID0123A"


def reading(raw: bytes, fallback: str = "utf-8"):
    """What a scan gives, comparable: the Header, or the error's type, code, location and text."""
    try:
        return scan(raw, fallback)
    except HeaderError as exc:
        return ("HeaderError", exc.code, exc.location, str(exc))


def python_reading(raw: bytes, fallback: str = "utf-8"):
    try:
        return scan_python(raw, fallback)
    except HeaderError as exc:
        return ("HeaderError", exc.code, exc.location, str(exc))


def base_messages() -> list[bytes]:
    files = corpus_messages() + sorted(SAMPLES.glob("*.hl7"))
    raws = [path.read_bytes() for path in files]
    # The corpus is written with LF: its CR form is what MLLP peers send.
    return raws + [raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r") for raw in raws]


def mutate(raw: bytes, rng: random.Random) -> bytes:
    """One random edit, mostly within MSH and PID (the scanner's part of the message)."""
    near = min(len(raw), 600)
    position = rng.randrange(near + 1) if rng.random() < 0.8 else rng.randrange(len(raw) + 1)
    byte = bytes([rng.choice(INTERESTING) if rng.random() < 0.8 else rng.randrange(256)])
    edit = rng.randrange(4)
    if edit == 0:
        return raw[:position] + byte + raw[position + 1 :]
    if edit == 1:
        return raw[:position] + byte + raw[position:]
    if edit == 2:
        return raw[:position] + raw[position + 1 :]
    return raw[:position]


def test_the_native_scanner_is_built():
    assert scan_module._native_msh_pid is not None, (
        "engine/_hotpath.c is not built: `make install` builds it (it needs a C compiler)"
    )


def test_corpus_and_samples_read_the_same_natively():
    raws = base_messages()
    assert len(raws) >= 150
    native = [raw for raw in raws if scan_module._native_msh_pid(raw) is not None]
    assert len(native) >= len(raws) // 2  # the CR forms with standard delimiters, at least
    for raw in raws:
        for fallback in ("utf-8", "iso8859-15", "cp1252", "utf-16"):
            assert reading(raw, fallback) == python_reading(raw, fallback), raw[:120]


def test_random_mutations_read_the_same_natively():
    rng = random.Random(15)
    raws = [raw for raw in base_messages() if raw.startswith(b"MSH|^~\\&|") and b"\r" in raw]
    native_used = 0
    for raw in raws:
        for _ in range(60):
            mutated = mutate(raw, rng)
            for _ in range(rng.randrange(3)):
                mutated = mutate(mutated, rng)
            native_used += scan_module._native_msh_pid(mutated) is not None
            assert reading(mutated) == python_reading(mutated), mutated[:200]
    assert native_used > len(raws) * 20  # the native reading was exercised, not only refused


@pytest.mark.parametrize(
    "raw",
    [b"", b"M", b"MSH", b"MSH|^~\\&", b"MSH|^~\\&|", b"MSH|^~\\&\r", b"MSH|^~\\&X|a", b"\rPID|", b"MSH|^~\\&\rPID"],
)
def test_short_and_odd_inputs_read_the_same(raw):
    assert reading(raw) == python_reading(raw)
    assert reading(raw + b"\rPID|1||ID^^^X") == python_reading(raw + b"\rPID|1||ID^^^X")


def test_random_bytes_never_crash_the_native_scanner():
    rng = random.Random(7)
    for _ in range(20_000):
        head = b"MSH|^~\\&" if rng.random() < 0.7 else b""
        raw = head + bytes(rng.choice(INTERESTING) for _ in range(rng.randrange(80)))
        assert reading(raw) == python_reading(raw)


def test_long_msh_and_non_bytes_take_the_python_path():
    long_msh = b"MSH|^~\\&|" + b"A" * 5000 + b"|F|R|RF|20260101||ADT^A01|C1|P|2.5\rPID|1||X"
    assert scan_module._native_msh_pid(long_msh) is None
    assert reading(long_msh) == python_reading(long_msh)
    assert scan_module._native_msh_pid(bytearray(b"MSH|^~\\&|A")) is None
