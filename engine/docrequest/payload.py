"""Lenient base64: real senders drop the '=' padding; truncated data is still an error."""

from __future__ import annotations

import binascii
import re

_B64_BYTES = re.compile(rb"[A-Za-z0-9+/]*")


class Base64Error(ValueError):
    """The text is not base64 (bad characters, or truncated in the middle of a byte)."""


def decode_base64(text: str, allow_truncated: bool = False) -> tuple[bytes, bool]:
    """Decode base64 with or without padding; return (bytes, truncated).

    A length of 1 modulo 4 cannot come from any byte string: the data was cut. It is an error,
    unless `allow_truncated`, in which case the dangling character is dropped and `truncated` is
    True (used for mail bodies, where the readable part is worth more than a rejection).
    """
    data = _without_whitespace(text).rstrip(b"=")
    truncated = len(data) % 4 == 1
    if truncated:  # rare: its checks may take the slow road
        _check_alphabet(data)
        if not allow_truncated:
            raise Base64Error(f"base64 data truncated ({len(data)} characters, 1 modulo 4)")
        data = data[:-1]
    try:
        # strict: a character outside the alphabet is an error, found in C rather than by a regex
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True), truncated
    except binascii.Error as exc:
        _check_alphabet(data)
        raise Base64Error(str(exc)) from None  # pragma: no cover - the alphabet check says why


def _check_alphabet(data: bytes) -> None:
    if not _B64_BYTES.fullmatch(data):
        bad = next(chr(c) for c in data if not (chr(c).isalnum() or c in b"+/"))
        raise Base64Error(f"character {bad!r} is not base64")


#: the ASCII characters `\s` matches in a str pattern (str.isspace), as bytes to delete
_ASCII_WHITESPACE = bytes(c for c in range(128) if chr(c).isspace())


def _without_whitespace(text: str) -> bytes:
    """`text` without its whitespace, as ASCII bytes: a C-level delete for ASCII text (a regex
    over a 300 KB report took 1.3 ms), the regex otherwise."""
    if text.isascii():
        return text.encode("ascii").translate(None, _ASCII_WHITESPACE)
    compact = re.sub(r"\s+", "", text)
    if not compact.isascii():  # the first character outside the alphabet, as the ASCII road says
        bad = next(c for c in compact.rstrip("=") if not (c.isascii() and (c.isalnum() or c in "+/")))
        raise Base64Error(f"character {bad!r} is not base64")
    return compact.encode("ascii")
