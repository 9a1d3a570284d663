"""`Message.parse_head` (MSH and the first PID alone, what routing reads a FIFO key from) gives
what the full parse gives, on every ANS example message and every sample, and on the shapes
where a cheaper reading could differ: LF or CRLF separators, a line continuing PID, MLLP
characters inside the text, no PID, bytes the declared charset cannot decode."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ParseError
from engine.hl7.message import Message
from engine.routing.context import MessageContext

ROOT = Path(__file__).resolve().parents[2]
ANS = ROOT.parent / "shared" / "corpus" / "ans"
PATHS = ("PID-3.1", "PID-3", "PID-3(2).1", "PID-3[5=INS].1", "PID-5", "PID-7", "MSH-9.1", "MSH-10", "MSH-4", "MSH-20")
PID = "PID|1||123^^^CHU^PI~1850712345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||DOE^JOHN"
MSH = "MSH|^~\\&|RIS|CHU|PFI|CHU|20261204101010||ADT^A01^ADT_A01|C-1|P|2.5|||||FRA|UNICODE UTF-8"


def corpus() -> list[Path]:
    files = [p for p in ANS.rglob("*") if p.is_file() and p.suffix.lower() in (".hl7", ".er7", ".txt")]
    files += [p for p in (ROOT / "samples").iterdir() if p.suffix == ".hl7"]
    assert len(files) > 60  # the corpus is there: an empty list would test nothing
    return sorted(files)


def same_reading(raw: bytes) -> None:
    try:
        full = Message.parse(raw)
    except ParseError as refused:
        with pytest.raises(ParseError, match=str(refused)[:30]):
            Message.parse_head(raw)
        return
    head = Message.parse_head(raw)
    for path in PATHS:
        assert head.get(path) == full.get(path), path
        assert MessageContext("u", "c", raw, 0.0).get(path) == (full.get(path) or ""), path


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.name)
def test_every_example_message_reads_the_same(path):
    same_reading(path.read_bytes())


@pytest.mark.parametrize(
    "text",
    [
        f"{MSH}\r{PID}\r",
        f"{MSH}\n{PID}\n",
        f"{MSH}\r\n{PID}\r\nPV1|1|O\r\n",
        f"{MSH}\r\r{PID}\r\rPV1|1|O",
        f"{MSH}\rPID|1||123^^^CHU^PI\r~456^^^X^PI||DOE\rPV1|1|O\r",  # a line continuing PID: joined to it
        f"{MSH}\r|X|continued\r{PID}\r",  # a line continuing MSH
        f"{MSH}\r\x0b{PID}\r",  # an MLLP character before PID
        f"{MSH}\rEVN||1\r\x0b{PID}\r",
        f"{MSH}\rEVN||20261204\r",  # no PID
        f"{MSH}\rEVN||20261204\r PID|1||999\r",  # not a PID line (it starts with a blank)
        f"{MSH}\rZZZ\r{PID}\rZZ1\r",
        f"{MSH}",
    ],
)
def test_the_shapes_where_a_cheaper_reading_could_differ(text):
    same_reading(text.encode())


def test_bytes_the_declared_charset_cannot_decode_are_refused_alike():
    raw = f"{MSH}\r{PID}\rNTE|1||".encode() + b"\xff\xfe\r"
    same_reading(raw)
    with pytest.raises(ParseError):
        Message.parse_head(raw)


def test_a_match_on_the_channel_and_an_adt_without_document():
    from engine.config.routes import Match
    from engine.routing.match import matches

    raw = f"{MSH}\r{PID}\r".encode()
    assert matches(Match(channel="c"), MessageContext("u", "c", raw, 0.0))
    assert not matches(Match(channel="other"), MessageContext("u", "c", raw, 0.0))
    assert MessageContext("u", "c", raw, 0.0).document_ids == ("", "", "")  # an ADT: no document
