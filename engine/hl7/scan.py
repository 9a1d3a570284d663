"""Fast scan of MSH and PID for the intake path: no full parse, bytes in, indexed fields out.

Only what the journal indexes and what the ACK needs is read. Full parsing happens later, off the
intake path (engine.hl7.message).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import ParseError
from engine.hl7.charset import ascii_transparent, codec_for

try:  # built by `make install` (setup.py); without a C compiler every message is read in Python
    from engine._hotpath import msh_pid as _native_msh_pid
except ImportError:  # pragma: no cover - tests/hl7/test_scan_native.py requires it
    _native_msh_pid = None

# A real-world defect: MSH-2 written with U+02DC (small tilde) instead of "~" (UTF-8 bytes).
_SMALL_TILDE = b"\xcb\x9c"


@dataclass(slots=True)
class Header:
    """What intake needs to know about a message, read from MSH (and PID when present)."""

    field_sep: str = "|"
    encoding_chars: str = "^~\\&"
    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    timestamp: str = ""
    message_code: str = ""
    trigger: str = ""
    structure: str = ""
    control_id: str = ""
    processing_id: str = ""
    version_field: str = ""
    country: str = ""
    charset: str = ""
    codec: str = "utf-8"
    profile: str = ""
    patient_ids: str = ""
    #: the first PID, undecoded: intake needs PID-3 only, its name and status are read on demand
    pid_segment: bytes = b""
    warnings: list[str] = field(default_factory=list)

    @property
    def patient_name(self) -> str:
        return self._pid_field(5)

    @property
    def identity_status(self) -> str:
        return self._pid_field(32)

    def _pid_field(self, n: int) -> str:
        fields = self.pid_segment.split(self.field_sep.encode("latin-1"), n + 1)
        return fields[n].decode(self.codec, "replace") if len(fields) > n else ""

    @property
    def version(self) -> str:
        return self.version_field.split(self.encoding_chars[0])[0]

    @property
    def message_type(self) -> str:
        """`ORU^R01` style, as routes and `pfi tail --type` use it."""
        return f"{self.message_code}^{self.trigger}" if self.trigger else self.message_code


def _segment_at(raw: bytes, start: int) -> bytes:
    """The segment starting at `start`, up to the first CR or LF (two finds: no regex per call)."""
    end = raw.find(b"\r", start)
    if end < 0:
        end = len(raw)
    newline = raw.find(b"\n", start, end)
    return raw[start : newline if newline >= 0 else end]


def _find_segment(raw: bytes, name: bytes, sep: bytes) -> bytes | None:
    tag = name + sep
    for line_start in (b"\r" + tag, b"\n" + tag):
        pos = raw.find(line_start)
        if pos >= 0:
            return _segment_at(raw, pos + 1)
    return None


def _first_component(value: str, comp_sep: str) -> str:
    return value.split(comp_sep, 1)[0]


class HeaderError(ParseError):
    """An MSH that cannot be read, with what the NACK's ERR needs: a table 0357 code and ERR-2."""

    def __init__(self, message: str, code: int, location: str):
        super().__init__(message)
        self.code = code
        self.location = location


def scan(raw: bytes, fallback_codec: str = "utf-8") -> Header:
    """Read MSH (and PID) from `raw`; raise HeaderError when there is no usable MSH."""
    if _native_msh_pid is not None:
        values = _native_msh_pid(raw)
        if values is not None:
            header = _native_header(values, fallback_codec)
            if header is not None:
                return header
    return scan_python(raw, fallback_codec)


def _native_header(values: tuple, fallback_codec: str) -> Header | None:
    """The Header of engine/_hotpath.c's values (its common case: standard delimiters, ASCII
    MSH); None when the message's codec does not read ASCII bytes as ASCII (charset.py)."""
    sending_app, sending_facility, receiving_app, receiving_facility = values[:4]
    timestamp, message_code, trigger, structure, control_id, processing_id, version_field = values[4:11]
    country, charset, profile, pid, pid_3 = values[11:]
    codec = codec_for(charset, fallback_codec)
    if not ascii_transparent(codec):
        return None
    return Header(
        "|",
        "^~\\&",
        sending_app,
        sending_facility,
        receiving_app,
        receiving_facility,
        timestamp,
        message_code,
        trigger,
        structure,
        control_id,
        processing_id,
        version_field,
        country,
        charset,
        codec,
        profile,
        pid_3.decode(codec, "replace"),
        pid,
    )


def scan_python(raw: bytes, fallback_codec: str = "utf-8") -> Header:
    """`scan` in Python alone: every message the native scanner leaves (and its reference)."""
    # A VT left by a doubled start block split across reads is no part of the message either.
    start = len(raw) - len(raw.lstrip(b"\r\n\t \x00\x0b\xef\xbb\xbf"))
    if raw[start : start + 3] != b"MSH" or len(raw) < start + 8:
        raise HeaderError("no MSH segment at the start of the message", 100, "MSH^1")
    msh = _segment_at(raw, start)
    sep = msh[3:4]
    if len(sep) != 1:  # `MSH<CR>`: nothing to split the fields with
        raise HeaderError("MSH-1 field separator is missing", 101, "MSH^1^1")
    if sep.isalnum() or sep in (b" ", b"\r", b"\n") or sep[0] < 0x20 or sep[0] > 0x7E:
        raise HeaderError("MSH-1 field separator is not a printable ASCII separator", 102, "MSH^1^1")
    fields = msh.split(sep)
    if len(fields) < 2 or not fields[1]:
        raise HeaderError("MSH-2 encoding characters are missing", 101, "MSH^1^2")
    header = Header(field_sep=sep.decode("latin-1"))
    _read_encoding_chars(header, fields[1])
    _read_msh(header, fields, fallback_codec)
    pid = _find_segment(raw, b"PID", sep)
    if pid is not None:
        header.pid_segment = pid
        pid_fields = pid.split(sep, 4)  # PID-3 is pid_fields[3], whole
        header.patient_ids = pid_fields[3].decode(header.codec, "replace") if len(pid_fields) > 3 else ""
    return header


# MSH-2 values already found valid (a handful per site): the common case skips the checks.
_VALID_ENCODING_CHARS: dict[bytes, str] = {}
_KNOWN_ENCODING_CHARS_MAX = 64


def _read_encoding_chars(header: Header, enc: bytes) -> None:
    known = _VALID_ENCODING_CHARS.get(enc)
    if known is not None and header.field_sep not in known:
        header.encoding_chars = known
        return
    original = enc
    if _SMALL_TILDE in enc:
        enc = enc.replace(_SMALL_TILDE, b"~")
        header.warnings.append("MSH-2 uses U+02DC instead of '~'; read as '~'")
    text = enc.decode("latin-1")
    if (
        not 2 <= len(text) <= 5
        or len(set(text)) != len(text)
        or header.field_sep in text
        or any(c.isalnum() or not "!" <= c <= "~" for c in text)
    ):
        raise HeaderError(f"MSH-2 encoding characters are invalid: {text[:8]!r}", 102, "MSH^1^2")
    header.encoding_chars = text
    if original is enc and len(_VALID_ENCODING_CHARS) < _KNOWN_ENCODING_CHARS_MAX:
        _VALID_ENCODING_CHARS[original] = text  # never one needing a warning (U+02DC)


# MSH-n is fields[n - 1] (fields[0] is "MSH", fields[1] is MSH-2): MSH-3..7, 9..12, 17, 21.
_MSH_TEXT_FIELDS = (2, 3, 4, 5, 6, 8, 9, 10, 11, 16, 20)
_MSH_FIELDS = 21


def _read_msh(header: Header, fields: list[bytes], fallback_codec: str) -> None:
    if len(fields) < _MSH_FIELDS:
        fields = fields + [b""] * (_MSH_FIELDS - len(fields))
    header.charset = fields[17].decode("latin-1").split(header.encoding_chars[1])[0]
    header.codec = codec = codec_for(header.charset, fallback_codec)
    comp = header.encoding_chars[0]
    (
        header.sending_app,
        header.sending_facility,
        header.receiving_app,
        header.receiving_facility,
        header.timestamp,
        message_type,
        header.control_id,
        processing_id,
        header.version_field,
        header.country,
        profile,
    ) = [fields[n].decode(codec, "replace") for n in _MSH_TEXT_FIELDS]
    parts = message_type.split(comp) + ["", "", ""]
    header.message_code, header.trigger, header.structure = parts[0], parts[1], parts[2]
    header.processing_id = _first_component(processing_id, comp)
    header.profile = profile.split(header.encoding_chars[1])[0]
