"""Lenient base64: real senders drop the '=' padding; truncated data is still an error."""

from __future__ import annotations

import base64
import binascii
import re

_B64_CHARS = re.compile(r"[A-Za-z0-9+/]*")


class Base64Error(ValueError):
    """The text is not base64 (bad characters, or truncated in the middle of a byte)."""


def decode_base64(text: str, allow_truncated: bool = False) -> tuple[bytes, bool]:
    """Decode base64 with or without padding; return (bytes, truncated).

    A length of 1 modulo 4 cannot come from any byte string: the data was cut. It is an error,
    unless `allow_truncated`, in which case the dangling character is dropped and `truncated` is
    True (used for mail bodies, where the readable part is worth more than a rejection).
    """
    data = re.sub(r"\s+", "", text).rstrip("=")
    if not _B64_CHARS.fullmatch(data):
        bad = next(c for c in data if not (c.isascii() and (c.isalnum() or c in "+/")))
        raise Base64Error(f"character {bad!r} is not base64")
    truncated = len(data) % 4 == 1
    if truncated and not allow_truncated:
        raise Base64Error(f"base64 data truncated ({len(data)} characters, 1 modulo 4)")
    if truncated:
        data = data[:-1]
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True), truncated
    except binascii.Error as exc:  # pragma: no cover - guarded by the checks above
        raise Base64Error(str(exc)) from exc
