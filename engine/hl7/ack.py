"""Technical ACKs in HL7 original mode, as the ANS volets use them (digest §c).

MSH mirrors the acknowledged message (3<->5, 4<->6, same MSH-11, MSH-12, MSH-17, MSH-18, no
MSH-21); MSA-2 echoes MSH-10; ERR explains AE/AR with an HL7 table 0357 code.

Echoed values come from the sender: each is cut to a bounded length and stripped of control
characters (a 0x1c would end the ACK frame, a CR would start a segment), and the ACK is written
with the sender's own delimiters (printable ASCII: the scanner refuses others, and those frames
are answered with the standard ones) in an ASCII-compatible charset, so the sender can parse it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from engine.hl7 import encode
from engine.hl7.charset import ascii_transparent
from engine.hl7.scan import Header

try:  # built by `make install` (setup.py); without a C compiler every ACK is written in Python
    from engine._hotpath import ack as _native_ack
except ImportError:  # pragma: no cover - tests/hl7/test_ack_native.py requires it
    _native_ack = None

#: longest echoed value: HL7 2.6 gives 227 for HD (MSH-3..6) and 199 for MSH-10; more is hostile
ECHO_LIMIT = 227
#: longest ERR-8 text (reasons may quote sender values)
TEXT_LIMIT = 300
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")

# HL7 table 0357 (the subset the ANS volets list, plus 205/206 from the base standard).
ERROR_TEXT = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    198: "Non-conformant cardinality",
    199: "Other HL7 error",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment: where (ERR-2), what (ERR-3, table 0357), why for humans (ERR-8)."""

    code: int
    location: str = ""
    message: str = ""
    app_code: str = ""  # ERR-5 "code^label^system", only with code 207
    severity: str = "E"

    def segment(self, enc: str, fs: str = "|") -> str:
        comp = enc[0]
        err3 = f"{self.code}{comp}{ERROR_TEXT.get(self.code, 'Error')}{comp}HL70357"
        loc = self.location.replace("^", comp)
        fields = [
            "ERR",
            "",
            loc,
            err3,
            self.severity,
            self.app_code,
            "",
            "",
            escape(self.message[:TEXT_LIMIT], enc, fs),
        ]
        return fs.join(fields).rstrip(fs)


def delimiters(enc: str, fs: str = "|") -> encode.Delimiters:
    """The sender's delimiters as engine.hl7.encode takes them (missing ones: the standard)."""
    std = encode.STANDARD
    pick = lambda i, default: enc[i] if len(enc) > i else default  # noqa: E731
    return encode.Delimiters(
        fs, pick(0, std.component), pick(1, std.repetition), pick(2, std.escape), pick(3, std.subcomponent)
    )


def escape(text: str, enc: str, fs: str = "|") -> str:
    """HL7-escape free text so it can sit in a field (engine.hl7.encode, the sender's delimiters)."""
    return encode.escape(text, delimiters(enc, fs))


def _echo(value: str) -> str:
    """A sender's value sent back: bounded, without control characters (kept as HL7 text)."""
    value = value[:ECHO_LIMIT]
    # isprintable() (C, no regex) is true for the usual value and implies no control character.
    return value if value.isprintable() else _CONTROLS.sub("", value)


@functools.lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> str:
    try:
        return codec if "|MSA".encode(codec) == b"|MSA" else "utf-8"
    except LookupError:
        return "utf-8"


def build_ack(
    header: Header | None,
    code: str,
    ack_control_id: str,
    timestamp: str,
    errors: tuple[AckError, ...] = (),
    local_app: str = "PFI",
    codec: str = "utf-8",
) -> bytes:
    """Build the ACK for `header` (None when the input had no usable MSH)."""
    if header is not None and not errors and _native_ack is not None:
        ack = _native_ack_of(header, code, ack_control_id, timestamp, local_app)
        if ack is not None:
            return ack
    return build_ack_python(header, code, ack_control_id, timestamp, errors, local_app, codec)


def _native_ack_of(h: Header, code: str, ack_control_id: str, timestamp: str, local_app: str) -> bytes | None:
    """engine/_hotpath.c's ACK: standard delimiters, a charset writing ASCII as ASCII, every value
    printable ASCII within ECHO_LIMIT (None otherwise, from here or from it)."""
    if h.field_sep != "|" or h.encoding_chars != "^~\\&" or not ascii_transparent(_ascii_compatible(h.codec)):
        return None
    return _native_ack(
        code,
        local_app,
        timestamp,
        ack_control_id,
        h.receiving_app,
        h.receiving_facility,
        h.sending_app,
        h.sending_facility,
        h.message_code,
        h.trigger,
        h.processing_id,
        h.version_field,
        h.country,
        h.charset,
        h.control_id,
    )


def build_ack_python(
    header: Header | None, code: str, ack_control_id: str, timestamp: str, errors: tuple, local_app: str, codec: str
) -> bytes:
    """`build_ack` in Python alone: ACKs with ERR, unusual headers (and the reference)."""
    h = header or Header(version_field="2.5", processing_id="P")
    fs, enc = h.field_sep, h.encoding_chars
    trigger = h.trigger if h.trigger and h.message_code != "ACK" else ""
    msg_type = f"ACK{enc[0]}{trigger}{enc[0]}ACK" if trigger else "ACK"
    msh = [
        "MSH",
        enc,
        _echo(h.receiving_app) or local_app,
        _echo(h.receiving_facility),
        _echo(h.sending_app),
        _echo(h.sending_facility),
        timestamp,
        "",
        _echo(msg_type),
        ack_control_id,
        _echo(h.processing_id) or "P",
        _echo(h.version_field) or "2.5",
        "",
        "",
        "",
        "",
        _echo(h.country),
        _echo(h.charset),
    ]
    segments = [fs.join(msh).rstrip(fs), fs.join(["MSA", code, _echo(h.control_id)])]
    segments += [e.segment(enc, fs) for e in errors]
    charset = _ascii_compatible(h.codec if header else codec)
    return ("\r".join(segments) + "\r").encode(charset, errors="replace")
