"""The one HL7 v2 encoder for every value the engine writes from outside data.

A value read from a CDA, a mail, a DMP answer or a sender's message must never be able to add a
field, a component or a segment: `escape` writes the delimiters as \\F\\ \\S\\ \\R\\ \\E\\ \\T\\ and
every control character (CR and LF included: a segment break) as \\Xhh\\, so that
`decode(escape(x)) == x`. Builders take structured values instead of pre-joined strings:

    segment("PID", "1", "", [("123", "", "", ("ASIP", "1.2.250", "ISO"), "INS")], ...)

- `str`: one escaped value;
- `tuple`: components (an inner tuple: subcomponents);
- `list`: repetitions;
- `Raw`: text that is already HL7 (constants of ours, never outside data).

`checked_*` helpers reject a value that cannot be valid for its field (a birth time that is not
a TS, a gender outside table 0001): an `InvalidValue`, not a silently damaged message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import ParseError


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


STANDARD = Delimiters()


class Raw(str):
    """HL7 text written by the engine itself (a constant, a value it built): not escaped again."""


class InvalidValue(ParseError):
    """A value from outside that cannot be valid for the field it was meant for."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape(value: str, d: Delimiters = STANDARD) -> str:
    """`value` as the content of one HL7 component: delimiters and controls escaped."""
    e = d.escape
    table = {
        e: f"{e}E{e}",
        d.field: f"{e}F{e}",
        d.component: f"{e}S{e}",
        d.repetition: f"{e}R{e}",
        d.subcomponent: f"{e}T{e}",
    }
    out = "".join(table.get(c, c) for c in value)
    return _CONTROL.sub(lambda m: f"{e}X{ord(m.group()):02X}{e}", out)


def unescape(text: str, d: Delimiters = STANDARD) -> str:
    """Inverse of `escape` (the escapes it writes; other escape sequences are kept as they are)."""
    e = re.escape(d.escape)
    names = {"E": d.escape, "F": d.field, "S": d.component, "R": d.repetition, "T": d.subcomponent}

    def one(match: re.Match) -> str:
        body = match.group(1)
        if body in names:
            return names[body]
        if body.startswith("X") and len(body) >= 3:
            try:
                return bytes.fromhex(body[1:]).decode("latin-1")
            except ValueError:
                return match.group()
        return match.group()

    return re.sub(f"{e}([^{e}]*){e}", one, text)


def field(value, d: Delimiters = STANDARD) -> str:
    """One field from a structured value (see the module docstring)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list):
        return d.repetition.join(field(v, d) for v in value)
    if isinstance(value, tuple):
        return d.component.join(_component(v, d) for v in value).rstrip(d.component)
    return escape(str(value), d)


def _component(value, d: Delimiters) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, tuple):
        return d.subcomponent.join(escape(str(v), d) if not isinstance(v, Raw) else str(v) for v in value).rstrip(
            d.subcomponent
        )
    return escape(str(value), d)


def segment(name: str, *fields, d: Delimiters = STANDARD) -> str:
    """`NAME|f1|f2…` with trailing empty fields dropped."""
    return d.field.join([name, *(field(f, d) for f in fields)]).rstrip(d.field)


def msh(*fields_from_3, d: Delimiters = STANDARD) -> str:
    """MSH with MSH-1/MSH-2 written from `d`; `fields_from_3` are MSH-3 onwards."""
    return d.field.join(["MSH", d.encoding_characters, *(field(f, d) for f in fields_from_3)]).rstrip(d.field)


def message(segments: list[str], charset: str = "utf-8") -> bytes:
    """Segments joined by CR (each terminated), encoded."""
    return "".join(s + "\r" for s in segments).encode(charset)


# -- values that must be valid for their field ------------------------------------------------

_TS = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,4})?)?)?)?)?)?([+-]\d{4})?")
_OID = re.compile(r"[0-2](\.(0|[1-9]\d*))+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
GENDERS = frozenset("MFUOAN")  # HL7 table 0001 (2.5-2.6)


def checked_ts(value: str, where: str) -> str:
    """An HL7 TS/DTM (YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]) or empty."""
    if value and not _TS.fullmatch(value):
        raise InvalidValue(where, "not an HL7 date/time (YYYYMMDD[HHMM[SS]])")
    return value


def checked_gender(value: str, where: str) -> str:
    if value and value not in GENDERS:
        raise InvalidValue(where, "administrative sex outside HL7 table 0001 (M, F, U, O, A, N)")
    return value


def checked_root(value: str, where: str) -> str:
    """An identifier root: an OID or a UUID (what HD-2/EI-3 with ISO may carry)."""
    if value and not (_OID.fullmatch(value) or _UUID.fullmatch(value)):
        raise InvalidValue(where, "root is neither an OID nor a UUID")
    return value


def checked_identifier(value: str, where: str, max_length: int = 199) -> str:
    """An identifier: no control character, bounded length (escaping keeps delimiters harmless)."""
    if _CONTROL.search(value):
        raise InvalidValue(where, "identifier contains a control character")
    if len(value) > max_length:
        raise InvalidValue(where, f"identifier longer than {max_length} characters")
    return value
