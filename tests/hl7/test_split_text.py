"""`split_text` (the parser's split of segments, fields and components) is `str.split`, whatever
the text's length and the number of separators; it only takes another road on long texts."""

from __future__ import annotations

import random

from engine.hl7.message import _FIND_PARTS, _LONG_TEXT, Message, split_text


def test_it_splits_as_str_split_on_random_texts():
    rng = random.Random(15)
    for _ in range(400):
        sep = rng.choice("\r|^~&")
        length = rng.choice([0, 1, 10, _LONG_TEXT - 1, _LONG_TEXT, _LONG_TEXT + 1, 40_000])
        density = rng.choice([0.0, 0.0001, 0.002, 0.05, 0.5])
        alphabet = "ab\\é\n" + sep
        text = "".join(sep if rng.random() < density else rng.choice(alphabet[:-1]) for _ in range(length))
        if rng.random() < 0.3:
            text = sep + text + sep * rng.randint(1, 3)
        assert split_text(text, sep) == text.split(sep), (len(text), text.count(sep))


def test_the_edges_of_the_two_roads():
    long = "x" * _LONG_TEXT
    for count in (_FIND_PARTS - 1, _FIND_PARTS, _FIND_PARTS + 1, 10 * _FIND_PARTS):
        text = "|".join([long] * count)
        assert split_text(text, "|") == text.split("|")
    assert split_text(long + "||", "||") == (long + "||").split("||")  # a longer separator: the builtin


def test_a_40_kb_report_reads_the_same_through_either_road():
    from bench.common import oru_message

    raw = oru_message().replace(b"{CTRL}", b"C-1")
    parsed = Message.parse(raw)
    obx5 = raw.split(b"\r")[-3].decode().split("|")[5]  # the OBX carrying the document
    assert parsed.get("OBX-5") is not None
    assert parsed.get("OBX-5.5") == obx5.split("^")[4]
    assert [s.name for s in parsed.segments()] == [line[:3].decode() for line in raw.split(b"\r") if line]


def test_crlf_and_lf_become_cr_as_two_replaces_would_make_them():
    from engine.hl7.message import _lf_to_cr

    rng = random.Random(15)
    for _ in range(3000):
        text = "".join(rng.choice("ab\r\n") for _ in range(rng.choice([0, 1, 5, 50, 3000])))
        assert _lf_to_cr(text) == text.replace("\r\n", "\r").replace("\n", "\r"), repr(text[:40])
