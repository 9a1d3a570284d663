"""`decode_base64` checks and strips in C (bytes.translate, a2b_base64 in strict mode) what a
regex did over the whole report: on random damaged texts it answers what the regex reading
answers, the same bytes or the same error."""

from __future__ import annotations

import base64
import random
import re

import pytest

from engine.docrequest.payload import Base64Error, decode_base64


def regex_reading(text: str, allow_truncated: bool) -> tuple[bytes, bool]:
    """The reading said plainly (the earlier implementation): whitespace out, alphabet checked,
    a length of 1 modulo 4 truncated."""
    data = re.sub(r"\s+", "", text).rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9+/]*", data):
        bad = next(c for c in data if not (c.isascii() and (c.isalnum() or c in "+/")))
        raise Base64Error(f"character {bad!r} is not base64")
    truncated = len(data) % 4 == 1
    if truncated and not allow_truncated:
        raise Base64Error(f"base64 data truncated ({len(data)} characters, 1 modulo 4)")
    if truncated:
        data = data[:-1]
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True), truncated


def outcome(reader, text: str, allow: bool):
    try:
        return "decoded", reader(text, allow)
    except Base64Error as exc:
        return "refused", str(exc)


def damaged(rng: random.Random) -> str:
    chars = list(base64.b64encode(rng.randbytes(rng.randint(0, 40))).decode())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for _ in range(rng.randint(0, 3)):
        kind, pos = rng.random(), rng.randint(0, len(chars))
        if kind < 0.3:
            chars.insert(pos, rng.choice(" \n\r\t\x0b\x0c\x1c\x1f\xa0\u2028"))
        elif kind < 0.5:
            chars.insert(pos, rng.choice("=*-_é.~"))
        elif kind < 0.7 and chars:
            chars.pop(min(pos, len(chars) - 1))
        elif kind < 0.85:
            chars.insert(pos, rng.choice(alphabet))
        else:
            chars = chars[: rng.randint(0, len(chars))]
    return "".join(chars)


@pytest.mark.parametrize("allow_truncated", [False, True])
def test_random_damaged_texts_read_as_the_regex_reads_them(allow_truncated):
    rng = random.Random(15)
    for _ in range(5000):
        text = damaged(rng)
        assert outcome(decode_base64, text, allow_truncated) == outcome(regex_reading, text, allow_truncated), text


def test_a_report_cut_in_76_character_lines_decodes_whole():
    data = random.Random(1).randbytes(30_000)
    text = base64.b64encode(data).decode()
    lines = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64(lines) == (data, False)
    assert decode_base64(lines.rstrip("=")) == (data, False)  # padding dropped, as real senders do
