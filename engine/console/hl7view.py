"""The raw HL7 of a message as the console shows it: segments and numbered fields, with the
patient's identity masked unless the operator revealed it for this message, and embedded
documents (OBX-5 of type ED) summarised instead of pages of base64."""

from __future__ import annotations

from dataclasses import dataclass

MASK = "***"
LONG_FIELD = 300
# Fields that identify a person: masked by default. PID-1 (set id), PID-8 (sex) and PID-32
# (identity reliability) stay: they do not identify and operators need them.
IDENTITY_FIELDS = {
    "PID": set(range(2, 40)) - {1, 8, 32},
    "MRG": set(range(1, 10)),
    "NK1": set(range(2, 40)),
    "GT1": set(range(2, 60)),
    "IN1": set(range(2, 60)),
    "IN2": set(range(1, 80)),
    "PV1": {19, 50},
}


@dataclass
class FieldView:
    label: str
    value: str
    masked: bool = False


@dataclass
class SegmentView:
    name: str
    fields: list[FieldView]


def segment_view(raw: bytes, reveal: bool) -> tuple[list[SegmentView], str]:
    """(segments with their numbered non-empty fields, the message as text) for display."""
    from engine.errors import ParseError
    from engine.hl7.message import Message

    try:
        message = Message.parse(raw)
    except ParseError as exc:
        return [], f"(not readable as HL7: {exc})"
    views, lines = [], []
    for segment in message.all_segments:
        fields = segment.fields
        shown = [segment.name]
        view = SegmentView(segment.name, [])
        for number in range(1, len(fields)):
            value, masked = _display(segment, number, fields[number], reveal)
            shown.append(value)
            if fields[number] != "":
                view.fields.append(FieldView(f"{segment.name}-{number}", value, masked))
        views.append(view)
        if segment.name == "MSH":  # MSH-1 is the separator itself
            lines.append(segment.name + message.encoding.field + message.encoding.field.join(shown[2:]))
        else:
            lines.append(message.encoding.field.join(shown))
    return views, "\n".join(lines)


def _display(segment, number: int, value: str, reveal: bool) -> tuple[str, bool]:
    if value and not reveal and number in IDENTITY_FIELDS.get(segment.name, ()):
        return MASK, True
    if segment.name == "OBX" and number == 5 and segment.field(2) == "ED" and len(value) > LONG_FIELD:
        return f"[embedded document, {len(value)} characters of base64: shown below]", False
    if len(value) > LONG_FIELD:
        return value[:LONG_FIELD] + f"… ({len(value)} characters)", False
    return value, False
