"""MSH-18 character set names to Python codecs."""

from __future__ import annotations

import codecs
import functools

MSH18_CODECS = {
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso8859-1",
    "8859/15": "iso8859-15",
    "ASCII": "ascii",
}


def codec_for(msh18: str, fallback: str = "utf-8") -> str:
    """Codec for an MSH-18 value; empty or unknown values use the channel's fallback."""
    return MSH18_CODECS.get(msh18.strip().upper(), fallback) if msh18 else fallback


def normalize_codec(name: str) -> str:
    """Validate a codec name from configuration; raises LookupError when unknown."""
    return codecs.lookup(MSH18_CODECS.get(name.strip().upper(), name)).name


def msh18_for(codec: str) -> str:
    """The MSH-18 value to write for messages we emit in `codec`."""
    return {"utf-8": "UNICODE UTF-8", "iso8859-1": "8859/1", "iso8859-15": "8859/15"}.get(
        codecs.lookup(codec).name, "UNICODE UTF-8"
    )


_ASCII = bytes(range(128))


@functools.lru_cache(maxsize=32)
def ascii_transparent(codec: str) -> bool:
    """`codec` reads every ASCII byte as that character and writes it back as that byte: a text
    of ASCII is the same in it as in latin-1 (intake's native scan and ACK rely on it)."""
    try:
        text = _ASCII.decode(codec, "replace")
        return text == _ASCII.decode("latin-1") and text.encode(codec, "replace") == _ASCII
    except LookupError:
        return False
