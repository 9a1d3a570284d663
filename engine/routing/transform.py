"""Transforms of the HL7 message carried by a route: a declarative field map, or an XSLT.

Neither may change a report signed elsewhere: any embedded document (OBX of type ED) must come
out byte-identical, or the transform fails.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from lxml import etree

from engine.errors import ValidationError

_SEGMENTS = re.compile(r"\r\n|\r|\n")
_SIMPLE_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?$")


def _segments(text: str) -> list[str]:
    return [s for s in _SEGMENTS.split(text) if s]


def apply_map(raw: bytes, mapping: dict[str, str], codec: str = "utf-8") -> bytes:
    """Set `SEG-F` or `SEG-F.C` to a value in every segment of that name."""
    text = raw.decode(codec)
    segments = _segments(text)
    fs, comp = segments[0][3], segments[0][4]
    for path, value in mapping.items():
        match = _SIMPLE_PATH.match(path)
        if not match:
            raise ValidationError(f"map transform supports SEG-F or SEG-F.C paths, not {path!r}")
        name, field, component = match.group(1), int(match.group(2)), match.group(3)
        segments = [_set(s, fs, comp, field, component, value) if s.startswith(name + fs) else s for s in segments]
    return _checked(raw, ("\r".join(segments) + "\r").encode(codec), codec)


def _set(segment: str, fs: str, comp: str, field: int, component, value: str) -> str:
    fields = segment.split(fs)
    index = field - 1 if fields[0] == "MSH" else field  # MSH-1 is the separator itself
    fields += [""] * (index + 1 - len(fields))
    if component is None:
        fields[index] = value
    else:
        parts = fields[index].split(comp)
        c = int(component) - 1
        parts += [""] * (c + 1 - len(parts))
        parts[c] = value
        fields[index] = comp.join(parts)
    return fs.join(fields)


@lru_cache(maxsize=64)
def _stylesheet(path: str, mtime: float) -> etree.XSLT:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XSLT(etree.parse(path, parser), access_control=etree.XSLTAccessControl.DENY_ALL)


def to_xml(raw: bytes, codec: str = "utf-8") -> etree._Element:
    """The message as `<hl7><segment name="PID"><field n="3">…</field></segment></hl7>` for XSLT."""
    root = etree.Element("hl7")
    for segment in _segments(raw.decode(codec)):
        fs = segment[3] if segment.startswith("MSH") else None
        seg = etree.SubElement(root, "segment", name=segment[:3])
        parts = segment.split(fs or _field_sep(raw))
        offset = 0 if parts[0] == "MSH" else 0
        for n, value in enumerate(parts[1:], 1 + offset):
            etree.SubElement(seg, "field", n=str(n + (1 if parts[0] == "MSH" else 0))).text = value
    return root


def _field_sep(raw: bytes) -> str:
    return chr(raw[3])


def apply_xslt(raw: bytes, xslt_path: Path, codec: str = "utf-8") -> bytes:
    """Run a stylesheet (output method text) that writes the new ER7 message."""
    try:
        result = _stylesheet(str(xslt_path), xslt_path.stat().st_mtime)(to_xml(raw, codec))
    except (etree.XSLTApplyError, etree.XSLTParseError, OSError) as exc:
        raise ValidationError(f"XSLT {xslt_path.name} failed: {exc}") from exc
    text = str(result).replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH"):
        raise ValidationError(f"XSLT {xslt_path.name} did not produce an HL7 message")
    return _checked(raw, text.encode(codec), codec)


def _documents(raw: bytes, codec: str) -> list[str]:
    out = []
    for segment in _segments(raw.decode(codec, errors="replace")):
        fields = segment.split(chr(raw[3]))
        if fields[0] == "OBX" and len(fields) > 5 and fields[2] == "ED":
            out.append(fields[5])
    return out


def _checked(before: bytes, after: bytes, codec: str) -> bytes:
    if _documents(before, codec) != _documents(after, codec):
        raise ValidationError("transform refused: it would alter an embedded document (OBX ED)")
    return after
