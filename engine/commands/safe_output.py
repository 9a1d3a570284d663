"""Human-facing output that a sender cannot steer: control characters shown, never obeyed.

Journal fields come from outside (MSH-9, MSH-10, reasons quoting them): printed as they are, an
escape sequence could clear the operator's screen, move the cursor or fake a line of `pfi tail`.
Every command's stdout goes through `SafeWriter`; `printable` is there for single values.
"""

from __future__ import annotations

import io
import re

# C0 controls but TAB and LF, DEL, C1 controls, and the bidi overrides/isolates that reorder text.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\x1b`, `\\r`…)."""
    return _UNSAFE.sub(_visible, text)


class SafeWriter(io.TextIOBase):
    """A text stream that escapes control characters before passing text on."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")
