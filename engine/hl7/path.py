"""HL7 paths: a small, strict syntax to address values in a message (routing, requests, flows).

Grammar (numbers are 1-based)::

    path     := SEG segsel* "-" FIELD [ "(" REP ")" ] [ repsel ] [ "." COMP [ "." SUB ] ]
    segsel   := "[" N "]"                         occurrence among the segments selected so far
              | "[" "code=" VALUE "]"             OBX only: OBX-3.1 equals VALUE
              | "[" FIELD ["." COMP ["." SUB]] "=" VALUE "]"
                                                  any repetition of that field has that value
    repsel   := "[" COMP ["." SUB] "=" VALUE "]"  keep the repetitions of FIELD whose component
                                                  (subcomponent) equals VALUE

Examples: ``MSH-9.1``, ``PID-3(2).1``, ``OBX[2]-5``, ``OBX[code=DESTDMP]-5.1``,
``PRT[4.1=RCT]-15.4``, ``PID-3[5=INS].1``, ``PID-3[4.2=1.2.250.1.213.1.4.10].1``.
Segment selectors chain left to right: ``OBX[2=ED][1]-5.5`` = OBX-5.5 of the first ED OBX.

`get` reads the first selected segment and the first repetition (or REP, or the first repetition
kept by repsel); `get_all` reads every selected segment and every repetition (or REP / the kept
ones) and returns the non-empty values in message order. A value is returned unescaped when it
is a leaf (it contains no lower-level delimiter); otherwise it is returned as ER7 text.
VALUE is compared with the unescaped leaf text; it cannot contain ']'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from engine.hl7.message import Message, Segment, split_text


@dataclass(frozen=True)
class Locator:
    """A field / component / subcomponent position inside a segment (or a repetition)."""

    field: int | None
    component: int | None = None
    subcomponent: int | None = None


@dataclass(frozen=True)
class Condition:
    """`locator` == `value`, evaluated on a segment (field set) or a repetition (field None)."""

    locator: Locator
    value: str


@dataclass(frozen=True)
class HL7Path:
    """A compiled path; build it with `compile_path`."""

    text: str
    segment: str
    selectors: tuple[int | Condition, ...]
    field: int
    repetition: int | None
    rep_condition: Condition | None
    component: int | None
    subcomponent: int | None

    def get(self, msg: Message) -> str | None:
        """First value (see module doc), None when absent or empty."""
        segments = self.select_segments(msg)
        if not segments:
            return None
        reps = self._repetitions(segments[0], msg, first_only=True)
        if not reps:
            return None
        return _leaf(reps[0], self.component, self.subcomponent, msg, self._atomic)

    def get_all(self, msg: Message) -> list[str]:
        """Every non-empty value, in message order."""
        values = []
        for seg in self.select_segments(msg):
            for rep in self._repetitions(seg, msg, first_only=False):
                value = _leaf(rep, self.component, self.subcomponent, msg, self._atomic)
                if value:
                    values.append(value)
        return values

    @property
    def _atomic(self) -> bool:
        return _is_atomic(self.segment, self.field)

    def select_segments(self, msg: Message) -> list[Segment]:
        """The segments kept by the segment id and the selectors."""
        segments = msg.segments(self.segment)
        for selector in self.selectors:
            if isinstance(selector, int):
                segments = segments[selector - 1 : selector]
            else:
                segments = [s for s in segments if _segment_matches(s, selector, msg)]
        return segments

    def _repetitions(self, seg: Segment, msg: Message, first_only: bool) -> list[str]:
        reps = seg.repetitions(self.field)
        if self.repetition is not None:
            return reps[self.repetition - 1 : self.repetition]
        if self.rep_condition is not None:
            reps = [r for r in reps if _rep_matches(r, self.rep_condition, msg, self._atomic)]
        return reps[:1] if first_only else reps

    def __str__(self) -> str:
        return self.text


def _split(text: str, sep: str | None, index: int) -> str:
    if not sep:
        return text if index == 1 else ""
    parts = split_text(text, sep)
    return parts[index - 1] if index <= len(parts) else ""


def _leaf(rep: str, comp: int | None, sub: int | None, msg: Message, atomic: bool = False) -> str | None:
    """Component/subcomponent of one repetition; unescaped when it is a leaf."""
    if atomic:  # MSH-1 and MSH-2: the text is the delimiters themselves
        return rep if comp in (None, 1) and sub in (None, 1) else None
    enc = msg.encoding
    value = rep if comp is None else _split(rep, enc.component, comp)
    if sub is not None:
        value = _split(value, enc.subcomponent, sub)
    if not value:
        return None
    lower = [
        c
        for c in (
            enc.component if comp is None else None,
            enc.subcomponent if sub is None else None,
            enc.repetition if comp is None else None,
        )
        if c
    ]
    if any(c in value for c in lower):
        return value
    return msg.unescape(value)


def _is_atomic(segment: str, field: int | None) -> bool:
    return segment == "MSH" and field is not None and field <= 2


def _segment_matches(seg: Segment, cond: Condition, msg: Message) -> bool:
    loc = cond.locator
    inner = Condition(Locator(None, loc.component, loc.subcomponent), cond.value)
    atomic = _is_atomic(seg.name, loc.field)
    return any(_rep_matches(rep, inner, msg, atomic) for rep in seg.repetitions(loc.field))


def _rep_matches(rep: str, cond: Condition, msg: Message, atomic: bool = False) -> bool:
    loc = cond.locator
    return (_leaf(rep, loc.component, loc.subcomponent, msg, atomic) or "") == cond.value


class _Parser:
    """Recursive-descent parser giving column-precise ValueErrors."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, reason: str) -> ValueError:
        return ValueError(f"invalid HL7 path {self.text!r}: {reason} (at column {self.pos + 1})")

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "end of path"
            raise self.fail(f"expected {char!r} {what}, found {found}")
        self.pos += 1

    def number(self, what: str) -> int:
        match = re.compile(r"\d+").match(self.text, self.pos)
        if not match:
            raise self.fail(f"expected a {what} number")
        value = int(match.group())
        if value < 1:
            raise self.fail(f"{what} number must be >= 1 (numbering is 1-based)")
        self.pos = match.end()
        return value

    def segment_id(self) -> str:
        seg = self.text[:3]
        if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", seg):
            raise self.fail("path must start with a 3-character segment id such as PID or ZFA")
        self.pos = 3
        return seg

    def bracket_body(self) -> str:
        self.expect("[", "to open a selector")
        end = self.text.find("]", self.pos)
        if end < 0:
            raise self.fail("selector has no closing ']'")
        body = self.text[self.pos : end]
        self.pos = end + 1
        return body

    def locator_text(self, text: str, with_field: bool, column: int) -> Locator:
        match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
        if not match or (not with_field and match.group(3)):
            shape = "FIELD[.COMP[.SUB]]" if with_field else "COMP[.SUB]"
            self.pos = column
            raise self.fail(f"selector left side {text!r} must be {shape}")
        numbers = [int(g) if g else None for g in match.groups()]
        if any(n == 0 for n in numbers):
            self.pos = column
            raise self.fail("selector numbers are 1-based")
        if with_field:
            return Locator(*numbers)
        return Locator(None, numbers[0], numbers[1])

    def condition(self, body: str, column: int, on_segment: bool, segment: str) -> Condition:
        left, eq, value = body.partition("=")
        if not eq:
            self.pos = column
            raise self.fail(f"selector [{body}] needs 'position=value'")
        if on_segment and left.strip() == "code":
            if segment != "OBX":
                self.pos = column
                raise self.fail("selector [code=...] is only defined for OBX (OBX-3.1); use [FIELD.COMP=value]")
            return Condition(Locator(3, 1), value)
        return Condition(self.locator_text(left, on_segment, column), value)

    def segment_selectors(self, segment: str) -> tuple[int | Condition, ...]:
        selectors: list[int | Condition] = []
        while self.peek() == "[":
            column = self.pos
            body = self.bracket_body()
            if re.fullmatch(r"\d+", body):
                if int(body) < 1:
                    self.pos = column
                    raise self.fail("segment occurrence must be >= 1 (numbering is 1-based)")
                selectors.append(int(body))
            else:
                selectors.append(self.condition(body, column, True, segment))
        return tuple(selectors)

    def parse(self) -> HL7Path:
        segment = self.segment_id()
        selectors = self.segment_selectors(segment)
        self.expect("-", "between the segment and the field number")
        field = self.number("field")
        repetition = None
        if self.peek() == "(":
            self.pos += 1
            repetition = self.number("repetition")
            self.expect(")", "to close the repetition")
        rep_condition = None
        if self.peek() == "[":
            if repetition is not None:
                raise self.fail("a repetition number and a repetition selector cannot be combined")
            column = self.pos
            rep_condition = self.condition(self.bracket_body(), column, False, segment)
        component = subcomponent = None
        if self.peek() == ".":
            self.pos += 1
            component = self.number("component")
            if self.peek() == ".":
                self.pos += 1
                subcomponent = self.number("subcomponent")
        if self.pos != len(self.text):
            raise self.fail(f"unexpected {self.text[self.pos :]!r}")
        return HL7Path(self.text, segment, selectors, field, repetition, rep_condition, component, subcomponent)


@lru_cache(maxsize=1024)
def _compile(text: str) -> HL7Path:
    return _Parser(text).parse()


def compile_path(path: "str | HL7Path") -> HL7Path:
    """Compile (and cache) an HL7 path; raise ValueError with the reason and column if invalid."""
    if isinstance(path, HL7Path):
        return path
    if not isinstance(path, str) or not path:
        raise ValueError(f"invalid HL7 path {path!r}: empty or not a string")
    return _compile(path)
